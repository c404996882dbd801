"""A provider that answers from the cache itself: timeframes derived from a base timeframe.

`populate -t 1h --derive-from 1m` runs the base job first, then asks this provider for the
1h ranges the gap planner finds missing, exactly as it would ask Binance: the same plan,
overlap, commit and coverage bookkeeping. It makes no request; buckets whose base bars are
incomplete come back in `FetchResult.incomplete` and are recorded as missing ranges.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from marketcache.core.derive import derive
from marketcache.core.symbols import AssetClass
from marketcache.core.timeframes import TIMEFRAMES, Timeframe
from marketcache.errors import RangeUnavailable
from marketcache.providers.base import Capabilities, FetchResult, Provider, canonical_frame

if TYPE_CHECKING:
    from marketcache.cache.facade import UnifiedCache

PREFIX = "derived:"


class DerivedProvider(Provider):
    capabilities = Capabilities(frozenset(TIMEFRAMES), frozenset(AssetClass))

    def __init__(self, cache: UnifiedCache, base: str) -> None:
        from marketcache.config.schema import ProviderSettings

        super().__init__(ProviderSettings(name=PREFIX + base, base_url="http://derived.invalid"))
        self.name = PREFIX + base
        self.cache = cache
        self.base = Timeframe(base)

    def available(self) -> bool:
        return True

    def fetch(
        self, symbol: str, timeframe: Timeframe, start: pd.Timestamp, end: pd.Timestamp
    ) -> FetchResult:
        sym = symbol.upper()
        if not self.cache.list_years(sym, self.base.name):
            raise RangeUnavailable(
                f"{sym} has no {self.base} bars to derive {timeframe} from: populate it first",
                provider=self.name,
                symbol=sym,
            )
        calendar = self.cache.profile(sym).calendar
        lo, hi = start - pd.Timedelta(days=8), end + pd.Timedelta(days=8)
        bars = self.cache.get(sym, self.base.name, start=lo, end=hi)
        empty = [
            (pd.Timestamp(ve["start"]), pd.Timestamp(ve["end"]))
            for year in range(lo.year, hi.year + 1)
            if year in self.cache.list_years(sym, self.base.name)
            for ve in self.cache.record(sym, self.base.name, year).coverage.verified_empty
        ]
        got = derive(
            bars, calendar=calendar, base=self.base, target=timeframe, start=start, end=end,
            verified_empty=empty,
        )  # fmt: skip
        result = FetchResult(got.frame)
        result.frame, result.dropped_rows, result.notes = canonical_frame(
            got.frame, start, end, timeframe
        )
        result.incomplete = got.incomplete
        return result
