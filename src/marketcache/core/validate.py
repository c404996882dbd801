"""OHLCV validation: a frame in, a ValidationResult with a quality score out. Pure, no I/O.

The checks feed the additive counts of `quality.py`, whose docstring gives the score formula
(kept light for metadata-only paths); a year's score can be updated from newly appended rows
alone (see `TailContext`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from marketcache.core.calendars import expected_bars
from marketcache.core.columns import BASE_COLUMNS, PRICE_COLUMNS
from marketcache.core.quality import TailContext, ValidationCounts, score_counts
from marketcache.core.symbols import AssetClass
from marketcache.core.timeframes import Timeframe

REQUIRED_COLUMNS = tuple(BASE_COLUMNS)
JUMP_THRESHOLDS = {AssetClass.STOCK: 0.20, AssetClass.CRYPTO: 0.50, AssetClass.FX: 0.10}
STALE_RUN = 20  # this many consecutive unchanged closes with volume make a stale run
MAX_ERRORS = 20


@dataclass
class ValidationResult:
    is_valid: bool
    score: float
    breakdown: dict[str, float]
    counts: ValidationCounts
    errors: list[str] = field(default_factory=list)
    tail: TailContext | None = None

    @property
    def gaps(self) -> int:
        return self.counts.gap_runs

    @property
    def duplicates(self) -> int:
        return self.counts.duplicates


class OHLCVValidator:
    """Checks a frame of bars of one symbol and timeframe against its calendar."""

    def __init__(
        self,
        timeframe: Timeframe,
        calendar: str,
        asset_class: AssetClass = AssetClass.STOCK,
        *,
        jump_threshold: float | None = None,
        stale_run: int = STALE_RUN,
        splits: dict[str, float] | None = None,
    ) -> None:
        self.splits = splits or {}  # session date (YYYY-MM-DD) -> ratio of a known split
        self.timeframe = timeframe
        self.calendar = calendar
        self.asset_class = asset_class
        self.jump_threshold = jump_threshold or JUMP_THRESHOLDS[asset_class]
        self.stale_run = stale_run

    def validate(self, df: pd.DataFrame, context: TailContext | None = None) -> ValidationResult:
        """Validate `df`; with `context`, the counts cover only the bars after context."""
        errors: list[str] = []
        missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
        if missing:
            errors.append(f"missing columns: {', '.join(missing)}")
            counts = ValidationCounts(rows=len(df), bad_rows=len(df))
            _, breakdown = score_counts(counts)
            return ValidationResult(False, 0.0, breakdown, counts, errors)
        c = ValidationCounts(rows=len(df))
        if not len(df):
            score, breakdown = score_counts(c)
            return ValidationResult(True, 1.0, breakdown, c, errors, context)

        ts = _timestamps(df["timestamp"], errors)
        o, h, lo, cl, v = (_floats(df[col], col, errors) for col in (*PRICE_COLUMNS, "volume"))
        prices = np.column_stack([o, h, lo, cl])
        nonfinite = ~np.isfinite(prices).all(axis=1) | ~np.isfinite(v) | np.isnat(ts)
        with np.errstate(invalid="ignore"):
            nonpositive = np.asarray((prices <= 0).any(axis=1))
            negvol = v < 0
            ohlc = np.asarray((h < np.maximum(o, cl)) | (lo > np.minimum(o, cl)) | (h < lo))
        bad = nonfinite | nonpositive | negvol | ohlc
        c.nonfinite = int(nonfinite.sum())
        c.nonpositive_price = int(nonpositive.sum())
        c.negative_volume = int(negvol.sum())
        c.ohlc_violations = int(ohlc.sum())
        c.bad_rows = int(bad.sum())
        _note(errors, c.nonfinite, "rows with missing or non-finite values", ts, nonfinite)
        _note(errors, c.nonpositive_price, "rows with a price <= 0", ts, nonpositive)
        _note(errors, c.negative_volume, "rows with negative volume", ts, negvol)
        _note(errors, c.ohlc_violations, "rows breaking high >= open/close >= low", ts, ohlc)

        ts_i = ts.astype("int64")
        valid_ts = ~np.isnat(ts)
        if context is not None:
            prev = pd.Timestamp(context.timestamp).value
            ts_i_all = np.concatenate([np.array([prev], dtype=np.int64), ts_i])
        else:
            ts_i_all = ts_i
        step = np.diff(ts_i_all)
        decreasing = np.asarray(step < 0) if context is not None else np.r_[False, step < 0]
        is_sorted = not decreasing.any() and bool(valid_ts.all())
        if is_sorted:
            c.duplicates = int((np.diff(ts_i) == 0).sum())
        else:
            c.duplicates = int(valid_ts.sum() - len(np.unique(ts_i[valid_ts])))
        if context is not None:
            c.duplicates += int((ts_i == ts_i_all[0]).sum())
        dup_mask = _dup_mask(ts_i) if c.duplicates else np.zeros(len(ts_i), dtype=bool)
        out_of_order = decreasing & ~dup_mask  # a repeated timestamp counts once, as duplicate
        c.out_of_order = int(out_of_order.sum())
        _note(errors, c.out_of_order, "timestamps out of order", ts, out_of_order)
        _note(errors, c.duplicates, "duplicate timestamps", ts, dup_mask)

        good = ~bad
        order = np.arange(len(ts_i)) if is_sorted else np.argsort(ts_i, kind="stable")
        sorted_ts = ts_i[order]
        sorted_good = good[order]
        keep = sorted_good.copy()
        keep[1:] &= sorted_ts[1:] != sorted_ts[:-1]
        uniq = sorted_ts[keep]
        closes = cl[order][keep]
        vols = v[order][keep]
        highs, lows = h[order][keep], lo[order][keep]

        if len(uniq):
            first = pd.Timestamp(context.timestamp) if context else pd.Timestamp(uniq[0])
            last = pd.Timestamp(uniq[-1])
            if context is not None:
                first = first + pd.Timedelta(1, "ns")
            expected = expected_bars(
                self.calendar, self.timeframe, first, last + pd.Timedelta(1, "ns")
            )
            exp_i = expected.asi8
            present_mask = in_sorted(exp_i, uniq)
            c.expected_bars = len(exp_i)
            c.present_bars = int(present_mask.sum())
            c.missing_bars = c.expected_bars - c.present_bars
            c.off_calendar = len(uniq) - c.present_bars
            missing_mask = ~present_mask
            c.gap_runs = int((missing_mask[1:] & ~missing_mask[:-1]).sum() + missing_mask[:1].sum())
            if c.gap_runs:
                errors.append(
                    f"{c.missing_bars} expected bars missing in {c.gap_runs} gaps"
                    f" (first near {pd.Timestamp(exp_i[missing_mask][0])})"
                )

        prev_close = context.close if context is not None else None
        chain = closes if prev_close is None else np.concatenate([[prev_close], closes])
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = chain[1:] / chain[:-1]
        jumped = np.abs(ratio - 1.0) > self.jump_threshold
        at_bar = uniq if prev_close is not None else uniq[1:]  # the bar each ratio ends on
        if jumped.any():
            jumped &= ~self._explained_by_split(at_bar, ratio)
            split_like = jumped & _split_sized(ratio)
            c.split_like_jumps = int(split_like.sum())
            if c.split_like_jumps:
                at = pd.Timestamp(at_bar[split_like][0])
                errors.append(
                    f"{c.split_like_jumps} jumps of a split's size with no known split"
                    f" (first at {at:%Y-%m-%d}, x{ratio[split_like][0]:.4g}): a corporate action"
                    " may be missing or prices mix bases; run validate --against-source"
                )
        c.jumps = int(jumped.sum())
        if c.jumps:
            errors.append(f"{c.jumps} bar-to-bar moves above {self.jump_threshold:.0%}")

        if prev_close is None:
            unchanged = np.r_[False, closes[1:] == closes[:-1]]
        else:
            unchanged = chain[1:] == chain[:-1]
        run = _run_lengths(unchanged & (vols > 0), start=context.stale_run if context else 0)
        at_threshold = int((run == self.stale_run).sum())
        c.stale_bars = at_threshold * self.stale_run + int((run > self.stale_run).sum())
        if c.stale_bars:
            errors.append(f"{c.stale_bars} bars in runs of {self.stale_run}+ unchanged closes")

        moved = (highs != lows) | ~unchanged
        if prev_close is None and len(moved):
            moved[0] = highs[0] != lows[0]
        c.zero_volume_moves = int(((vols == 0) & moved).sum())
        if c.zero_volume_moves:
            errors.append(f"{c.zero_volume_moves} bars with zero volume while the price moved")

        tail = None
        if len(uniq):
            tail = TailContext(
                timestamp=pd.Timestamp(uniq[-1]).isoformat(),
                close=float(closes[-1]),
                stale_run=int(run[-1]) if len(run) else 0,
            )
        elif context is not None:
            tail = context
        score, breakdown = score_counts(c)
        is_valid = c.bad_rows == 0 and c.duplicates == 0 and c.out_of_order == 0
        return ValidationResult(is_valid, score, breakdown, c, errors[:MAX_ERRORS], tail)

    def _explained_by_split(self, stamps: np.ndarray, ratio: np.ndarray) -> np.ndarray:
        """Jumps on a known split's session whose size matches that split (within 35 %)."""
        out = np.zeros(len(ratio), dtype=bool)
        if not self.splits or not len(stamps):
            return out
        days = pd.DatetimeIndex(stamps).strftime("%Y-%m-%d")
        for i, day in enumerate(days):
            r = self.splits.get(day)
            if r is not None and np.isfinite(ratio[i]) and abs(ratio[i] * r - 1.0) < 0.35:
                out[i] = True
        return out


