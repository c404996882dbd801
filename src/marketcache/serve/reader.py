"""A range of bars read year by year through the result cache, as the API and `get` serve it.

`plan` reads records only: the years in range, their checksums (the ETag), the corporate
actions when prices are adjusted. `chunks` then yields the bars a year at a time — decoded
once per commit and kept in the result cache, so a repeated request decodes nothing — and
equals `UnifiedCache.get` of the same range row for row, adjustments included.

Never more than was read: `check` makes sure before the first byte goes out that every year
of the range decodes against its record (CorruptFile names the year otherwise: a 503, not
the other years' bars). It decodes the years into the result cache while they fit in it, and
only verifies the checksums of the rest, which are decoded again as they are streamed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from marketcache.errors import UsageError
from marketcache.serve.results import ResultCache, YearId

if TYPE_CHECKING:
    import pandas as pd

    from marketcache.cache.facade import UnifiedCache
    from marketcache.core.actions import CorporateActions
    from marketcache.core.records import YearRecord

CHUNK_ROWS = 65_536  # rows per encoded chunk: a year of 1m is 8 chunks, never one body


@dataclass
class RangePlan:
    symbol: str
    timeframe: str
    start: pd.Timestamp | None
    end: pd.Timestamp | None
    adjust: str
    records: list[YearRecord]
    actions: CorporateActions | None = None
    columns: list[str] = field(default_factory=list)

    def etag(self, variant: str) -> str:
        """A strong ETag: the records' checksums, the range, the adjustment and `variant`
        (the encoding), so equal tags mean equal bytes."""
        parts = [
            self.symbol,
            self.timeframe,
            None if self.start is None else self.start.isoformat(),
            None if self.end is None else self.end.isoformat(),
            self.adjust,
            variant,
            [(r.year, r.file_info.sha256, r.rows) for r in self.records],
            self.actions.digest() if self.actions is not None else None,
        ]
        return '"' + hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32] + '"'


class RangeReader:
    """Reads ranges of one cache through a result cache shared by every request."""

    def __init__(self, cache: UnifiedCache, results: ResultCache) -> None:
        self.cache = cache
        self.results = results
        self.location = str(cache.backend.location)
        self.decoded = 0  # years decoded since start (what the result cache saved shows here)

    # ---- records -----------------------------------------------------------------------------

    def plan(
        self, symbol: str, timeframe: str, start: Any, end: Any, adjust: str = "none"
    ) -> RangePlan:
        """The records of the years [start, end) touches (bounds already UTC-naive or None)."""
        from marketcache.core.actions import ADJUST_MODES
        from marketcache.core.columns import BASE_COLUMNS

        if adjust not in ADJUST_MODES:
            raise UsageError(f"adjust={adjust!r}: use one of {', '.join(ADJUST_MODES)}")
        records = self.cache.range_records(symbol, timeframe, start, end)
        for r in records:
            self.results.supersede(self._year(r), r.file_info.sha256)
        actions = self.cache.get_actions(symbol) if adjust != "none" else None
        stored = [r for r in records if r.rows]
        columns = list(stored[-1].file_info.columns) if stored else list(BASE_COLUMNS)
        if any(len(r.file_info.columns) > len(columns) for r in stored):
            columns = max((list(r.file_info.columns) for r in stored), key=len)
        return RangePlan(symbol, timeframe, start, end, adjust, records, actions, columns)

    def year_id(self, record: YearRecord) -> YearId:
        return self._year(record)

    def _year(self, record: YearRecord) -> YearId:
        return (self.location, record.symbol, record.timeframe, record.year)

    # ---- rows --------------------------------------------------------------------------------

    def year(self, record: YearRecord) -> pd.DataFrame:
        """The year's rows as `record` committed them, from the result cache when there."""
        key = ("year", *self._year(record), record.file_info.sha256)
        frame: pd.DataFrame | None = self.results.get(key)
        if frame is not None:
            return frame
        read_as, frame = self.cache.read_committed(record)
        self.decoded += 1
        if read_as.file_info.sha256 == record.file_info.sha256:
            size = int(frame.memory_usage(index=False, deep=False).sum())
            self.results.put(key, frame, size, frozenset([self._year(record)]))
        return frame

    def check(self, plan: RangePlan) -> int:
        """Raise CorruptFile (naming the year) unless every year of `plan` reads back; how
        many years had to be decoded (0: all were in the result cache)."""
        budget = self.results.max_bytes // 2
        decoded = 0
        for r in plan.records:
            if not r.rows:
                continue
            key = ("year", *self._year(r), r.file_info.sha256)
            estimate = r.rows * 8 * len(r.file_info.columns)
            if self.results.get(key) is not None:
                continue
            if estimate <= budget:
                budget -= estimate
                self.year(r)
                decoded += 1
            else:
                self.cache.verify_committed(r)
        return decoded

    def chunks(self, plan: RangePlan, rows: int = CHUNK_ROWS) -> Iterator[pd.DataFrame]:
        """The bars of `plan` in order, at most `rows` a chunk; equal, concatenated, to
        `UnifiedCache.get(symbol, timeframe, start, end, adjust=adjust)`."""
        from marketcache.cache.tail import is_tail

        closes = _prior_closes(self, plan) if plan.adjust == "all" else {}
        last = None  # the newest year row sent: a tail row a fold moved into a year is the year's
        for r in plan.records:
            if not r.rows:
                continue
            part = clip(self.year(r), plan.start, plan.end)
            if is_tail(r) and last is not None:
                part = clip(part, _after(last), None)
            elif len(part):
                last = part["timestamp"].iloc[-1]
            if list(part.columns) != plan.columns:  # a year without adj_close, as get's concat
                part = part.reindex(columns=plan.columns)
            for first in range(0, len(part), rows):
                piece = part.iloc[first : first + rows]
                if plan.actions is not None:
                    piece = adjusted(piece, plan.actions, plan.adjust, closes)
                yield piece.reset_index(drop=True)

    def frame(self, plan: RangePlan) -> pd.DataFrame:
        """The whole range as one frame (indicators and quotes need it contiguous)."""
        import pandas as pd

        from marketcache.core.frames import empty_frame

        parts = list(self.chunks(plan, rows=1 << 62))
        if not parts:
            return empty_frame(plan.columns)
        return parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)

    def tail(self, symbol: str, timeframe: str, end: Any, count: int) -> pd.DataFrame:
        """The last `count` bars before `end` (None: the newest), the live tail included,
        reading years backwards only as far as needed: memory stays bounded by one year plus
        `count` bars."""
        import pandas as pd

        from marketcache.cache.tail import read_tail
        from marketcache.core.frames import empty_frame

        live = clip(read_tail(self.cache.backend, symbol, timeframe), None, end)  # before the years
        years = self.cache.list_years(symbol, timeframe)
        parts: list[pd.DataFrame] = []
        have, newest = len(live), True
        for year in reversed(years):
            if end is not None and year > end.year:
                continue
            record = self.cache.record(symbol, timeframe, year)
            self.results.supersede(self._year(record), record.file_info.sha256)
            if not record.rows:
                continue
            part = clip(self.year(record), None, end)
            if newest and len(part):  # tail rows a fold moved into this year are the year's
                newest = False
                live = clip(live, _after(part["timestamp"].iloc[-1]), None)
                have = len(live)
            if count - have < len(part):
                part = part.iloc[len(part) - max(count - have, 0) :]
            parts.append(part)
            have += len(part)
            if have >= count:
                break
        parts = [p for p in [*parts[::-1], live] if len(p)]
        if not parts:
            return empty_frame()
        out = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
        return out.iloc[max(len(out) - count, 0) :].reset_index(drop=True)


