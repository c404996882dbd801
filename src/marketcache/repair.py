"""validate (and --fix) for one year: verify → salvage → clean → rewrite, and re-score.

Without `fix` nothing is written but the refreshed quality. With it: a torn tail is cut, a
damaged year gives back the rows before the damage (the original is kept aside), invalid and
duplicate rows go, and the year is rewritten; rows that could not be recovered are counted
so that the command can say so (and populate fetches them again).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from marketcache.errors import CorruptFile
from marketcache.frames import clean_frame, empty_frame
from marketcache.records import YearRecord, now_stamp
from marketcache.storage.backend import Key
from marketcache.validate import ValidationResult

if TYPE_CHECKING:
    import pandas as pd

    from marketcache.writes import SeriesWriter


@dataclass
class YearCheck:
    """validate's verdict on one year."""

    symbol: str
    timeframe: str
    year: int
    path: str
    status: str  # ok | low-score | corrupt | fixed
    score: float | None = None
    rows: int = 0
    lost: int = 0  # committed rows a repair could not recover (populate fetches them again)
    problems: list[str] = field(default_factory=list)
    repairs: list[str] = field(default_factory=list)


def check_year(
    writer: SeriesWriter, key: Key, where: str, *, min_score: float, fix: bool
) -> YearCheck:
    """Re-read one year, verify it against its record, re-score it, optionally repair it
    (the caller holds the series lock)."""
    backend = writer.backend
    check = YearCheck(key.symbol, key.timeframe, key.year, where, "ok")
    backend.recover(key)
    record: YearRecord | None = None
    rewrite = False
    try:
        record = backend.read_record(key)
        df = backend.read_rows(key, record)
    except CorruptFile as exc:
        check.problems.append(str(exc))
        check.path = str(exc.path)
        if not fix:
            check.status = "corrupt"
            return check
        salvaged, note, aside = backend.salvage(key)
        if salvaged is None and not aside:
            check.status = "corrupt"
            check.problems.append(note)
            return check
        if salvaged is None:
            check.problems.append(f"{where}: no readable rows ({note})")
            check.repairs.append(f"kept the unreadable original as {aside}")
            salvaged = empty_frame()
        else:
            check.repairs.append(
                f"salvaged {len(salvaged)} rows ({note}); original kept as {aside}"
            )
        df, rewrite = salvaged, True  # the readable record keeps coverage and created_at
    if record is not None and fix and backend.cut_torn_tail(key, record):
        check.problems.append(f"{where}: torn tail after the committed size")
        check.repairs.append("cut the torn tail")
    result = _scored(writer, record, writer.validator.validate(df), df)
    if fix and not result.is_valid:
        cleaned = clean_frame(df)
        check.repairs.append(
            f"dropped {len(df) - len(cleaned)} invalid or duplicate rows and sorted"
        )
        df, rewrite = cleaned, True
    provider = record.data_source if record is not None else "unknown"
    if rewrite and df.empty:
        backend.delete(key)
        check.repairs.append("no valid rows left: year removed (original kept aside)")
    elif rewrite:
        writer.rewrite(key, record, df, provider, record_source=False)
        result = _scored(writer, record, writer.validator.validate(df), df)
    elif record is not None:
        _store_quality(writer, key, record, result)
    check.score, check.rows = result.score, len(df)
    committed = record.rows if record is not None else 0
    if check.repairs and committed > len(df):
        check.lost = committed - len(df)
        check.problems.append(
            f"{check.lost:,} of {committed:,} committed rows could not be recovered:"
            f" run `marketcache populate {key.symbol} -t {key.timeframe}` to fetch them again"
        )
    if check.repairs:
        check.status = "fixed"
    elif check.problems:
        check.status = "corrupt"
    if result.score < min_score and (not df.empty or result.counts.unfilled_bars):
        check.problems.append(f"quality {result.score:.4f} below {min_score:g}")
        if check.status == "ok":
            check.status = "low-score"
    return check


def _scored(
    writer: SeriesWriter, record: YearRecord | None, result: ValidationResult, df: pd.DataFrame
) -> ValidationResult:
    """`result` with the record's missing ranges counted into completeness."""
    from marketcache.frames import iso
    from marketcache.quality import score_counts

    probe = YearRecord(writer.symbol, writer.timeframe, 0)
    if record is not None:
        probe.coverage = record.coverage
    if len(df):
        probe.start_date, probe.end_date = iso(df["timestamp"].min()), iso(df["timestamp"].max())
    result.counts = writer.with_unfilled(result.counts, probe)
    result.score, result.breakdown = score_counts(result.counts)
    return result


def _store_quality(
    writer: SeriesWriter, key: Key, record: YearRecord, result: ValidationResult
) -> None:
    before = record.data_quality
    record.set_quality(result.counts, result.errors, result.tail)
    if record.data_quality == before:
        return
    record.extra["last_validated"] = now_stamp()
    writer.backend.write_record(key, record)