SPLIT_SIZES = np.array([2, 3, 4, 5, 7, 8, 10, 15, 20, 1.5, 2.5])


def _split_sized(ratio: np.ndarray) -> np.ndarray:
    """Close-to-close ratios within 2 % of a usual split or reverse split (1/r or r)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.asarray(ratio, dtype="float64")[:, None]
        near = (np.abs(r * SPLIT_SIZES - 1.0) < 0.02) | (np.abs(r / SPLIT_SIZES - 1.0) < 0.02)
    return np.asarray(near.any(axis=1))


def unfilled_bars(
    calendar: str,
    timeframe: Timeframe,
    missing_ranges: list[dict[str, Any]],
    first: pd.Timestamp | None,
    last: pd.Timestamp | None,
) -> int:
    """Expected bars of `missing_ranges` that lie outside [first, last] (the stored span,
    whose holes the validator already counts); with nothing stored, all of them."""
    found: list[np.ndarray] = []
    for entry in missing_ranges:
        exp = expected_bars(
            calendar, timeframe, pd.Timestamp(entry["start"]), pd.Timestamp(entry["end"])
        ).asi8
        if first is not None and last is not None:
            exp = exp[(exp < first.value) | (exp > last.value)]
        found.append(exp)
    return len(np.unique(np.concatenate(found))) if found else 0


def _timestamps(col: pd.Series, errors: list[str]) -> np.ndarray:
    try:
        ts = pd.to_datetime(col, errors="coerce")
    except (TypeError, ValueError):
        errors.append("timestamp column is not made of dates")
        return np.full(len(col), np.datetime64("NaT"), dtype="M8[ns]")
    if getattr(ts.dt, "tz", None) is not None:
        ts = ts.dt.tz_convert("UTC").dt.tz_localize(None)
    return ts.to_numpy(dtype="M8[ns]")


def _floats(col: pd.Series, name: str, errors: list[str]) -> np.ndarray:
    if pd.api.types.is_float_dtype(col.dtype) or pd.api.types.is_integer_dtype(col.dtype):
        return col.to_numpy(dtype="float64", na_value=np.nan)
    errors.append(f"column '{name}' is {col.dtype}, not numeric")
    return pd.to_numeric(col, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)


def sound_rows(frame: pd.DataFrame) -> np.ndarray:
    """Rows whose values can be stored: finite, prices > 0, volume >= 0, OHLC consistent."""
    prices = frame[list(PRICE_COLUMNS)].to_numpy(dtype="float64", na_value=np.nan)
    vol = frame["volume"].to_numpy(dtype="float64", na_value=np.nan)
    with np.errstate(invalid="ignore"):
        return np.asarray(
            np.isfinite(prices).all(axis=1)
            & np.isfinite(vol)
            & (prices > 0).all(axis=1)
            & (vol >= 0)
            & (prices[:, 1] >= np.maximum(prices[:, 0], prices[:, 3]))
            & (prices[:, 2] <= np.minimum(prices[:, 0], prices[:, 3]))
        )


def in_sorted(needles: np.ndarray, sorted_hay: np.ndarray) -> np.ndarray:
    """needles[i] in sorted_hay, for a sorted unique haystack (O(n log m), no sort)."""
    if not len(sorted_hay):
        return np.zeros(len(needles), dtype=bool)
    pos = np.searchsorted(sorted_hay, needles)
    pos[pos == len(sorted_hay)] = len(sorted_hay) - 1
    return np.asarray(sorted_hay[pos] == needles)


def _dup_mask(ts_i: np.ndarray) -> np.ndarray:
    return pd.Series(ts_i).duplicated(keep="first").to_numpy()


def _run_lengths(flags: np.ndarray, start: int = 0) -> np.ndarray:
    """For each position, how many consecutive True end there (0 where False)."""
    if not len(flags):
        return np.zeros(0, dtype=np.int64)
    idx = np.arange(1, len(flags) + 1)
    resets = np.where(~flags, idx, 0)
    last_reset = np.maximum.accumulate(resets)
    run = np.where(flags, idx - last_reset, 0)
    if start:
        leading = last_reset == 0
        run[leading & flags] += start
    return run


def _note(errors: list[str], n: int, what: str, ts: np.ndarray, mask: np.ndarray) -> None:
    if n:
        where = ts[mask]
        first = (
            f" (first at {pd.Timestamp(where[0])})" if len(where) and not np.isnat(where[0]) else ""
        )
        errors.append(f"{n} {what}{first}")
