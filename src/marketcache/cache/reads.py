"""Reading a series: the bars of a range across its years and its live tail, and the records a
range read decodes (what keys serve's result cache and ETags). No lock, nothing written.

The live tail is read before the years: a fold moves bars from the tail into a year, so a bar
moving during a read is found in one or both — both are merged to one row, the year's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from marketcache.core.actions import ADJUST_MODES
from marketcache.core.records import YearRecord
from marketcache.errors import CorruptFile, UsageError
from marketcache.storage.backend import Key, StorageBackend

if TYPE_CHECKING:
    import pandas as pd

    from marketcache.cache.series import Series


def bounds(start: Any, end: Any) -> tuple[pd.Timestamp | None, pd.Timestamp | None]:
    """[start, end) as UTC-naive stamps (None: open); UsageError unless start < end."""
    from marketcache.core.models import parse_date

    lo = parse_date(start, option="start") if start is not None else None
    hi = parse_date(end, option="end") if end is not None else None
    if lo is not None and hi is not None and lo >= hi:
        raise UsageError(f"start {lo} is not before end {hi}")
    return lo, hi


def get(series: Series, start: Any, end: Any, adjust: str, output_format: str) -> Any:
    """`UnifiedCache.get`: the bars of [start, end), sorted, the live tail's included."""
    import numpy as np
    import pandas as pd

    from marketcache.cache.tail import clip, merge, read_tail
    from marketcache.core.actions import adjust as adjusted
    from marketcache.core.frames import empty_frame
    from marketcache.core.outputs import check_output_format, convert

    check_output_format(output_format)
    if adjust not in ADJUST_MODES:
        raise UsageError(f"adjust={adjust!r}: use one of {', '.join(ADJUST_MODES)}")
    lo, hi = bounds(start, end)
    backend, sym, tf = series.backend, series.symbol, series.tf
    live = clip(read_tail(backend, sym, tf), lo, hi)  # before the years: a fold moves bars on
    found = [
        backend.read_year(Key(sym, tf, y))
        for y in backend.years(sym, tf)
        if not ((lo is not None and y < lo.year) or (hi is not None and y > hi.year))
    ]
    frames = [rows for _, rows in filter(None, found)]  # a year removed meanwhile is gone
    if not frames and live.empty:
        return convert(empty_frame(), output_format)
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else None
    df = df if df is not None else (frames[0] if frames else empty_frame())
    if lo is not None or hi is not None:
        ts, mask = df["timestamp"], np.ones(len(df), dtype=bool)
        mask &= (ts >= lo).to_numpy() if lo is not None else True
        mask &= (ts < hi).to_numpy() if hi is not None else True
        df = df[mask].reset_index(drop=True)
    df = merge(df, live)
    if adjust != "none":
        df = adjusted(df, series.actions(), adjust).reset_index(drop=True)
    return convert(df, output_format)


def range_records(backend: StorageBackend, sym: str, tf: str, start: Any, end: Any) -> list[Any]:
    """`UnifiedCache.range_records`: the records of the years [start, end) touches, then the
    live tail's (a `TailRecord`) when it holds bars in range."""
    from marketcache.cache.tail import tail_record

    lo, hi = bounds(start, end)
    live = tail_record(backend, sym, tf, lo, hi)  # read before the years (see above)
    records: list[YearRecord] = [  # [start, end): an end on Jan 1 00:00 reads nothing of it
        backend.read_record(Key(sym, tf, y))
        for y in backend.years(sym, tf)
        if not ((lo is not None and y < lo.year) or (hi is not None and hi <= _jan1(y)))
    ]
    return records if live is None else [*records, live]


def _jan1(year: int) -> pd.Timestamp:
    import pandas as pd

    return pd.Timestamp(year, 1, 1)


def read_committed(backend: StorageBackend, record: YearRecord) -> tuple[YearRecord, Any]:
    """`UnifiedCache.read_committed`: the rows `record` committed (a newer commit's when one
    replaced the year meanwhile, never a mix); a tail record's own rows."""
    from marketcache.cache.tail import is_tail

    if is_tail(record):
        return record, record.frame  # type: ignore[attr-defined]
    key = Key.of(record.symbol, record.timeframe, record.year)
    try:
        return record, backend.read_rows(key, record)
    except CorruptFile:
        now = backend.read_record(key)
        if now.file_info.sha256 == record.file_info.sha256:
            raise
        return now, backend.read_rows(key, now)


def verify_committed(backend: StorageBackend, record: YearRecord) -> None:
    """`UnifiedCache.verify_committed`: CorruptFile unless the year's data is what `record`
    (or a newer commit) committed; a tail record holds its rows, nothing to verify."""
    from marketcache.cache.tail import is_tail

    if is_tail(record):
        return
    key = Key.of(record.symbol, record.timeframe, record.year)
    try:
        backend.verify(key, record)
    except CorruptFile:
        now = backend.read_record(key)
        if now.file_info.sha256 == record.file_info.sha256:
            raise
        backend.verify(key, now)
