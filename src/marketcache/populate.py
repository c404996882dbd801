"""populate: select → detect gaps → fetch (with failover) → validate → write.

One job per symbol × timeframe, run under that pair's lock. Each fetched range lies within one
UTC year and is committed as soon as it arrives, so a run killed after hours keeps what it
fetched. Progress reaches the caller through a callback; nothing here prints.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd

from marketcache.basis import Outcome, actions_window, check_seam, with_adj_close
from marketcache.cache import UnifiedCache
from marketcache.calendars import expected_bars
from marketcache.derive import INCOMPLETE
from marketcache.errors import (
    Conflict,
    LockTimeout,
    MarketCacheError,
    ProviderError,
    ProviderUnreachable,
    RangeUnavailable,
    SymbolNotFound,
    UsageError,
)
from marketcache.gaps import FetchPlan, Span, plan_fetch
from marketcache.jobs import (
    Job,
    JobResult,
    NoProgress,
    PopulateReport,
    PopulateRequest,
    ProgressSink,
)
from marketcache.models import utcnow
from marketcache.providers.base import Provider
from marketcache.providers.registry import build_providers
from marketcache.selector import Choice, select
from marketcache.symbols import AssetClass
from marketcache.timeframes import Timeframe

OVERLAP_BARS = {AssetClass.CRYPTO: 1, AssetClass.FX: 1, AssetClass.STOCK: 3}
NO_SESSION = "the provider returned no bar for a session the calendar expects"


def _bars_in(spans: list[Span], expected: pd.DatetimeIndex) -> int:
    """Expected bars inside the spans to fetch (what the progress bar counts)."""
    stamps = expected.asi8
    return sum(
        int(np.searchsorted(stamps, s.end.value) - np.searchsorted(stamps, s.start.value))
        for s in spans
    )


# ---- running -------------------------------------------------------------------------------


class Cancelled(BaseException):
    """Raised inside a worker when the run was interrupted: it stops between two ranges."""


def run_populate(
    cache: UnifiedCache,
    jobs: list[Job],
    request: PopulateRequest,
    *,
    progress: ProgressSink | None = None,
    providers: dict[str, Provider] | None = None,
    report: PopulateReport | None = None,
) -> PopulateReport:
    """Run every job (`request.workers` at a time); one failure never stops the others.

    Results land in `report` as jobs finish, so a caller interrupted (KeyboardInterrupt or a
    signal raised in the main thread) still holds the partial report; workers stop after the
    range they are committing, and everything committed is kept.
    """
    sink = progress or NoProgress()
    pool = providers or build_providers(cache.settings, cache.state_dir)
    report = report if report is not None else PopulateReport([])
    report.dry_run, report.started_at = request.dry_run, utcnow().isoformat()
    runner = Runner(cache, pool, request, sink)
    try:  # derived timeframes after every base job: they read what those committed
        for phase in ([j for j in jobs if not j.derive_from], [j for j in jobs if j.derive_from]):
            _run_phase(runner, phase, request.workers, report)
    finally:
        report.finished_at = utcnow().isoformat()
        report.unreachable = dict(runner.down)
        report.warnings += [w for provider in pool.values() for w in provider.take_warnings()]
    return report


def _run_phase(runner: Runner, jobs: list[Job], workers: int, report: PopulateReport) -> None:
    if workers > 1 and len(jobs) > 1:
        executor = ThreadPoolExecutor(max_workers=workers)
        try:
            futures = [executor.submit(runner.run, job) for job in jobs]
            for future in futures:
                report.results.append(future.result())
        except BaseException:
            runner.cancel.set()
            executor.shutdown(wait=True, cancel_futures=True)
            raise
        executor.shutdown()
    else:
        for job in jobs:
            report.results.append(runner.run(job))


class Runner:
    def __init__(
        self,
        cache: UnifiedCache,
        providers: dict[str, Provider],
        request: PopulateRequest,
        sink: ProgressSink,
    ) -> None:
        self.cache = cache
        self.providers = dict(providers)
        self.request = request
        self.sink = sink
        self.capabilities = {n: p.capabilities for n, p in providers.items()}
        self.usable = {n: p.available() for n, p in providers.items()}
        # circuit breaker: a provider whose host cannot be resolved or refuses connections is
        # down for the rest of the run (the first failure says why); the chain fails over
        self.down: dict[str, str] = {}
        self._down_lock = threading.Lock()
        self.cancel = threading.Event()

    def run(self, job: Job) -> JobResult:
        result = JobResult(job.symbol, job.timeframe)
        self.sink.note(f"{job.symbol} {job.timeframe}")
        try:
            self._run(job, result)
            if result.actions_changed:  # other daily series of the symbol, each under its lock
                for tf in self.cache.list_timeframes(job.symbol):
                    if tf != job.timeframe and self.cache.readjust(job.symbol, tf):
                        result.notes.append(f"re-adjusted {job.symbol} {tf} for new actions")
        except LockTimeout as exc:
            result.status = "locked"
            result.errors.append(str(exc))
        except UsageError as exc:
            result.status = "failed"
            result.errors.append(str(exc))
        except MarketCacheError as exc:
            result.status = "failed"
            result.errors.append(str(exc))
        except Exception as exc:  # a bug must not stop the other symbols; it is reported
            result.status = "failed"
            result.errors.append(f"internal error {type(exc).__name__}: {exc}")
        self.sink.advance(f"{job.symbol} {job.timeframe}")
        return result

    def _run(self, job: Job, result: JobResult) -> None:
        cache, tf = self.cache, Timeframe(job.timeframe)
        chain = (
            self._derived(job)
            if job.derive_from
            else select(
                job.symbol,
                job.timeframe,
                cache.settings,
                self.capabilities,
                self.usable,
                forced=self.request.provider,
            )
        )
        if not chain:
            raise UsageError(
                f"no provider can serve {job.symbol} {job.timeframe}: check the selection "
                "rules, the provider capabilities and API keys"
            )
        if self.request.dry_run:  # reads only: no lock, no folder, no file
            planned = self._plan(job, tf, chain, result, writes=False)
            if planned is not None:
                self._plan_only(planned[0], chain, result)
            return
        for attempt in (1, 2):
            try:
                if not self._locked(job, tf, chain, result):
                    return
                break
            except Conflict as exc:  # object storage: another writer committed first
                if attempt == 2:
                    raise
                result.notes.append(f"re-planned from the newer state ({exc})")
        self._summarise(job, result)

    def _locked(self, job: Job, tf: Timeframe, chain: list[Choice], result: JobResult) -> bool:
        """Plan and fetch under the series lock; False when there was nothing to do."""
        with self.cache.lock(job.symbol, job.timeframe):
            planned = self._plan(job, tf, chain, result, writes=True)
            if planned is None:
                return False
            plan, now, expected, present = planned
            self.sink.plan(f"{job.symbol} {job.timeframe}", _bars_in(plan.fetch, expected))
            self._execute(job, tf, plan, chain, result, now, expected, present)
            readjusted = self.cache.readjust(job.symbol, job.timeframe)
            if readjusted:
                redone = ", ".join(map(str, readjusted))
                result.notes.append(f"adj_close recomputed for {redone} (corporate actions)")
        return True

    def _derived(self, job: Job) -> list[Choice]:
        """The one-provider chain of a derived job: the cache's own base bars."""
        from marketcache.providers.derived import PREFIX, DerivedProvider

        name = PREFIX + str(job.derive_from)
        with self._down_lock:
            if name not in self.providers:
                provider = DerivedProvider(self.cache, str(job.derive_from))
                self.providers[name] = provider
                self.capabilities[name] = provider.capabilities
                self.usable[name] = True
        return [Choice(name, job.symbol)]

    def _plan(
        self, job: Job, tf: Timeframe, chain: list[Choice], result: JobResult, *, writes: bool
    ) -> tuple[FetchPlan, pd.Timestamp, pd.DatetimeIndex, np.ndarray] | None:
        """What to fetch for `job` (None: nothing, the range ends before the open bar).

        With `writes` (under the lock) stale temp files go and corrupt years are moved aside
        first; without, corrupt years are only left out."""
        cache = self.cache
        profile = cache.profile(job.symbol)
        if writes:
            for stale in cache.remove_stale_temp_files(job.symbol, job.timeframe):
                result.notes.append(f"removed {stale}, left by an interrupted run")
        now = utcnow()
        end = min(job.end, tf.floor(now))  # the bar at floor(now) is still open
        if job.start >= end:
            result.status = "up-to-date"
            return None
        wanted = Span(job.start, end)
        years = range(wanted.start.year, (end - pd.Timedelta(1, "ns")).year + 1)
        expected = expected_bars(profile.calendar, tf, wanted.start, wanted.end)
        state = cache.series_state(job.symbol, job.timeframe, years, expected, repair=writes)
        result.notes += state.notes
        present, verified = state.present, state.verified_empty
        plan = plan_fetch(
            timeframe=tf,
            wanted=wanted,
            expected=expected,
            present=present,
            verified_empty=verified,
            now=now,
            recheck_after=pd.Timedelta(days=cache.settings.options.verified_empty_recheck_days),
            overlap_bars=OVERLAP_BARS[profile.asset_class],
            earliest=_reach(chain, self.capabilities, job.timeframe, now),
            full_refresh=self.request.full_refresh,
        )
        return plan, now, expected, present

    def _plan_only(self, plan: FetchPlan, chain: list[Choice], result: JobResult) -> None:
        result.status = "planned"
        result.providers = [c.provider for c in chain]
        result.ranges_fetched = [{**s.as_json(), "provider": chain[0].provider} for s in plan.fetch]
        result.gaps_left = [
            {**s.as_json(), "reason": "beyond every provider's history window"}
            for s in plan.unreachable
        ]

    def _execute(
        self,
        job: Job,
        tf: Timeframe,
        plan: FetchPlan,
        chain: list[Choice],
        result: JobResult,
        now: pd.Timestamp,
        expected: pd.DatetimeIndex,
        present: np.ndarray,
    ) -> None:
        if plan.empty and not plan.unreachable:
            result.status = "up-to-date"
        failed = False
        failures: dict[str, list[Span]] = {}  # reason -> spans, reported once per reason
        sessions = not tf.is_intraday and self.cache.profile(job.symbol).calendar != "24/7"
        for span in plan.fetch:
            if self.cancel.is_set():
                raise Cancelled
            asked = result.requests
            outcome = self._fetch_with_failover(job, tf, span, chain, result, present)
            if outcome.refused:  # an unknown symbol leaves nothing in the cache, only a report
                result.status = "failed"
                result.errors.append(f"no provider knows {job.symbol}: {outcome.reason}")
                return
            if outcome.frame is not None and len(outcome.frame):
                outcome = check_seam(self, job, tf, span, outcome, present, result)
            self.sink.note(
                f"{job.symbol} {job.timeframe}",
                bars=0 if outcome.frame is None else len(outcome.frame),
                requests=result.requests - asked,
            )
            pending = outcome.incomplete  # derived buckets whose base bars are not all there
            result.gaps_left += [{**s.as_json(), "reason": INCOMPLETE} for s in pending]
            if outcome.frame is not None and len(outcome.frame):
                frame = with_adj_close(self, job, tf, outcome, result)
                holes = [
                    h for h in _unanswered(span, expected, present, outcome.frame)
                    if not any(p.start < h.end and h.start < p.end for p in pending)
                ]  # fmt: skip
                # a session the calendar expects is missing, not "empty"
                missing = [(h, NO_SESSION) for h in holes] if sessions else []
                put = self.cache.commit_range(
                    frame,
                    job.symbol,
                    job.timeframe,
                    outcome.provider,
                    resolved=[span],
                    missing=missing + [(p, INCOMPLETE) for p in pending],
                    sources=outcome.sources,
                    verified_empty=[] if sessions else [(h, now, "no bars") for h in holes],
                )
                if sessions:
                    result.gaps_left += [{**h.as_json(), "reason": NO_SESSION} for h in holes]
                result.rows_added += put.rows_added
                result.rows_updated += put.rows_updated
                if outcome.provider not in result.providers:
                    result.providers.append(outcome.provider)
                result.ranges_fetched.append(
                    {**span.as_json(), "provider": outcome.provider, "rows": len(outcome.frame)}
                )
            elif pending:
                self.cache.update_coverage(
                    job.symbol, job.timeframe, missing=[(p, INCOMPLETE) for p in pending]
                )
            elif outcome.verified_empty and not sessions:
                self.cache.update_coverage(
                    job.symbol, job.timeframe, verified_empty=[(span, now, outcome.reason)]
                )
                result.ranges_fetched.append(
                    {**span.as_json(), "provider": outcome.provider, "rows": 0}
                )
            else:
                reason = NO_SESSION if outcome.verified_empty else outcome.reason
                failed = failed or not outcome.verified_empty
                self.cache.update_coverage(job.symbol, job.timeframe, missing=[(span, reason)])
                result.gaps_left.append({**span.as_json(), "reason": reason})
                if not outcome.verified_empty:
                    failures.setdefault(reason, []).append(span)
        for reason, spans in failures.items():
            where = f"{spans[0].start} → {spans[-1].end}"
            count = f" ({len(spans)} ranges)" if len(spans) > 1 else ""
            result.errors.append(f"{where}{count}: {reason}")
        for span in plan.unreachable:
            reason = "beyond every provider's history window"
            self.cache.update_coverage(job.symbol, job.timeframe, missing=[(span, reason)])
            result.gaps_left.append({**span.as_json(), "reason": reason})
        if failed:
            result.status = "partial" if result.rows_added else "failed"

    def _fetch_with_failover(
        self,
        job: Job,
        tf: Timeframe,
        span: Span,
        chain: list[Choice],
        result: JobResult,
        present: np.ndarray,
    ) -> Outcome:
        reasons: list[str] = []
        empty_from: list[str] = []
        definitive = True  # every failure says "no data here" rather than "try later"
        refused = 0  # providers that do not know the symbol at all
        out_of_reach = 0  # providers that cannot serve this range (history window, timeframe)
        for choice in chain:
            provider = self.providers[choice.provider]
            if choice.provider in self.down:  # the same words as when it went down
                definitive = False
                reasons.append(f"{choice.provider}: {self.down[choice.provider]}")
                continue
            start = actions_window(self, job, tf, choice.provider, span, present)
            sent = provider.sent()
            try:
                fetched = provider.fetch(choice.symbol, tf, start, span.end)
            except SymbolNotFound as exc:
                refused += 1
                reasons.append(f"{choice.provider}: {exc}")
                continue
            except RangeUnavailable as exc:
                out_of_reach += 1
                reasons.append(f"{choice.provider}: {exc}")
                continue
            except ProviderUnreachable as exc:
                definitive = False
                with self._down_lock:
                    self.down.setdefault(choice.provider, str(exc))
                reasons.append(f"{choice.provider}: {exc}")
                continue
            except ProviderError as exc:
                definitive = False
                reasons.append(f"{choice.provider}: {exc}")
                continue
            finally:
                result.count(choice.provider, provider.sent() - sent)
            result.notes.extend(f"{choice.provider}: {n}" for n in fetched.notes)
            if fetched.frame.empty and not fetched.incomplete:
                empty_from.append(choice.provider)
                continue
            if fetched.dropped_rows > len(fetched.frame):
                definitive = False
                reasons.append(
                    f"{choice.provider}: most rows failed validation "
                    f"({fetched.dropped_rows} dropped)"
                )
                continue
            return Outcome(
                fetched.frame, choice.provider, choice=choice, events=fetched.events,
                incomplete=[Span(a, b) for a, b in fetched.incomplete],
                sources=fetched.sources,
            )  # fmt: skip
        if refused and refused + out_of_reach == len(chain):  # nobody that could answer knew it
            return Outcome(None, "", refused=True, reason="; ".join(reasons))
        if empty_from and definitive:
            return Outcome(None, ",".join(empty_from), verified_empty=True, reason="no bars")
        if empty_from:
            reasons.append(f"{','.join(empty_from)}: no bars")
        return Outcome(None, "", reason="; ".join(reasons) or "no provider answered")

    def _summarise(self, job: Job, result: JobResult) -> None:
        scores = []
        cached = set(self.cache.list_years(job.symbol, job.timeframe))
        for year in range(job.start.year, job.end.year + 1):
            if year in cached:
                meta = self.cache.metadata(job.symbol, job.timeframe, year)
                dq = meta["data_quality"]
                if meta["file_info"]["rows"] or dq.get("counts", {}).get("unfilled_bars"):
                    scores.append(dq["score"])
        result.quality = min(scores) if scores else None


