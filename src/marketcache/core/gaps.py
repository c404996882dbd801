"""GapDetector: what is missing from the cache and which ranges to ask for. Pure.

Inputs are the calendar's expected bars, the bars already stored, the ranges providers have
already answered empty (`verified_empty`) and how far back providers reach. The output is the
smallest list of ranges to fetch, each within one UTC year, plus the ranges no provider can
reach (to be recorded, not retried every run).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from marketcache.core.timeframes import Timeframe
from marketcache.core.validate import in_sorted

MERGE_BARS = 100  # two holes closer than this many expected bars are fetched as one range
CHUNK_BARS = 50_000  # a fetched range is committed at least this often (memory, crash loss)
# A closed bar may reach a provider's answers late: the newest LATE_BARS expected bars, and
# any bar closed less than LATE_TIME ago, are not yet proof of a hole when an answer lacks them.
LATE_BARS = 2
LATE_TIME = pd.Timedelta(hours=6)


@dataclass(frozen=True)
class Span:
    start: pd.Timestamp
    end: pd.Timestamp  # exclusive

    def as_json(self) -> dict[str, str]:
        return {"start": self.start.isoformat(), "end": self.end.isoformat()}


@dataclass(frozen=True)
class VerifiedEmpty:
    start: pd.Timestamp
    end: pd.Timestamp
    checked_at: pd.Timestamp


@dataclass
class FetchPlan:
    fetch: list[Span] = field(default_factory=list)
    unreachable: list[Span] = field(default_factory=list)
    missing_bars: int = 0

    @property
    def empty(self) -> bool:
        return not self.fetch


def plan_fetch(
    *,
    timeframe: Timeframe,
    wanted: Span,
    expected: pd.DatetimeIndex,
    present: np.ndarray,
    verified_empty: Iterable[VerifiedEmpty] = (),
    now: pd.Timestamp,
    recheck_after: pd.Timedelta = pd.Timedelta(days=7),
    overlap_bars: int = 1,
    earliest: pd.Timestamp | None = None,
    full_refresh: bool = False,
    chunk_bars: int = CHUNK_BARS,
) -> FetchPlan:
    """The ranges to fetch so that every expected bar in `wanted` is stored or known empty."""
    plan = FetchPlan()
    exp = expected.asi8 if len(expected) else np.zeros(0, dtype=np.int64)
    have = np.asarray(present, dtype="datetime64[ns]").astype(np.int64)
    have.sort()
    if full_refresh:
        spans = [wanted] if len(exp) else []
    else:
        missing = ~in_sorted(exp, have)
        fresh_after = (now - recheck_after).value
        for ve in verified_empty:
            if ve.checked_at.value >= fresh_after:
                missing &= ~((exp >= ve.start.value) & (exp < ve.end.value))
        plan.missing_bars = int(missing.sum())
        spans = _runs(exp, missing, timeframe, wanted.end)
        if spans and len(have) and overlap_bars > 0:
            last_have = pd.Timestamp(have[-1])
            tail = spans[-1]
            if tail.start > last_have:  # extending the series: re-ask for its last bars too
                back = exp[exp <= have[-1]][-overlap_bars:]
                spans[-1] = Span(pd.Timestamp(back[0]) if len(back) else tail.start, tail.end)
    if earliest is not None:
        reachable = []
        for span in spans:
            if span.end <= earliest:
                plan.unreachable.append(span)
            elif span.start < earliest:
                plan.unreachable.append(Span(span.start, earliest))
                reachable.append(Span(earliest, span.end))
            else:
                reachable.append(span)
        spans = reachable
    plan.fetch = [
        chunk
        for span in spans
        for piece in split_by_year(span)
        for chunk in split_by_bars(piece, timeframe, chunk_bars)
    ]
    return plan


def _runs(
    exp: np.ndarray, missing: np.ndarray, timeframe: Timeframe, limit: pd.Timestamp
) -> list[Span]:
    """Contiguous runs of missing expected bars, holes closer than MERGE_BARS joined."""
    idx = np.flatnonzero(missing)
    if not len(idx):
        return []
    breaks = np.flatnonzero(np.diff(idx) > MERGE_BARS)
    starts = np.r_[idx[0], idx[breaks + 1]]
    ends = np.r_[idx[breaks], idx[-1]]
    spans = []
    for s, e in zip(starts, ends, strict=True):
        end = min(timeframe.next_open(pd.Timestamp(exp[e])), limit)
        spans.append(Span(pd.Timestamp(exp[s]), end))
    return spans


def split_by_bars(span: Span, timeframe: Timeframe, bars: int) -> list[Span]:
    """Cut a span into pieces of at most `bars` bars, committed one after another."""
    if timeframe.name in ("1w", "1M"):
        return [span]
    width = pd.Timedelta(minutes=timeframe.minutes * bars)
    pieces = []
    start = span.start
    while start < span.end:
        end = min(span.end, start + width)
        pieces.append(Span(start, end))
        start = end
    return pieces


def split_by_year(span: Span) -> list[Span]:
    """Cut a span at UTC year boundaries, so each piece is committed to one year file."""
    pieces = []
    start = span.start
    while start < span.end:
        next_year = pd.Timestamp(start.year + 1, 1, 1)
        end = min(span.end, next_year)
        pieces.append(Span(start, end))
        start = end
    return pieces


def settled_before(calendar: str, timeframe: Timeframe, now: pd.Timestamp) -> pd.Timestamp:
    """Bars opening before this have had time to be published: an answer through them that
    lacks one means the bar is absent (a halt, a delisting, data that stops), not late."""
    from marketcache.core.calendars import expected_bars

    by_time = timeframe.floor(now - LATE_TIME)  # every bar before it closed LATE_TIME ago
    # enough calendar to find the newest LATE_BARS bars across weekends and holidays
    window = max(pd.Timedelta(minutes=timeframe.minutes) * LATE_BARS * 4, pd.Timedelta(days=15))
    recent = expected_bars(calendar, timeframe, by_time - window, timeframe.floor(now))
    by_count = recent[-LATE_BARS] if len(recent) >= LATE_BARS else by_time - window
    return min(by_time, by_count)


def unanswered(
    span: Span,
    expected: pd.DatetimeIndex,
    present: np.ndarray,
    answered: np.ndarray,
    settled: pd.Timestamp,
    newest: pd.Timestamp | None = None,
) -> tuple[list[Span], Span | None]:
    """The expected bars of `span` that are neither stored nor in the provider's answer:
    the runs of them before the newest bar known (stored, answered, or `newest`: committed
    earlier in the run), and the end hole after it.

    The end hole holds only bars opened before `settled`: the newest bars may be late rather
    than absent, and are asked for again on the next run; older ones mean the provider's data
    stops (a delisting, a halt) and are a hole like any other.
    """
    have = np.union1d(
        np.asarray(present, dtype="datetime64[ns]").astype(np.int64),
        np.asarray(answered, dtype="datetime64[ns]").astype(np.int64),
    )
    known = max(
        int(have[-1]) if len(have) else np.iinfo(np.int64).min,
        newest.value if newest is not None else np.iinfo(np.int64).min,
    )
    exp = expected[(expected >= span.start) & (expected < span.end)].asi8
    tail = exp[(exp > known) & (exp < settled.value)]
    end = Span(pd.Timestamp(tail[0]), _after(expected, tail[-1], span.end)) if len(tail) else None
    exp = exp[exp < known]
    missing = ~np.isin(exp, have)
    if not missing.any():
        return [], end
    idx = np.flatnonzero(missing)
    breaks = np.flatnonzero(np.diff(idx) > 1)
    starts, ends = np.r_[idx[0], idx[breaks + 1]], np.r_[idx[breaks], idx[-1]]
    holes = []
    for s, e in zip(starts, ends, strict=True):
        stop = pd.Timestamp(exp[e + 1]) if e + 1 < len(exp) else _after(expected, exp[e], span.end)
        holes.append(Span(pd.Timestamp(exp[s]), stop))
    return holes, end


def _after(expected: pd.DatetimeIndex, stamp: int, limit: pd.Timestamp) -> pd.Timestamp:
    """Where a hole ending at expected bar `stamp` stops: the next expected bar, else `limit`."""
    later = expected.asi8[expected.asi8 > stamp]
    return pd.Timestamp(later[0]) if len(later) and later[0] < limit.value else limit
