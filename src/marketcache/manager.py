"""DataManager: read-through access for notebooks and services.

`get_ohlcv` runs the populate pipeline for exactly the missing part of the range (select,
plan gaps, fetch with failover, validate, commit under the series lock) and then reads; when
the range is complete it makes no request. A range asked again is not fetched again until a
new bar can have closed in it (by the series' calendar), so a notebook calling with an open
end in a loop asks a provider once per bar, not once per call. Errors are the library's
(`MarketCacheError` tree; `MarketCacheWarning` under `strict=False`), nothing is printed, and
the provider sessions are built once and reused, so calling it in a loop leaks neither
sessions nor threads (`close()` or `with` releases them).
"""

from __future__ import annotations

import os
import threading
import warnings
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import pandas as pd

from marketcache.cache.facade import UnifiedCache
from marketcache.config.parser import default_settings, load_settings
from marketcache.config.schema import Settings
from marketcache.core.symbols import normalize_symbol
from marketcache.core.timeframes import Timeframe, parse_timeframe
from marketcache.errors import (
    LockTimeout,
    MarketCacheWarning,
    ProviderUnavailable,
    SymbolNotFound,
)
from marketcache.pipeline.jobs import DEFAULT_LOOKBACK, PopulateRequest, build_jobs
from marketcache.providers.base import Provider


