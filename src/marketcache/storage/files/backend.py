"""The file backend: `SYMBOL/TF/YEAR.<codec suffix>` + `YEAR.metadata.json` under a root.

Commit order for a year: pending record → data (temp file, fsync, rename — or an appended
gzip member, fsynced) → record → drop the pending record. Whatever instant a crash hits,
`recover` turns what is on disk back into the old or the new state: a pending record that
matches the data is promoted, any other is dropped, and bytes past the committed size are a
torn tail that readers ignore and the next append cuts. Appends write no pending record:
until the record names the new size, the new member is such a torn tail.

Readers take no lock and write nothing: a pending record whose data is already on disk is the
year's new state, read as such (in memory); writers, holding the series lock, settle it on disk.
Everything that removes files of a series folder (`leftovers`) holds that series' lock too.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from marketcache.core.records import YearRecord
from marketcache.core.symbols import normalize_symbol
from marketcache.errors import CorruptFile, StorageError
from marketcache.storage.atomic import append_durable, write_atomic
from marketcache.storage.backend import Key
from marketcache.storage.checked import decode_checked
from marketcache.storage.codecs import Codec, codec, suffix
from marketcache.storage.files.sweep import FileSweeps
from marketcache.storage.layout import (
    LOCK_NAME,
    TEMP_MARK,
    CacheLayout,
    quarantine_mark,
)
from marketcache.storage.lock import hold
from marketcache.storage.metadata import read_json, read_metadata, write_json, write_metadata

if TYPE_CHECKING:
    import pandas as pd

CACHE_FILE = "cache.json"


class FileBackend(FileSweeps):
    name = "files"

    def __init__(self, root: str | os.PathLike[str], *, default_format: str = "csv.gz") -> None:
        self.layout = CacheLayout(root)
        super().__init__(str(self.layout.root))
        self.root = self.layout.root
        self.format = self._recorded_format() or default_format
        self.layout.suffix = suffix(self.format)
        self._codec: Codec | None = None

    @property
    def codec(self) -> Codec:
        if self._codec is None:
            self._codec = codec(self.format)
        return self._codec

    @property
    def appendable(self) -> bool:  # type: ignore[override]
        return self.format == "csv.gz"

    def _recorded_format(self) -> str | None:
        """The format fixed when the cache was created (_metadata/cache.json); a cache made
        before that file existed is csv.gz."""
        recorded = read_json(self.layout.index_dir / CACHE_FILE, None)
        if isinstance(recorded, dict) and recorded.get("format"):
            return str(recorded["format"])
        return "csv.gz" if self.layout.symbols() else None

    def _created(self) -> None:
        """Record the format with the first write (a dry run or a read creates nothing)."""
        path = self.layout.index_dir / CACHE_FILE
        if not path.exists():
            stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            write_json(path, {"format": self.format, "created_at": stamp})

    # ---- listing -------------------------------------------------------------------------

    def exists(self) -> bool:
        return self.root.is_dir()

    def keys(self, symbol: str | None = None, timeframe: str | None = None) -> list[Key]:
        out = []
        for sym in [normalize_symbol(symbol)] if symbol else self.layout.symbols():
            for tf in [timeframe] if timeframe else self.layout.timeframes(sym):
                out += [Key(sym, tf, y) for y in self.layout.years(sym, tf)]
        return out

    def symbols(self) -> list[str]:
        return self.layout.symbols()

    def timeframes(self, symbol: str) -> list[str]:
        return [tf for tf in self.layout.timeframes(symbol) if self.layout.years(symbol, tf)]

    def years(self, symbol: str, timeframe: str) -> list[int]:
        return self.layout.years(symbol, timeframe)

    def raw_years(self, symbol: str, timeframe: str) -> list[int]:
        return self.layout.years(symbol, timeframe, ("meta", "data"))

    def raw_timeframes(self, symbol: str) -> list[str]:
        return self.layout.timeframes(symbol)

    def where(self, key: Key) -> str:
        return str(self.layout.data_path(*key.series, key.year))

    @property
    def state_dir(self) -> Path:
        return self.layout.index_dir

    # ---- records and rows ------------------------------------------------------------------

    def _paths(self, key: Key) -> tuple[Path, Path, Path]:
        sym, tf, year = key.symbol, key.timeframe, key.year
        return (
            self.layout.data_path(sym, tf, year),
            self.layout.meta_path(sym, tf, year),
            self.layout.pending_path(sym, tf, year),
        )

    def read_record(self, key: Key) -> YearRecord:
        """The year's current record: a commit's pending record once its data is on disk (the
        new state, before the commit or the next writer promotes it), else the record."""
        _, meta, _ = self._paths(key)
        return self._promotable(key) or YearRecord.from_json(read_metadata(meta), meta)

    def _promotable(self, key: Key) -> YearRecord | None:
        """The pending record of a commit under way (or interrupted) when the data on disk is
        the one it describes; None when there is none or its data never arrived."""
        data, _, pending = self._paths(key)
        try:
            new = YearRecord.from_json(read_metadata(pending), pending)
        except CorruptFile:  # none (the common case), or unreadable: not a state to read
            return None
        size = new.file_info.size_bytes
        try:
            if data.stat().st_size >= size and (
                _sha256_prefix(data, size).hexdigest() == new.file_info.sha256
            ):
                return new
        except FileNotFoundError:
            pass
        return None

    def read_rows(self, key: Key, record: YearRecord) -> pd.DataFrame:
        path = self._paths(key)[0]
        try:
            with open(path, "rb") as fh:
                data = fh.read(record.file_info.size_bytes)
        except FileNotFoundError:
            raise CorruptFile(path, "data file is missing (metadata exists)") from None
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {exc.strerror}") from exc
        return decode_checked(self.codec, str(path), data, record)

    def write_year(self, key: Key, frame: pd.DataFrame, record: YearRecord) -> YearRecord:
        data, meta, pending = self._paths(key)
        columns = record.file_info.columns
        body, raw_len = self.codec.encode(frame.reindex(columns=columns), columns)
        info = record.file_info
        info.format, info.size_bytes, info.raw_bytes = self.format, len(body), raw_len
        info.sha256, info.members, info.rows = hashlib.sha256(body).hexdigest(), 1, len(frame)
        self._created()
        write_metadata(pending, record.to_json())
        write_atomic(data, body)
        write_metadata(meta, record.to_json())
        with contextlib.suppress(FileNotFoundError):
            pending.unlink()
        return record

    def append(
        self, key: Key, old: YearRecord, part: pd.DataFrame, new: YearRecord
    ) -> YearRecord | None:
        data, meta, _ = self._paths(key)
        committed = old.file_info.size_bytes
        try:
            on_disk = data.stat().st_size
        except FileNotFoundError:
            return None
        if not self.appendable or on_disk < committed or old.file_info.members >= MAX_MEMBERS:
            return None
        columns = old.file_info.columns
        member, raw_len = self.codec.encode_rows(part.reindex(columns=columns), columns)
        sha = _sha256_prefix(data, committed)
        sha.update(member)
        info = new.file_info
        info.format, info.columns = self.format, columns
        info.size_bytes, info.sha256 = committed + len(member), sha.hexdigest()
        info.raw_bytes = old.file_info.raw_bytes + raw_len
        info.members, info.rows = old.file_info.members + 1, old.rows + len(part)
        append_durable(data, member, committed)
        write_metadata(meta, new.to_json())
        return new

    def write_record(self, key: Key, record: YearRecord) -> None:
        write_metadata(self._paths(key)[1], record.to_json())

    def delete(self, key: Key) -> None:
        data, meta, _ = self._paths(key)
        # the record first: a crash in between leaves data without a record, a known leftover
        for path in (meta, data):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def lock(
        self, symbol: str, timeframe: str, *, wait: float
    ) -> contextlib.AbstractContextManager[None]:
        """`timeframe` may also name a per-symbol document set ("actions")."""
        path = self.layout.lock_path(symbol, timeframe)
        return hold(path, wait=wait, what=f"{symbol} {timeframe}")

    # ---- integrity -------------------------------------------------------------------------

    def verify(self, key: Key, record: YearRecord) -> None:
        """Size and sha256 of the committed bytes, without parsing them."""
        path = self._paths(key)[0]
        size = record.file_info.size_bytes
        try:
            on_disk = path.stat().st_size
        except FileNotFoundError:
            raise CorruptFile(path, "data file is missing (metadata exists)") from None
        if on_disk < size:
            raise CorruptFile(path, f"file is truncated: {on_disk} of {size} bytes")
        if _sha256_prefix(path, size).hexdigest() != record.file_info.sha256:
            raise CorruptFile(
                path, "sha256 does not match metadata (the file changed or is damaged)"
            )

    def recover(self, key: Key) -> None:
        _, meta, pending = self._paths(key)
        if not pending.exists():
            return
        new = self._promotable(key)
        if new is not None:
            write_metadata(meta, new.to_json())
        pending.unlink(missing_ok=True)

    def cut_torn_tail(self, key: Key, record: YearRecord) -> bool:
        data = self._paths(key)[0]
        if data.exists() and data.stat().st_size > record.file_info.size_bytes:
            with open(data, "r+b") as fh:
                fh.truncate(record.file_info.size_bytes)
            return True
        return False

    def housekeeping(self, symbol: str, timeframe: str) -> list[str]:
        """Temp files killed writers left; every writer holds the lock, so while we hold it
        any temp file is stale."""
        base = self.layout.timeframe_dir(symbol, timeframe)
        removed = []
        for path in base.iterdir() if base.is_dir() else []:
            if TEMP_MARK in path.name:
                path.unlink(missing_ok=True)
                removed.append(path.name)
        return removed

    def quarantine(self, key: Key) -> str | None:
        data, meta, _ = self._paths(key)
        mark = quarantine_mark()  # the data and its record set aside under one mark
        aside = _aside(data, mark) if data.exists() else None
        if meta.exists():
            _aside(meta, mark)
        return aside.name if aside else None

    def salvage(self, key: Key) -> tuple[pd.DataFrame | None, str, str]:
        data = self._paths(key)[0]
        if not data.exists():
            return None, f"{data}: data file is missing", ""
        df, note = self.codec.salvage(data.read_bytes())
        return df, note, _aside(data, quarantine_mark(), copy=True).name

    def symbols_on_disk(self) -> list[str]:
        return self.layout.symbols()

    # ---- documents and the index -----------------------------------------------------------

    def _document(self, symbol: str, name: str) -> Path:
        path = self.layout.symbol_dir(normalize_symbol(symbol)) / name
        self.layout._inside(path)
        return path

    def read_document(self, symbol: str, name: str) -> bytes | None:
        try:
            return self._document(symbol, name).read_bytes()
        except FileNotFoundError:
            return None

    def write_document(self, symbol: str, name: str, data: bytes) -> None:
        write_atomic(self._document(symbol, name), data)

    def list_documents(self, symbol: str, prefix: str) -> list[str]:
        """Documents whose name starts with `prefix` ("fundamentals/" lists that folder)."""
        root = self.layout.symbol_dir(normalize_symbol(symbol))
        folder = prefix.rpartition("/")[0]
        base = root / folder if folder else root
        if not base.is_dir():
            return []
        names = (f"{folder}/{p.name}" if folder else p.name for p in base.iterdir() if p.is_file())
        return sorted(n for n in names if n.startswith(prefix) and TEMP_MARK not in n)

    def delete_document(self, symbol: str, name: str) -> None:
        self._document(symbol, name).unlink(missing_ok=True)

    def read_index(self, name: str) -> Any:
        return read_json(self.layout.index_dir / name, None)

    def write_index(self, name: str, data: Any) -> None:
        write_json(self.layout.index_dir / name, data)

    @contextlib.contextmanager
    def index_lock(self, *, wait: float) -> Iterator[None]:
        with hold(self.layout.index_dir / LOCK_NAME, wait=wait, what="the cache index"):
            yield

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "path": str(self.root)}


MAX_MEMBERS = 64  # compact a year file once this many appended gzip members pile up


def _sha256_prefix(path: Path, size: int) -> Any:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        remaining = size
        while remaining > 0:
            chunk = fh.read(min(remaining, 8 << 20))
            if not chunk:
                break
            h.update(chunk)
            remaining -= len(chunk)
    return h


def _aside(path: Path, mark: str, *, copy: bool = False) -> Path:
    """Set `path` aside as `path` + `mark` (moved, or copied); its mtime says when, which is
    what `cleanup` ages quarantined copies by."""
    aside = path.with_name(f"{path.name}{mark}")
    if copy:
        write_atomic(aside, path.read_bytes())
    else:
        os.replace(path, aside)
        os.utime(aside)
    return aside
