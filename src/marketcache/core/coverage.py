"""The coverage ledger per year: what a provider answered empty, what is still missing and why.

Pure: a change (ranges verified empty, missing, or filled) is cut at UTC year ends and applied
to each year's `Coverage`. A range filled or answered empty clears the missing entries it
overlaps; a newer answer for the same span replaces the older one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from marketcache.core.frames import iso
from marketcache.core.records import Coverage


@dataclass
class CoverageChange:
    """What one commit learned about one year's coverage."""

    verified_empty: list[dict[str, str]] = field(default_factory=list)
    missing: list[dict[str, str]] = field(default_factory=list)
    resolved: list[dict[str, str]] = field(default_factory=list)

    @property
    def records_something(self) -> bool:
        """Whether a year with no rows needs a record for it."""
        return bool(self.verified_empty or self.missing)


def by_year(
    *,
    verified_empty: Iterable[tuple[Any, pd.Timestamp, str]] = (),
    missing: Iterable[tuple[Any, str]] = (),
    resolved: Iterable[Any] = (),
    now: str,
) -> dict[int, CoverageChange]:
    """Spans (objects with .start/.end) cut into per-year changes."""
    out: dict[int, CoverageChange] = {}
    for span, checked, why in verified_empty:
        for year, a, b in _pieces(span):
            out.setdefault(year, CoverageChange()).verified_empty.append(
                {"start": a, "end": b, "checked_at": iso(checked) + "Z", "answer": why}
            )
    for span, why in missing:
        for year, a, b in _pieces(span):
            out.setdefault(year, CoverageChange()).missing.append(
                {"start": a, "end": b, "reason": why, "recorded_at": now}
            )
    for span in resolved:
        for year, a, b in _pieces(span):
            out.setdefault(year, CoverageChange()).resolved.append({"start": a, "end": b})
    return out


def apply(coverage: Coverage, change: CoverageChange, calendar: str) -> Coverage:
    """The coverage after `change`: filled and empty ranges clear overlapping missing ones."""
    done = change.resolved + change.verified_empty
    kept_missing = [
        m
        for m in coverage.missing_ranges
        if not any(d["start"] < m["end"] and m["start"] < d["end"] for d in done)
    ]
    renewed = {(e["start"], e["end"]) for e in change.verified_empty}
    kept_empty = [e for e in coverage.verified_empty if (e["start"], e["end"]) not in renewed]
    return Coverage(
        calendar=coverage.calendar or calendar,
        missing_ranges=_latest_per_span(kept_missing + change.missing),
        verified_empty=sorted(kept_empty + change.verified_empty, key=lambda e: e["start"]),
        sources=list(coverage.sources),
    )


def _pieces(span: Any) -> Iterator[tuple[int, str, str]]:
    start, end = pd.Timestamp(span.start), pd.Timestamp(span.end)
    while start < end:
        cut = min(end, pd.Timestamp(start.year + 1, 1, 1))
        yield start.year, iso(start), iso(cut)
        start = cut


def _latest_per_span(entries: list[dict[str, str]]) -> list[dict[str, str]]:
    by_span: dict[tuple[str, str], dict[str, str]] = {}
    for entry in entries:
        by_span[(entry["start"], entry["end"])] = entry
    return sorted(by_span.values(), key=lambda e: e["start"])
