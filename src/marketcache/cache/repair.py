"""validate (and --fix) for one year: verify → salvage → clean → rewrite, and re-score.

Without `fix` nothing is written but the refreshed quality. With it: a torn tail is cut, a
damaged year gives back the rows before the damage (the original is kept aside), invalid and
duplicate rows go, and the year is rewritten. A repair never leaves a hole nothing records:
the committed bars it could not keep become the year's `missing_ranges` (reason
`LOST_IN_REPAIR`), so the score counts them, `populate` knows them, and the check carries the
one `populate --start … --end …` command that fetches exactly them again.

What the salvage found is said as it is: bytes that differ from their record but decode whole
(a value edited by hand, a table row UPDATEd) are not "truncated": every row that validates
is kept, and the year is marked (`REVERIFY`) until `validate --against-source` has compared
it with its source.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from marketcache.core.frames import clean_frame, empty_frame
from marketcache.core.records import YearRecord, now_stamp
from marketcache.core.validate import ValidationResult
from marketcache.errors import CorruptFile
from marketcache.storage.backend import Key

if TYPE_CHECKING:
    import pandas as pd

    from marketcache.cache.writes import SeriesWriter
    from marketcache.core.gaps import Span

LOST_IN_REPAIR = "lost in repair"
REVERIFY = "reverify"  # the record key of a year whose kept rows await a check at the source
# the salvage notes of bytes that decoded whole (every gzip member's CRC held, every Parquet
# page read, the database rows as they are): changed, not cut short
_DECODED_WHOLE = ("all members readable", "all row groups readable", "rows as they are")


@dataclass
class YearCheck:
    """validate's verdict on one year."""

    symbol: str
    timeframe: str
    year: int
    path: str
    status: str  # ok | low-score | incomplete | corrupt | fixed | unverified | locked | gone
    score: float | None = None
    rows: int = 0
    lost: int = 0  # committed rows a repair could not recover (populate fetches them again)
    problems: list[str] = field(default_factory=list)
    repairs: list[str] = field(default_factory=list)
    missing_ranges: list[dict[str, str]] = field(default_factory=list)  # recorded by a repair
    hint: str = ""  # the command that restores what the repair could not keep


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
    changed = False  # the bytes decoded whole but are not the committed ones
    try:
        record = backend.read_record(key)
        df = backend.read_rows(key, record)
    except CorruptFile as exc:
        check.path = str(exc.path)
        if not fix:
            check.problems.append(str(exc))
            check.status = "corrupt"
            return check
        salvaged, note, aside = backend.salvage(key)
        changed = record is not None and salvaged is not None and note.startswith(_DECODED_WHOLE)
        check.problems.append(_diagnosis(exc, note, changed))
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
    lost = _lost_spans(writer, record, df) if rewrite and record is not None else []
    if rewrite and df.empty and not lost:
        backend.delete(key)
        check.repairs.append("no valid rows left: year removed (original kept aside)")
    elif rewrite:
        change = _lost_change(lost)
        if changed and record is not None:
            record.extra[REVERIFY] = {
                "since": now_stamp(),
                "reason": "its bytes differed from the record but decoded whole",
                "provider": provider,
            }
        writer.rewrite(key, record, df, provider, record_source=False, change=change)
        if record is None and not df.empty:  # rows without a record: nothing vouches for them
            rebuilt = backend.read_record(key)
            rebuilt.extra[REVERIFY] = {
                "since": now_stamp(),
                "reason": "its record could not be read: its rows were kept unchecked",
                "provider": rebuilt.data_source,
            }
            backend.write_record(key, rebuilt)
            check.repairs.append(
                f"its record could not be read, so the {len(df):,} rows kept are unchecked"
                f" (sources and coverage unknown): {_reverify_command(key)}"
            )
        result = _scored(writer, backend.read_record(key), writer.validator.validate(df), df)
        check.missing_ranges = list(change.missing) if change else []
    elif record is not None:
        _store_quality(writer, key, record, result)
    check.score, check.rows = result.score, len(df)
    committed = record.rows if record is not None else 0
    if changed:
        check.repairs.append(
            f"kept the {len(df):,} rows that validate and marked the year for re-verification"
            f" against {provider}: {_reverify_command(key)}"
        )
    if check.repairs and committed > len(df):
        check.lost = committed - len(df)
        check.hint = _populate_command(key, lost)
        recorded = f", recorded as missing ({_ranges(lost)})" if lost else ""
        check.problems.append(
            f"{check.lost:,} of {committed:,} committed rows could not be recovered{recorded}:"
            f" run `{check.hint}` to fetch them again"
        )
    if check.repairs:
        check.status = "fixed"
    elif check.problems:
        check.status = "corrupt"
    if result.score < min_score and (not df.empty or result.counts.unfilled_bars):
        check.problems.insert(
            len(check.problems) - bool(check.lost),
            f"quality {result.score:.4f} below {min_score:g}",
        )  # the restore command stays the last word
        if check.status == "ok":
            check.status = "low-score"
    if not fix and record is not None and check.status in ("ok", "low-score"):
        _still_lost(check, key, record)
    if not fix and record is not None and REVERIFY in record.extra and check.status == "ok":
        check.status = "unverified"
        check.problems.append(
            f"kept by a repair on {record.extra[REVERIFY].get('since', '?')} and not yet"
            f" checked against its source: {_reverify_command(key)}"
        )
    return check