@dataclass(frozen=True)
class _Asked:
    """A range this DataManager had filled: [start, end) asked, every bar closed before
    `through` asked for (a later call needs asking only for bars closing after it)."""

    start: pd.Timestamp
    through: pd.Timestamp


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
        self._asked: dict[tuple[str, str, str | None], _Asked] = {}  # per series and provider
        self._asked_lock = threading.Lock()
        self._warned: set[str] = set()  # warnings of the runs said once a DataManager
        self._live: Any = None
        self.live_options: dict[str, Any] = {}  # Follower options of the live calls

    def __repr__(self) -> str:
        from marketcache.storage.urls import redact

        return f"DataManager({redact(str(self.cache.root))!r})"

    # ---- lifecycle -------------------------------------------------------------------------

    @property
    def providers(self) -> dict[str, Provider]:
        if self._providers is None:
            from marketcache.providers.registry import build_providers

            self._providers = build_providers(self.settings, self.cache.state_dir)
        return self._providers

    def close(self) -> None:
        """Close the provider sessions (a later call builds new ones) and stop the followers
        of `get_ohlcv(..., live=True)`."""
        if self._live is not None:
            self._live.close()
            self._live = None
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
        strict: bool = True,
        output_format: str = "pandas",
        live: bool = False,
    ) -> Any:
        """Bars of [start, end), fetching what the cache lacks first (unless `fetch_missing`
        is False: then a pure read, and an unstored range gives an empty frame), as
        `output_format` says: "pandas", "arrow" (a pyarrow Table) or "polars".

        `live=True` (pandas only): also the bars closed since, and the bar still forming as
        the last row, with a `closed` column (False only there). The series is then followed
        by a follower in this process (a Binance stream, or polling) until `close()`.

        A range that no provider could serve raises `ProviderUnavailable` (`strict`, the
        default), or with `strict=False` gives what is cached with a `MarketCacheWarning`
        naming the failed ranges. An unknown symbol and a held lock raise either way."""
        from marketcache.core.outputs import check_output_format

        check_output_format(output_format)  # before anything is fetched
        sym, tf = normalize_symbol(symbol), parse_timeframe(timeframe).name
        if live and output_format != "pandas":
            from marketcache.errors import UsageError

            raise UsageError(f"live=True gives a pandas frame: output_format={output_format!r}")
        if fetch_missing:
            failure = self._fill(sym, tf, start, end, provider)
            if failure is not None and strict:
                raise ProviderUnavailable(failure, symbol=sym)
            if failure is not None:
                warnings.warn(f"{failure}; returning what is cached", MarketCacheWarning, 2)
        if live:
            return self._live_frames().frame(sym, tf, start, end, adjust=adjust)
        return self.cache.get(sym, tf, start, end, adjust=adjust, output_format=output_format)

    # ---- live ------------------------------------------------------------------------------

    def _live_frames(self) -> Any:
        from marketcache.live.feed import LiveFrames

        with self._asked_lock:
            if self._live is None:
                self._live = LiveFrames(self.cache, **self.live_options)
            return self._live

    def stream(self, symbols: str | list[str], timeframe: str, **options: Any) -> Any:
        """A blocking iterator of closed bars (`LiveBar`: symbol, timeframe, bar, closed) as
        they are committed to the cache; leaving the loop stops its follower. `options` go
        to the `Follower` (e.g. flush_every=2.0)."""
        from marketcache.live.feed import stream

        return stream(self.cache, _series(symbols, timeframe),
                      **{**self.live_options, **options})  # fmt: skip

    def get_live_feed(
        self, symbols: str | list[str], timeframe: str, on_bar: Any, **options: Any
    ) -> Any:
        """Follow the symbols in a background thread, calling `on_bar(LiveBar)` with each bar
        once it is committed; `feed.stop()` returns promptly and leaves no thread."""
        from marketcache.live.feed import LiveFeed

        feed = LiveFeed(self.cache, _series(symbols, timeframe), on_bar,
                        **{**self.live_options, **options})  # fmt: skip
        return feed.start()

    def _fill(self, sym: str, tf: str, start: Any, end: Any, provider: str | None) -> str | None:
        """Fetch what [start, end) lacks; the failure of the ranges no provider could serve
        (None: every range was served or answered)."""
        from marketcache.core.models import utcnow
        from marketcache.pipeline.populate import run_populate

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
        job, now, key = jobs[0], utcnow(), (sym, tf, provider)
        with self._asked_lock:
            asked = self._asked.get(key)
        if asked is not None and not self._may_have_closed(sym, tf, job.start, job.end, asked):
            return None
        report = run_populate(self.cache, jobs, request, providers=self.providers)
        for warning in report.warnings:  # a provider left out, one run unthrottled: said once
            if warning not in self._warned:
                self._warned.add(warning)
                warnings.warn(warning, MarketCacheWarning, 3)
        result = report.results[0]
        if result.status == "locked":
            raise LockTimeout(result.errors[0])
        failed = result.status == "failed" or (result.status == "partial" and result.errors)
        if failed:
            message = result.errors[0] if result.errors else "no provider answered"
            if result.refused:
                raise SymbolNotFound(message, symbol=sym)
            return f"{sym} {tf}: {message}"
        through = min(job.end, Timeframe(tf).floor(now))
        begin = job.start
        if asked is not None and asked.start <= begin <= asked.through:  # joins the earlier
            begin, through = asked.start, max(through, asked.through)
        with self._asked_lock:
            self._asked[key] = _Asked(begin, through)
        return None

    def _may_have_closed(
        self, sym: str, tf: str, start: pd.Timestamp, end: pd.Timestamp, asked: _Asked
    ) -> bool:
        """Whether [start, end) may hold a bar not asked for yet: it starts before what was
        asked, or a bar the calendar expects has closed since."""
        from marketcache.core.calendars import expected_bars
        from marketcache.core.models import utcnow

        if start < asked.start:
            return True
        closed = min(end, Timeframe(tf).floor(utcnow()))
        calendar = self.cache.profile(sym).calendar
        return len(expected_bars(calendar, Timeframe(tf), asked.through, closed)) > 0

    def get_many(
        self,
        symbols: list[str],
        timeframe: str,
        start: Any = None,
        end: Any = None,
        *,
        adjust: str = "none",
        fetch_missing: bool = True,
        strict: bool = True,
        output_format: str = "pandas",
    ) -> Any:
        """One frame for several symbols, with a `symbol` column first (as `output_format`
        says: "pandas", "arrow" or "polars")."""
        from marketcache.core.outputs import check_output_format, convert

        check_output_format(output_format)
        frames = [
            self.get_ohlcv(
                s,
                timeframe,
                start,
                end,
                adjust=adjust,
                fetch_missing=fetch_missing,
                strict=strict,
            ).assign(symbol=normalize_symbol(s))
            for s in symbols
        ]
        if not frames and output_format == "pandas":
            return pd.DataFrame()
        if not frames:
            from marketcache.core.frames import empty_frame

            frames = [empty_frame().assign(symbol=pd.Series([], dtype=str))]
        out = pd.concat(frames, ignore_index=True)
        out = out[["symbol", *[c for c in out.columns if c != "symbol"]]]
        return convert(out, output_format)

    def latest(self, symbols: list[str], timeframe: str) -> pd.DataFrame:
        """The last stored bar of each symbol, the live tail included (a read: nothing is
        fetched)."""
        from marketcache.cache.tail import read_tail

        rows = []
        tf = parse_timeframe(timeframe).name
        for s in symbols:
            sym = normalize_symbol(s)
            live = read_tail(self.cache.backend, sym, tf)  # before the years: folds move bars on
            years = self.cache.list_years(sym, tf)
            bars = self.cache.read_year(sym, tf, years[-1]) if years else live.iloc[:0]
            if len(live) and (
                not len(bars) or live["timestamp"].iloc[-1] > bars["timestamp"].iloc[-1]
            ):
                bars = live
            if len(bars):
                rows.append(bars.iloc[[-1]].assign(symbol=sym))
        if not rows:
            return pd.DataFrame(columns=["symbol", "timestamp"])
        out = pd.concat(rows, ignore_index=True)
        return out[["symbol", *[c for c in out.columns if c != "symbol"]]]

    def availability(self) -> pd.DataFrame:
        """Per symbol × timeframe: first, last, rows, quality (the worst year), missing ranges,
        missing bars, and whether it is stale (behind the calendar by more than one bar)."""
        from marketcache.cache.tail import read_tail
        from marketcache.core.frames import iso

        rows = []
        for sym in self.cache.list_symbols():
            for tf in self.cache.list_timeframes(sym):
                series = self.cache.series(sym, tf)
                live = read_tail(
                    self.cache.backend, sym, tf
                )  # before the records: folds move bars on
                recs = [series.record(y) for y in series.years()]
                stored = [r for r in recs if r.rows]
                last = stored[-1].end_date if stored else None
                if last is not None:  # the live tail's bars after the years' last
                    live = live[live["timestamp"] > pd.Timestamp(last)]
                first_live = iso(live["timestamp"].iloc[0]) if len(live) else None
                if len(live):
                    last = iso(live["timestamp"].iloc[-1])
                rows.append(
                    {
                        "symbol": sym,
                        "timeframe": tf,
                        "first": stored[0].start_date if stored else first_live,
                        "last": last,
                        "rows": sum(r.rows for r in recs) + len(live),
                        "quality": min((r.score for r in recs if r.scored), default=None),
                        "missing": sum(len(r.coverage.missing_ranges) for r in recs),
                        "missing_bars": sum(
                            r.counts.unfilled_bars + r.counts.missing_bars for r in recs
                        ),
                        "stale": series.freshness(records=recs, last=last).stale,
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
        """The combined fundamentals of `symbol` (see `pipeline/fundamentals.py`)."""
        from marketcache.pipeline.fundamentals import get_fundamentals

        return get_fundamentals(
            self.cache, self.providers, normalize_symbol(symbol), max_age=max_age, only=provider
        )


def _series(symbols: str | list[str], timeframe: str) -> list[tuple[str, str]]:
    names = [symbols] if isinstance(symbols, str) else list(symbols)
    return [(s, t.name) for s in names for t in _timeframes(timeframe)]


def _timeframes(text: str) -> list[Timeframe]:
    from marketcache.core.timeframes import parse_timeframes

    return parse_timeframes(text)
