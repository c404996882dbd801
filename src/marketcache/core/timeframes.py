"""Timeframes: parse "1h", bar arithmetic, and the still-open bar."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from marketcache.errors import UsageError

if TYPE_CHECKING:
    import pandas as pd

TIMEFRAMES: tuple[str, ...] = (
    "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "1w", "1M",
)  # fmt: skip

_UNIT_MINUTES = {"m": 1, "h": 60, "d": 1440, "w": 10080}


@dataclass(frozen=True, order=True)
class Timeframe:
    """A bar length. Fixed-length bars have `minutes`; `1M` (calendar month) does not."""

    name: str

    @property
    def minutes(self) -> int:
        if self.name == "1M":
            return 31 * 1440  # upper bound; months are handled by the calendar code
        return int(self.name[:-1]) * _UNIT_MINUTES[self.name[-1]]

    @property
    def is_intraday(self) -> bool:
        return self.name not in ("1d", "1w", "1M")

    def floor(self, ts: datetime) -> pd.Timestamp:
        """The open time of the bar that contains `ts`."""
        import pandas as pd

        t = pd.Timestamp(ts)
        if self.name == "1M":
            return pd.Timestamp(t.year, t.month, 1)
        if self.name == "1w":
            day = t.normalize()
            return day - pd.Timedelta(days=day.day_of_week)
        return t.floor(f"{self.minutes}min")

    def next_open(self, ts: datetime) -> pd.Timestamp:
        """The open time of the bar after the one that contains `ts`."""
        import pandas as pd

        start = self.floor(ts)
        if self.name == "1M":
            return start + pd.DateOffset(months=1)
        return start + pd.Timedelta(minutes=self.minutes)

    def __str__(self) -> str:
        return self.name


def parse_timeframe(text: str) -> Timeframe:
    """Parse one timeframe name such as '5m', '1h', '1d' or '1M'."""
    name = text.strip()
    if name not in TIMEFRAMES:
        lowered = name.lower()
        if lowered in ("1mo", "1mth", "1month"):
            name = "1M"
        elif re.fullmatch(r"\d+[mhdw]", lowered) and lowered in TIMEFRAMES:
            name = lowered
        else:
            raise UsageError(f"unknown timeframe '{text}': use one of {', '.join(TIMEFRAMES)}")
    return Timeframe(name)


def parse_timeframes(text: str) -> list[Timeframe]:
    """Parse a comma-separated list such as '1h,1d'; order kept, duplicates dropped."""
    seen: dict[str, Timeframe] = {}
    for part in text.split(","):
        if part.strip():
            tf = parse_timeframe(part)
            seen.setdefault(tf.name, tf)
    if not seen:
        raise UsageError("no timeframe given: use e.g. -t 1h,1d")
    return list(seen.values())