def _unanswered(
    span: Span, expected: pd.DatetimeIndex, present: np.ndarray, frame: pd.DataFrame
) -> list[Span]:
    """Runs of expected bars in `span` that are neither stored nor in the provider's answer.

    Only bars before the latest bar known count: missing bars at the tail may be late, not
    absent, and are asked for again on the next run.
    """
    have = np.union1d(
        np.asarray(present, dtype="datetime64[ns]").astype(np.int64),
        frame["timestamp"].to_numpy("datetime64[ns]").astype(np.int64),
    )
    if not len(have):
        return []
    exp = expected[(expected >= span.start) & (expected < span.end)].asi8
    exp = exp[exp < have[-1]]
    missing = ~np.isin(exp, have)
    if not missing.any():
        return []
    idx = np.flatnonzero(missing)
    breaks = np.flatnonzero(np.diff(idx) > 1)
    starts, ends = np.r_[idx[0], idx[breaks + 1]], np.r_[idx[breaks], idx[-1]]
    out = []
    for s, e in zip(starts, ends, strict=True):
        stop = exp[e + 1] if e + 1 < len(exp) else span.end.value
        out.append(Span(pd.Timestamp(exp[s]), pd.Timestamp(stop)))
    return out


def _reach(
    chain: list[Choice], capabilities: dict[str, Any], timeframe: str, now: pd.Timestamp
) -> pd.Timestamp | None:
    """How far back the chain reaches: None if any provider has no window."""
    earliest: list[pd.Timestamp] = []
    for choice in chain:
        e = capabilities[choice.provider].earliest(timeframe, now)
        if e is None:
            return None
        earliest.append(e)
    return min(earliest) if earliest else None
