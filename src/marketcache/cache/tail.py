"""The live tail of a series: closed bars stored the moment they close, merged by every reader,
folded into the years at intervals through the normal commit path.

A follower cannot commit a year per flush: a csv.gz year would pile up a gzip member per bar,
and a Parquet, object-storage or PostgreSQL year would be rewritten whole every few seconds.
So `append_live` puts the bars in the series' tail (`storage/tail.py`: an fsync'd line append
in a folder, one small object put on object storage, one INSERT in PostgreSQL), and
`fold_live` moves them into the years once the tail holds `settings.live_fold_every` of bars —
one append (csv.gz) or rewrite per fold, through `SeriesWriter`, so the year's checksum,
quality record and coverage are what a `populate` of the same bars makes.

Invariants (the series lock is held by every writer of a tail):
- every tail bar that no year holds is later than every bar the years hold: `append_live`
  commits a bar older than the years' last straight into its year (a hole filled), and every
  other commit of the series (`commit_range`: populate, put, read-throughs) folds the tail
  first; so while the tail holds bars, the years end at or before its last one (other
  commands only shrink years or fill their holes);
- a fold writes the years, then empties the tail: a crash in between leaves bars in both,
  equal, which readers and the next fold deduplicate (a year's row wins) — never lost, never
  doubled;
- readers take no lock and read the tail before the years, so a bar moving from the tail to
  its year during a read is seen in one or both, never in neither.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from marketcache.core.records import YearRecord
from marketcache.core.timeframes import Timeframe
from marketcache.errors import CorruptFile, UsageError
from marketcache.storage.backend import Key, StorageBackend
from marketcache.storage.tail import SeriesTail, open_tail

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from marketcache.cache.series import Series

LIVE_YEAR = 0  # the year a tail record stands under: no stored year is 0
OVERDUE = 4  # a tail holding this many fold intervals is folded by `append_live` itself


@dataclass
class TailRecord(YearRecord):
    """The tail as `range_records` lists it after the years: its rows travel with it, so
    that the checksum (an ETag, a result-cache key) names exactly the rows read."""

    frame: Any = None


def is_tail(record: YearRecord) -> bool:
    return isinstance(record, TailRecord)


# ---- writing ------------------------------------------------------------------------------


def append_live(series: Series, bars: pd.DataFrame) -> int:
    """`UnifiedCache.append_live`: store closed bars durably, skipping those already stored;
    the rows added."""
    sym, tf, backend = series.symbol, series.timeframe, series.backend
    frame = closed_bars(bars, sym, tf)
    if frame.empty:
        return 0
    with series.lock():
        store = open_tail(backend, sym, tf.name)
        tail = store.read()
        frame = frame[~_in(frame, tail)]
        if frame.empty:
            return 0
        # the years end at or before a non-empty tail's last bar (see the module's invariants):
        # bars after it need no look at the years — the common case, one bar per flush
        after_tail = bool(len(tail)) and frame["timestamp"].iloc[0] > tail["timestamp"].iloc[-1]
        end = None if after_tail else last_year_end(backend, sym, tf.name)
        older = (frame["timestamp"] <= end).to_numpy() if end is not None else None
        holes = frame[older] if older is not None else frame.iloc[:0]
        new = frame[~older] if older is not None else frame
        if len(holes):  # bars before the years' last that no year holds: straight in
            holes = holes[~stored_in_years(backend, sym, tf.name, holes["timestamp"])]
            _commit(series, holes)
        store.add(new)
        folded = 0
        if len(new) and _span(tail, new, tf) >= OVERDUE * fold_every(series).total_seconds():
            folded = fold_locked(series, store)  # nobody folds this tail: bound it
        if len(holes) or folded:
            series.catalog.refresh(sym, tf.name)
    return len(holes) + len(new)


def fold_live(series: Series, *, force: bool = False) -> int:
    """`UnifiedCache.fold_live`: fold the tail into the years when due (or `force`); the rows
    folded."""
    with series.lock():
        store = open_tail(series.backend, series.symbol, series.tf)
        tail = store.read()
        if tail.empty or not (force or due(tail, series.timeframe, fold_every(series))):
            return 0
        folded = fold_locked(series, store, tail)
        series.catalog.refresh(series.symbol, series.tf)
    return folded


def fold_locked(
    series: Series, store: SeriesTail | None = None, tail: pd.DataFrame | None = None
) -> int:
    """Fold the whole tail into the years (the caller holds the series lock and refreshes the
    catalog): the years first, then the tail emptied. The rows written."""
    import numpy as np

    backend, sym, tf = series.backend, series.symbol, series.tf
    store = store if store is not None else open_tail(backend, sym, tf)
    tail = tail if tail is not None else store.read()
    if tail.empty:
        return 0
    end = last_year_end(backend, sym, tf)
    rows = tail
    if end is not None:
        older = (rows["timestamp"] <= end).to_numpy()
        if older.any():  # a fold a crash interrupted: what the years hold already stays
            fresh = np.ones(len(rows), dtype=bool)
            fresh[older] = ~stored_in_years(backend, sym, tf, rows["timestamp"][older])
            rows = rows[fresh]
    _commit(series, rows)
    store.keep(tail.iloc[:0])
    return len(rows)


def _commit(series: Series, rows: pd.DataFrame) -> None:
    """Write `rows` into their years through the series writer (lock held)."""
    if rows.empty:
        return
    writer = series.writer()
    provider = live_provider(series)
    years = rows["timestamp"].dt.year.to_numpy()
    for year in sorted(set(map(int, years))):
        part = rows[years == year].reset_index(drop=True)
        writer.put_year(series.key(year), part, provider)


def fold_every(series: Series) -> pd.Timedelta:
    """`settings.live_fold_every` as a Timedelta."""
    from marketcache.core.freshness import parse_age

    return parse_age(series.settings.options.live_fold_every, "settings.live_fold_every")


def due(tail: pd.DataFrame, tf: Timeframe, every: pd.Timedelta) -> bool:
    """Whether a tail holds `every` seconds of bars, or its oldest bar opened that long ago."""
    from marketcache.core.models import utcnow

    if tail.empty:
        return False
    oldest = tail["timestamp"].iloc[0]
    newest_close = tail["timestamp"].iloc[-1] + _bar(tf)
    return bool(max(newest_close, utcnow()) - oldest >= every)


def _span(tail: pd.DataFrame, new: pd.DataFrame, tf: Timeframe) -> float:
    """Seconds of bars the tail holds once `new` is added."""
    first = new["timestamp"].iloc[0] if tail.empty else min(tail["timestamp"].iloc[0],
                                                            new["timestamp"].iloc[0])  # fmt: skip
    last = max(new["timestamp"].iloc[-1], first)
    return float((last + _bar(tf) - first).total_seconds())


def _bar(tf: Timeframe) -> pd.Timedelta:
    import pandas as pd

    return pd.Timedelta(minutes=tf.minutes)


def live_provider(series: Series) -> str:
    """The provider live bars are recorded as coming from: the first of the series' selection
    rule (the stream or poll serves that provider's bars), else "live"."""
    from marketcache.pipeline.selector import rule_providers

    names = rule_providers(series.symbol, series.tf, series.settings)
    return names[0] if names else "live"


def closed_bars(bars: pd.DataFrame, sym: str, tf: Timeframe) -> pd.DataFrame:
    """`bars` as a canonical frame of the base columns; UsageError naming the first bar that
    the validator would refuse (not finite, price <= 0, volume < 0, high/low inconsistent) or
    that is not on the timeframe's grid — nothing is stored then. Numpy throughout: a
    follower calls this for every series at every flush."""
    import numpy as np
    import pandas as pd

    from marketcache.core.columns import BASE_COLUMNS
    from marketcache.core.frames import iso, normalize_frame
    from marketcache.core.validate import sound_rows
    from marketcache.storage.tail import frame_of

    if not isinstance(bars, pd.DataFrame):
        raise UsageError(f"{sym} {tf.name}: live bars come as a pandas DataFrame")
    if not tf.is_intraday:  # session dates of tz-aware daily stamps: the general path
        bars = normalize_frame(bars, sessions=True)
    raw = bars["timestamp"] if "timestamp" in bars.columns else bars.index
    missing = [c for c in BASE_COLUMNS[1:] if c not in bars.columns]
    if missing or not (isinstance(raw, pd.DatetimeIndex) or "timestamp" in bars.columns):
        raise UsageError(
            f"{sym} {tf.name}: live bars need a DatetimeIndex (or a timestamp column) and the"
            f" columns {', '.join(BASE_COLUMNS[1:])}"
        )
    try:
        stamps = pd.DatetimeIndex(raw)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{sym} {tf.name}: live bars need valid timestamps ({exc})") from None
    if stamps.tz is not None:
        stamps = stamps.tz_convert("UTC").tz_localize(None)
    ts = stamps.to_numpy("datetime64[ns]")
    block = np.column_stack(
        [pd.to_numeric(bars[c], errors="coerce").to_numpy("float64") for c in BASE_COLUMNS[1:]]
    ) if len(ts) else np.zeros((0, len(BASE_COLUMNS) - 1))  # fmt: skip
    frame = frame_of(ts, block)
    if len(frame) != len(ts) or np.isnat(ts).any():
        raise UsageError(f"{sym} {tf.name}: live bars need valid, unique timestamps")
    bad = ~sound_rows(frame)
    if tf.is_intraday:
        step = np.int64(tf.minutes * 60 * 10**9)
        bad |= (frame["timestamp"].to_numpy("datetime64[ns]").astype(np.int64) % step) != 0
    if bad.any():
        first = frame[bad].iloc[0]
        values = ", ".join(f"{c}={first[c]!r}" for c in BASE_COLUMNS[1:])
        raise UsageError(
            f"{sym} {tf.name}: bar {iso(first['timestamp'])} is not a valid closed bar"
            f" ({values}); nothing was stored"
        )
    return frame


# ---- reading ------------------------------------------------------------------------------


def live_series(
    backend: StorageBackend, symbol: str | None = None, timeframe: str | None = None
) -> set[tuple[str, str]]:
    """The series in scope (symbol, timeframe normalised; None: every) that have a tail."""
    from marketcache.storage.tail import tail_series

    return {
        (s, t)
        for s, t in tail_series(backend, symbol)
        if symbol in (None, s) and timeframe in (None, t)
    }


def read_tail(backend: StorageBackend, sym: str, tf: str) -> pd.DataFrame:
    """The series' tail as stored (no lock; symbol and timeframe normalised)."""
    return open_tail(backend, sym, tf).read()


def last_year_end(backend: StorageBackend, sym: str, tf: str) -> pd.Timestamp | None:
    """The last bar the years hold (from the records)."""
    import pandas as pd

    for year in reversed(backend.years(sym, tf)):
        try:
            rec = backend.read_record(Key(sym, tf, year))
        except CorruptFile:
            if year not in backend.years(sym, tf):
                continue  # removed since it was listed
            raise
        if rec.rows and rec.end_date:
            return pd.Timestamp(rec.end_date)
    return None


def last_stored(series: Series) -> pd.Timestamp | None:
    """`UnifiedCache.last_stored`: the open time of the last stored bar, tail included."""
    tail = read_tail(series.backend, series.symbol, series.tf)
    end = last_year_end(series.backend, series.symbol, series.tf)
    last = tail["timestamp"].iloc[-1] if len(tail) else None
    if last is None or (end is not None and end > last):
        return end
    return last  # type: ignore[no-any-return]


def stored_in_years(backend: StorageBackend, sym: str, tf: str, stamps: pd.Series) -> np.ndarray:
    """Which of `stamps` a year holds: from the record when the year is gap-free over its
    span (every expected bar between its first and last is there), else from its rows."""
    import numpy as np
    import pandas as pd

    from marketcache.core.validate import in_sorted

    values = stamps.to_numpy(dtype="datetime64[ns]")
    out = np.zeros(len(values), dtype=bool)
    years = pd.DatetimeIndex(values).year.to_numpy()
    for year in sorted(set(map(int, years)) & set(backend.years(sym, tf))):
        key, pick = Key(sym, tf, year), years == year
        rec = backend.read_record(key)
        counts = rec.counts
        if (
            rec.start_date
            and rec.end_date
            and rec.rows
            and counts.rows
            and not (counts.missing_bars or counts.off_calendar)
        ):
            lo, hi = pd.Timestamp(rec.start_date).asm8, pd.Timestamp(rec.end_date).asm8
            out[pick] = (values[pick] >= lo) & (values[pick] <= hi)
            continue
        found = backend.read_year(key)
        if found is not None:
            have = found[1]["timestamp"].to_numpy(dtype="datetime64[ns]")
            out[pick] = in_sorted(values[pick], have)
    return out


def merge(years: pd.DataFrame, tail: pd.DataFrame) -> pd.DataFrame:
    """The years' rows and the tail's that no year holds, sorted (a year's row wins)."""
    import numpy as np
    import pandas as pd

    from marketcache.core.validate import in_sorted

    if tail.empty:
        return years
    if years.empty:
        return tail.reindex(columns=years.columns if len(years.columns) else tail.columns)
    have = years["timestamp"].to_numpy(dtype="datetime64[ns]")
    ts = tail["timestamp"].to_numpy(dtype="datetime64[ns]")
    older = ts <= have[-1]
    dup = np.zeros(len(ts), dtype=bool)
    if older.any():
        dup[older] = in_sorted(ts[older], have)
    extra = tail[~dup]
    if extra.empty:
        return years
    out = pd.concat([years, extra.reindex(columns=years.columns)], ignore_index=True)
    if (older & ~dup).any():
        out = out.sort_values("timestamp", kind="stable").reset_index(drop=True)
    return out


def clip(frame: pd.DataFrame, lo: pd.Timestamp | None, hi: pd.Timestamp | None) -> pd.DataFrame:
    """Rows in [lo, hi)."""
    if lo is None and hi is None:
        return frame
    ts = frame["timestamp"]
    mask = (ts >= lo) if lo is not None else ts.notna()
    if hi is not None:
        mask &= ts < hi
    return frame[mask.to_numpy()].reset_index(drop=True)


def tail_record(
    backend: StorageBackend, sym: str, tf: str, lo: pd.Timestamp | None, hi: pd.Timestamp | None
) -> TailRecord | None:
    """The tail as a record for `range_records` (None: no tail bar in [lo, hi))."""
    from marketcache.core.columns import BASE_COLUMNS
    from marketcache.core.frames import iso
    from marketcache.core.records import FileInfo
    from marketcache.storage.tail import encode_lines

    rows = read_tail(backend, sym, tf)
    if clip(rows, lo, hi).empty:
        return None
    digest = hashlib.sha256(encode_lines(rows)).hexdigest()
    info = FileInfo(format="live", rows=len(rows), columns=list(BASE_COLUMNS), sha256=digest)
    first, last = rows["timestamp"].iloc[0], rows["timestamp"].iloc[-1]
    return TailRecord(
        sym, tf, LIVE_YEAR, "live", start_date=iso(first), end_date=iso(last), file_info=info,
        frame=rows,
    )  # fmt: skip


def _in(frame: pd.DataFrame, tail: pd.DataFrame) -> np.ndarray:
    from marketcache.core.validate import in_sorted

    return in_sorted(
        frame["timestamp"].to_numpy(dtype="datetime64[ns]"),
        tail["timestamp"].to_numpy(dtype="datetime64[ns]"),
    )
