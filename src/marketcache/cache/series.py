"""One series of a cache — symbol × timeframe, its key normalised once — and the work done on
it: its lock, writer, validator, records and actions; what populate plans from (`state`); keeping
`adj_close` true (`readjust`). `UnifiedCache.series(symbol, timeframe)` hands one out.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from marketcache.cache.catalog import Catalog
from marketcache.config.schema import Settings
from marketcache.core.actions import CorporateActions, Dividend, Split, merge_actions
from marketcache.core.records import now_stamp
from marketcache.core.symbols import AssetClass, classify
from marketcache.core.timeframes import Timeframe
from marketcache.errors import CorruptFile
from marketcache.storage.backend import Key, StorageBackend

ACTIONS_FILE = "corporate_actions.json"

if TYPE_CHECKING:
    import pandas as pd

    from marketcache.cache.writes import SeriesWriter, YearWrite
    from marketcache.core.freshness import Freshness
    from marketcache.core.records import YearRecord
    from marketcache.core.validate import OHLCVValidator


@dataclass
class PutResult:
    symbol: str
    timeframe: str
    years: list[YearWrite] = field(default_factory=list)

    @property
    def rows_added(self) -> int:
        return sum(y.rows_added for y in self.years)

    @property
    def rows_updated(self) -> int:
        return sum(y.rows_updated for y in self.years)


@dataclass
class Ledger:
    """A commit's coverage change: ranges answered empty (with when and why), ranges still
    missing (with why), ranges filled."""

    verified_empty: Iterable[tuple[Any, pd.Timestamp, str]] = ()
    missing: Iterable[tuple[Any, str]] = ()
    resolved: Iterable[Any] = ()


@dataclass
class SeriesState:
    """A series as populate plans from it (see `Series.state`)."""

    present: Any = None  # numpy datetime64[ns] array of stored bar times
    verified_empty: list[Any] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SymbolProfile:
    symbol: str
    asset_class: AssetClass
    calendar: str


def profile_of(settings: Settings, sym: str) -> SymbolProfile:
    """A normalised symbol's asset class and exchange calendar (configured or classified)."""
    from marketcache.core.calendars import calendar_for

    conf = settings.symbol(sym)
    asset = classify(sym, conf.type.value if conf.type else None)
    return SymbolProfile(sym, asset, calendar_for(sym, asset, conf.calendar))


