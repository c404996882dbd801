"""DataManager: read-through access for notebooks and services.

`get_ohlcv` runs the populate pipeline for exactly the missing part of the range (select,
plan gaps, fetch with failover, validate, commit under the series lock) and then reads; when
the range is complete it makes no request. Errors are the library's (`MarketCacheError`
tree), nothing is printed, and the provider sessions are built once and reused, so calling it
in a loop leaks neither sessions nor threads (`close()` or `with` releases them).
"""

from __future__ import annotations

import os
from types import TracebackType
from typing import Any

import pandas as pd

from marketcache.cache import UnifiedCache
from marketcache.config import Settings, default_settings, load_settings
from marketcache.errors import LockTimeout, ProviderUnavailable, SymbolNotFound
from marketcache.freshness import freshness
from marketcache.jobs import DEFAULT_LOOKBACK, PopulateRequest, build_jobs
from marketcache.providers.base import Provider
from marketcache.symbols import normalize_symbol
from marketcache.timeframes import parse_timeframe


class DataManager:
    def __init__(
        self,
        cache: str | os.PathLike[str] | UnifiedCache = "data-cache",
        *,
        config: str | os.PathLike[str] | None = None,
        settings: Settings | None = None,
        lock_wait: float | None = None,
    ) -> None:
        if settings is None:
            settings = load_settings(config) if config is not None else default_settings()
        self.cache = (
            cache
            if isinstance(cache, UnifiedCache)
            else UnifiedCache(cache, settings=settings, lock_wait=lock_wait)
        )
        self.settings = self.cache.settings
        self._providers: dict[str, Provider] | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    @property
    def providers(self) -> dict[str, Provider]:
        if self._providers is None:
            from marketcache.providers.registry import build_providers

            self._providers = build_providers(self.settings, self.cache.state_dir)
        return self._providers

    def close(self) -> None:
        """Close the provider sessions (a later call builds new ones)."""
        for provider in (self._providers or {}).values():
            provider.close()
        self._providers = None
        self.cache.backend.close()

    def __enter__(self) -> DataManager:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ---- prices ----------------------------------------------------------------------------

    def get_ohlcv(
        self,
        symbol: str,
        timeframe: str,
        start: Any = None,
        end: Any = None,
        *,
        adjust: str = "none",
        fetch_missing: bool = True,
        provider: str | None = None,
        output_format: str = "pandas",
    ) -> Any:
        """Bars of [start, end), fetching what the cache lacks first (unless `fetch_missing`
        is False: then a pure read, and an unstored range gives an empty frame), as
        `output_format` says: "pandas", "arrow" (a pyarrow Table) or "polars"."""
        from marketcache.outputs import check_output_format

        check_output_format(output_format)  # before anything is fetched
        sym, tf = normalize_symbol(symbol), parse_timeframe(timeframe).name
        if fetch_missing:
            self._fill(sym, tf, start, end, provider)
        return self.cache.get(sym, tf, start, end, adjust=adjust, output_format=output_format)

    def _fill(self, sym: str, tf: str, start: Any, end: Any, provider: str | None) -> None:
        from marketcache.populate import run_populate

        if start is None:
            years = self.cache.list_years(sym, tf)
            first = self.cache.record(sym, tf, years[0]).start_date if years else None
            start = first or DEFAULT_LOOKBACK
        request = PopulateRequest(
            symbols=[sym],
            timeframes=tf,
            start=str(start),
            end=None if end is None else str(end),
            provider=provider,
        )
        jobs = build_jobs(request, self.settings)
        result = run_populate(self.cache, jobs, request, providers=self.providers).results[0]
        if result.status == "locked":
            raise LockTimeout(result.errors[0])
        if result.status == "failed":
            message = result.errors[0] if result.errors else "no provider answered"
            if message.startswith("no provider knows"):
                raise SymbolNotFound(message, symbol=sym)
            raise ProviderUnavailable(f"{sym} {tf}: {message}", symbol=sym)

    def get_many(
        self,
        symbols: list[str],
        timeframe: str,
        start: Any = None,
        end: Any = None,
        *,
        adjust: str = "none",
        fetch_missing: bool = True,
        output_format: str = "pandas",
    ) -> Any:
        """One frame for several symbols, with a `symbol` column first (as `output_format`
        says: "pandas", "arrow" or "polars")."""
        from marketcache.outputs import check_output_format, convert

        check_output_format(output_format)
        frames = [
            self.get_ohlcv(
                s, timeframe, start, end, adjust=adjust, fetch_missing=fetch_missing
            ).assign(symbol=normalize_symbol(s))
            for s in symbols
        ]
        if not frames and output_format == "pandas":
            return pd.DataFrame()
        if not frames:
            from marketcache.frames import empty_frame

            frames = [empty_frame().assign(symbol=pd.Series([], dtype=str))]
        out = pd.concat(frames, ignore_index=True)
        out = out[["symbol", *[c for c in out.columns if c != "symbol"]]]
        return convert(out, output_format)

    def latest(self, symbols: list[str], timeframe: str) -> pd.DataFrame:
        """The last stored bar of each symbol (a read: nothing is fetched)."""
        rows = []
        tf = parse_timeframe(timeframe).name
        for s in symbols:
            sym = normalize_symbol(s)
            years = self.cache.list_years(sym, tf)
            if not years:
                continue
            bars = self.cache.read_year(sym, tf, years[-1])
            if len(bars):
                rows.append(bars.iloc[[-1]].assign(symbol=sym))
        if not rows:
            return pd.DataFrame(columns=["symbol", "timestamp"])
        out = pd.concat(rows, ignore_index=True)
        return out[["symbol", *[c for c in out.columns if c != "symbol"]]]

    def availability(self) -> pd.DataFrame:
        """Per symbol × timeframe: first, last, rows, quality (the worst year), missing ranges,
        missing bars, and whether it is stale (behind the calendar by more than one bar)."""
        rows = []
        for sym in self.cache.list_symbols():
            calendar = self.cache.profile(sym).calendar
            for tf in self.cache.list_timeframes(sym):
                recs = [self.cache.record(sym, tf, y) for y in self.cache.list_years(sym, tf)]
                stored = [r for r in recs if r.rows]
                last = stored[-1].end_date if stored else None
                rows.append(
                    {
                        "symbol": sym,
                        "timeframe": tf,
                        "first": stored[0].start_date if stored else None,
                        "last": last,
                        "rows": sum(r.rows for r in recs),
                        "quality": min((r.score for r in recs if r.scored), default=None),
                        "missing": sum(len(r.coverage.missing_ranges) for r in recs),
                        "missing_bars": sum(
                            r.counts.unfilled_bars + r.counts.missing_bars for r in recs
                        ),
                        "stale": freshness(sym, tf, calendar, last).stale,
                    }
                )
        columns = [
            "symbol",
            "timeframe",
            "first",
            "last",
            "rows",
            "quality",
            "missing",
            "missing_bars",
            "stale",
        ]
        return pd.DataFrame(rows, columns=columns)

    # ---- fundamentals ----------------------------------------------------------------------

    def get_fundamentals(
        self, symbol: str, max_age: str | None = None, *, provider: str | None = None
    ) -> dict[str, Any]:
        """The combined fundamentals of `symbol` (see `fundamentals.py`)."""
        from marketcache.fundamentals import get_fundamentals

        return get_fundamentals(
            self.cache, self.providers, normalize_symbol(symbol), max_age=max_age, only=provider
        )
