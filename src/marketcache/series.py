"""Series-level work of the cache: what populate plans from, and keeping `adj_close` true.

Both run over every stored year of one symbol × timeframe; the facade delegates here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from marketcache.actions import CorporateActions, Dividend, Split, merge_actions
from marketcache.errors import CorruptFile
from marketcache.records import now_stamp
from marketcache.storage.backend import Key, StorageBackend

ACTIONS_FILE = "corporate_actions.json"

if TYPE_CHECKING:
    from marketcache.cache import SeriesState, UnifiedCache
    from marketcache.records import YearRecord


def series_state(
    cache: UnifiedCache, sym: str, tf: str, years: Iterable[int], expected: Any, *, repair: bool
) -> SeriesState:
    """What populate plans from: the stored bar times of `years` (from the records when a
    year is gap-free, else read), the ranges verified empty, and notes. Each year's data
    is checked against its record first; with `repair` (lock held) a corrupt year is
    moved aside so that it is fetched again."""
    import numpy as np
    import pandas as pd

    from marketcache.cache import SeriesState
    from marketcache.gaps import VerifiedEmpty

    state, years = SeriesState(), list(years)
    stored = set(cache.backend.years(sym, tf))
    present: list[Any] = []
    for year in (y for y in years if y in stored):
        key = Key(sym, tf, year)
        try:
            rec = _year_state(cache, key, expected, present)
        except CorruptFile as exc:
            if repair:
                aside = cache.quarantine_year(sym, tf, year)
                state.notes.append(f"{exc}; moved aside as {aside or '-'}")
            else:
                state.notes.append(f"{exc}; a run would move it aside and fetch it again")
            continue
        if rec is None:
            continue  # removed since it was listed (a dry run holds no lock)
        for ve in rec.coverage.verified_empty:
            checked = pd.Timestamp(ve["checked_at"])
            if checked.tzinfo is not None:
                checked = checked.tz_convert("UTC").tz_localize(None)
            state.verified_empty.append(
                VerifiedEmpty(pd.Timestamp(ve["start"]), pd.Timestamp(ve["end"]), checked)
            )
    from marketcache.live.tail import read_tail

    live = read_tail(cache, sym, tf)["timestamp"].to_numpy(dtype="datetime64[ns]")
    if len(live):  # the live tail's bars are stored: not fetched again (a commit folds them)
        wanted = np.isin(pd.DatetimeIndex(live).year, list(years))
        present.append(live[wanted])
    found = np.concatenate(present) if present else np.zeros(0, "datetime64[ns]")
    state.present = np.unique(found) if len(live) else found
    return state


def _year_state(
    cache: UnifiedCache, key: Key, expected: Any, present: list[Any]
) -> YearRecord | None:
    """One year's verified record (None: gone), its stored bar times added to `present` —
    from the record when the year is gap-free, else read. Reads take no lock, so a populate
    --dry-run racing a writer reads the year's old state or its new one."""
    import pandas as pd

    rec = cache.backend.verify_year(key)
    if rec is None or not rec.rows or rec.start_date is None or rec.end_date is None:
        return rec
    counts = rec.counts
    if counts.missing_bars == 0 and counts.off_calendar == 0 and counts.rows:
        first, last = pd.Timestamp(rec.start_date), pd.Timestamp(rec.end_date)
        inside = expected[(expected >= first) & (expected <= last)]
        present.append(inside.to_numpy(dtype="datetime64[ns]"))  # no read needed
        return rec
    found = cache.backend.read_year(key)
    if found is None:
        return None
    rec, df = found
    present.append(df["timestamp"].to_numpy(dtype="datetime64[ns]"))
    return rec


def readjust(cache: UnifiedCache, sym: str, tf: str) -> list[int]:
    """Recompute `adj_close` of every stored year from the closes and the known actions;
    rewrite (crash-safe) the years whose values changed. Returns those years."""
    import numpy as np
    import pandas as pd

    from marketcache.actions import adj_close
    from marketcache.frames import SAME

    if not cache.adjusts(sym, tf):
        return []
    actions, rewritten = cache.get_actions(sym), []
    with cache.lock(sym, tf):
        keys = cache.backend.keys(sym, tf)
        records = [cache.backend.read_record(k) for k in keys]
        frames = [cache.backend.read_rows(k, r) for k, r in zip(keys, records, strict=True)]
        if not frames or not sum(len(f) for f in frames):
            return []
        fresh = adj_close(pd.concat(frames, ignore_index=True), actions)
        writer, offset = cache.writer(sym, tf), 0
        for key, rec, df in zip(keys, records, frames, strict=True):
            values, offset = fresh[offset : offset + len(df)], offset + len(df)
            if df.empty or (
                "adj_close" in df.columns
                and np.allclose(df["adj_close"].to_numpy("float64"), values, rtol=SAME, atol=0.0)
            ):
                continue
            writer.rewrite(
                key, rec, df.assign(adj_close=values), rec.data_source, record_source=False
            )
            rewritten.append(key.year)
        if rewritten:
            cache.catalog.refresh(sym, tf)
    return rewritten


def read_actions(backend: StorageBackend, sym: str) -> CorporateActions:
    raw = backend.read_document(sym, ACTIONS_FILE)
    if raw is None:
        return CorporateActions(sym)
    try:
        return CorporateActions.from_json(json.loads(raw))
    except (TypeError, ValueError, AttributeError) as exc:
        why = f"corporate actions are unreadable ({exc})"
        raise CorruptFile(f"{sym}/{ACTIONS_FILE}", why) from None


def record_actions(
    backend: StorageBackend,
    sym: str,
    splits: list[Split],
    dividends: list[Dividend],
    source: str,
    checked_through: str | None,
) -> bool:
    """Merge and write (the caller holds the symbol's actions lock); True when an adjusting
    fact changed."""
    known = read_actions(backend, sym)
    merged, changed = merge_actions(
        known, splits, dividends, source=source, checked_through=checked_through, now=now_stamp()
    )
    if merged.as_json() != known.as_json():
        text = json.dumps(merged.as_json(), indent=2) + "\n"
        backend.write_document(sym, ACTIONS_FILE, text.encode("utf-8"))
    return changed
