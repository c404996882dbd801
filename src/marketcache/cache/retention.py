"""Retention: cutoffs → per-year delete | trim | keep (pure), applied one series at a time.

`--before D` and `--keep-years N` (January 1st of the last N years, this one counted) give
a cutoff; years wholly before it are deleted, the year holding it is trimmed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from marketcache.core.models import parse_date
from marketcache.errors import CorruptFile, LockTimeout, UsageError

if TYPE_CHECKING:
    import pandas as pd

    from marketcache.cache.series import Series


@dataclass
class CleanupAction:
    path: str
    action: (
        str  # delete-year | trim-year | trim-tail | remove-leftover | skip-corrupt | skip-locked
    )
    symbol: str = ""
    timeframe: str = ""
    year: int | None = None
    rows_removed: int = 0
    reason: str = ""


def cleanup_exit_code(actions: list[CleanupAction]) -> int:
    """4 when a series was busy past the lock wait, 3 when a corrupt year was left, else 0."""
    done = {a.action for a in actions}
    return 4 if "skip-locked" in done else 3 if "skip-corrupt" in done else 0


def cutoff(
    *,
    before: Any = None,
    older_than: str | None = None,
    keep_years: int | None = None,
    now: pd.Timestamp | None = None,
) -> pd.Timestamp:
    """The cutoff the criteria give (the latest of them): a date, an age with its unit (400d,
    8w, 2y: `--older-than`), or January 1st of the last `keep_years` years."""
    import pandas as pd

    cutoffs = []
    if before is not None:
        cutoffs.append(parse_date(before, option="--before"))
    if older_than:
        if not older_than.strip()[-1:].isalpha():
            raise UsageError(f"--older-than '{older_than}' needs a unit: e.g. 400d, 8w, 2y")
        cutoffs.append(parse_date(older_than, option="--older-than"))
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
    import pandas as pd

    if year > cut.year:
        return "keep"
    if year < cut.year:
        return "delete"
    if cut == pd.Timestamp(year, 1, 1) or not start_date:
        return "keep"  # nothing of this year lies before the cutoff
    return "trim" if pd.Timestamp(start_date) < cut else "keep"


def cut_series(series: Series, cut: pd.Timestamp, *, dry_run: bool) -> list[CleanupAction]:
    """Delete the series' years before `cut` and trim the year holding it, under its lock (held
    across the series' years, so a racing populate runs wholly before or after), deciding from
    the records read under that lock. A dry run reads without a lock; a series held past
    lock_wait is one `skip-locked` action (one busy series does not stop the others)."""
    if dry_run:
        return _cut_series(series, cut, apply=False)
    sym, tf = series.symbol, series.tf
    try:
        with series.lock():
            done = _cut_series(series, cut, apply=True)
            if done:
                series.catalog.refresh(sym, tf)
    except LockTimeout as exc:
        done = [CleanupAction(f"{sym} {tf}", "skip-locked", sym, tf, reason=str(exc))]
    return done


def _corrupt(series: Series, key: Any, exc: CorruptFile) -> CleanupAction:
    return CleanupAction(
        series.where(key), "skip-corrupt", key.symbol, key.timeframe, key.year,
        reason=f"{exc}: left as it is; run `marketcache validate --fix` first",
    )  # fmt: skip


def _cut_series(series: Series, cut: pd.Timestamp, *, apply: bool) -> list[CleanupAction]:
    """One series' cut; with `apply` the caller holds the series lock and it is done."""
    actions: list[CleanupAction] = []
    backend, sym, tf = series.backend, series.symbol, series.tf
    writer = series.writer() if apply else None
    for key in backend.keys(sym, tf):  # listed afresh: under the lock, what is there now
        if apply:
            backend.recover(key)
        try:
            rec = backend.read_record(key)
            verdict = decide(key.year, rec.start_date, cut)
            found = backend.read_year(key) if verdict == "trim" else None
        except CorruptFile as exc:  # said, never skipped in silence, and the others go on
            if key.year <= cut.year:
                actions.append(_corrupt(series, key, exc))
            continue
        if verdict == "keep":
            continue
        left = None
        if verdict == "delete":
            removed = rec.rows
        else:
            if found is None:
                continue
            rec, df = found
            left = df[df["timestamp"] >= cut].reset_index(drop=True)
            removed = len(df) - len(left)
            if not removed:
                continue
        gone = left is None or left.empty
        why = f"before {cut.date()}" if verdict == "delete" else f"before {cut}"
        actions.append(
            CleanupAction(
                series.where(key),
                "delete-year" if gone else "trim-year",
                sym,
                tf,
                key.year,
                removed,
                why,
            )
        )
        if writer is None:
            continue
        if left is None or left.empty:
            backend.delete(key)
        else:
            writer.rewrite(key, rec, left, rec.data_source)
    return actions + _cut_tail(series, cut, apply=apply)


def _cut_tail(series: Series, cut: pd.Timestamp, *, apply: bool) -> list[CleanupAction]:
    """The live tail's bars before `cut` go too (with `apply`, the series lock is held)."""
    from marketcache.storage.tail import open_tail

    tail = open_tail(series.backend, series.symbol, series.tf)
    rows = tail.read()
    old = (rows["timestamp"] < cut).to_numpy()
    if not old.any():
        return []
    if apply:
        tail.keep(rows[~old])
    why = f"before {cut}"
    return [
        CleanupAction(tail.where, "trim-tail", series.symbol, series.tf, None, int(old.sum()), why)
    ]
