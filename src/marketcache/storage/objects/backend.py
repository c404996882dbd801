"""The object-storage backend: the file layout on S3 (or any fsspec store), committed with
conditional writes so that many machines can share one cache.

Objects are named as the local files are (`SYMBOL/TF/YEAR.csv.gz|parquet`,
`YEAR.metadata.json`), so pandas, polars and DuckDB read them directly. A writer holds the
series lease (`lease.py`) and commits a year as the local protocol does — pending record, data,
record — each step a conditional write:

- a year that exists: (1) the record is replaced, If-Match the etag this writer read, by the
  same record carrying the next one under `pending`. Any commit another writer made since the
  read changed that etag, so a writer whose lease expired under it fails here having written
  nothing. (2) The data object is replaced If-Match its current etag. (3) The record is
  replaced by the new record, If-Match the etag of step 1.
- a new year: `YEAR.metadata.json.pending` is created (If-None-Match: *), then the data object
  and the record (both If-None-Match: *), then the pending object is removed.

Readers take no lease. A record carrying `pending` reads as its committed part; a reader whose
data object does not match that record looks again and accepts the data when it matches the
`pending` record — the new state, which is what the next writer's `recover` promotes (a data
object matching neither is corrupt). Objects cannot be appended to, so a nightly extension
rewrites one year object: its cost is one year, never the history.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from marketcache.errors import CorruptFile, StorageError, UsageError
from marketcache.records import YearRecord
from marketcache.storage.backend import Key, StorageBackend
from marketcache.storage.checked import decode_checked, matches
from marketcache.storage.files.codecs import Codec, codec, suffix
from marketcache.storage.layout import (
    INDEX_DIR,
    META_SUFFIX,
    PENDING_SUFFIX,
    QUARANTINE_MARK,
    year_file,
)
from marketcache.storage.objects.lease import Leases
from marketcache.storage.objects.store import Conflict, open_store
from marketcache.symbols import decode_symbol, encode_symbol, normalize_symbol
from marketcache.timeframes import TIMEFRAMES

if TYPE_CHECKING:
    import pandas as pd

CACHE_FILE = f"{INDEX_DIR}/cache.json"
PENDING = "pending"  # the key of the next record inside a record being committed
LISTING_TTL = 5.0  # seconds a whole-cache listing answers `symbols` / `timeframes`


def _dumps(doc: Any) -> bytes:
    return (json.dumps(doc, indent=2) + "\n").encode("utf-8")


class ObjectBackend(StorageBackend):
    name = "object"
    appendable = False

    def __init__(
        self,
        url: str,
        *,
        default_format: str = "csv.gz",
        options: dict[str, Any] | None = None,
        lease_seconds: float = 60.0,
    ) -> None:
        self.store = open_store(url, options or {})
        super().__init__(self.store.url)
        self.store.check()  # a missing bucket is a usage error, named, before anything else
        self._root_listing: tuple[float, list[Key]] | None = None
        self.leases = Leases(self.store, lease_seconds)
        self._seen: dict[str, tuple[str, dict[str, Any]]] = {}  # record → (etag, doc) read
        recorded = self._json(CACHE_FILE)
        self.format = str(recorded["format"]) if isinstance(recorded, dict) else default_format
        self._known = isinstance(recorded, dict)
        self.suffix = suffix(self.format)
        self._codec: Codec | None = None

    @property
    def codec(self) -> Codec:
        if self._codec is None:
            self._codec = codec(self.format)
        return self._codec

    # ---- names -----------------------------------------------------------------------------

    @staticmethod
    def _series(symbol: str, timeframe: str) -> str:
        if timeframe not in TIMEFRAMES:
            raise UsageError(f"unknown timeframe '{timeframe}'")
        return f"{encode_symbol(symbol)}/{timeframe}/"

    def _names(self, key: Key) -> tuple[str, str, str]:
        base = self._series(key.symbol, key.timeframe) + str(key.year)
        return base + self.suffix, base + META_SUFFIX, base + META_SUFFIX + PENDING_SUFFIX

    @staticmethod
    def _lease(symbol: str, timeframe: str) -> str:
        return f"{INDEX_DIR}/locks/{encode_symbol(symbol)}/{timeframe}.lease"

    def _json(self, name: str) -> Any:
        found = self.store.get(name)
        if found is None:
            return None
        try:
            return json.loads(found[0])
        except ValueError:
            return None

    def _created(self) -> None:
        """Record the format with the first write (create-if-absent: the first writer wins)."""
        if self._known:
            return
        if self._json(CACHE_FILE) is None:
            stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            with contextlib.suppress(Conflict):
                doc = {"format": self.format, "created_at": stamp}
                self.store.put(CACHE_FILE, _dumps(doc), if_absent=True)
        self._known = True

    # ---- listing ---------------------------------------------------------------------------

    def _scan(self, prefix: str, kinds: tuple[str, ...] = ("meta",)) -> list[Key]:
        found: set[Key] = set()
        for name in self.store.listing(prefix):
            parts = name.split("/")
            if len(parts) != 3 or parts[1] not in TIMEFRAMES:
                continue
            symbol = decode_symbol(parts[0])
            parsed = year_file(parts[2])
            if symbol is None or parsed is None or parsed[1] not in kinds:
                continue
            if parsed[1] == "data" and not parts[2].endswith(self.suffix):
                continue
            found.add(Key(symbol, parts[1], parsed[0]))
        return sorted(found)

    def exists(self) -> bool:
        return self.store.exists()

    def keys(self, symbol: str | None = None, timeframe: str | None = None) -> list[Key]:
        prefix = ""
        if symbol:
            sym = normalize_symbol(symbol)
            prefix = self._series(sym, timeframe) if timeframe else f"{encode_symbol(sym)}/"
        return [k for k in self._scan(prefix) if timeframe in (None, k.timeframe)]

    def _all_keys(self) -> list[Key]:
        """Every committed year, from one listing reused for a few seconds (`list` asks for
        the symbols, then each symbol's timeframes); a write of this process drops it. A
        writer never plans from it: `years` and `keys` of a series list afresh."""
        import time

        if self._root_listing is None or time.monotonic() - self._root_listing[0] > LISTING_TTL:
            self._root_listing = (time.monotonic(), self._scan(""))
        return self._root_listing[1]

    def symbols(self) -> list[str]:
        return sorted({k.symbol for k in self._all_keys()})

    def timeframes(self, symbol: str) -> list[str]:
        found = {k.timeframe for k in self._all_keys() if k.symbol == symbol}
        return [tf for tf in TIMEFRAMES if tf in found]

    def raw_years(self, symbol: str, timeframe: str) -> list[int]:
        keys = self._scan(self._series(symbol, timeframe), ("meta", "data"))
        return [k.year for k in keys]

    # ---- records and rows ------------------------------------------------------------------

    def _read(self, name: str) -> tuple[str, dict[str, Any]] | None:
        """A record object's etag and JSON (remembered: a commit replaces what was read)."""
        found = self.store.get(name)
        if found is None:
            self._seen.pop(name, None)
            return None
        try:
            doc = json.loads(found[0])
        except ValueError:
            raise CorruptFile(f"{self.location}/{name}", "metadata is not valid JSON") from None
        if not isinstance(doc, dict):
            raise CorruptFile(f"{self.location}/{name}", "metadata is not a JSON object")
        self._seen[name] = (found[1].etag, doc)
        return found[1].etag, doc

    def _record(self, name: str, doc: dict[str, Any]) -> YearRecord:
        committed = {k: v for k, v in doc.items() if k != PENDING}
        return YearRecord.from_json(committed, f"{self.location}/{name}")

    def read_record(self, key: Key) -> YearRecord:
        name = self._names(key)[1]
        found = self._read(name)
        if found is None:
            raise CorruptFile(f"{self.location}/{name}", "metadata file is missing")
        return self._record(name, found[1])

    def read_rows(self, key: Key, record: YearRecord) -> pd.DataFrame:
        data_name, meta_name, _ = self._names(key)
        where = f"{self.location}/{data_name}"
        found = self.store.get(data_name)
        if found is None:
            raise CorruptFile(where, "data object is missing (metadata exists)")
        data = found[0]
        if not matches(data, record):  # a commit ran between the two reads: look again
            now = self._read(meta_name)
            if now is not None:
                for doc in (now[1].get(PENDING), now[1]):
                    if isinstance(doc, dict):
                        candidate = self._record(meta_name, doc)
                        if matches(data, candidate):
                            return decode_checked(self.codec, where, data, candidate)
        return decode_checked(self.codec, where, data, record)

    def verify(self, key: Key, record: YearRecord) -> None:
        data_name = self._names(key)[0]
        where = f"{self.location}/{data_name}"
        found = self.store.get(data_name)
        if found is None:
            raise CorruptFile(where, "data object is missing (metadata exists)")
        if len(found[0]) < record.file_info.size_bytes:
            size = record.file_info.size_bytes
            raise CorruptFile(where, f"file is truncated: {len(found[0])} of {size} bytes")
        if not matches(found[0], record):
            raise CorruptFile(
                where, "sha256 does not match metadata (the file changed or is damaged)"
            )

    def _encode(self, frame: pd.DataFrame, record: YearRecord) -> bytes:
        import hashlib

        columns = record.file_info.columns
        body, raw_len = self.codec.encode(frame.reindex(columns=columns), columns)
        info = record.file_info
        info.format, info.size_bytes, info.raw_bytes = self.format, len(body), raw_len
        info.sha256, info.members, info.rows = hashlib.sha256(body).hexdigest(), 1, len(frame)
        return body

    def _seen_etag(self, name: str) -> tuple[str, dict[str, Any]] | None:
        """What this writer read of a record: None when it never read one (it planned the year
        as new, so a record that exists now is another writer's commit)."""
        return self._seen.get(name)

    def write_year(self, key: Key, frame: pd.DataFrame, record: YearRecord) -> YearRecord:
        self._root_listing = None
        body = self._encode(frame, record)
        data_name, meta_name, _pending_name = self._names(key)
        new = record.to_json()
        self._created()
        self.leases.check(self._lease(*key.series))
        seen = self._seen_etag(meta_name)
        if seen is None:
            self._create_year(key, body, new)
            return record
        etag, old = seen
        if PENDING in old:  # an interrupted commit: resolve it first (the lease is ours)
            self.recover(key)
            raise Conflict(f"{self.location}/{meta_name}: an interrupted commit was resolved")
        # (1) claim: fails, writing nothing, if any commit happened since this writer read
        claim = self.store.put(meta_name, _dumps({**old, PENDING: new}), if_match=etag)
        self._seen.pop(meta_name, None)
        # (2) the data, replacing only the object the record named
        current = self.store.head(data_name)
        if current is None:
            self.store.put(data_name, body, if_absent=True)
        else:
            self.store.put(data_name, body, if_match=current.etag)
        # (3) the commit point
        done = self.store.put(meta_name, _dumps(new), if_match=claim)
        self._seen[meta_name] = (done, new)
        return record

    def _create_year(self, key: Key, body: bytes, new: dict[str, Any]) -> None:
        data_name, meta_name, pending_name = self._names(key)
        try:
            mine = self.store.put(pending_name, _dumps(new), if_absent=True)
        except Conflict:  # a killed writer's pending record: resolve it (the lease is ours)
            self.recover(key)
            raise
        try:
            try:
                self.store.put(data_name, body, if_absent=True)
            except Conflict:
                # a data object no record names (a killed writer's) may be replaced; one that
                # a record names means another writer committed the year
                if self.store.head(meta_name) is not None:
                    raise
                orphan = self.store.head(data_name)
                self.store.put(data_name, body, if_match=orphan.etag if orphan else None)
            done = self.store.put(meta_name, _dumps(new), if_absent=True)
        except Conflict:
            with contextlib.suppress(StorageError):  # our own pending record, if still ours
                self.store.delete(pending_name, if_match=mine)
            raise
        self._seen[meta_name] = (done, new)
        self.store.delete(pending_name, if_match=mine)

    def write_record(self, key: Key, record: YearRecord) -> None:
        meta_name = self._names(key)[1]
        self.leases.check(self._lease(*key.series))
        new = record.to_json()
        seen = self._seen_etag(meta_name)
        if seen is None:
            done = self.store.put(meta_name, _dumps(new), if_absent=True)
        else:
            done = self.store.put(meta_name, _dumps(new), if_match=seen[0])
        self._seen[meta_name] = (done, new)

    def delete(self, key: Key) -> None:
        self._root_listing = None
        data_name, meta_name, _ = self._names(key)
        self.store.delete(meta_name)  # the record first: data without one is a known leftover
        self._seen.pop(meta_name, None)
        self.store.delete(data_name)

    def lock(
        self, symbol: str, timeframe: str, *, wait: float
    ) -> contextlib.AbstractContextManager[None]:
        name = f"{INDEX_DIR}/locks/{encode_symbol(symbol)}/{timeframe}.lease"
        return self.leases.hold(name, wait=wait, what=f"{symbol} {timeframe}")

    # ---- recovery --------------------------------------------------------------------------

    def recover(self, key: Key) -> None:
        """Finish or roll back an interrupted commit of `key` (the caller holds the lease)."""
        data_name, meta_name, _ = self._names(key)
        found = self._read(meta_name)
        if found is None:
            self._resolve_pending(key, record=False)
        elif isinstance(found[1].get(PENDING), dict):
            etag, doc = found
            nxt = doc[PENDING]
            data = self.store.get(data_name)
            promote = data is not None and matches(data[0], self._record(meta_name, nxt))
            after = nxt if promote else {k: v for k, v in doc.items() if k != PENDING}
            self._seen[meta_name] = (self.store.put(meta_name, _dumps(after), if_match=etag), after)

    def _resolve_pending(self, key: Key, *, record: bool) -> None:
        """A new year's pending record: promoted when the data matches it and no record was
        committed, else removed."""
        data_name, meta_name, pending_name = self._names(key)
        pending = self.store.get(pending_name)
        if pending is None:
            return
        if not record:
            try:
                nxt = json.loads(pending[0])
                rec: YearRecord | None = self._record(meta_name, nxt)
            except (ValueError, CorruptFile, TypeError, AttributeError):
                rec = None
            data = self.store.get(data_name) if rec is not None else None
            if rec is not None and data is not None and matches(data[0], rec):
                with contextlib.suppress(Conflict):
                    done = self.store.put(meta_name, _dumps(nxt), if_absent=True)
                    self._seen[meta_name] = (done, nxt)
        self.store.delete(pending_name, if_match=pending[1].etag)

    def housekeeping(self, symbol: str, timeframe: str) -> list[str]:
        """Resolve what killed writers left in this series (lease held): one listing."""
        done = []
        names = self.store.listing(self._series(symbol, timeframe))
        for name in names:
            parsed = year_file(name.rpartition("/")[2])
            if parsed is not None and parsed[1] == "pending":
                key = Key(symbol, timeframe, parsed[0])
                self._resolve_pending(key, record=self._names(key)[1] in names)
                done.append(name.rpartition("/")[2])
        return done

    def quarantine(self, key: Key) -> str | None:
        data_name, meta_name, _ = self._names(key)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        aside = None
        found = self.store.get(data_name)
        if found is not None:
            aside = f"{data_name}{QUARANTINE_MARK}{stamp}"
            self.store.put(aside, found[0])
        record = self.store.get(meta_name)
        if record is not None:
            self.store.put(f"{meta_name}{QUARANTINE_MARK}{stamp}", record[0])
        self.delete(key)
        return aside.rpartition("/")[2] if aside else None

    def salvage(self, key: Key) -> tuple[pd.DataFrame | None, str, str]:
        data_name = self._names(key)[0]
        found = self.store.get(data_name)
        if found is None:
            return None, f"{self.location}/{data_name}: data object is missing", ""
        df, note = self.codec.salvage(found[0])
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        aside = f"{data_name}{QUARANTINE_MARK}{stamp}"
        self.store.put(aside, found[0])
        return df, note, aside.rpartition("/")[2]

    def leftovers(self, *, dry_run: bool) -> list[tuple[str, str]]:
        """Interrupted commits resolved (each under its series lease), then objects no record
        backs: afterwards exactly one data object backs each record."""
        listing = self.store.listing()
        found: list[tuple[str, str]] = []
        series: dict[tuple[str, str], dict[int, set[str]]] = {}
        for name in listing:
            parts = name.split("/")
            if len(parts) != 3 or parts[0] == INDEX_DIR or parts[1] not in TIMEFRAMES:
                continue
            symbol, parsed = decode_symbol(parts[0]), year_file(parts[2])
            if symbol is None or parsed is None:
                continue
            kinds = series.setdefault((symbol, parts[1]), {}).setdefault(parsed[0], set())
            kinds.add(parsed[1] if parsed[1] != "data" or name.endswith(self.suffix) else "other")
        for (symbol, tf), years in sorted(series.items()):
            for year, kinds in sorted(years.items()):
                key = Key(symbol, tf, year)
                data_name, meta_name, pending_name = self._names(key)
                if "pending" in kinds:
                    found.append((f"{self.location}/{pending_name}", "interrupted commit"))
                    if not dry_run:
                        with self.lock(symbol, tf, wait=600):
                            self.recover(key)
                        kinds = set(self._kinds(key))
                if "meta" in kinds and not dry_run:
                    record = self._read(meta_name)
                    if record is not None and PENDING in record[1]:
                        found.append((f"{self.location}/{meta_name}", "interrupted commit"))
                        with self.lock(symbol, tf, wait=600):
                            self.recover(key)
                if "data" in kinds and "meta" not in kinds:
                    found.append((f"{self.location}/{data_name}", "data without metadata"))
                    if not dry_run:
                        self.store.delete(data_name)
                elif "meta" in kinds and "data" not in kinds:
                    found.append((f"{self.location}/{meta_name}", "metadata without data"))
        return found

    def _kinds(self, key: Key) -> list[str]:
        data_name, meta_name, pending_name = self._names(key)
        names = self.store.listing(self._series(key.symbol, key.timeframe) + str(key.year))
        return [
            k
            for n, k in ((data_name, "data"), (meta_name, "meta"), (pending_name, "pending"))
            if n in names
        ]

    # ---- documents and the index -----------------------------------------------------------

    def _document(self, symbol: str, name: str) -> str:
        if not name or any(part in ("", ".", "..") for part in name.split("/")):
            raise UsageError(f"document name '{name}' would leave the symbol's folder")
        return f"{encode_symbol(normalize_symbol(symbol))}/{name}"

    def read_document(self, symbol: str, name: str) -> bytes | None:
        found = self.store.get(self._document(symbol, name))
        return None if found is None else found[0]

    def write_document(self, symbol: str, name: str, data: bytes) -> None:
        self.store.put(self._document(symbol, name), data)

    def list_documents(self, symbol: str, prefix: str) -> list[str]:
        base = f"{encode_symbol(normalize_symbol(symbol))}/"
        names = (n[len(base) :] for n in self.store.listing(base + prefix))
        return sorted(n for n in names if n.startswith(prefix) and year_file(n) is None)

    def delete_document(self, symbol: str, name: str) -> None:
        self.store.delete(self._document(symbol, name))

    def read_index(self, name: str) -> Any:
        return self._json(f"{INDEX_DIR}/{name}")

    def write_index(self, name: str, data: Any) -> None:
        self.store.put(f"{INDEX_DIR}/{name}", _dumps(data))

    @contextlib.contextmanager
    def index_lock(self, *, wait: float) -> Iterator[None]:
        with self.leases.hold(f"{INDEX_DIR}/locks/index.lease", wait=wait, what="the cache index"):
            yield

    def describe(self) -> dict[str, Any]:
        guard = "atomic" if self.store.atomic_conditions else "checked before writing"
        return {
            **super().describe(),
            "conditional_writes": guard,
            "lease_seconds": self.leases.seconds,
        }

    def close(self) -> None:
        self.store.close()
