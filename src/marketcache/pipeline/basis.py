"""One price basis per series, kept at the moment bars arrive.

- Ask a provider that reports corporate actions from where its actions were last checked, so
  no split or dividend between two runs goes unseen (`actions_window`).
- Compare the re-asked bars with the stored ones; on a disagreement fetch the whole series
  again from that provider rather than splice two bases (`check_seam`).
- Record the answer's actions and give the bars their `adj_close` (`with_adj_close`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from marketcache.core.actions import adj_close
from marketcache.core.gaps import Span
from marketcache.core.timeframes import Timeframe
from marketcache.errors import ProviderError
from marketcache.pipeline.answers import Outcome
from marketcache.pipeline.jobs import Job, JobResult
from marketcache.providers.base import Events, Provider

if TYPE_CHECKING:
    from marketcache.cache.facade import UnifiedCache
    from marketcache.cache.series import Series
    from marketcache.pipeline.answers import Answers

# Re-asked bars that differ from the stored ones by more than this (relative, any price) mean
# the two answers are not on one basis (a split applied to one side, another provider's
# prices): the series is fetched again from that provider instead of being spliced.
SEAM_TOLERANCE = 0.005


def actions_window(
    series: Series, provider: str, reports_actions: bool, span: Span, present: np.ndarray
) -> pd.Timestamp:
    """Where to start asking a provider that reports corporate actions (Yahoo, daily).

    Its answer holds the actions from its start to now. Asking from where that provider's
    actions were last checked (or from the first stored bar, never checked) keeps the
    known actions gap-free, so no dividend between two runs goes unseen — also after a
    night another provider filled. Daily answers are one request however long.
    """
    if not series.adjusts or not reports_actions:
        return span.start
    checked = series.actions().checked.get(provider)
    since = pd.Timestamp(checked) if checked else None
    if since is None and len(present):
        since = pd.Timestamp(np.min(present))
    return min(span.start, since) if since is not None else span.start


def check_seam(
    cache: UnifiedCache,
    provider: Provider,
    job: Job,
    tf: Timeframe,
    span: Span,
    outcome: Outcome,
    present: np.ndarray,
    result: JobResult,
    answers: Answers,
) -> Outcome:
    """Compare re-asked bars with the stored ones; on a disagreement fetch the whole
    stored series again from that provider rather than splice two bases (through the job's
    answers: a provider whose one answer already covers it is not asked twice)."""
    assert outcome.frame is not None and outcome.choice is not None
    frame = outcome.frame
    stamps = frame["timestamp"].to_numpy("datetime64[ns]")
    overlap = stamps[np.isin(stamps, np.asarray(present, dtype="datetime64[ns]"))]
    if not len(overlap):
        return outcome
    stored = cache.get(
        job.symbol, job.timeframe, start=pd.Timestamp(overlap.min()),
        end=pd.Timestamp(overlap.max()) + pd.Timedelta(1, "ns"),
    )  # fmt: skip
    worst, at = seam_difference(stored, frame)
    if worst <= SEAM_TOLERANCE:
        return outcome
    what = (
        f"seam: {outcome.provider} differs from the stored bars by {worst:.1%} at {at}"
        " (another price basis)"
    )
    first = pd.Timestamp(np.min(present))
    sent = provider.sent()
    try:
        fetched = answers.fetch(
            outcome.choice.provider, provider, outcome.choice.symbol, tf, first, span.end
        )
    except ProviderError as exc:
        result.errors.append(f"{what}; fetching the series again failed: {exc}")
        return Outcome(None, "", reason=f"{what}; not spliced")
    finally:
        result.count(outcome.provider, provider.sent() - sent)
    result.notes.append(f"{what}: fetched the series again from {first:%Y-%m-%d}")
    events = fetched.events if fetched.events is not None else outcome.events
    return Outcome(fetched.frame, outcome.provider, choice=outcome.choice, events=events)


def with_actions(
    series: Series, frame: pd.DataFrame, events: Events | None, provider: str
) -> tuple[pd.DataFrame, bool]:
    """Record an answer's corporate actions and give its bars their `adj_close` from every
    action known (the provider's own adjusted close is not kept: it goes stale); a series
    without `adj_close` (intraday, crypto) drops it. True when an adjusting fact changed.
    Shared by populate and `validate --against-source --fix` (restate)."""
    if not series.adjusts:
        return frame.drop(columns="adj_close", errors="ignore"), False
    changed = events is not None and series.record_actions(
        events.splits, events.dividends, source=provider, checked_through=events.checked_through
    )
    return frame.assign(adj_close=adj_close(frame, series.actions())), changed


def with_adj_close(series: Series, outcome: Outcome, result: JobResult) -> pd.DataFrame:
    """`with_actions` for one fetched range of a job, the change noted in its result."""
    assert outcome.frame is not None
    frame, changed = with_actions(series, outcome.frame, outcome.events, outcome.provider)
    if changed:
        result.actions_changed = True
        result.notes.append(f"{outcome.provider}: new corporate actions for {series.symbol}")
    return frame


def seam_difference(stored: pd.DataFrame, fetched: pd.DataFrame) -> tuple[float, str]:
    """The largest relative price difference between bars of both frames at equal times,
    and where it is ("" when they share no bar). Volume is left out: providers count it
    differently; a basis change shows in every price."""
    joined = fetched.merge(stored, on="timestamp", suffixes=("", "_stored"))
    if joined.empty:
        return 0.0, ""
    worst = np.zeros(len(joined))
    for col in ("open", "high", "low", "close"):
        new = joined[col].to_numpy("float64")
        old = joined[f"{col}_stored"].to_numpy("float64")
        with np.errstate(divide="ignore", invalid="ignore"):
            diff = np.abs(new / old - 1.0)
        worst = np.fmax(worst, np.nan_to_num(diff, nan=0.0))
    i = int(np.argmax(worst))
    return float(worst[i]), f"{pd.Timestamp(joined['timestamp'].iloc[i]):%Y-%m-%d %H:%M}"
