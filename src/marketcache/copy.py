"""`marketcache copy SRC DEST`: copy a cache (or part of it) to another format or backend.

Every year is read verified from SRC (checksums), written to DEST through DEST's own commit
protocol with the same record (quality, coverage, sources, dates) and its storage fields
re-derived, then read back and compared row for row. A year is skipped when DEST already
holds that exact year (the source sha256 it was copied from, or the same bytes). The
symbols' corporate actions travel with them. A copied year replaces DEST's year: copy is a
mirror, not a merge.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from marketcache.cache import UnifiedCache
from marketcache.errors import CorruptFile, StorageError
from marketcache.records import FileInfo, YearRecord
from marketcache.series import ACTIONS_FILE
from marketcache.storage.backend import Key

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
    report = CopyReport(src.backend.location, dest.backend.location, dest.backend.format)
    touched: set[tuple[str, str]] = set()
    for key in src.backend.keys(symbol, timeframe):
        entry = CopiedYear(key.symbol, key.timeframe, key.year, "copied")
        try:
            if _copy_year(src, dest, key, entry):
                touched.add(key.series)
        except (CorruptFile, StorageError) as exc:
            entry.status, entry.reason = "failed", str(exc)
        report.years.append(entry)
    for sym in sorted({k.symbol for k in src.backend.keys(symbol, timeframe)}):
        actions = src.backend.read_document(sym, ACTIONS_FILE)
        if actions is not None and actions != dest.backend.read_document(sym, ACTIONS_FILE):
            dest.backend.write_document(sym, ACTIONS_FILE, actions)
    for series in sorted(touched):
        dest.catalog.refresh(*series)
    return report


def _copy_year(src: UnifiedCache, dest: UnifiedCache, key: Key, entry: CopiedYear) -> bool:
    record = src.backend.read_record(key)
    entry.rows = record.rows
    if key.year in dest.backend.years(*key.series):
        there = dest.backend.read_record(key)
        same = there.file_info.extra.get(COPIED_FROM) == record.file_info.sha256 or (
            there.file_info.format == record.file_info.format
            and there.file_info.sha256 == record.file_info.sha256
        )
        if same and there.rows == record.rows:
            entry.status, entry.reason = "skipped", "already there"
            return False
    rows = src.backend.read_rows(key, record)  # verified against the source record
    copied = YearRecord.from_json(record.to_json(), key)
    copied.file_info = FileInfo(
        columns=list(record.file_info.columns),
        last_row=record.file_info.last_row,
        extra={COPIED_FROM: record.file_info.sha256},
    )
    with dest.lock(*key.series):
        dest.backend.recover(key)
        committed = dest.backend.write_year(key, rows, copied)
        back = dest.backend.read_rows(key, committed)
    if len(back) != len(rows) or not back.equals(rows.reindex(columns=back.columns)):
        raise StorageError(f"{key}: the copy in {dest.backend.location} does not read back equal")
    return True
