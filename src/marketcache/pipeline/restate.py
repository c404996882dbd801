"""validate --against-source: re-fetch stored ranges and report what the source restated.

For each stored year in scope the provider that filled it is asked again for the same range
(as traded, like every answer the cache stores). Bars are compared price by price and volume
by volume; bars the source no longer has and bars it has that are not stored are counted.
With `fix`, the source's answer is committed like a populate would (its values win, nothing
is dropped), so restated and extra bars are replaced or added; bars the source no longer has
are kept (the cache never shrinks) and stay reported.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from marketcache.cache.facade import UnifiedCache
from marketcache.core.timeframes import Timeframe
from marketcache.errors import MarketCacheError, UsageError
from marketcache.pipeline.basis import with_actions
from marketcache.pipeline.selector import select
from marketcache.providers.base import Provider
from marketcache.providers.registry import build_providers
from marketcache.storage.backend import Key

RESTATED = 1e-6  # relative difference above which a value counts as restated


@dataclass
class YearRestatement:
    symbol: str
    timeframe: str
    year: int
    provider: str = ""
    start: str | None = None
    end: str | None = None
    compared: int = 0
    restated: int = 0  # bars with a price that differs
    volume: int = 0  # bars whose volume differs
    missing: int = 0  # stored bars the source no longer has
    extra: int = 0  # bars the source has that are not stored
    max_rel_diff: float = 0.0  # largest relative price difference
    max_volume_rel_diff: float = 0.0
    first_restated: str | None = None
    fixed: bool = False
    requests: int = 0
    error: str | None = None

    @property
    def status(self) -> str:
        if self.error:
            return "failed"
        if self.fixed:
            return "fixed" if not self.missing else "fixed-partly"
        return "restated" if self.differs else "same"

    @property
    def differs(self) -> bool:
        return bool(self.restated or self.volume or self.missing or self.extra)

    @property
    def remains(self) -> bool:
        """Differences still in the cache after this check."""
        return bool(self.missing) if self.fixed else self.differs

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status}


@dataclass
class RestatementReport:
    years: list[YearRestatement] = field(default_factory=list)
    fix: bool = False

    @property
    def exit_code(self) -> int:
        if any(y.remains for y in self.years):
            return 3
        return 1 if any(y.error for y in self.years) else 0

    def as_json(self) -> dict[str, Any]:
        ys = self.years
        return {
            "ok": self.exit_code == 0,
            "exit_code": self.exit_code,
            "against_source": True,
            "fix": self.fix,
            "summary": {
                "years_checked": len(ys),
                "years_differing": sum(y.differs for y in ys),
                "bars_compared": sum(y.compared for y in ys),
                "bars_restated": sum(y.restated for y in ys),
                "bars_volume_restated": sum(y.volume for y in ys),
                "bars_missing_at_source": sum(y.missing for y in ys),
                "bars_extra_at_source": sum(y.extra for y in ys),
                "max_rel_diff": max((y.max_rel_diff for y in ys), default=0.0),
                "years_fixed": sum(y.fixed for y in ys),
                "years_failed": sum(bool(y.error) for y in ys),
                "requests": sum(y.requests for y in ys),
            },
            "years": [y.as_json() for y in ys],
        }


def pick_years(
    targets: list[tuple[str, str, int]], *, since: pd.Timestamp | None, sample: int | None
) -> list[tuple[str, str, int]]:
    """The years to re-fetch: those reaching `since`, or `sample` of them at random."""
    if since is not None and sample is not None:
        raise UsageError("give --since or --sample, not both")
    chosen = [t for t in targets if since is None or t[2] >= since.year]
    if sample is not None:
        if sample < 1:
            raise UsageError("--sample must be at least 1")
        chosen = sorted(random.sample(chosen, min(sample, len(chosen))))
    return chosen


def check_against_source(
    cache: UnifiedCache,
    targets: list[tuple[str, str, int]],
    *,
    since: pd.Timestamp | None = None,
    fix: bool = False,
    providers: dict[str, Provider] | None = None,
) -> RestatementReport:
    pool = providers or build_providers(cache.settings, cache.state_dir)
    report = RestatementReport(fix=fix)
    for sym, tf, year in targets:
        entry = YearRestatement(sym, tf, year)
        try:
            _check_year(cache, pool, entry, since, fix)
        except MarketCacheError as exc:
            entry.error = str(exc)
        report.years.append(entry)
    return report


def _check_year(
    cache: UnifiedCache,
    pool: dict[str, Provider],
    entry: YearRestatement,
    since: pd.Timestamp | None,
    fix: bool,
) -> None:
    sym, tf, year = entry.symbol, entry.timeframe, entry.year
    meta = cache.metadata(sym, tf, year)
    if not meta["file_info"]["rows"]:
        return
    timeframe = Timeframe(tf)
    lo = pd.Timestamp(meta["start_date"])
    if since is not None:
        lo = max(lo, since)
    hi = timeframe.next_open(pd.Timestamp(meta["end_date"]))
    if lo >= hi:
        return
    entry.start, entry.end = lo.isoformat(), hi.isoformat()
    capabilities = {n: p.capabilities for n, p in pool.items()}
    usable = {n: p.available() for n, p in pool.items()}
    chain = select(sym, tf, cache.settings, capabilities, usable)
    if not chain:
        raise UsageError(f"no provider can serve {sym} {tf}: check the selection rules")
    wanted = meta.get("data_source")
    choice = next((c for c in chain if c.provider == wanted), chain[0])
    entry.provider = choice.provider
    fetched = pool[choice.provider].fetch(choice.symbol, timeframe, lo, hi)
    entry.requests = fetched.requests
    stored = cache.get(sym, tf, start=lo, end=hi)
    source = fetched.frame
    _compare(stored, source, entry)
    if fix and (entry.restated or entry.volume or entry.extra):
        from marketcache.cache.series import Ledger
        from marketcache.core.gaps import Span

        series = cache.series(sym, tf)
        source, _ = with_actions(series, source, fetched.events, choice.provider)
        # the source answered for [lo, hi): the holes recorded there (a repair's loss, a
        # failed range) are settled by its answer, as a populate of that range settles them
        series.commit(source, choice.provider, Ledger(resolved=[Span(lo, hi)]))
        series.readjust()
        entry.fixed = True
    if (entry.fixed or not entry.differs) and lo <= pd.Timestamp(meta["start_date"]):
        from marketcache.cache.repair import clear_reverify  # the whole year now matches its source

        with cache.lock(sym, tf):
            clear_reverify(cache.writer(sym, tf), Key.of(sym, tf, year))


def _compare(stored: pd.DataFrame, source: pd.DataFrame, entry: YearRestatement) -> None:
    stamps_stored = stored["timestamp"].to_numpy("datetime64[ns]")
    stamps_source = source["timestamp"].to_numpy("datetime64[ns]")
    entry.missing = int((~np.isin(stamps_stored, stamps_source)).sum())
    entry.extra = int((~np.isin(stamps_source, stamps_stored)).sum())
    joined = stored.merge(source, on="timestamp", suffixes=("", "_src"))
    entry.compared = len(joined)
    if joined.empty:
        return
    worst = np.zeros(len(joined))
    for col in ("open", "high", "low", "close"):
        worst = np.fmax(worst, _rel(joined[col], joined[f"{col}_src"]))
    vol = _rel(joined["volume"], joined["volume_src"])
    price_changed = worst > RESTATED
    entry.restated = int(price_changed.sum())
    entry.volume = int((vol > RESTATED).sum())
    entry.max_rel_diff = float(worst.max())
    entry.max_volume_rel_diff = float(vol.max())
    changed = price_changed | (vol > RESTATED)
    if changed.any():
        entry.first_restated = pd.Timestamp(joined["timestamp"].to_numpy()[changed][0]).isoformat()


def _rel(a: pd.Series, b: pd.Series) -> np.ndarray:
    x, y = a.to_numpy("float64"), b.to_numpy("float64")
    with np.errstate(divide="ignore", invalid="ignore"):
        diff = np.abs(x - y) / np.maximum(np.abs(x), np.abs(y))
    both_zero = (x == 0) & (y == 0)
    return np.where(both_zero, 0.0, np.nan_to_num(diff, nan=1.0))