def _after(ts: pd.Timestamp) -> pd.Timestamp:
    import pandas as pd

    return ts + pd.Timedelta(1, "ns")


def clip(df: pd.DataFrame, lo: pd.Timestamp | None, hi: pd.Timestamp | None) -> pd.DataFrame:
    """The rows of a sorted frame in [lo, hi) (either end open when None); no copy."""
    if lo is None and hi is None:
        return df
    import numpy as np

    ts = df["timestamp"].to_numpy(dtype="datetime64[ns]")
    first = 0 if lo is None else int(np.searchsorted(ts, np.datetime64(lo.value, "ns")))
    last = len(ts) if hi is None else int(np.searchsorted(ts, np.datetime64(hi.value, "ns")))
    return df if (first, last) == (0, len(ts)) else df.iloc[first:last]


def _prior_closes(reader: RangeReader, plan: RangePlan) -> dict[str, float]:
    """For adjust="all": per dividend, the last close before its ex-date within the range —
    what `actions.dividend_factors` takes from the whole frame, found a year at a time."""
    import numpy as np

    from marketcache.core.actions import _day, _days

    assert plan.actions is not None
    found: dict[str, float] = {}
    for r in plan.records:
        if not r.rows:
            continue
        part = clip(reader.year(r), plan.start, plan.end)
        if not len(part):
            continue
        days = _days(part["timestamp"])
        close = part["close"].to_numpy("float64")
        for d in plan.actions.dividends:
            before = np.flatnonzero(days < _day(d.ex_date))
            if len(before):
                found[d.ex_date] = float(close[before[-1]])
    return found


def adjusted(
    piece: pd.DataFrame, actions: CorporateActions, mode: str, closes: dict[str, float]
) -> pd.DataFrame:
    """`actions.adjust` for a chunk of a longer range: the same factors, bit for bit, with
    the dividends' prior closes taken from the whole range (`_prior_closes`)."""
    import numpy as np

    from marketcache.core.actions import _day, _days, split_factors
    from marketcache.core.columns import PRICE_COLUMNS

    if mode == "none" or piece.empty or actions.empty:
        return piece
    out = piece.copy()
    splits = split_factors(out["timestamp"], actions.splits)
    price = 1.0 / splits
    if mode == "all":
        days = _days(out["timestamp"])
        factor = np.ones(len(days))
        for d in actions.dividends:
            prev_close = closes.get(d.ex_date)
            if prev_close is None or not np.isfinite(prev_close) or prev_close <= d.amount:
                continue
            factor[days < _day(d.ex_date)] *= 1.0 - d.amount / prev_close
        price *= factor
    for col in PRICE_COLUMNS:
        if col in out.columns:
            out[col] = out[col].to_numpy("float64") * price
    out["volume"] = out["volume"].to_numpy("float64") * splits
    return out
