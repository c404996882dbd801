"""The result cache: decoded years and encoded answers in memory, bounded by bytes (LRU).

Every entry is keyed by the checksums of the records it was made from — a year's frame by
(cache, symbol, timeframe, year, sha256), an answer by its ETag, which hashes the records it
read — so a hit can never be stale: a commit gives the year a new sha256, and with it new keys.
What a commit leaves unchanged keeps its keys and stays a hit; what it changed is dropped as
soon as the new record is seen (`supersede`), so dead entries do not wait for the LRU.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

YearId = tuple[str, str, str, int]  # (cache location, symbol, timeframe, year)


@dataclass
class Stats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0


class ResultCache:
    """A thread-safe LRU of values with a byte size each; `max_bytes` 0 disables it."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max(0, int(max_bytes))
        self.bytes = 0
        self.stats = Stats()
        self._items: OrderedDict[Hashable, tuple[Any, int, frozenset[YearId]]] = OrderedDict()
        self._current: dict[YearId, str] = {}  # the newest sha256 seen per year
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.stats.misses += 1
                return None
            self._items.move_to_end(key)
            self.stats.hits += 1
            return item[0]

    def put(self, key: Hashable, value: Any, size: int, years: frozenset[YearId]) -> bool:
        """Keep `value` (made from `years`); False when it is larger than the whole budget."""
        if size > self.max_bytes:
            return False
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            self._items[key] = (value, size, years)
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, (_, dropped, _) = self._items.popitem(last=False)
                self.bytes -= dropped
                self.stats.evictions += 1
        return True

    def supersede(self, year: YearId, sha256: str) -> None:
        """The year's committed record now has `sha256`: drop what older commits made."""
        with self._lock:
            if self._current.get(year) == sha256:
                return
            had = year in self._current
            self._current[year] = sha256
            if not had:
                return
            dead = [k for k, (_, _, years) in self._items.items() if year in years]
            for k in dead:
                self.bytes -= self._items.pop(k)[1]

    def __len__(self) -> int:
        return len(self._items)
