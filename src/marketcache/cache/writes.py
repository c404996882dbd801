"""Writing one year: decide new | append | rewrite | unchanged, score the rows, build the record.

Backend-neutral: the backend stores bytes and commits the record; this module decides what
the year becomes. Appends are validated from the new rows alone (the counts are additive,
the record keeps the tail context); rewrites re-validate the merged year.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from marketcache.config.schema import Settings
from marketcache.core.calendars import expected_bars
from marketcache.core.coverage import CoverageChange, apply
from marketcache.core.frames import (
    columns_for,
    count_changed,
    drop_unchanged_last_row,
    iso,
    last_row,
    merge_frames,
)
from marketcache.core.quality import TailContext, ValidationCounts
from marketcache.core.records import Coverage, FileInfo, YearRecord, merge_sources, now_stamp
from marketcache.core.timeframes import Timeframe
from marketcache.core.validate import OHLCVValidator, unfilled_bars
from marketcache.storage.backend import Key, StorageBackend

MAX_ERRORS = 20


@dataclass
class YearWrite:
    """What one put did to one year."""

    year: int
    mode: str  # new | append | rewrite | unchanged
    rows_before: int
    rows_after: int
    rows_added: int
    rows_updated: int
    quality: float


@dataclass
class Rows:
    """What a year's new record says of its rows: their check, span and shape."""

    counts: ValidationCounts
    errors: list[str]
    tail: TailContext | None
    start: Any  # the first stored bar (None: no rows)
    end: Any
    columns: list[str]
    last: dict[str, Any] | None  # the last row as stored
    new_span: tuple[Any, Any] | None = None  # the bars this write brought (credited to a source)


