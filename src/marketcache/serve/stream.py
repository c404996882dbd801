"""The WebSocket stream: subscribers per series, and a watcher that finds new commits.

Whoever writes to the cache — a cron `populate`, a `follow` on another machine, a `put` from a
notebook — the watcher sees it in the records: every `interval` seconds it reads, for each
series someone subscribed to, the records of the years from its newest sent bar on (one small
read per series, shared by all its subscribers). When their checksums change, the bars after
the newest sent one are read (through the result cache) and sent, oldest first, each once.
A commit that restates bars already sent is not pushed again: `historical` serves the new
values. A commit of more than `MAX_BURST` new bars at once (a backfill) sends the newest
`MAX_BURST` and a `gap` message naming the range to read from `historical`.

A `LiveSource` (live.py) pushes closed bars as they close; the watcher then skips them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from marketcache.errors import MarketCacheError
from marketcache.serve.errors import status_of

if TYPE_CHECKING:
    import pandas as pd
    from starlette.websockets import WebSocket

    from marketcache.serve.live import LiveBar, LiveSource
    from marketcache.serve.reader import RangeReader

log = logging.getLogger("marketcache.serve")
MAX_BURST = 5_000  # bars pushed for one commit; more is a backfill: a `gap` message instead
MAX_SERIES = 1_000  # subscriptions per connection
QUEUE = 20_000  # messages waiting for one slow client before it is dropped
Series = tuple[str, str]


@dataclass(eq=False)
class Subscriber:
    websocket: WebSocket
    queue: asyncio.Queue[dict[str, Any] | None] = field(
        default_factory=lambda: asyncio.Queue(QUEUE)
    )
    series: set[Series] = field(default_factory=set)

    def send(self, message: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait(message)
        except asyncio.QueueFull:  # a client that does not read: drop it, not the server
            with contextlib.suppress(asyncio.QueueEmpty):
                while True:
                    self.queue.get_nowait()
            self.queue.put_nowait(None)


@dataclass(eq=False)
class Watch:
    last: pd.Timestamp | None  # the newest bar sent (or stored when the watch began)
    fingerprint: tuple[tuple[int, str], ...]
    subscribers: set[Subscriber] = field(default_factory=set)
    error: str | None = None


class Hub:
    def __init__(
        self, reader: RangeReader, *, interval: float = 0.5, live: LiveSource | None = None
    ) -> None:
        self.reader = reader
        self.interval = interval
        self.live = live
        self.watches: dict[Series, Watch] = {}
        self._stop_live: Callable[[], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ---- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Poll the watched series until cancelled."""
        import anyio.to_thread

        self._loop = asyncio.get_running_loop()
        if self.live is not None:
            self._stop_live = self.live.on_closed(self._from_thread)
        try:
            while True:
                await asyncio.sleep(self.interval)
                for series, watch in list(self.watches.items()):
                    if watch.subscribers:
                        found = await anyio.to_thread.run_sync(self._poll, series, watch)
                        self._deliver(series, watch, *found)
        finally:
            if self._stop_live is not None:
                self._stop_live()

    # ---- subscriptions -----------------------------------------------------------------------

    async def subscribe(self, sub: Subscriber, series: list[Series]) -> None:
        import anyio.to_thread

        for key in series:
            watch = self.watches.get(key)
            if watch is None:
                watch = await anyio.to_thread.run_sync(self._start, key)
                watch = self.watches.setdefault(key, watch)
            watch.subscribers.add(sub)
            sub.series.add(key)

    def unsubscribe(self, sub: Subscriber, series: list[Series]) -> None:
        for key in series:
            sub.series.discard(key)
            watch = self.watches.get(key)
            if watch is not None:
                watch.subscribers.discard(sub)
                if not watch.subscribers:
                    del self.watches[key]

    def drop(self, sub: Subscriber) -> None:
        self.unsubscribe(sub, list(sub.series))

    # ---- reading (worker threads) ------------------------------------------------------------

    def _start(self, key: Series) -> Watch:
        """A watch from the series' newest stored bar: only later commits are pushed."""
        sym, tf = key
        last = self.reader.cache.last_stored(sym, tf)  # the live tail included
        return Watch(last, self._fingerprint(sym, tf, last))

    def _fingerprint(
        self, sym: str, tf: str, last: pd.Timestamp | None
    ) -> tuple[tuple[int, str], ...]:
        records = self.reader.cache.range_records(sym, tf, last, None)
        return tuple((r.year, r.file_info.sha256) for r in records)

    def _poll(self, key: Series, watch: Watch) -> tuple[Any, Any, str | None]:
        """(fingerprint, new bars or None, error) for one series."""
        import pandas as pd

        sym, tf = key
        try:
            fingerprint = self._fingerprint(sym, tf, watch.last)
            if fingerprint == watch.fingerprint:
                return fingerprint, None, None
            start = None if watch.last is None else watch.last + pd.Timedelta(1, "ns")
            plan = self.reader.plan(sym, tf, start, None)
            return fingerprint, self.reader.frame(plan), None
        except MarketCacheError as exc:
            return watch.fingerprint, None, status_of(exc)[1]

    # ---- delivery (the event loop) -----------------------------------------------------------

    def _deliver(
        self, key: Series, watch: Watch, fingerprint: Any, bars: Any, error: str | None
    ) -> None:
        from marketcache.serve.formats import bar_dicts

        sym, tf = key
        if error is not None:
            if error != watch.error:  # said once per distinct failure, not every poll
                self._fan_out(watch, {"type": "error", "symbol": sym, "interval": tf,
                                      "error": error, "status": 503})  # fmt: skip
            watch.error = error
            return
        watch.error = None
        watch.fingerprint = fingerprint
        if bars is None or not len(bars):
            return
        if watch.last is not None:
            bars = bars[bars["timestamp"] > watch.last]  # the live source may have sent some
        if len(bars) > MAX_BURST:
            skipped = bars.iloc[: len(bars) - MAX_BURST]
            gap = {
                "type": "gap",
                "symbol": sym,
                "interval": tf,
                "from": _iso(skipped["timestamp"].iloc[0]),
                "to": _iso(skipped["timestamp"].iloc[-1]),
                "bars": len(skipped),
                "hint": "read them from /api/v1/market-data/historical",
            }
            self._fan_out(watch, gap)
            bars = bars.iloc[len(bars) - MAX_BURST :]
        for bar in bar_dicts(bars.reset_index(drop=True)):
            self._fan_out(watch, _bar_message(sym, tf, bar, closed=True))
        if len(bars):
            watch.last = bars["timestamp"].iloc[-1]

    def _fan_out(self, watch: Watch, message: dict[str, Any]) -> None:
        for sub in list(watch.subscribers):
            sub.send(message)

    def _from_thread(self, bar: LiveBar) -> None:
        if self._loop is not None and bar.closed:
            self._loop.call_soon_threadsafe(self._live_bar, bar)

    def _live_bar(self, bar: LiveBar) -> None:
        import pandas as pd

        from marketcache.serve.formats import bar_dicts

        watch = self.watches.get((bar.symbol, bar.timeframe))
        if watch is None:
            return
        ts = pd.Timestamp(bar.bar["timestamp"]).tz_localize(None)
        if watch.last is not None and ts <= watch.last:
            return
        frame = pd.DataFrame([{**bar.bar, "timestamp": ts}])
        self._fan_out(watch, _bar_message(bar.symbol, bar.timeframe, bar_dicts(frame)[0], True))
        watch.last = ts


