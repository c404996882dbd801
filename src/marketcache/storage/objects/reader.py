"""Reading an object-storage cache: object names, listings, records and rows — everything a
reader does without a lease. The commit protocol and recovery are in `backend.py`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from marketcache.core.records import YearRecord, parse_json
from marketcache.core.symbols import decode_symbol, encode_symbol, normalize_symbol
from marketcache.core.timeframes import TIMEFRAMES
from marketcache.errors import Conflict, CorruptFile, UsageError
from marketcache.storage.backend import Key, StorageBackend
from marketcache.storage.checked import committed_bytes, decode_checked, matches
from marketcache.storage.codecs import Codec, codec, suffix
from marketcache.storage.layout import (
    INDEX_DIR,
    META_SUFFIX,
    PENDING_SUFFIX,
    quarantine_mark,
    year_file,
)
from marketcache.storage.objects.lease import Leases
from marketcache.storage.objects.store import open_store
from marketcache.storage.tail import TAIL_NAME

if TYPE_CHECKING:
    import pandas as pd

CACHE_FILE = f"{INDEX_DIR}/cache.json"
PENDING = "pending"  # the candidates (next records) a commit under way lists
INDEX_LEASE = f"{INDEX_DIR}/locks/index.lease"
LISTING_TTL = 5.0  # seconds a whole-cache listing answers `symbols` / `timeframes`


def _dumps(doc: Any) -> bytes:
    return (json.dumps(doc, indent=2) + "\n").encode("utf-8")


def _loads(data: bytes) -> Any:
    """A JSON object's value, or None when it is not one (junk is no claim, no index)."""
    try:
        return parse_json(data, "")
    except CorruptFile:
        return None


def _aside_name(name: str) -> str:
    """A unique quarantine name (two set-asides in one second never overwrite each other)."""
    return name + quarantine_mark()


def _committed(doc: dict[str, Any]) -> dict[str, Any]:
    """A record object without the candidates of a commit under way."""
    return {k: v for k, v in doc.items() if k != PENDING}


def _candidates(doc: Any) -> list[dict[str, Any]]:
    """The next records a record (or a new-year claim object) lists."""
    listed = doc.get(PENDING) if isinstance(doc, dict) else None
    listed = [listed] if isinstance(listed, dict) else listed
    return [c for c in listed if isinstance(c, dict)] if isinstance(listed, list) else []


class ObjectReader(StorageBackend):
    """An object cache read without a lease: names, listings, records and rows (a reader
    whose data does not match the record accepts a listed candidate, see `backend.py`)."""

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
        return None if found is None else _loads(found[0])

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
            if parts[2] == TAIL_NAME and "tail" in kinds and symbol is not None:
                found.add(Key(symbol, parts[1], 0))  # a live tail: year 0
                continue
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
        """Every committed year and live tail (year 0), from one listing reused for a few
        seconds (`list` asks for the symbols, then each symbol's timeframes); a write of this
        process drops it. A writer never plans from it: `years` and `keys` of a series list
        afresh."""
        import time

        if self._root_listing is None or time.monotonic() - self._root_listing[0] > LISTING_TTL:
            self._root_listing = (time.monotonic(), self._scan("", ("meta", "tail")))
        return self._root_listing[1]

    def symbols(self) -> list[str]:
        return sorted({k.symbol for k in self._all_keys() if k.year})

    def timeframes(self, symbol: str) -> list[str]:
        found = {k.timeframe for k in self._all_keys() if k.year and k.symbol == symbol}
        return [tf for tf in TIMEFRAMES if tf in found]

    def listed_tails(self, symbol: str | None = None) -> list[tuple[str, str]]:
        return sorted(
            {k.series for k in self._all_keys() if not k.year and symbol in (None, k.symbol)}
        )

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
        # what was read is remembered even when it is junk: a repair replaces exactly it
        self._seen[name] = (found[1].etag, {})
        doc = parse_json(found[0], f"{self.location}/{name}")
        if not isinstance(doc, dict):
            raise CorruptFile(f"{self.location}/{name}", "metadata is not a JSON object")
        self._seen[name] = (found[1].etag, doc)
        return found[1].etag, doc

    def _record(self, name: str, doc: dict[str, Any]) -> YearRecord:
        return YearRecord.from_json(_committed(doc), f"{self.location}/{name}")

    def read_record(self, key: Key) -> YearRecord:
        name = self._names(key)[1]
        found = self._read(name)
        if found is None:
            raise CorruptFile(f"{self.location}/{name}", "metadata file is missing")
        return self._record(name, found[1])

    def _match(
        self, meta_name: str, data: bytes, docs: list[dict[str, Any]]
    ) -> dict[str, Any] | None:
        """The first of `docs` (records) whose committed bytes `data` is; unreadable ones are
        skipped."""
        for doc in docs:
            with contextlib.suppress(CorruptFile, TypeError, AttributeError, KeyError):
                if matches(data, self._record(meta_name, doc)):
                    return doc
        return None

    def _matching(self, key: Key, data: bytes, record: YearRecord) -> YearRecord:
        """The record `data` is the committed bytes of: `record`, or — a commit ran between
        the two reads — the record now committed or a candidate a commit under way lists."""
        if matches(data, record):
            return record
        _, meta_name, pending_name = self._names(key)
        docs: list[dict[str, Any]] = []
        with contextlib.suppress(CorruptFile):
            found = self._read(meta_name)
            docs += [found[1], *_candidates(found[1])] if found is not None else []
        docs += _candidates(self._json(pending_name))
        doc = self._match(meta_name, data, docs)
        return record if doc is None else self._record(meta_name, doc)

    def read_rows(self, key: Key, record: YearRecord) -> pd.DataFrame:
        data_name = self._names(key)[0]
        where = f"{self.location}/{data_name}"
        found = self.store.get(data_name)
        if found is None:
            raise CorruptFile(where, "data object is missing (metadata exists)")
        data = found[0]
        return decode_checked(self.codec, where, data, self._matching(key, data, record))

    def verify(self, key: Key, record: YearRecord) -> None:
        data_name = self._names(key)[0]
        where = f"{self.location}/{data_name}"
        found = self.store.get(data_name)
        if found is None:
            raise CorruptFile(where, "data object is missing (metadata exists)")
        record = self._matching(key, found[0], record)
        committed_bytes(where, found[0], record)  # names a truncated object as such
        if not matches(found[0], record):
            raise CorruptFile(
                where, "sha256 does not match metadata (the file changed or is damaged)"
            )

    def _encode(self, frame: pd.DataFrame, record: YearRecord) -> bytes:
        """The year's bytes with a fresh mark (no two writes give the same etag)."""
        columns = record.file_info.columns
        mark = secrets.randbits(32) or 1
        body, raw_len = self.codec.encode(frame.reindex(columns=columns), columns, mark=mark)
        info = record.file_info
        info.format, info.size_bytes, info.raw_bytes = self.format, len(body), raw_len
        info.sha256, info.members, info.rows = hashlib.sha256(body).hexdigest(), 1, len(frame)
        return body