def _still_lost(check: YearCheck, key: Key, record: YearRecord) -> None:
    """A year whose record still holds bars a repair lost is not whole, whatever its score:
    `incomplete`, with those ranges and the `populate` command that fetches them (a plain
    nightly `populate` of the series asks for them too)."""
    import pandas as pd

    from marketcache.core.gaps import Span

    lost = [m for m in record.coverage.missing_ranges if m.get("reason") == LOST_IN_REPAIR]
    if not lost:
        return
    spans = [Span(pd.Timestamp(m["start"]), pd.Timestamp(m["end"])) for m in lost]
    check.missing_ranges = lost
    check.hint = _populate_command(key, spans)
    if check.status == "ok":
        check.status = "incomplete"
    since = min(str(m.get("recorded_at", "?")) for m in lost)
    check.problems.append(
        f"bars lost in a repair on {since[:10]} are still missing ({_ranges(spans)}):"
        f" run `{check.hint}` to fetch them again"
    )


def _diagnosis(exc: CorruptFile, note: str, changed: bool) -> str:
    """What the salvage found, in place of a guess from the size alone."""
    if changed:
        return (
            f"{exc.path}: its bytes are not the committed ones (size or sha256 differ from the"
            " record) but they decode whole: changed after the commit, not truncated"
        )
    return str(exc)


def clear_reverify(writer: SeriesWriter, key: Key) -> bool:
    """Drop a repair's re-verification mark once the year was compared with its source (the
    caller holds the series lock); True when there was one."""
    record = writer.backend.read_record(key)
    if record.extra.pop(REVERIFY, None) is None:
        return False
    writer.backend.write_record(key, record)
    return True


def _lost_spans(writer: SeriesWriter, record: YearRecord, kept: pd.DataFrame) -> list[Span]:
    """The runs of bars the calendar expects in the committed span [start_date, end_date]
    that the repaired rows lack and the ledger does not already explain (verified empty or
    already missing): what the repair lost."""
    import numpy as np
    import pandas as pd

    from marketcache.core.calendars import expected_bars
    from marketcache.core.gaps import Span
    from marketcache.core.timeframes import Timeframe

    if not record.start_date or not record.end_date or not record.rows:
        return []
    tf = Timeframe(writer.timeframe)
    first, last = pd.Timestamp(record.start_date), pd.Timestamp(record.end_date)
    stamps = expected_bars(writer.calendar, tf, first, last + pd.Timedelta(1, "ns")).asi8
    lost = ~np.isin(stamps, kept["timestamp"].to_numpy("datetime64[ns]").astype("int64"))
    ledger = record.coverage.verified_empty + record.coverage.missing_ranges
    for entry in ledger:
        lo, hi = pd.Timestamp(entry["start"]).value, pd.Timestamp(entry["end"]).value
        lost &= ~((stamps >= lo) & (stamps < hi))
    spans: list[Span] = []
    idx = np.flatnonzero(lost)
    if not len(idx):
        return spans
    breaks = np.flatnonzero(np.diff(idx) > 1)  # runs of consecutive expected bars
    for a, b in zip(np.r_[0, breaks + 1], np.r_[breaks, len(idx) - 1], strict=True):
        start = pd.Timestamp(stamps[idx[a]])
        spans.append(Span(start, tf.next_open(pd.Timestamp(stamps[idx[b]]))))
    return spans


def _lost_change(spans: list[Span]) -> Any:
    """The coverage change recording `spans` as missing, lost in repair (None: nothing)."""
    from marketcache.core.coverage import CoverageChange

    if not spans:
        return None
    stamp = now_stamp()
    return CoverageChange(
        missing=[{**s.as_json(), "reason": LOST_IN_REPAIR, "recorded_at": stamp} for s in spans]
    )


def _populate_command(key: Key, spans: list[Span]) -> str:
    """`marketcache populate SYM -t TF --start A --end B`, [A, B) covering exactly `spans`."""
    words = ["marketcache", "populate", key.symbol, "-t", key.timeframe]
    if spans:
        words += ["--start", _when(spans[0].start), "--end", _when(spans[-1].end)]
    return shlex.join(words)


def _reverify_command(key: Key) -> str:
    return (
        f"run `marketcache validate {shlex.quote(key.symbol)} {key.timeframe} --against-source"
        f" --since {key.year}-01-01 --fix`"
    )


def _ranges(spans: list[Span]) -> str:
    return "one range" if len(spans) == 1 else f"{len(spans)} ranges"


def _when(ts: pd.Timestamp) -> str:
    """A date as --start/--end read it: the day alone at midnight, else day and time."""
    return ts.strftime("%Y-%m-%d") if ts == ts.normalize() else ts.strftime("%Y-%m-%d %H:%M")


def _scored(
    writer: SeriesWriter, record: YearRecord | None, result: ValidationResult, df: pd.DataFrame
) -> ValidationResult:
    """`result` with the record's missing ranges counted into completeness."""
    from marketcache.core.frames import iso
    from marketcache.core.quality import score_counts

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


def validation_exit_code(checks: list[YearCheck], threshold: float) -> int:
    """validate's verdict: 4 when a series was held past the lock wait, 3 when a year is
    corrupt, scored below `threshold`, incomplete or lost rows, else 0."""
    if any(c.status == "locked" for c in checks):
        return 4
    bad = any(
        c.status in ("corrupt", "low-score", "incomplete")
        or c.lost
        or (c.score is not None and c.score < threshold)
        for c in checks
    )
    return 3 if bad else 0