class Series:
    """One symbol × timeframe of a cache. `symbol` is normalised and `timeframe` parsed by
    whoever makes it (`UnifiedCache.series`); nothing here normalises again."""

    def __init__(
        self,
        backend: StorageBackend,
        settings: Settings,
        catalog: Catalog,
        symbol: str,
        timeframe: Timeframe,
        *,
        lock_wait: float,
        fold: Callable[[Series], object] | None = None,
    ) -> None:
        self.backend = backend
        self.settings = settings
        self.catalog = catalog
        self.symbol = symbol
        self.timeframe = timeframe
        self.tf = timeframe.name
        self.lock_wait = lock_wait
        self._fold = fold  # folds the live tail into the years (see cache/tail.py)

    def __repr__(self) -> str:
        return f"Series({self.symbol!r}, {self.tf!r})"

    @cached_property
    def profile(self) -> SymbolProfile:
        return profile_of(self.settings, self.symbol)

    @property
    def adjusts(self) -> bool:
        """Whether this series carries an `adj_close` (daily or longer, not crypto)."""
        return not self.timeframe.is_intraday and self.profile.asset_class is not AssetClass.CRYPTO

    def key(self, year: int) -> Key:
        return Key(self.symbol, self.tf, year)

    def where(self, key: Key) -> str:
        return self.backend.where(key)

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """The series lock (re-entrant in this process)."""
        return self.backend.lock(self.symbol, self.tf, wait=self.lock_wait)

    def actions(self) -> CorporateActions:
        """Every split and dividend known for the symbol (empty when none was ever seen)."""
        return read_actions(self.backend, self.symbol)

    def record_actions(
        self,
        splits: list[Split],
        dividends: list[Dividend],
        *,
        source: str,
        checked_through: str | None = None,
    ) -> bool:
        """Merge newly seen actions into SYMBOL/corporate_actions.json (atomically, under the
        symbol's actions lock); True when a price-adjusting fact changed."""
        with self.backend.lock(self.symbol, "actions", wait=self.lock_wait):
            return record_actions(
                self.backend, self.symbol, splits, dividends, source, checked_through
            )

    def validator(self) -> OHLCVValidator:
        from marketcache.core.validate import OHLCVValidator

        prof = self.profile
        splits = {}
        if prof.asset_class is not AssetClass.CRYPTO:
            splits = {s.date: s.ratio for s in self.actions().splits}
        return OHLCVValidator(self.timeframe, prof.calendar, prof.asset_class, splits=splits)

    def writer(self) -> SeriesWriter:
        """A writer of this series' years; the caller holds `lock()`."""
        from marketcache.cache.writes import SeriesWriter

        return SeriesWriter(self.backend, self.settings, self.validator(), self.symbol, self.tf)

    def years(self) -> list[int]:
        return self.backend.years(self.symbol, self.tf)

    def record(self, year: int) -> YearRecord:
        return self.backend.read_record(self.key(year))

    def commit(
        self,
        df: pd.DataFrame,
        provider: str = "unknown",
        ledger: Ledger | None = None,
        sources: list[tuple[str, pd.Timestamp, pd.Timestamp]] | None = None,
    ) -> PutResult:
        """Commit one fetched range with its coverage change, year by year (rows and ledger in
        one record each), and refresh the index once. `sources` says which source filled which
        part of the range when it did not all come from `provider`."""
        from marketcache.core.coverage import by_year
        from marketcache.core.frames import normalize_frame

        frame = normalize_frame(df, sessions=not self.timeframe.is_intraday)
        ledger = ledger or Ledger()
        changes = by_year(
            verified_empty=ledger.verified_empty,
            missing=ledger.missing,
            resolved=ledger.resolved,
            now=now_stamp(),
        )
        result = PutResult(self.symbol, self.tf)
        years = frame["timestamp"].dt.year.to_numpy()
        if frame.empty and not changes:
            return result
        with self.lock():
            if self._fold is not None:
                self._fold(self)  # the live tail first: its bars stay the newest of the series
            writer = self.writer()
            writer.sources = list(sources or [])
            for year in sorted({*map(int, set(years)), *changes}):
                key, change = self.key(year), changes.get(year)
                part = frame[years == year].reset_index(drop=True)
                if len(part):
                    result.years.append(writer.put_year(key, part, provider, change))
                elif change is not None:
                    writer.write_coverage(key, writer.previous(key), change)
            self.catalog.refresh(self.symbol, self.tf)
        return result

    def update_coverage(self, ledger: Ledger) -> None:
        """Record ranges answered empty (with when), still missing (with why), or filled."""
        from marketcache.core.frames import empty_frame

        self.commit(empty_frame(), "none", ledger)

    def freshness(
        self,
        *,
        max_age: pd.Timedelta | None = None,
        records: list[YearRecord] | None = None,
        last: str | None = None,
    ) -> Freshness:
        """How far the newest stored bar (`last`, else the newest of the years' `records`,
        read when not given) is behind the calendar."""
        from marketcache.core.freshness import freshness

        if last is None:
            if records is None:
                records = [self.record(y) for y in self.years()]
            last = next((r.end_date for r in reversed(records) if r.rows), None)
        return freshness(self.symbol, self.tf, self.profile.calendar, last, max_age=max_age)

    def remove_stale_temp_files(self) -> list[str]:
        with self.lock():
            return self.backend.housekeeping(self.symbol, self.tf)

    def quarantine(self, year: int) -> str | None:
        """Move a corrupt year aside (never delete it) so it can be fetched again."""
        with self.lock():
            aside = self.backend.quarantine(self.key(year))
            self.catalog.refresh(self.symbol, self.tf)
        return aside

    def state(self, years: Iterable[int], expected: Any, *, repair: bool) -> SeriesState:
        """What populate plans from: the stored bar times of `years` (from the records when a
        year is gap-free, else read), the ranges verified empty, and notes. Each year's data
        is checked against its record first; with `repair` (lock held) a corrupt year is
        moved aside so that it is fetched again."""
        import numpy as np
        import pandas as pd

        from marketcache.core.gaps import VerifiedEmpty

        state, years = SeriesState(), list(years)
        stored = set(self.years())
        present: list[Any] = []
        for year in (y for y in years if y in stored):
            try:
                rec = self._year_state(self.key(year), expected, present)
            except CorruptFile as exc:
                if repair:
                    aside = self.quarantine(year)
                    state.notes.append(f"{exc}; moved aside as {aside or '-'}")
                else:
                    state.notes.append(f"{exc}; a run would move it aside and fetch it again")
                continue
            if rec is None:
                continue  # removed since it was listed (a dry run holds no lock)
            for ve in rec.coverage.verified_empty:
                checked = pd.Timestamp(ve["checked_at"])
                if checked.tzinfo is not None:
                    checked = checked.tz_convert("UTC").tz_localize(None)
                state.verified_empty.append(
                    VerifiedEmpty(pd.Timestamp(ve["start"]), pd.Timestamp(ve["end"]), checked)
                )
        from marketcache.storage.tail import open_tail

        live = open_tail(self.backend, self.symbol, self.tf).read()["timestamp"].to_numpy()
        if len(live):  # the live tail's bars are stored: not fetched again (a commit folds them)
            present.append(live[np.isin(pd.DatetimeIndex(live).year, years)])
        found = np.concatenate(present) if present else np.zeros(0, "datetime64[ns]")
        state.present = np.unique(found) if len(live) else found
        return state

    def _year_state(self, key: Key, expected: Any, present: list[Any]) -> YearRecord | None:
        """One year's verified record (None: gone), its stored bar times added to `present` —
        from the record when the year is gap-free, else read. Reads take no lock, so a populate
        --dry-run racing a writer reads the year's old state or its new one."""
        import pandas as pd

        rec = self.backend.verify_year(key)
        if rec is None or not rec.rows or rec.start_date is None or rec.end_date is None:
            return rec
        counts = rec.counts
        if counts.missing_bars == 0 and counts.off_calendar == 0 and counts.rows:
            first, last = pd.Timestamp(rec.start_date), pd.Timestamp(rec.end_date)
            inside = expected[(expected >= first) & (expected <= last)]
            present.append(inside.to_numpy(dtype="datetime64[ns]"))  # no read needed
            return rec
        found = self.backend.read_year(key)
        if found is None:
            return None
        rec, df = found
        present.append(df["timestamp"].to_numpy(dtype="datetime64[ns]"))
        return rec

    def readjust(self) -> list[int]:
        """Recompute `adj_close` of every stored year from the closes and the known actions;
        rewrite (crash-safe) the years whose values changed. Returns those years."""
        import numpy as np
        import pandas as pd

        from marketcache.core.actions import adj_close
        from marketcache.core.frames import SAME

        if not self.adjusts:
            return []
        actions, rewritten = self.actions(), []
        backend = self.backend
        with self.lock():
            keys = backend.keys(self.symbol, self.tf)
            records = [backend.read_record(k) for k in keys]
            frames = [backend.read_rows(k, r) for k, r in zip(keys, records, strict=True)]
            if not frames or not sum(len(f) for f in frames):
                return []
            fresh = adj_close(pd.concat(frames, ignore_index=True), actions)
            writer, offset = self.writer(), 0
            for key, rec, df in zip(keys, records, frames, strict=True):
                values, offset = fresh[offset : offset + len(df)], offset + len(df)
                if df.empty or (
                    "adj_close" in df.columns
                    and np.allclose(
                        df["adj_close"].to_numpy("float64"), values, rtol=SAME, atol=0.0
                    )
                ):
                    continue
                writer.rewrite(
                    key, rec, df.assign(adj_close=values), rec.data_source, record_source=False
                )
                rewritten.append(key.year)
            if rewritten:
                self.catalog.refresh(self.symbol, self.tf)
        return rewritten


def read_actions(backend: StorageBackend, sym: str) -> CorporateActions:
    raw = backend.read_document(sym, ACTIONS_FILE)
    if raw is None:
        return CorporateActions(sym)
    try:
        return CorporateActions.from_json(json.loads(raw))
    except (TypeError, ValueError, AttributeError) as exc:
        why = f"corporate actions are unreadable ({exc})"
        raise CorruptFile(f"{sym}/{ACTIONS_FILE}", why) from None


def record_actions(
    backend: StorageBackend,
    sym: str,
    splits: list[Split],
    dividends: list[Dividend],
    source: str,
    checked_through: str | None,
) -> bool:
    """Merge and write (the caller holds the symbol's actions lock); True when an adjusting
    fact changed."""
    known = read_actions(backend, sym)
    merged, changed = merge_actions(
        known, splits, dividends, source=source, checked_through=checked_through, now=now_stamp()
    )
    if merged.as_json() != known.as_json():
        text = json.dumps(merged.as_json(), indent=2) + "\n"
        backend.write_document(sym, ACTIONS_FILE, text.encode("utf-8"))
    return changed