class SeriesWriter:
    """Writes the years of one series (symbol × timeframe); the caller holds its lock."""

    def __init__(
        self,
        backend: StorageBackend,
        settings: Settings,
        validator: OHLCVValidator,
        symbol: str,
        timeframe: str,
    ) -> None:
        self.backend = backend
        self.settings = settings
        self.validator = validator
        self.symbol, self.timeframe = symbol, timeframe
        self.calendar = validator.calendar
        self._stored = set(backend.years(symbol, timeframe))
        # which source filled which part [start, end) of what is being written (else: provider)
        self.sources: list[tuple[str, pd.Timestamp, pd.Timestamp]] = []

    def previous(self, key: Key) -> YearRecord | None:
        if key.year not in self._stored:
            return None
        self.backend.recover(key)
        return self.backend.read_record(key)

    def put_year(
        self, key: Key, part: pd.DataFrame, provider: str, change: CoverageChange | None = None
    ) -> YearWrite:
        """Merge `part` into the year: new values win, a missing new value never erases."""
        prev = self.previous(key)
        if prev is not None:
            part = drop_unchanged_last_row(prev.file_info.last_row, part)
            if part.empty:
                if change is not None:
                    self.write_coverage(key, prev, change)
                return YearWrite(key.year, "unchanged", prev.rows, prev.rows, 0, 0, prev.score)
        if (
            prev is not None
            and prev.rows > 0
            and set(columns_for(part)) <= set(prev.file_info.columns)
            and prev.end_date is not None
            and pd.Timestamp(prev.end_date) < part["timestamp"].iloc[0]
            and self.backend.appendable
        ):
            check = self.validator.validate(part, prev.tail)
            rows = Rows(
                counts=prev.counts + check.counts,
                errors=(prev.data_quality.get("validation_errors", []) + check.errors)[
                    -MAX_ERRORS:
                ],
                tail=check.tail,
                start=prev.start_date,
                end=part["timestamp"].iloc[-1],
                columns=prev.file_info.columns,
                last=last_row(part.reindex(columns=prev.file_info.columns)),
                new_span=(part["timestamp"].iloc[0], part["timestamp"].iloc[-1]),
            )
            new = self.record(key, prev, rows, provider, change)
            if self.backend.append(key, prev, part, new) is not None:
                self._stored.add(key.year)
                return YearWrite(key.year, "append", prev.rows, new.rows, len(part), 0, new.score)
        old = self.backend.read_rows(key, prev) if prev is not None else None
        if old is None or old.empty:
            return self.rewrite(key, prev, part, provider, change=change, added=len(part))
        added = int((~part["timestamp"].isin(old["timestamp"])).sum())
        updated = count_changed(old, part)
        if added == 0 and updated == 0 and prev is not None:
            if change is not None:
                self.write_coverage(key, prev, change)
            return YearWrite(key.year, "unchanged", len(old), len(old), 0, 0, prev.score)
        merged = merge_frames(old, part)
        span = (part["timestamp"].iloc[0], part["timestamp"].iloc[-1])
        return self.rewrite(
            key, prev, merged, provider, change=change, added=added, updated=updated, span=span
        )

    def rewrite(
        self,
        key: Key,
        prev: YearRecord | None,
        frame: pd.DataFrame,
        provider: str,
        *,
        change: CoverageChange | None = None,
        added: int = 0,
        updated: int = 0,
        span: tuple[Any, Any] | None = None,
        record_source: bool = True,
    ) -> YearWrite:
        """Store `frame` as the whole year (the caller decided it may shrink)."""
        columns = columns_for(frame)
        frame = frame.reindex(columns=columns)
        check = self.validator.validate(frame)
        first = frame["timestamp"].iloc[0] if len(frame) else None
        last = frame["timestamp"].iloc[-1] if len(frame) else None
        if span is None and first is not None:
            span = (first, last)
        rows = Rows(
            counts=check.counts,
            errors=check.errors,
            tail=check.tail,
            start=first,
            end=last,
            columns=columns,
            last=last_row(frame),
            new_span=span if record_source else None,
        )
        new = self.record(key, prev, rows, provider, change)
        self.backend.write_year(key, frame, new)
        self._stored.add(key.year)
        mode = "new" if prev is None else "rewrite"
        before = prev.rows if prev is not None else 0
        return YearWrite(key.year, mode, before, len(frame), added, updated, new.score)

    def record(
        self,
        key: Key,
        prev: YearRecord | None,
        rows: Rows,
        provider: str,
        change: CoverageChange | None = None,
    ) -> YearRecord:
        """The year's new record (its file_info storage fields are filled by the backend)."""
        coverage = prev.coverage if prev is not None else Coverage(calendar=self.calendar)
        if change is not None:
            coverage = apply(coverage, change, self.calendar)
        coverage = Coverage(
            self.calendar, coverage.missing_ranges, coverage.verified_empty, list(coverage.sources)
        )
        if rows.new_span is not None:
            first_bar, last_bar = pd.Timestamp(rows.new_span[0]), pd.Timestamp(rows.new_span[1])
            claims = [
                (name, max(lo, first_bar), min(hi - pd.Timedelta(1, "ns"), last_bar))
                for name, lo, hi in self.sources
            ] or [(provider, first_bar, last_bar)]
            for name, lo, hi in claims:
                if lo <= hi:
                    coverage.sources = merge_sources(
                        coverage.sources, name, iso(lo), iso(hi), self._adjacent
                    )
        prov = self.settings.providers.get(provider)
        stamp = now_stamp()
        record = YearRecord(
            symbol=key.symbol,
            timeframe=key.timeframe,
            year=key.year,
            data_source=provider,
            created_at=prev.created_at if prev is not None else stamp,
            last_updated=stamp,
            start_date=iso(rows.start) if rows.start is not None else None,
            end_date=iso(rows.end) if rows.end is not None else None,
            file_info=FileInfo(columns=list(rows.columns), last_row=rows.last),
            provider_info={
                "name": provider,
                "reliability": prov.reliability if prov else None,
                "rate_limit": prov.rate_limit.describe() if prov else None,
            },
            coverage=coverage,
            extra={k: v for k, v in (prev.extra if prev is not None else {}).items()},
        )
        record.set_quality(self.with_unfilled(rows.counts, record), rows.errors, rows.tail)
        return record

    def with_unfilled(self, counts: ValidationCounts, record: YearRecord) -> ValidationCounts:
        """`counts` with the expected bars of the record's missing ranges outside its rows."""
        first = pd.Timestamp(record.start_date) if record.start_date else None
        last = pd.Timestamp(record.end_date) if record.end_date else None
        counts.unfilled_bars = unfilled_bars(
            self.calendar, Timeframe(self.timeframe), record.coverage.missing_ranges, first, last
        )
        return counts

    def write_coverage(self, key: Key, prev: YearRecord | None, change: CoverageChange) -> None:
        """Record a coverage change alone (and re-score: missing ranges count)."""
        if prev is None:
            if not change.records_something:
                return
            from marketcache.core.frames import empty_frame

            self.rewrite(key, None, empty_frame(), "none", change=change)
            return
        coverage = apply(prev.coverage, change, self.calendar)
        if coverage == prev.coverage:
            return
        prev.coverage = coverage
        prev.set_quality(
            self.with_unfilled(prev.counts, prev),
            prev.data_quality.get("validation_errors", []),
            prev.tail,
        )
        self.backend.write_record(key, prev)

    def _adjacent(self, a: str, b: str) -> bool:
        """No expected bar lies strictly between bar stamps a and b."""
        after = pd.Timestamp(a) + pd.Timedelta(1, "ns")
        if after > pd.Timestamp(b):
            return False
        return not len(
            expected_bars(self.calendar, Timeframe(self.timeframe), after, pd.Timestamp(b))
        )
