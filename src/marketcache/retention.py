"""Retention: cutoffs → per-year delete | trim | keep (pure), applied by the facade.

`--before D` and `--keep-years N` (January 1st of the last N years, this one counted) give
a cutoff; years wholly before it are deleted, the year holding it is trimmed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from marketcache.errors import UsageError
from marketcache.models import parse_date


@dataclass
class CleanupAction:
    path: str
    action: str  # delete-year | trim-year | remove-leftover
    symbol: str = ""
    timeframe: str = ""
    year: int | None = None
    rows_removed: int = 0
    reason: str = ""


def cutoff(
    *, before: Any = None, keep_years: int | None = None, now: pd.Timestamp | None = None
) -> pd.Timestamp:
    cutoffs = []
    if before is not None:
        cutoffs.append(parse_date(before, option="--before"))
    if keep_years is not None:
        if keep_years < 1:
            raise UsageError("--keep-years must be at least 1")
        this_year = (now or pd.Timestamp.now(tz="UTC").tz_localize(None)).year
        cutoffs.append(pd.Timestamp(this_year - keep_years + 1, 1, 1))
    if not cutoffs:
        raise UsageError("give --before, --older-than or --keep-years")
    return max(cutoffs)


def decide(year: int, start_date: str | None, cut: pd.Timestamp) -> str:
    """keep | delete | trim for a year whose first stored bar is `start_date`."""
    if year > cut.year:
        return "keep"
    if year < cut.year:
        return "delete"
    if cut == pd.Timestamp(year, 1, 1) or not start_date:
        return "keep"  # nothing of this year lies before the cutoff
    return "trim" if pd.Timestamp(start_date) < cut else "keep"
