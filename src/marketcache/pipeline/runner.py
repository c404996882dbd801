"""One populate job, run by `Runner.run`: its series' lock taken, what is stored planned against
(gaps, verified-empty ranges, repair losses, provider reach), each range fetched through the
failover chain, checked on its seam, given its adj_close and committed as it arrives.
`populate.py` runs the jobs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from marketcache.cache.facade import UnifiedCache
from marketcache.cache.series import Ledger, Series
from marketcache.core.calendars import expected_bars
from marketcache.core.derive import INCOMPLETE
from marketcache.core.gaps import FetchPlan, Span, plan_fetch, settled_before, unanswered
from marketcache.core.models import utcnow
from marketcache.core.symbols import AssetClass
from marketcache.errors import (
    Conflict,
    LockTimeout,
    MarketCacheError,
    UsageError,
)
from marketcache.pipeline.answers import Answers, Outcome
from marketcache.pipeline.basis import actions_window, check_seam, with_adj_close
from marketcache.pipeline.failover import Failover
from marketcache.pipeline.jobs import (
    Job,
    JobResult,
    PopulateRequest,
    ProgressSink,
)
from marketcache.pipeline.selector import Choice, select
from marketcache.providers.base import Provider

OVERLAP_BARS = {AssetClass.CRYPTO: 1, AssetClass.FX: 1, AssetClass.STOCK: 3}
NO_SESSION = "the provider returned no bar for a session the calendar expects"
NO_BARS = np.zeros(0, dtype="datetime64[ns]")
ENDED = "the provider has no bar after its last one here (delisted, halted, or data lost)"


def _bars_in(spans: list[Span], expected: pd.DatetimeIndex) -> int:
    """Expected bars inside the spans to fetch (what the progress bar counts)."""
    stamps = expected.asi8
    return sum(
        int(np.searchsorted(stamps, s.end.value) - np.searchsorted(stamps, s.start.value))
        for s in spans
    )


class Cancelled(BaseException):
    """Raised inside a worker when the run was interrupted: it stops between two ranges."""


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
        self.failover = Failover(self.providers)  # shares the dict: derived ones join it
        self._down_lock = self.failover.lock
        self.cancel = threading.Event()
        self.warnings: dict[str, str] = {}  # provider -> why it was left out, once a run
        self.started: list[JobResult] = []  # every job begun, finished or not (for interrupts)

    @property
    def down(self) -> dict[str, str]:
        """Providers found unreachable in this run, with the first failure's words."""
        return self.failover.down

    def run(self, job: Job) -> JobResult:
        result = JobResult(job.symbol, job.timeframe)
        with self._down_lock:
            self.started.append(result)
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
        except BaseException:  # Ctrl-C, SIGTERM, Cancelled: what it did so far is reported
            result.status = "interrupted"
            raise
        self.sink.advance(f"{job.symbol} {job.timeframe}")
        return result

    def _run(self, job: Job, result: JobResult) -> None:
        cache = self.cache
        series = cache.series(job.symbol, job.timeframe)  # the one normalisation of the job
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
        if not job.derive_from and self.request.provider is None:
            self._say_what_is_left_out(job)
        if not chain:
            raise UsageError(
                f"no provider can serve {job.symbol} {job.timeframe}: check the selection "
                "rules, the provider capabilities and API keys"
            )
        if self.request.dry_run:  # reads only: no lock, no folder, no file
            planned = self._plan(job, series, chain, result, writes=False)
            if planned is not None:
                self._plan_only(planned[0], chain, result)
            return
        for attempt in (1, 2):
            try:
                if not self._locked(job, series, chain, result):
                    return
                break
            except Conflict as exc:  # object storage: another writer committed first
                if attempt == 2:
                    raise
                result.notes.append(f"re-planned from the newer state ({exc})")
        self._summarise(job, series, result)

    def _say_what_is_left_out(self, job: Job) -> None:
        """A provider the rules name but that lacks its key is worth one warning a run."""
        from marketcache.pipeline.selector import left_out
        from marketcache.providers.registry import missing_key

        settings = self.cache.settings
        for name in left_out(job.symbol, job.timeframe, settings, self.capabilities, self.usable):
            why = missing_key(settings.providers[name]) if name in settings.providers else None
            if why:
                self.warnings.setdefault(name, why)

    def _locked(self, job: Job, series: Series, chain: list[Choice], result: JobResult) -> bool:
        """Plan and fetch under the series lock; False when there was nothing to do."""
        with series.lock():
            planned = self._plan(job, series, chain, result, writes=True)
            if planned is None:
                return False
            plan, now, expected, present = planned
            self.sink.plan(f"{job.symbol} {job.timeframe}", _bars_in(plan.fetch, expected))
            self._execute(job, series, plan, chain, result, now, expected, present)
            readjusted = series.readjust()
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
        self, job: Job, series: Series, chain: list[Choice], result: JobResult, *, writes: bool
    ) -> tuple[FetchPlan, pd.Timestamp, pd.DatetimeIndex, np.ndarray] | None:
        """What to fetch for `job` (None: nothing, the range ends before the open bar).

        With `writes` (under the lock) stale temp files go and corrupt years are moved aside
        first; without, corrupt years are only left out."""
        cache, tf, profile = self.cache, series.timeframe, series.profile
        if writes:
            for stale in series.remove_stale_temp_files():
                result.notes.append(f"removed {stale}, left by an interrupted run")
        now = utcnow()
        end = min(job.end, tf.floor(now))  # the bar at floor(now) is still open
        start = job.start
        lost = self._lost_since(series)
        if lost is not None and lost < start:
            start = lost
            result.notes.append(f"asks again from {lost} for the bars a repair lost")
        if start >= end:
            result.status = "up-to-date"
            return None
        wanted = Span(start, end)
        years = range(wanted.start.year, (end - pd.Timedelta(1, "ns")).year + 1)
        expected = expected_bars(profile.calendar, tf, wanted.start, wanted.end)
        state = series.state(years, expected, repair=writes)
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

    def _lost_since(self, series: Series) -> pd.Timestamp | None:
        """The first bar a repair lost in this series (a missing range "lost in repair"):
        a run without --start (a cron job, a dataset) asks again from there, so the holes
        `validate --fix` left are filled by the nightly run, not only by the printed command.
        With --start the user chose the window: None."""
        from marketcache.cache.repair import LOST_IN_REPAIR

        if self.request.start is not None:
            return None
        starts: list[pd.Timestamp] = []
        for year in series.years():
            try:
                record = series.record(year)
            except MarketCacheError:
                continue  # a damaged record: series_state reports and sets it aside
            starts += [
                pd.Timestamp(m["start"])
                for m in record.coverage.missing_ranges
                if m.get("reason") == LOST_IN_REPAIR
            ]
        return min(starts) if starts else None

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
        series: Series,
        plan: FetchPlan,
        chain: list[Choice],
        result: JobResult,
        now: pd.Timestamp,
        expected: pd.DatetimeIndex,
        present: np.ndarray,
    ) -> None:
        failed = False
        failures: dict[str, list[Span]] = {}  # reason -> spans, reported once per reason
        tf, calendar = series.timeframe, series.profile.calendar
        always_open = calendar == "24/7"  # a stretch without bars is one without trades
        sessions = not tf.is_intraday and not always_open
        settled = settled_before(calendar, tf, now)  # older bars an answer lacks are holes
        answers = Answers(until=plan.fetch[-1].end) if plan.fetch else None
        newest = pd.Timestamp(np.max(present)) if len(present) else None  # stored or committed
        for span in plan.fetch:
            if self.cancel.is_set():
                raise Cancelled
            assert answers is not None
            asked = result.requests
            start = self._window(series, span, present, answers)
            outcome = self.failover.fetch(chain, tf, span, answers, result, start)
            if outcome.refused:  # an unknown symbol leaves nothing in the cache, only a report
                result.status, result.refused = "failed", True
                result.errors.append(f"no provider knows {job.symbol}: {outcome.reason}")
                return
            if outcome.frame is not None and len(outcome.frame):
                outcome = check_seam(
                    self.cache,
                    self._provider(outcome),
                    job,
                    tf,
                    span,
                    outcome,
                    present,
                    result,
                    answers,
                )
            self.sink.note(
                f"{job.symbol} {job.timeframe}",
                bars=0 if outcome.frame is None else len(outcome.frame),
                requests=result.requests - asked,
            )
            pending = outcome.incomplete  # derived buckets whose base bars are not all there
            result.gaps_left += [{**s.as_json(), "reason": INCOMPLETE} for s in pending]
            if outcome.frame is not None and len(outcome.frame):
                frame = with_adj_close(series, outcome, result)
                stamps = outcome.frame["timestamp"].to_numpy("datetime64[ns]")
                holes, end = unanswered(span, expected, present, stamps, settled, newest)
                holes = [h for h in holes if not _overlaps(h, pending)]
                # a session the calendar expects is missing, not "empty"
                missing = [(h, NO_SESSION) for h in holes] if sessions else []
                empty = [] if sessions else [(h, now, "no bars") for h in holes]
                if end is not None and not _overlaps(end, pending):  # the data stops early
                    if always_open:
                        empty.append((end, now, "no bars"))
                    else:  # a session after a stock's last bar: delisted, halted, lost
                        missing.append((end, ENDED))
                        result.gaps_left.append({**end.as_json(), "reason": ENDED})
                last = pd.Timestamp(stamps.max())
                newest = last if newest is None else max(newest, last)
                ledger = Ledger(
                    verified_empty=empty,
                    missing=missing + [(p, INCOMPLETE) for p in pending],
                    resolved=[span],
                )
                put = series.commit(frame, outcome.provider, ledger, outcome.sources)
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
                series.update_coverage(Ledger(missing=[(p, INCOMPLETE) for p in pending]))
            elif outcome.verified_empty and not always_open and _after(newest, span):
                _, end = unanswered(span, expected, present, NO_BARS, settled, newest)
                if end is not None:  # nothing after the last bar (the newest may be late)
                    series.update_coverage(Ledger(missing=[(end, ENDED)]))
                    result.gaps_left.append({**end.as_json(), "reason": ENDED})
                result.ranges_fetched.append(
                    {**span.as_json(), "provider": outcome.provider, "rows": 0}
                )
            elif outcome.verified_empty and not sessions:
                series.update_coverage(Ledger(verified_empty=[(span, now, outcome.reason)]))
                result.ranges_fetched.append(
                    {**span.as_json(), "provider": outcome.provider, "rows": 0}
                )
            else:
                reason = NO_SESSION if outcome.verified_empty else outcome.reason
                failed = failed or not outcome.verified_empty
                series.update_coverage(Ledger(missing=[(span, reason)]))
                result.gaps_left.append({**span.as_json(), "reason": reason})
                if not outcome.verified_empty:
                    failures.setdefault(reason, []).append(span)
        for reason, spans in failures.items():
            where = f"{spans[0].start} → {spans[-1].end}"
            count = f" ({len(spans)} ranges)" if len(spans) > 1 else ""
            result.errors.append(f"{where}{count}: {reason}")
        for span in plan.unreachable:
            reason = "beyond every provider's history window"
            series.update_coverage(Ledger(missing=[(span, reason)]))
            result.gaps_left.append({**span.as_json(), "reason": reason})
        result.status = _status(result, failed)

    def _window(
        self, series: Series, span: Span, present: np.ndarray, answers: Answers
    ) -> Callable[[str], pd.Timestamp]:
        """Where to start asking each provider of the chain for `span`."""

        def start(name: str) -> pd.Timestamp:
            if answers.holds(name, span.start):  # that answer told the actions up to now
                return span.start
            return actions_window(series, name, self.providers[name].reports_actions, span, present)

        return start

    def _provider(self, outcome: Outcome) -> Provider:
        assert outcome.choice is not None
        return self.providers[outcome.choice.provider]

    def _summarise(self, job: Job, series: Series, result: JobResult) -> None:
        """The job's quality: the lowest score of the years it spans that mean one."""
        cached = set(series.years())
        records = [
            series.record(year)
            for year in range(job.start.year, job.end.year + 1)
            if year in cached
        ]
        scores = [rec.score for rec in records if rec.scored]
        result.quality = min(scores) if scores else None


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


def _after(newest: pd.Timestamp | None, span: Span) -> bool:
    return newest is not None and span.start > newest


def _overlaps(span: Span, others: list[Span]) -> bool:
    return any(o.start < span.end and span.start < o.end for o in others)


def _status(result: JobResult, failed: bool) -> str:
    """A job's status once its plan ran: `failed`/`partial` when ranges failed (with or
    without rows committed), `partial` when the asked range still has holes (validate
    counts them), `up-to-date` when nothing changed, else `ok`."""
    if failed:
        return "partial" if result.rows_added else "failed"
    if result.gaps_left:
        return "partial"
    if not (result.rows_added or result.rows_updated):
        return "up-to-date"
    return "ok"
