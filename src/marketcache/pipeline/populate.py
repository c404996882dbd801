"""populate: select → detect gaps → fetch (with failover) → validate → write.

One job per symbol × timeframe, run under that pair's lock. Each fetched range lies within one
UTC year and is committed as soon as it arrives, so a run killed after hours keeps what it
fetched. Progress reaches the caller through a callback; nothing here prints.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from marketcache.cache.facade import UnifiedCache
from marketcache.core.models import utcnow
from marketcache.pipeline.jobs import (
    Job,
    NoProgress,
    PopulateReport,
    PopulateRequest,
    ProgressSink,
)
from marketcache.pipeline.runner import Runner
from marketcache.providers.base import Provider
from marketcache.providers.registry import build_providers

# ---- running -------------------------------------------------------------------------------


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
    range they are committing, and everything committed is kept. On an interruption the
    report also lists the jobs it stopped that had sent or committed anything (status
    `interrupted`, with their rows and requests so far).
    """
    sink = progress or NoProgress()
    pool = providers or build_providers(cache.settings, cache.state_dir)
    report = report if report is not None else PopulateReport([])
    report.dry_run, report.started_at = request.dry_run, utcnow().isoformat()
    report.min_score = cache.settings.options.min_score
    cache.backend.check_usable()  # a schema of another tool: exit 2 once, not every job 1
    runner = Runner(cache, pool, request, sink)
    try:  # derived timeframes after every base job: they read what those committed
        for phase in ([j for j in jobs if not j.derive_from], [j for j in jobs if j.derive_from]):
            _run_phase(runner, phase, request.workers, report)
    except BaseException:
        listed = {id(r) for r in report.results}
        report.results += [
            r
            for r in runner.started
            if id(r) not in listed and (r.status != "interrupted" or r.did_something)
        ]
        raise
    finally:
        report.finished_at = utcnow().isoformat()
        report.unreachable = dict(runner.down)
        report.warnings = list(runner.warnings.values()) + [
            w for provider in pool.values() for w in provider.take_warnings()
        ]
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
