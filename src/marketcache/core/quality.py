"""The quality score: additive counts and the documented formula. Pure, light (no numpy).

The score is a weighted sum of components, each the share of bars that pass one family of checks:

    completeness = present expected bars / (expected bars between the first and    weight 0.40
                   last stored bar + expected bars of `missing_ranges` outside them)
    validity     = 1 - rows with bad values / rows                                weight 0.25
                   (non-finite, price <= 0, volume < 0, high < max(open, close),
                    low > min(open, close), high < low)
    uniqueness   = 1 - (duplicate + out-of-order timestamps) / rows               weight 0.15
    continuity   = 1 - bar-to-bar close jumps over the asset threshold / rows     weight 0.10
    freshness    = 1 - bars in stale runs (close unchanged with volume) / rows    weight 0.05
    volume       = 1 - bars with zero volume while the price moved / rows         weight 0.05

All counts are additive, so a year's score can be updated from newly appended rows alone by
validating them with the `TailContext` of the rows before them and adding the counts.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

WEIGHTS = {
    "completeness": 0.40,
    "validity": 0.25,
    "uniqueness": 0.15,
    "continuity": 0.10,
    "freshness": 0.05,
    "volume": 0.05,
}


@dataclass(frozen=True)
class TailContext:
    """What the validator needs to know of the rows before a chunk (for appends)."""

    timestamp: str
    close: float
    stale_run: int = 0


@dataclass
class ValidationCounts:
    """Additive tallies from which the score is computed."""

    rows: int = 0
    bad_rows: int = 0
    nonfinite: int = 0
    nonpositive_price: int = 0
    negative_volume: int = 0
    ohlc_violations: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    expected_bars: int = 0
    present_bars: int = 0
    missing_bars: int = 0
    gap_runs: int = 0
    off_calendar: int = 0
    jumps: int = 0
    stale_bars: int = 0
    zero_volume_moves: int = 0
    split_like_jumps: int = 0  # jumps of a split's size on a day with no known split
    unfilled_bars: int = 0  # expected bars in missing_ranges outside the stored span

    def __add__(self, other: ValidationCounts) -> ValidationCounts:
        return ValidationCounts(
            **{f.name: getattr(self, f.name) + getattr(other, f.name) for f in fields(self)}
        )

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ValidationCounts:
        names = {f.name for f in fields(cls)}
        return cls(**{k: int(v) for k, v in data.items() if k in names})


def score_counts(counts: ValidationCounts) -> tuple[float, dict[str, float]]:
    """The documented formula: weighted components, each in [0, 1]; score rounded to 4 places."""
    rows = max(counts.rows, 1)

    def share(bad: int) -> float:
        return max(0.0, 1.0 - bad / rows)

    wanted = counts.expected_bars + counts.unfilled_bars
    breakdown = {
        "completeness": counts.present_bars / wanted if wanted else 1.0,
        "validity": share(counts.bad_rows),
        "uniqueness": share(counts.duplicates + counts.out_of_order),
        "continuity": share(counts.jumps),
        "freshness": share(counts.stale_bars),
        "volume": share(counts.zero_volume_moves),
    }
    breakdown = {k: round(min(1.0, v), 6) for k, v in breakdown.items()}
    # no rows: a range verified empty has nothing wrong with it; a range that failed does
    scored = counts.rows or counts.unfilled_bars
    score = sum(WEIGHTS[k] * v for k, v in breakdown.items()) if scored else 1.0
    return round(score, 4), breakdown
