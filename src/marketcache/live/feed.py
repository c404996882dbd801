"""The live Python API behind `DataManager`: feeds (a follower in this process calling back
with each closed bar once it is committed), a blocking iterator over one, and the history +
live + forming frame of `get_ohlcv(..., live=True)`.

Each runs its own in-process `Follower`, so it works whether or not a `marketcache follow`
runs elsewhere on the cache: two writers of the same bars store them once (a bar already
stored is skipped under the series lock).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pandas as pd

from marketcache.live.bars import LiveBar
from marketcache.live.follower import Follower

if TYPE_CHECKING:
    from marketcache.cache.facade import UnifiedCache

_END = object()


class LiveFeed:
    """Closed bars of `series` to `on_bar` (from the follower's thread) until `stop()`."""

    def __init__(
        self,
        cache: UnifiedCache,
        series: list[tuple[str, str]],
        on_bar: Callable[[LiveBar], None],
        **options: Any,
    ) -> None:
        self.follower = Follower(cache, cache.settings, series, **options)
        self._cancel = self.follower.on_closed(on_bar)

    def start(self) -> LiveFeed:
        self.follower.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop following (what closed is flushed first); returns once no thread is left."""
        self._cancel()
        self.follower.stop(timeout)

    @property
    def alive(self) -> bool:
        worker = self.follower._worker
        source = self.follower._source
        return (worker is not None and worker.is_alive()) or bool(
            source is not None and getattr(source, "alive", False)
        )

    def __enter__(self) -> LiveFeed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stream(cache: UnifiedCache, series: list[tuple[str, str]], **options: Any) -> Iterator[LiveBar]:
    """Closed bars as they are committed, blocking; closing the iterator (break, or leaving
    the loop) stops its follower."""
    found: queue.Queue[Any] = queue.Queue()
    feed = LiveFeed(cache, series, found.put, **options).start()
    try:
        while True:
            item = found.get()
            if item is _END:  # pragma: no cover - only stop() sends it
                return
            yield item
    finally:
        feed.stop()


class LiveFrames:
    """One follower per series followed by `get_ohlcv(..., live=True)`, kept running until
    the DataManager closes, so repeated calls cost a read."""

    def __init__(self, cache: UnifiedCache, **options: Any) -> None:
        self.cache = cache
        self.options = options
        self.followers: dict[tuple[str, str], Follower] = {}
        self._lock = threading.Lock()

    def follower(self, symbol: str, timeframe: str, wait: float = 30.0) -> Follower:
        """The series' follower, started and caught up (its backfill done) within `wait`."""
        with self._lock:
            found = self.followers.get((symbol, timeframe))
            if found is None:
                found = Follower(self.cache, self.cache.settings, [(symbol, timeframe)],
                                 **self.options).start()  # fmt: skip
                self.followers[(symbol, timeframe)] = found
        deadline = time.monotonic() + wait
        state = found.series[(symbol, timeframe)]
        while state.needs_backfill and time.monotonic() < deadline:
            time.sleep(0.02)
        return found

    def frame(self, symbol: str, timeframe: str, start: Any, end: Any, **read: Any) -> pd.DataFrame:
        """History and the bars closed since (closed=True), then the forming bar (closed=False)."""
        follower = self.follower(symbol, timeframe)
        follower.flush_now()
        df: pd.DataFrame = self.cache.get(symbol, timeframe, start, end, **read)
        df["closed"] = True
        forming = follower.forming_bar(symbol, timeframe)
        if forming is not None:
            ts = pd.Timestamp(forming.bar["timestamp"])
            hi = pd.Timestamp(end) if end is not None else None
            if (hi is None or ts < hi) and (df.empty or ts > df["timestamp"].iloc[-1]):
                row = {c: forming.bar.get(c) for c in df.columns if c in forming.bar}
                row["closed"] = False
                extra = pd.DataFrame([row])
                df = pd.concat([df, extra], ignore_index=True) if len(df) else extra
        return df

    def close(self) -> None:
        with self._lock:
            followers, self.followers = list(self.followers.values()), {}
        for follower in followers:
            follower.stop()
