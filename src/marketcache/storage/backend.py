"""The storage backend interface: a `Key` per year, a small protocol, optional fast paths.

Only a backend knows about paths, bytes, formats and transactions. Everything it stores is
a year's rows plus that year's record (the commit point), a few per-symbol documents
(corporate actions, fundamentals snapshots) and the derived index. Its one promise: a reader
sees a year's old state or its new one, never a mix, whatever instant a writer dies at.

Required of every backend: `keys`, `read_record`, `read_rows`, `write_year` (rows then record,
atomically), `write_record`, `delete`, `lock`, and the document calls. The rest are hooks with
defaults that a backend overrides when it can do better (an append that writes only the new
rows, a checksum check that does not parse, recovery of a commit a crash interrupted,
quarantine and salvage of damaged data, housekeeping).

Readers take no lock: `read_year` and `verify_year` read a year while writers may commit it,
and only a mismatch that persists against a record that stayed the same is corruption.
Writers hold the series lock and re-read the record under it before they decide anything.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from marketcache.core.symbols import normalize_symbol
from marketcache.core.timeframes import TIMEFRAMES, parse_timeframe
from marketcache.errors import CorruptFile
from marketcache.storage.lock import DEFAULT_WAIT

if TYPE_CHECKING:
    import pandas as pd

    from marketcache.core.records import YearRecord

READ_ATTEMPTS = 8  # a reader re-reads a year this often while writers commit it


@dataclass(frozen=True, order=True)
class Key:
    """One year of one series, normalised once at the boundary."""

    symbol: str
    timeframe: str
    year: int

    @classmethod
    def of(cls, symbol: str, timeframe: str, year: int) -> Key:
        return cls(normalize_symbol(symbol), parse_timeframe(timeframe).name, int(year))

    @property
    def series(self) -> tuple[str, str]:
        return self.symbol, self.timeframe

    def __str__(self) -> str:
        return f"{self.symbol} {self.timeframe} {self.year}"


class StorageBackend:
    """Base class: the required protocol (raising NotImplementedError) and default hooks."""

    name = "base"
    format = "csv.gz"  # the codec of the year data ("postgresql" for tables)
    appendable = False  # whether `append` can add rows without rewriting the year

    def __init__(self, location: str) -> None:
        self.location = location  # shown in messages; never holds a secret

    # ---- required ------------------------------------------------------------------------

    def exists(self) -> bool:
        raise NotImplementedError

    def keys(self, symbol: str | None = None, timeframe: str | None = None) -> list[Key]:
        """Every year with a record, sorted (symbol, timeframe already normalised)."""
        raise NotImplementedError

    def read_record(self, key: Key) -> YearRecord:
        raise NotImplementedError

    def read_rows(self, key: Key, record: YearRecord) -> pd.DataFrame:
        """The year's rows as `record` committed them; CorruptFile when they do not match."""
        raise NotImplementedError

    def write_year(self, key: Key, frame: pd.DataFrame, record: YearRecord) -> YearRecord:
        """Store `frame` as the whole year and commit `record` (its file_info filled in here)
        so that readers see the old year or the new one. Returns the committed record."""
        raise NotImplementedError

    def write_record(self, key: Key, record: YearRecord) -> None:
        """Replace the record alone (coverage, quality) — the data is unchanged."""
        raise NotImplementedError

    def delete(self, key: Key) -> None:
        raise NotImplementedError

    def lock(
        self, symbol: str, timeframe: str, *, wait: float
    ) -> contextlib.AbstractContextManager[None]:
        """One writer per series, across processes (and machines, where the backend can)."""
        raise NotImplementedError

    def read_document(self, symbol: str, name: str) -> bytes | None:
        """A per-symbol document (corporate_actions.json, fundamentals/…) or None."""
        raise NotImplementedError

    def write_document(self, symbol: str, name: str, data: bytes) -> None:
        """Write a per-symbol document atomically."""
        raise NotImplementedError

    def list_documents(self, symbol: str, prefix: str) -> list[str]:
        raise NotImplementedError

    def delete_document(self, symbol: str, name: str) -> None:
        raise NotImplementedError

    # ---- lockless reads -------------------------------------------------------------------

    def read_year(self, key: Key) -> tuple[YearRecord, pd.DataFrame] | None:
        """The year's record and the rows it committed, read without a lock; None when the
        year is gone (deleted or set aside since it was listed)."""
        return self._consistent(key, self.read_rows)

    def verify_year(self, key: Key) -> YearRecord | None:
        """The year's record, its data checked against it without a lock (None: gone)."""
        found = self._consistent(key, self.verify)
        return None if found is None else found[0]

    def _consistent(
        self, key: Key, step: Callable[[Key, YearRecord], Any]
    ) -> tuple[YearRecord, Any] | None:
        """`step(key, record)` on the year's current record. A writer may commit between
        the record read and the data read: on a mismatch the record is read again, and a
        changed record is tried afresh; the same record again means the data is corrupt."""
        record = self._current(key)
        for attempt in range(READ_ATTEMPTS):
            if record is None:
                return None
            try:
                return record, step(key, record)
            except CorruptFile:
                again = self._current(key)
                if again is not None and _same_commit(again, record):
                    raise
                if attempt == READ_ATTEMPTS - 1:
                    raise
                record = again
                time.sleep(0.002 * attempt)  # let a writer in mid-commit reach its record
        return None  # pragma: no cover - the loop returns or raises

    def _current(self, key: Key) -> YearRecord | None:
        try:
            return self.read_record(key)
        except CorruptFile:
            if key.year not in self.years(*key.series):
                return None  # gone: removed since it was listed
            raise

    # ---- optional hooks ------------------------------------------------------------------

    def check_usable(self) -> None:
        """Raise (UsageError, CorruptFile) now when the whole cache cannot be used — a
        PostgreSQL schema of another tool, a dropped column — so that a run stops once with
        that one error instead of failing every job with it. No request where nothing can
        be wrong before the first read (files, object storage)."""

    def symbols(self) -> list[str]:
        return sorted({k.symbol for k in self.keys()})

    def timeframes(self, symbol: str) -> list[str]:
        found = {k.timeframe for k in self.keys(symbol)}
        return [tf for tf in TIMEFRAMES if tf in found]

    def listed_tails(self, symbol: str | None = None) -> list[tuple[str, str]]:
        """The (symbol, timeframe)s with a live tail, for `list`: as fresh as `symbols` and
        `timeframes` are (a backend that lists them from a short-lived listing uses it too)."""
        from marketcache.storage.tail import tail_series

        return tail_series(self, symbol)

    def years(self, symbol: str, timeframe: str) -> list[int]:
        return [k.year for k in self.keys(symbol, timeframe)]

    def append(
        self, key: Key, old: YearRecord, part: pd.DataFrame, new: YearRecord
    ) -> YearRecord | None:
        """Add `part` (rows after every stored one) and commit `new`; None: not possible here
        (the caller rewrites the year)."""
        return None

    def verify(self, key: Key, record: YearRecord) -> None:
        """Check the committed data against its record; CorruptFile when it does not match."""
        self.read_rows(key, record)

    def recover(self, key: Key) -> None:
        """Finish or roll back a commit of `key` that a crash interrupted (lock held)."""

    def cut_torn_tail(self, key: Key, record: YearRecord) -> bool:
        """Remove bytes written after the committed data (an interrupted append)."""
        return False

    def housekeeping(self, symbol: str, timeframe: str) -> list[str]:
        """Remove what killed writers left for this series (lock held); what was removed."""
        return []

    def quarantine(self, key: Key) -> str | None:
        """Move a corrupt year aside (never delete it) so that it can be fetched again."""
        self.delete(key)
        return None

    def salvage(self, key: Key) -> tuple[pd.DataFrame | None, str, str]:
        """The readable rows of a damaged year, a note, and where the original was kept."""
        return None, "this backend cannot salvage damaged data", ""

    def where(self, key: Key) -> str:
        """A year's location for messages (a file backend names its data file)."""
        return f"{self.location} {key}"

    def raw_timeframes(self, symbol: str) -> list[str]:
        """Timeframes with data or a record (validate and cleanup look at both)."""
        return self.timeframes(symbol)

    @property
    def state_dir(self) -> Path:
        """Where this machine keeps provider state (the rate-limit bucket, yfinance's caches):
        beside the index of a local cache, else the user's cache folder."""
        return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "marketcache"

    def raw_years(self, symbol: str, timeframe: str) -> list[int]:
        """Years with data or a record (validate looks at both)."""
        return self.years(symbol, timeframe)

    def leftovers(self, *, dry_run: bool, wait: float = DEFAULT_WAIT) -> list[tuple[str, str]]:
        """Remove (or with dry_run only list) what interrupted writes left: (where, why).
        A removal that could race a live commit holds its series lock, waiting `wait`."""
        return []

    def purge_quarantine(self, days: float, *, dry_run: bool) -> list[tuple[str, str]]:
        """Remove (or list) the copies `quarantine` and `salvage` set aside more than `days`
        days ago (`settings.quarantine_days`): (where, why)."""
        return []

    def read_index(self, name: str) -> Any:
        """A derived index document (rebuilt when missing), or None."""
        return None

    def write_index(self, name: str, data: Any) -> None:
        """Store a derived index document (not durable: it is rebuilt when unreadable)."""

    @contextlib.contextmanager
    def index_lock(self, *, wait: float) -> Iterator[None]:
        yield

    def close(self) -> None:
        """Release connections; the backend is not used afterwards."""

    def describe(self) -> dict[str, Any]:
        """What `info` shows about where the cache lives."""
        return {"backend": self.name, "location": self.location, "format": self.format}


def _same_commit(a: YearRecord, b: YearRecord) -> bool:
    """Whether two reads of a record found the same commit (same committed bytes)."""
    fa, fb = a.file_info, b.file_info
    return (fa.sha256, fa.size_bytes, fa.rows) == (fb.sha256, fb.size_bytes, fb.rows)
