"""Corporate actions: what is stored per symbol, and how prices are adjusted. Pure, no I/O.

Stored OHLCV are as traded. A split of ratio r on date D (r = 4 for a 4-for-1 split) means
every bar before D traded at r times the price a post-split share has, with 1/r the volume.
A dividend of amount A (as traded) going ex on date E scales every close before E by
(1 - A / C), C being the last close before E (the CRSP rule Yahoo documents for `adjclose`).

    adjust="splits": price / prod(r of splits after the bar), volume * the same product
    adjust="all":    also * prod(1 - A / C of dividends going ex after the bar)
    adj_close       = close adjusted "all" — what a fresh download would call `adjclose`
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from marketcache.core.columns import PRICE_COLUMNS

if TYPE_CHECKING:  # the store side of this module stays light; the arithmetic imports them
    import numpy as np
    import pandas as pd

ADJUST_MODES = ("none", "splits", "all")


@dataclass(frozen=True)
class Split:
    date: str  # YYYY-MM-DD, the first session traded on the new basis
    ratio: float  # new shares per old share (4.0 for 4-for-1, 0.1 for 1-for-10)
    source: str = ""
    first_seen: str = ""


@dataclass(frozen=True)
class Dividend:
    ex_date: str  # YYYY-MM-DD
    amount: float  # per share, as traded on the ex date
    source: str = ""
    first_seen: str = ""


@dataclass
class CorporateActions:
    """Every split and dividend known for one symbol, and how far each source was checked."""

    symbol: str = ""
    splits: list[Split] = field(default_factory=list)
    dividends: list[Dividend] = field(default_factory=list)
    checked: dict[str, str] = field(default_factory=dict)  # source -> checked through (ISO)

    @property
    def empty(self) -> bool:
        return not self.splits and not self.dividends

    def digest(self) -> str:
        """Changes exactly when the actions that adjust prices change."""
        key = [(s.date, s.ratio) for s in self.splits] + [
            (d.ex_date, d.amount) for d in self.dividends
        ]
        return hashlib.sha256(json.dumps(sorted(key)).encode()).hexdigest()[:16]

    def split_on(self, day: pd.Timestamp) -> float | None:
        text = f"{pd.Timestamp(day):%Y-%m-%d}"
        return next((s.ratio for s in self.splits if s.date == text), None)

    def as_json(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol,
            "splits": [vars(s) for s in self.splits],
            "dividends": [vars(d) for d in self.dividends],
            "checked": dict(sorted(self.checked.items())),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CorporateActions:
        return cls(
            symbol=str(data.get("symbol", "")),
            splits=[Split(**s) for s in data.get("splits", [])],
            dividends=[Dividend(**d) for d in data.get("dividends", [])],
            checked={str(k): str(v) for k, v in (data.get("checked") or {}).items()},
        )


def merge_actions(
    known: CorporateActions,
    splits: list[Split],
    dividends: list[Dividend],
    *,
    source: str,
    checked_through: str | None,
    now: str,
) -> tuple[CorporateActions, bool]:
    """Add newly seen actions; returns the union and whether any price-adjusting fact changed.

    An action already known keeps its `first_seen`; a restated amount or ratio replaces it.
    Actions are never forgotten because a later answer lacks them (answers cover windows).
    """
    by_date = {s.date: s for s in known.splits}
    for s in splits:
        old = by_date.get(s.date)
        if old is None or not math.isclose(old.ratio, s.ratio, rel_tol=1e-9):
            by_date[s.date] = Split(s.date, s.ratio, source, old.first_seen if old else now)
    by_ex = {d.ex_date: d for d in known.dividends}
    for d in dividends:
        old_d = by_ex.get(d.ex_date)
        if old_d is None or not math.isclose(old_d.amount, d.amount, rel_tol=1e-6):
            by_ex[d.ex_date] = Dividend(
                d.ex_date, d.amount, source, old_d.first_seen if old_d else now
            )
    checked = dict(known.checked)
    if checked_through is not None:
        checked[source] = max(checked.get(source, ""), checked_through)
    merged = CorporateActions(
        known.symbol,
        sorted(by_date.values(), key=lambda s: s.date),
        sorted(by_ex.values(), key=lambda d: d.ex_date),
        checked,
    )
    return merged, merged.digest() != known.digest()


def _days(ts: pd.Series | pd.DatetimeIndex | np.ndarray) -> np.ndarray:
    import numpy as np
    import pandas as pd

    return np.asarray(pd.DatetimeIndex(ts).as_unit("ns").normalize().asi8)


def _day(text: str) -> int:
    import pandas as pd

    return int(pd.Timestamp(text).as_unit("ns").value)


def split_factors(ts: Any, splits: list[Split]) -> np.ndarray:
    """Per bar: the product of the ratios of every split dated after the bar's session."""
    import numpy as np

    days = _days(ts)
    factor = np.ones(len(days))
    for s in splits:
        factor[days < _day(s.date)] *= s.ratio
    return factor


def dividend_factors(ts: Any, close: np.ndarray, dividends: list[Dividend]) -> np.ndarray:
    """Per bar: prod(1 - A/C) over dividends going ex after the bar (C: last close before ex).

    `close` must be as traded and sorted by `ts`; a dividend before the first bar scales
    nothing, and one whose previous close is unknown or not above the amount is skipped.
    """
    import numpy as np

    days = _days(ts)
    factor = np.ones(len(days))
    for d in dividends:
        ex = _day(d.ex_date)
        before = np.flatnonzero(days < ex)
        if not len(before):
            continue
        prev_close = float(close[before[-1]])
        if not np.isfinite(prev_close) or prev_close <= d.amount:
            continue
        factor[: before[-1] + 1] *= 1.0 - d.amount / prev_close
    return factor


def adj_close(frame: pd.DataFrame, actions: CorporateActions) -> np.ndarray:
    """The close adjusted for every known split and dividend (frame sorted, as traded)."""
    import numpy as np

    close = frame["close"].to_numpy(dtype="float64")
    ts = frame["timestamp"]
    factor = dividend_factors(ts, close, actions.dividends) / split_factors(ts, actions.splits)
    return np.asarray(close * factor)


def adjust(frame: pd.DataFrame, actions: CorporateActions, mode: str) -> pd.DataFrame:
    """Return `frame` (as stored) with prices and volume adjusted as `mode` says."""

    if mode not in ADJUST_MODES:
        from marketcache.errors import UsageError

        raise UsageError(f"adjust={mode!r}: use one of {', '.join(ADJUST_MODES)}")
    if mode == "none" or frame.empty or actions.empty:
        return frame
    out = frame.copy()
    splits = split_factors(out["timestamp"], actions.splits)
    price = 1.0 / splits
    if mode == "all":
        price *= dividend_factors(
            out["timestamp"], out["close"].to_numpy("float64"), actions.dividends
        )
    for col in PRICE_COLUMNS:
        out[col] = out[col].to_numpy("float64") * price
    out["volume"] = out["volume"].to_numpy("float64") * splits
    return out


def to_as_traded(frame: pd.DataFrame, splits: list[Split]) -> pd.DataFrame:
    """Undo a split adjustment: prices * the splits after each bar, volume / the same."""

    if frame.empty or not splits:
        return frame
    out = frame.copy()
    factor = split_factors(out["timestamp"], splits)
    for col in PRICE_COLUMNS:
        out[col] = out[col].to_numpy("float64") * factor
    out["volume"] = out["volume"].to_numpy("float64") / factor
    return out
