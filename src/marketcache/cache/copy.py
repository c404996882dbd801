"""`marketcache copy SRC DEST`: copy a cache (or part of it) to another format or backend.

Every year is read verified from SRC (checksums), written to DEST through DEST's own commit
protocol with the same record (quality, coverage, sources, dates) and its storage fields
re-derived, then read back and compared row for row. A year is skipped when DEST already
holds that exact year (the source sha256 it was copied from, or the same bytes). The
symbols' corporate actions and the series' live tails travel with them. A copied year
replaces DEST's year: copy is a mirror, not a merge.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from marketcache.cache.facade import UnifiedCache
from marketcache.cache.series import ACTIONS_FILE
from marketcache.cache.tail import live_series
from marketcache.core.records import FileInfo, YearRecord
from marketcache.core.symbols import normalize_symbol
from marketcache.core.timeframes import parse_timeframe
from marketcache.errors import CorruptFile, StorageError
from marketcache.storage.backend import Key
from marketcache.storage.tail import open_tail

COPIED_FROM = "copied_from_sha256"


@dataclass
class CopiedYear:
    symbol: str
    timeframe: str
    year: int
    status: str  # copied | skipped | failed
    rows: int = 0
    reason: str = ""


@dataclass
class CopyReport:
    source: str
    destination: str
    format: str
    years: list[CopiedYear] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if any(y.status == "failed" for y in self.years) else 0

    def as_json(self) -> dict[str, Any]:
        count = {s: sum(y.status == s for y in self.years) for s in ("copied", "skipped", "failed")}
        return {
            "ok": self.exit_code == 0,
            "exit_code": self.exit_code,
            "source": self.source,
            "destination": self.destination,
            "format": self.format,
            "summary": {**count, "rows": sum(y.rows for y in self.years if y.status == "copied")},
            "years": [asdict(y) for y in self.years],
        }


def copy_cache(
    src: UnifiedCache,
    dest: UnifiedCache,
    *,
    symbol: str | None = None,
    timeframe: str | None = None,
) -> CopyReport:
    """Copy series by series, each under DEST's series lock held across its years (so that a
    command racing on DEST runs wholly before or after the series' copy); SRC is read without
    a lock, each year as one commit made it."""
    report = CopyReport(src.backend.location, dest.backend.location, dest.backend.format)
    keys = src.backend.keys(symbol, timeframe)
    sym = normalize_symbol(symbol) if symbol else None
    live = live_series(src.backend, sym, parse_timeframe(timeframe).name if timeframe else None)
    for series in sorted({k.series for k in keys} | live):
        copied = False
        with dest.lock(*series):
            for key in (k for k in keys if k.series == series):
                entry = CopiedYear(key.symbol, key.timeframe, key.year, "copied")
                try:
                    copied = _copy_year(src, dest, key, entry) or copied
                except (CorruptFile, StorageError) as exc:
                    entry.status, entry.reason = "failed", str(exc)
                report.years.append(entry)
            copied = _copy_tail(src, dest, *series) or copied
            if copied:
                dest.catalog.refresh(*series)
    for sym in sorted({k.symbol for k in keys}):
        actions = src.backend.read_document(sym, ACTIONS_FILE)
        if actions is None:
            continue
        with dest.backend.lock(sym, "actions", wait=dest.lock_wait):
            if actions != dest.backend.read_document(sym, ACTIONS_FILE):
                dest.backend.write_document(sym, ACTIONS_FILE, actions)
    return report


def _copy_tail(src: UnifiedCache, dest: UnifiedCache, symbol: str, timeframe: str) -> bool:
    """The series' live tail travels as it is (DEST's series lock held): its bars stay
    readable in DEST and are folded there as they would have been in SRC."""
    rows = open_tail(src.backend, symbol, timeframe).read()
    there = open_tail(dest.backend, symbol, timeframe)
    if rows.equals(there.read()):
        return False
    there.keep(rows)
    return True


def _copy_year(src: UnifiedCache, dest: UnifiedCache, key: Key, entry: CopiedYear) -> bool:
    """One year (DEST's series lock held): skipped when DEST holds it already, as read now."""
    record = src.backend.read_record(key)
    entry.rows = record.rows
    dest.backend.recover(key)
    if key.year in dest.backend.years(*key.series):
        there = dest.backend.read_record(key)
        same = there.file_info.extra.get(COPIED_FROM) == record.file_info.sha256 or (
            there.file_info.format == record.file_info.format
            and there.file_info.sha256 == record.file_info.sha256
        )
        if same and there.rows == record.rows:
            entry.status, entry.reason = "skipped", "already there"
            return False
    found = src.backend.read_year(key)  # verified against the record it read
    if found is None:
        entry.status, entry.reason = "skipped", "removed from the source meanwhile"
        return False
    record, rows = found
    entry.rows = record.rows
    copied = YearRecord.from_json(record.to_json(), key)
    copied.file_info = FileInfo(
        columns=list(record.file_info.columns),
        last_row=record.file_info.last_row,
        extra={COPIED_FROM: record.file_info.sha256},
    )
    committed = dest.backend.write_year(key, rows, copied)
    back = dest.backend.read_rows(key, committed)
    if len(back) != len(rows) or not back.equals(rows.reindex(columns=back.columns)):
        raise StorageError(f"{key}: the copy in {dest.backend.location} does not read back equal")
    return True
