"""Plain value types shared by every layer: date ranges and date parsing."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING

from marketcache.errors import UsageError

if TYPE_CHECKING:  # pandas is imported where dates are parsed: `list` and `info` never do
    import pandas as pd

_RELATIVE = re.compile(r"^(\d+)\s*([dwmy])$")


def utcnow() -> pd.Timestamp:
    """Now, UTC, timezone-naive (the cache's convention)."""
    import pandas as pd

    return pd.Timestamp(datetime.now(UTC).replace(tzinfo=None))


def parse_date(text: str | date | datetime | pd.Timestamp, *, option: str = "date") -> pd.Timestamp:
    """A point in time, UTC-naive, from an ISO date/time or a relative age ('30d', '2y' = that
    long before now), or a `datetime.date`, `datetime.datetime`, `pd.Timestamp` or
    `np.datetime64` (naive means UTC; aware is converted).

    Raises UsageError naming `option` when it is not a date or lies outside 1970..2200.
    """
    import numpy as np
    import pandas as pd

    if isinstance(text, datetime | pd.Timestamp | np.datetime64):
        ts = pd.Timestamp(text)
        if pd.isna(ts):
            raise UsageError(f"{option} is NaT: give a date")
    elif isinstance(text, date):  # a date, not a datetime (which is a date too): its midnight
        ts = pd.Timestamp(text.year, text.month, text.day)
    elif not isinstance(text, str):
        raise UsageError(
            f"{option} {text!r} is a {type(text).__name__}: give a date, datetime, Timestamp"
            " or text such as 2024-01-31"
        )
    else:
        raw = text.strip()
        m = _RELATIVE.match(raw.lower())
        if m:
            n, unit = int(m.group(1)), m.group(2)
            days = {"d": 1, "w": 7, "m": 30, "y": 365}[unit] * n
            if days > 365 * 250:
                raise UsageError(f"{option} '{text}' is too far back")
            return (utcnow() - pd.Timedelta(days=days)).normalize()
        if raw.lower() in ("now", "today"):
            return utcnow().normalize() if raw.lower() == "today" else utcnow()
        parsed: pd.Timestamp | None
        try:
            parsed = pd.Timestamp(raw)
        except (ValueError, TypeError, OverflowError):
            parsed = None
        if parsed is None or pd.isna(parsed) or not re.match(r"^\d{4}-\d{2}-\d{2}", raw):
            raise UsageError(
                f"{option} '{text}' is not a date: use YYYY-MM-DD, 'YYYY-MM-DD HH:MM' or 30d/2y"
            ) from None
        ts = parsed
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    if not (pd.Timestamp("1970-01-01") <= ts < pd.Timestamp("2200-01-01")):
        raise UsageError(f"{option} '{text}' is out of range (1970-01-01 .. 2199-12-31)")
    return ts


@dataclass(frozen=True)
class DateRange:
    """A half-open interval [start, end) of UTC-naive timestamps."""

    start: pd.Timestamp
    end: pd.Timestamp

    def __post_init__(self) -> None:
        if self.start >= self.end:
            raise UsageError(
                f"start {self.start} is not before end {self.end}: give --start earlier than --end"
            )
