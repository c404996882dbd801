"""What a populate run is asked to do and what it reports: request → jobs, job results, the
run report (its JSON and exit code), and the progress protocol. Pure."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from marketcache.config.schema import Settings
from marketcache.core.models import DateRange, parse_date, utcnow
from marketcache.core.symbols import normalize_symbol
from marketcache.core.timeframes import Timeframe, parse_timeframe, parse_timeframes
from marketcache.errors import UsageError
from marketcache.providers.registry import canonical_name

DEFAULT_LOOKBACK = "365d"


class ProgressSink(Protocol):
    def plan(self, current: str, bars: int) -> None: ...

    def advance(self, current: str = "") -> None: ...

    def note(self, current: str, bars: int = 0, requests: int = 0) -> None: ...


class NoProgress:
    def plan(self, current: str, bars: int) -> None:
        pass

    def advance(self, current: str = "") -> None:
        pass

    def note(self, current: str, bars: int = 0, requests: int = 0) -> None:
        pass


@dataclass
class PopulateRequest:
    symbols: list[str] = field(default_factory=list)
    symbols_file: Path | None = None
    timeframes: str | None = None
    start: str | None = None
    end: str | None = None
    provider: str | None = None
    dry_run: bool = False
    full_refresh: bool = False
    workers: int = 1
    derive_from: str | None = None


@dataclass(frozen=True)
class Job:
    symbol: str
    timeframe: str
    start: pd.Timestamp
    end: pd.Timestamp
    derive_from: str | None = None  # the base timeframe this one is built from (cache only)


@dataclass
class JobResult:
    symbol: str
    timeframe: str
    # ok | up-to-date (nothing changed) | partial (holes left, or some ranges failed) |
    # failed | locked | planned (dry run) | interrupted (stopped mid-way by Ctrl-C / SIGTERM)
    status: str = "ok"
    providers: list[str] = field(default_factory=list)
    rows_added: int = 0
    rows_updated: int = 0
    ranges_fetched: list[dict[str, Any]] = field(default_factory=list)
    gaps_left: list[dict[str, Any]] = field(default_factory=list)
    quality: float | None = None
    requests: int = 0  # every HTTP request sent for this job, failed ones included
    requests_by_provider: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    actions_changed: bool = False
    refused: bool = False  # every provider said it does not know the symbol

    @property
    def did_something(self) -> bool:
        """Whether the job sent a request or committed a row."""
        return bool(self.requests or self.rows_added or self.rows_updated)

    def count(self, provider: str, sent: int) -> None:
        self.requests += sent
        if sent:
            by = self.requests_by_provider
            by[provider] = by.get(provider, 0) + sent

    def as_json(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out.pop("actions_changed")
        out.pop("refused")  # said in `errors`; for callers that act on it (DataManager)
        return out


@dataclass
class PopulateReport:
    results: list[JobResult]
    dry_run: bool = False
    started_at: str = ""
    finished_at: str = ""
    unreachable: dict[str, str] = field(default_factory=dict)  # provider -> why, once a run
    warnings: list[str] = field(default_factory=list)  # said once a run (a provider left out
    # for its key, a wrong archive_url)

    interrupted: int | None = None  # 130 (SIGINT) or 143 (SIGTERM) when the run was stopped
    min_score: float = 0.0  # settings.min_score: below it `validate` exits 3, and so does this

    @property
    def exit_code(self) -> int:
        """4 locked; 1 a range failed (a provider erred: a later run may fill it); 3 a year
        of the asked range scores below `min_score` (what `validate` says of it); else 0 —
        also for a `partial` series whose holes the providers answered (data that stops,
        sessions a provider lacks) while its years still score at least `min_score`."""
        if self.interrupted is not None:
            return self.interrupted
        if any(r.status == "locked" for r in self.results):
            return 4
        if any(r.status == "failed" or (r.status == "partial" and r.errors) for r in self.results):
            return 1
        if any(r.quality is not None and r.quality < self.min_score for r in self.results):
            return 3
        return 0

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.exit_code == 0,
            "exit_code": self.exit_code,
            "interrupted": self.interrupted is not None,
            "dry_run": self.dry_run,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "summary": {
                "jobs": len(self.results),
                "failed": sum(r.status in ("failed", "locked") for r in self.results),
                "rows_added": sum(r.rows_added for r in self.results),
                "requests": {
                    "total": sum(r.requests for r in self.results),
                    "by_provider": _sum_by(r.requests_by_provider for r in self.results),
                },
            },
            "unreachable": [{"provider": p, "error": e} for p, e in self.unreachable.items()],
            "warnings": list(self.warnings),
            "results": [r.as_json() for r in self.results],
        }


def _sum_by(parts: Iterable[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for part in parts:
        for key, n in part.items():
            total[key] = total.get(key, 0) + n
    return dict(sorted(total.items()))


def read_symbols_file(path: Path) -> list[str]:
    """One symbol a line, `#` comments; `-` reads standard input."""
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--symbols-file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raw = bytes(exc.object)
        at, byte = raw[: exc.start].count(b"\n") + 1, raw[exc.start]
        raise UsageError(
            f"--symbols-file {path}: line {at} is not UTF-8 text (byte {byte:#04x}):"
            " save it as UTF-8, one symbol a line"
        ) from None
    out = []
    for line in text.removeprefix("\ufeff").splitlines():  # an editor's byte-order mark
        item = line.split("#", 1)[0].strip()
        if item:
            out.append(item)
    return out


def build_jobs(request: PopulateRequest, settings: Settings) -> list[Job]:
    """Symbols × timeframes × [start, end) from the options, or the config's datasets."""
    if request.provider:
        request.provider = canonical_name(request.provider)
    tfs = parse_timeframes(request.timeframes) if request.timeframes else None
    now = utcnow()
    end = parse_date(request.end, option="--end") if request.end else now
    start = parse_date(request.start, option="--start") if request.start else None
    if start is not None:
        DateRange(start, end)
    symbols = [*request.symbols]
    if request.symbols_file is not None:
        symbols += read_symbols_file(request.symbols_file)
    jobs: dict[tuple[str, str], Job] = {}
    if symbols:
        begin = start if start is not None else parse_date(DEFAULT_LOOKBACK)
        DateRange(begin, end)
        base = parse_timeframe(request.derive_from).name if request.derive_from else None
        for raw in symbols:
            sym = normalize_symbol(raw)
            _add(jobs, sym, [t.name for t in tfs or [Timeframe("1d")]], begin, end, base)
    else:
        if not settings.datasets:
            raise UsageError(
                f"no symbols given and {settings.source} has no datasets: "
                "name symbols or add datasets"
            )
        for ds in settings.datasets:
            ds_start = start if start is not None else parse_date(ds.start)
            ds_end = end if request.end else (parse_date(ds.end) if ds.end else now)
            DateRange(ds_start, ds_end)
            names = [t.name for t in tfs] if tfs else list(ds.timeframes)
            base = request.derive_from or ds.derive_from
            for sym in ds.symbols:
                _add(jobs, sym, names, ds_start, ds_end, base and parse_timeframe(base).name)
    return list(jobs.values())


def _add(
    jobs: dict[tuple[str, str], Job],
    sym: str,
    timeframes: list[str],
    start: pd.Timestamp,
    end: pd.Timestamp,
    base: str | None,
) -> None:
    """The jobs of one symbol; with a base, the base job first and the others derived."""
    from marketcache.core.derive import check_derivable

    if base is not None:
        jobs.setdefault((sym, base), Job(sym, base, start, end))
    for tf in timeframes:
        if base is None or tf == base:
            jobs.setdefault((sym, tf), Job(sym, tf, start, end))
            continue
        why = check_derivable(Timeframe(base), Timeframe(tf))
        if why:
            raise UsageError(f"--derive-from {base}: {why}")
        jobs[(sym, tf)] = Job(sym, tf, start, end, derive_from=base)
