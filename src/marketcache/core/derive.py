"""Derived timeframes: base bars → calendar buckets → one bar per complete bucket. Pure.

Buckets follow the calendar: exchange sessions for stocks (an intraday bucket starts at the
session open and every bar length after it, the last one ending at the close; a derived `1d`
is the session, early closes included), the UTC grid for crypto and FX, weeks from Monday and
calendar months from the session dates. A bucket is complete when each base bar the calendar
expects in it is stored or verified empty (a crypto minute with no trades); a derived bar
aggregates the base bars that exist (open first, high max, low min, close last, volume sum).
Incomplete buckets are reported, never stored as partial bars.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from marketcache.core.calendars import ALWAYS_OPEN, FX_WEEK, expected_bars, session_opens
from marketcache.core.timeframes import Timeframe

INCOMPLETE = "base timeframe incomplete"


@dataclass
class Derived:
    frame: pd.DataFrame  # the derived bars of complete buckets, canonical columns
    incomplete: list[tuple[pd.Timestamp, pd.Timestamp]] = field(default_factory=list)


def check_derivable(base: Timeframe, target: Timeframe) -> str | None:
    """Why `target` cannot be derived from `base` (None: it can)."""
    if base.name == target.name:
        return f"{target} is the base timeframe itself"
    if not base.is_intraday and target.is_intraday:
        return f"{target} is finer than the base {base}"
    if base.is_intraday and target.is_intraday and target.minutes % base.minutes:
        return f"{target} is not a whole number of {base} bars"
    if base.name in ("1w", "1M") or (base.name == "1d" and target.name == "1d"):
        return f"{target} cannot be built from {base}"
    return None


def buckets(calendar: str, target: Timeframe, stamps: np.ndarray) -> np.ndarray:
    """The bucket (target bar stamp) of each UTC-naive stamp (datetime64[ns])."""
    ts = pd.DatetimeIndex(stamps)
    if not len(ts):
        return np.zeros(0, dtype="datetime64[ns]")
    lo, hi = ts.min() - pd.Timedelta(days=8), ts.max() + pd.Timedelta(days=8)
    if target.is_intraday:
        grid = expected_bars(calendar, target, lo, hi).asi8
        pos = np.searchsorted(grid, ts.asi8, side="right") - 1
        out = np.where(pos >= 0, grid[np.clip(pos, 0, None)], np.iinfo(np.int64).min)
        return out.astype("datetime64[ns]")
    days = _session_dates(calendar, ts)
    if target.name == "1w":
        days = days - pd.to_timedelta(np.asarray(days.day_of_week), unit="D")
    elif target.name == "1M":
        days = pd.DatetimeIndex(days.to_period("M").to_timestamp())
    return np.asarray(days.as_unit("ns").to_numpy("datetime64[ns]"))


def _session_dates(calendar: str, ts: pd.DatetimeIndex) -> pd.DatetimeIndex:
    """The session date of each stamp: the UTC day for 24/7 and FX (and for daily stamps,
    already session dates), else the exchange session that opened last before it."""
    if calendar in (ALWAYS_OPEN, FX_WEEK) or (ts == ts.normalize()).all():
        return ts.normalize()
    opens, sessions = session_opens(calendar, ts.min() - pd.Timedelta(days=8), ts.max())
    pos = np.searchsorted(opens, ts.asi8, side="right") - 1
    return pd.DatetimeIndex(sessions[np.clip(pos, 0, None)])


def derive(
    base_bars: pd.DataFrame,
    *,
    calendar: str,
    base: Timeframe,
    target: Timeframe,
    start: pd.Timestamp,
    end: pd.Timestamp,
    verified_empty: list[tuple[pd.Timestamp, pd.Timestamp]] | None = None,
) -> Derived:
    """The target bars whose buckets start in [start, end), from the base bars around them."""
    wanted = expected_bars(calendar, target, start, end)
    if not len(wanted):
        return Derived(_empty())
    span_lo = wanted.min()
    if not target.is_intraday and calendar not in (ALWAYS_OPEN, FX_WEEK):
        span_lo -= pd.Timedelta(days=1)  # a session east of UTC opens the UTC day before
    span_hi = _bucket_end(calendar, target, wanted.max())
    expected = expected_bars(calendar, base, span_lo, span_hi)
    exp_bucket = buckets(calendar, target, expected.to_numpy("datetime64[ns]"))
    need = pd.Series(1, index=exp_bucket).groupby(level=0).size()
    bars = base_bars[(base_bars["timestamp"] >= span_lo) & (base_bars["timestamp"] < span_hi)]
    have_stamps = bars["timestamp"].to_numpy("datetime64[ns]")
    empty = np.zeros(len(expected), dtype=bool)
    for lo, hi in verified_empty or []:
        empty |= (expected >= lo) & (expected < hi)
    covered = np.isin(expected.asi8, have_stamps.astype(np.int64)) | empty
    done = pd.Series(covered, index=exp_bucket).groupby(level=0).sum()
    complete = set(need.index[(done.reindex(need.index, fill_value=0) >= need).to_numpy()])
    frame = _aggregate(bars, calendar, target)
    keep = frame["timestamp"].isin(list(complete)) & frame["timestamp"].isin(wanted)
    incomplete = [
        (pd.Timestamp(b), _bucket_end(calendar, target, pd.Timestamp(b)))
        for b in wanted.to_numpy("datetime64[ns]")
        if pd.Timestamp(b) not in complete
    ]
    return Derived(frame[keep.to_numpy()].reset_index(drop=True), _merge(incomplete))


def _aggregate(bars: pd.DataFrame, calendar: str, target: Timeframe) -> pd.DataFrame:
    if bars.empty:
        return _empty()
    key = buckets(calendar, target, bars["timestamp"].to_numpy("datetime64[ns]"))
    grouped = bars.assign(bucket=key).groupby("bucket", sort=True)
    out = pd.DataFrame(
        {
            "timestamp": grouped["timestamp"].first().index.to_numpy("datetime64[ns]"),
            "open": grouped["open"].first().to_numpy(),
            "high": grouped["high"].max().to_numpy(),
            "low": grouped["low"].min().to_numpy(),
            "close": grouped["close"].last().to_numpy(),
            "volume": grouped["volume"].sum().to_numpy(),
        }
    )
    return out


def _bucket_end(calendar: str, target: Timeframe, stamp: pd.Timestamp) -> pd.Timestamp:
    """Where the bucket that starts at `stamp` ends (exclusive, UTC)."""
    if target.is_intraday:
        return stamp + pd.Timedelta(minutes=target.minutes)
    if calendar in (ALWAYS_OPEN, FX_WEEK):
        return target.next_open(stamp)
    nxt = target.next_open(stamp)  # the next session date's open at the latest
    return nxt + pd.Timedelta(days=1)


def _merge(
    spans: list[tuple[pd.Timestamp, pd.Timestamp]],
) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    out: list[tuple[pd.Timestamp, pd.Timestamp]] = []
    for lo, hi in spans:
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _empty() -> pd.DataFrame:
    from marketcache.core.frames import empty_frame

    return empty_frame()
