"""UnifiedCache: the one way bars get into and out of a cache, whatever stores it.

A facade: symbol and timeframe are normalised once into a `Key`, the series lock is taken,
and the work is delegated — `writes` decides what a year becomes, `coverage` keeps the ledger
of missing and empty ranges, `actions` the corporate actions, `repair` and `retention` the
maintenance, `catalog` the index and the answers of `list`/`info`, and the backend (files,
csv.gz or Parquet, local or on object storage; PostgreSQL) stores bytes and commits records.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from marketcache.cache.catalog import Catalog
from marketcache.cache.retention import CleanupAction
from marketcache.cache.series import (
    Ledger,
    PutResult,
    Series,
    SeriesState,
    SymbolProfile,
    profile_of,
    read_actions,
)
from marketcache.cache.tail import fold_locked
from marketcache.config.parser import default_settings
from marketcache.config.schema import Settings
from marketcache.core.actions import CorporateActions, Dividend, Split
from marketcache.core.records import YearRecord
from marketcache.core.symbols import normalize_symbol
from marketcache.core.timeframes import parse_timeframe
from marketcache.errors import CorruptFile
from marketcache.storage.backend import Key, StorageBackend
from marketcache.storage.open import open_backend
from marketcache.storage.urls import redact

if TYPE_CHECKING:
    from pathlib import Path

    import pandas as pd

    from marketcache.cache.repair import YearCheck
    from marketcache.cache.writes import SeriesWriter
    from marketcache.core.freshness import Freshness
    from marketcache.core.validate import OHLCVValidator


class UnifiedCache:
    """Read and write OHLCV bars in the cache at `root` (a folder, an fsspec URL, or a
    postgresql:// URL — every form `--cache-dir` takes)."""

    def __init__(
        self,
        root: str | os.PathLike[str] | StorageBackend = "data-cache",
        *,
        settings: Settings | None = None,
        lock_wait: float | None = None,
    ) -> None:
        self.settings = settings if settings is not None else default_settings()
        self.backend = (
            root if isinstance(root, StorageBackend) else open_backend(root, self.settings)
        )
        self.lock_wait = lock_wait if lock_wait is not None else self.settings.options.lock_wait
        self.catalog = Catalog(self.backend, self.settings, lock_wait=self.lock_wait)

    def __repr__(self) -> str:
        return f"UnifiedCache({redact(str(self.root))!r})"

    @property
    def root(self) -> Any:
        """The cache folder (file backends) or its URL."""
        return getattr(self.backend, "root", self.backend.location)

    @property
    def layout(self) -> Any:
        return self.backend.layout  # type: ignore[attr-defined]

    @property
    def state_dir(self) -> Path:
        """Where this machine keeps provider state (see `StorageBackend.state_dir`)."""
        return self.backend.state_dir

    # ---- symbols ---------------------------------------------------------------------------

    def series(self, symbol: str, timeframe: str) -> Series:
        """One series of this cache, its key normalised once: its lock, writer, validator,
        records and actions (see `cache.series`)."""
        return Series(
            self.backend,
            self.settings,
            self.catalog,
            normalize_symbol(symbol),
            parse_timeframe(timeframe),
            lock_wait=self.lock_wait,
            fold=fold_locked,
        )

    def profile(self, symbol: str) -> SymbolProfile:
        return profile_of(self.settings, normalize_symbol(symbol))

    def validator(self, symbol: str, timeframe: str) -> OHLCVValidator:
        return self.series(symbol, timeframe).validator()

    def adjusts(self, symbol: str, timeframe: str) -> bool:
        """Whether this series carries an `adj_close` (daily or longer, not crypto)."""
        return self.series(symbol, timeframe).adjusts

    def lock(self, symbol: str, timeframe: str) -> contextlib.AbstractContextManager[None]:
        """The per symbol × timeframe lock (re-entrant in this process)."""
        return self.series(symbol, timeframe).lock()

    def writer(self, symbol: str, timeframe: str) -> SeriesWriter:
        return self.series(symbol, timeframe).writer()

    # ---- corporate actions -----------------------------------------------------------------

    def get_actions(self, symbol: str) -> CorporateActions:
        """Every split and dividend known for `symbol` (empty when none was ever seen)."""
        return read_actions(self.backend, normalize_symbol(symbol))

    def record_actions(
        self,
        symbol: str,
        splits: list[Split],
        dividends: list[Dividend],
        *,
        source: str,
        checked_through: str | None = None,
    ) -> bool:
        """Merge newly seen actions into SYMBOL/corporate_actions.json (atomically); True when
        a price-adjusting fact changed, so stored `adj_close` must be redone."""
        from marketcache.cache.series import record_actions

        sym = normalize_symbol(symbol)
        with self.backend.lock(sym, "actions", wait=self.lock_wait):
            return record_actions(self.backend, sym, splits, dividends, source, checked_through)

    def readjust(self, symbol: str, timeframe: str) -> list[int]:
        """Recompute `adj_close` from the closes and the known actions (see `Series.readjust`)."""
        return self.series(symbol, timeframe).readjust()

    # ---- write -----------------------------------------------------------------------------

    def put(
        self, df: pd.DataFrame, symbol: str, timeframe: str, provider: str = "unknown"
    ) -> PutResult:
        """Merge `df` into the cache: new values win at equal timestamps, but a missing (NaN or
        absent) new value never erases a stored one; nothing cached is lost. A tz-aware daily
        frame is stored under its local session dates."""
        return self.commit_range(df, symbol, timeframe, provider)

    def commit_range(
        self,
        df: pd.DataFrame,
        symbol: str,
        timeframe: str,
        provider: str = "unknown",
        *,
        ledger: Ledger | None = None,
        sources: list[tuple[str, pd.Timestamp, pd.Timestamp]] | None = None,
    ) -> PutResult:
        """Commit one fetched range with its coverage change, year by year (rows and ledger in
        one record each), and refresh the index once (see `Series.commit`)."""
        return self.series(symbol, timeframe).commit(df, provider, ledger, sources)

    def update_coverage(
        self,
        symbol: str,
        timeframe: str,
        *,
        verified_empty: Iterable[tuple[Any, pd.Timestamp, str]] = (),
        missing: Iterable[tuple[Any, str]] = (),
        resolved: Iterable[Any] = (),
    ) -> None:
        """Record ranges answered empty (with when), still missing (with why), or filled."""
        self.series(symbol, timeframe).update_coverage(
            Ledger(verified_empty=verified_empty, missing=missing, resolved=resolved)
        )

    # ---- read ------------------------------------------------------------------------------

    def record(self, symbol: str, timeframe: str, year: int) -> YearRecord:
        return self.backend.read_record(Key.of(symbol, timeframe, year))

    def metadata(self, symbol: str, timeframe: str, year: int) -> dict[str, Any]:
        """A year's record as its JSON."""
        return self.record(symbol, timeframe, year).to_json()

    def read_year(self, symbol: str, timeframe: str, year: int) -> pd.DataFrame:
        """One year's rows as committed (no lock: a commit racing the read is read again);
        CorruptFile if they do not match the record; empty when the year is not stored."""
        from marketcache.core.frames import empty_frame

        found = self.backend.read_year(Key.of(symbol, timeframe, year))
        return empty_frame() if found is None else found[1]

    def verify_year(self, symbol: str, timeframe: str, year: int) -> None:
        """Check a year's committed data against its record without parsing it."""
        self.backend.verify_year(Key.of(symbol, timeframe, year))

    def get(
        self,
        symbol: str,
        timeframe: str,
        start: Any = None,
        end: Any = None,
        *,
        adjust: str = "none",
        output_format: str = "pandas",
    ) -> Any:
        """Bars in [start, end) across years and the live tail, sorted, with a `timestamp`
        column.

        `adjust`: "none" as stored (as traded); "splits" divides prices and multiplies volume
        by the splits after each bar; "all" also applies dividends (back-adjusted total return).
        `output_format`: "pandas" (a DataFrame, the default), "arrow" (a pyarrow Table) or
        "polars" (a polars DataFrame); see `core/outputs.py` for the Arrow schema.
        """
        from marketcache.cache.reads import get

        return get(self.series(symbol, timeframe), start, end, adjust, output_format)

    def range_records(
        self, symbol: str, timeframe: str, start: Any = None, end: Any = None
    ) -> list[YearRecord]:
        """The committed records of the years a `get` of [start, end) reads, in order. Their
        `file_info.sha256` name exactly the bytes such a read decodes, so they can key a cache
        of results or an HTTP ETag, and a change in them is a commit (records only: cheap).
        The live tail, when it holds bars in range, comes last as a `TailRecord` (year 0)
        that carries its rows; rows of it that a year holds too are the year's."""
        from marketcache.cache.reads import range_records

        series = self.series(symbol, timeframe)
        return range_records(self.backend, series.symbol, series.tf, start, end)

    def read_committed(self, record: YearRecord) -> tuple[YearRecord, pd.DataFrame]:
        """The rows `record` committed, with the record they were read as: when a newer commit
        replaced the year after `record` was read, that commit's record and rows (never a mix).
        CorruptFile when the year's bytes match neither. A `TailRecord` gives its rows."""
        from marketcache.cache.reads import read_committed

        return read_committed(self.backend, record)

    def verify_committed(self, record: YearRecord) -> None:
        """CorruptFile unless the year's data is what `record` committed (or what a newer
        commit replaced it with); by checksum where the backend can, without decoding."""
        from marketcache.cache.reads import verify_committed

        verify_committed(self.backend, record)

    # ---- live bars (cache/tail.py) ---------------------------------------------------------

    def append_live(self, symbol: str, timeframe: str, bars: pd.DataFrame) -> int:
        """Store closed bars (a DatetimeIndex or `timestamp` column, UTC; open/high/low/close/
        volume) durably in the series' live tail: when it returns they survive a crash or
        SIGKILL, and every reader sees them. Takes the series lock for this call only. Bars
        already stored (in a year or the tail) are skipped; the rows added. A bar the validator
        would refuse raises UsageError naming it, and nothing is stored."""
        from marketcache.cache.tail import append_live

        return append_live(self.series(symbol, timeframe), bars)

    def fold_live(self, symbol: str, timeframe: str, *, force: bool = False) -> int:
        """Fold the live tail into its year(s) through the normal commit path, under the
        series lock, once it holds `settings.live_fold_every` of bars (or `force`); the rows
        folded."""
        from marketcache.cache.tail import fold_live

        return fold_live(self.series(symbol, timeframe), force=force)

    def last_stored(self, symbol: str, timeframe: str) -> pd.Timestamp | None:
        """The open time of the last stored bar, the live tail included (None: none)."""
        from marketcache.cache.tail import last_stored

        return last_stored(self.series(symbol, timeframe))

    def list_symbols(self) -> list[str]:
        """The symbols with a stored year or a live tail (a series a follower started is
        listed before its first fold)."""
        stored = {s for s in self.backend.symbols() if self.backend.timeframes(s)}
        return sorted(stored | {s for s, _ in self.backend.listed_tails()})

    def list_timeframes(self, symbol: str) -> list[str]:
        """The symbol's timeframes with a stored year or a live tail, shortest first."""
        sym = normalize_symbol(symbol)
        found = set(self.backend.timeframes(sym)) | {t for _, t in self.backend.listed_tails(sym)}
        return sorted(found, key=lambda t: parse_timeframe(t).minutes)

    def list_years(self, symbol: str, timeframe: str) -> list[int]:
        return self.series(symbol, timeframe).years()

    def iter_metadata(
        self, symbol: str | None = None, timeframe: str | None = None
    ) -> Iterator[tuple[str, str, int, dict[str, Any] | CorruptFile]]:
        """Every (symbol, tf, year, record-JSON-or-error) in scope; reads records only."""
        sym = normalize_symbol(symbol) if symbol else None
        tf = parse_timeframe(timeframe).name if timeframe else None
        for key, rec in self.catalog.records(sym, tf):
            yield (
                key.symbol,
                key.timeframe,
                key.year,
                rec if isinstance(rec, CorruptFile) else rec.to_json(),
            )

    def get_data_info(self, symbol: str, timeframe: str | None = None) -> dict[str, Any]:
        """Per timeframe and year: rows, range, provider, quality, gaps, size, and the
        symbol's corporate actions (records only)."""
        sym = normalize_symbol(symbol)
        info = self.catalog.data_info(sym, parse_timeframe(timeframe).name if timeframe else None)
        info["corporate_actions"] = read_actions(self.backend, sym).as_json()
        return info

    def freshness(
        self,
        symbol: str | None = None,
        timeframe: str | None = None,
        *,
        max_age: str | None = None,
    ) -> list[Freshness]:
        """How fresh every series in scope is (`max_age` e.g. "36h": stale when the first bar
        due after the newest stored one closed longer ago); reads the records, and the live
        tail of a followed series (its last bar is the newest stored)."""
        from marketcache.cache.tail import last_stored
        from marketcache.core.frames import iso
        from marketcache.core.freshness import parse_age

        age = parse_age(max_age) if max_age else None
        sym = normalize_symbol(symbol) if symbol else None
        live = set(self.backend.listed_tails(sym))  # the listing `list_symbols` uses too
        found = []
        for s in [sym] if sym else self.list_symbols():
            for t in [parse_timeframe(timeframe).name] if timeframe else self.list_timeframes(s):
                series = self.series(s, t)
                # a followed series is as fresh as its live tail, not as its last fold
                last = last_stored(series) if (s, t) in live else None
                found.append(series.freshness(max_age=age, last=iso(last) if last else None))
        return found

    def get_stats(self) -> dict[str, Any]:
        return self.catalog.stats()

    def rebuild_index(self) -> dict[str, Any]:
        return self.catalog.rebuild()

    # ---- maintenance -----------------------------------------------------------------------

    def remove_stale_temp_files(self, symbol: str, timeframe: str) -> list[str]:
        return self.series(symbol, timeframe).remove_stale_temp_files()

    def quarantine_year(self, symbol: str, timeframe: str, year: int) -> str | None:
        """Move a corrupt year aside (never delete it) so it can be fetched again."""
        return self.series(symbol, timeframe).quarantine(year)

    def years_on_disk(
        self, symbol: str | None = None, timeframe: str | None = None
    ) -> list[tuple[str, str, int]]:
        """Every (symbol, tf, year) that has data or a record, in scope."""
        out = []
        for sym in [normalize_symbol(symbol)] if symbol else self.backend.symbols():
            tfs = (
                [parse_timeframe(timeframe).name] if timeframe else self.backend.raw_timeframes(sym)
            )
            for tf in tfs:
                out += [(sym, tf, y) for y in self.backend.raw_years(sym, tf)]
        return out

    def check_year(
        self, symbol: str, timeframe: str, year: int, *, min_score: float, fix: bool = False
    ) -> YearCheck:
        """validate's verdict on one year (see `repair`)."""
        from marketcache.cache.repair import YearCheck, check_year

        series = self.series(symbol, timeframe)
        key = series.key(year)
        with series.lock():
            if key.year not in self.backend.raw_years(*key.series):
                # removed (by cleanup) after validate listed it: nothing to check, not corrupt
                return YearCheck(*key.series, key.year, series.where(key), "gone")
            check = check_year(
                series.writer(), key, series.where(key), min_score=min_score, fix=fix
            )
            self.catalog.refresh(key.symbol, key.timeframe)
        return check

    def cleanup_old_data(
        self,
        *,
        before: Any = None,
        older_than: str | None = None,
        keep_years: int | None = None,
        symbol: str | None = None,
        timeframe: str | None = None,
        dry_run: bool = False,
        now: pd.Timestamp | None = None,
    ) -> list[CleanupAction]:
        """Drop rows before a cutoff (`before`, an age `older_than` such as "400d", or Jan 1
        of the last `keep_years` years: the latest of those given)."""
        from marketcache.cache.retention import cut_series, cutoff
        from marketcache.cache.tail import live_series

        cut = cutoff(before=before, older_than=older_than, keep_years=keep_years, now=now)
        sym = normalize_symbol(symbol) if symbol else None
        tf = parse_timeframe(timeframe).name if timeframe else None
        actions: list[CleanupAction] = []
        for series in sorted({k.series for k in self.backend.keys(sym, tf)} | live_series(
                self.backend, sym, tf)):  # fmt: skip
            actions += cut_series(self.series(*series), cut, dry_run=dry_run)
        return actions

    def series_state(
        self, symbol: str, timeframe: str, years: Iterable[int], expected: Any, *, repair: bool
    ) -> SeriesState:
        """What populate plans from (see `Series.state`)."""
        return self.series(symbol, timeframe).state(years, expected, repair=repair)

    def cleanup_leftovers(self, *, dry_run: bool = False) -> list[CleanupAction]:
        """Remove temp files, records without data, data without records and empty folders
        (each series under its lock), and quarantined copies older than
        `settings.quarantine_days`."""
        found = self.backend.leftovers(dry_run=dry_run, wait=self.lock_wait)
        days = self.settings.options.quarantine_days
        aged = self.backend.purge_quarantine(days, dry_run=dry_run)
        if not dry_run and self.backend.exists():
            self.catalog.rebuild()
        return [CleanupAction(where, "remove-leftover", reason=why) for where, why in found] + [
            CleanupAction(where, "remove-quarantined", reason=why) for where, why in aged
        ]

    def where(self, key: Key) -> str:
        """A year's location for messages: its data file, or the backend and key."""
        return self.backend.where(key)