def _iso(ts: Any) -> str:
    import pandas as pd

    return pd.Timestamp(ts).strftime("%Y-%m-%dT%H:%M:%SZ")


def _bar_message(sym: str, tf: str, bar: dict[str, Any], closed: bool) -> dict[str, Any]:
    return {"type": "bar", "symbol": sym, "interval": tf, "bar": bar, "closed": closed}


def parse_message(text: str) -> tuple[str, list[Series]]:
    """A client message → (action, series); ValueError with what is wrong."""
    from marketcache.core.symbols import normalize_symbol
    from marketcache.core.timeframes import parse_timeframe
    from marketcache.errors import UsageError

    try:
        msg = json.loads(text)
    except ValueError:
        raise ValueError('the message is not JSON: send {"action": "subscribe", …}') from None
    if not isinstance(msg, dict):
        raise ValueError("the message must be a JSON object")
    action = msg.get("action")
    if action not in ("subscribe", "unsubscribe"):
        raise ValueError(f"action {action!r}: use subscribe or unsubscribe")
    symbols, interval = msg.get("symbols"), msg.get("interval", "1m")
    if not isinstance(symbols, list) or not symbols or not all(isinstance(s, str) for s in symbols):
        raise ValueError("symbols: give a non-empty list of symbols")
    if len(symbols) > MAX_SERIES:
        raise ValueError(f"symbols: at most {MAX_SERIES} a connection")
    if not isinstance(interval, str):
        raise ValueError("interval: give a timeframe such as 1m")
    try:
        tf = parse_timeframe(interval).name
        return action, [(normalize_symbol(s), tf) for s in symbols]
    except UsageError as exc:
        raise ValueError(str(exc)) from None
