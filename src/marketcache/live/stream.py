"""A Binance combined kline stream client (the `websockets` library, asyncio in a thread).

One connection `{stream_url}/stream?streams=a/b/…` per at most 200 streams. What it promises:

- a bar is final only when `k.x` is true; the forming bar (`x: false`) is passed on marked
  as such and is never to be stored; a close delivered twice is passed on once;
- pings are answered (the library does it); a stream silent for `stale_after` seconds
  (default: 60 s, or 3 update intervals when that is shorter) is dead and its connection is
  renewed; a connection is renewed before Binance's 24 h cut (`max_age`) and on
  `serverShutdown`;
- reconnects wait a capped, jittered, growing backoff and never give up while it runs;
- Binance closes a connection that sends more than 5 messages a second (pings and pongs
  count): the streams are named in the URL, so no SUBSCRIBE is ever sent, and only pongs
  and a keepalive ping every `ping_interval` seconds leave;
- garbage and unknown messages are logged and skipped.

The owner learns of every (re)connection through `on_connect(conn_id, streams)` before any
bar of it, so that it can backfill over REST what closed while it was away.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

STREAM_URL = "wss://stream.binance.com:9443"  # providers.binance.stream_url's default
MAX_STREAMS = 200  # per connection (Binance allows 1024; fewer keeps a reconnect cheap)
MAX_AGE = 23.5 * 3600  # renew before Binance's 24 h cut
STALE_AFTER = 60.0


@dataclass(frozen=True)
class StreamBar:
    """One kline of a stream: final when `closed`; prices as floats; times in epoch ms."""

    symbol: str  # upper case, as the cache names it
    timeframe: str
    open_ms: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    closed: bool
    event_ms: int  # the server's event time
    conn: int  # which connection delivered it
    received: float = 0.0  # time.monotonic() when it arrived

    def as_row(self) -> dict[str, Any]:
        return {"open": self.open, "high": self.high, "low": self.low, "close": self.close,
                "volume": self.volume}  # fmt: skip


def stream_name(symbol: str, timeframe: str) -> str:
    return f"{symbol.lower()}@kline_{timeframe}"


@dataclass
class StreamEvent:
    """Something a follower reports: reconnect, stale, error (with a reason)."""

    kind: str
    conn: int
    detail: dict[str, Any] = field(default_factory=dict)
    series: tuple[tuple[str, str], ...] = ()  # the (symbol, timeframe)s of that connection


def backoff(attempt: int, *, base: float = 0.5, cap: float = 30.0) -> float:
    """Seconds before reconnect `attempt` (1, 2, …): exponential, capped, full jitter on the
    upper half, so that many clients cut at once do not come back at once."""
    top = min(cap, base * 2.0 ** min(attempt - 1, 30))
    return top * (0.5 + random.random() / 2)


class _Group:
    """The streams of one connection and what it knows of them."""

    def __init__(self, streams: list[str]) -> None:
        self.streams = streams
        self.renew = asyncio.Event()
        self.reason = ""


class StreamClient:
    """Follow kline streams of `series` [(SYMBOL, timeframe)] until `stop()`."""

    def __init__(
        self,
        stream_url: str,
        series: Iterable[tuple[str, str]],
        on_bar: Callable[[StreamBar], None],
        *,
        on_connect: Callable[[int, list[tuple[str, str]]], None] | None = None,
        on_event: Callable[[StreamEvent], None] | None = None,
        stale_after: float = STALE_AFTER,
        max_age: float = MAX_AGE,
        max_streams: int = MAX_STREAMS,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        open_timeout: float = 10.0,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
    ) -> None:
        self.url = stream_url.rstrip("/")
        self.series = {stream_name(s, tf): (s.upper(), tf) for s, tf in series}
        self.on_bar = on_bar
        self.on_connect = on_connect or (lambda conn, series: None)
        self.on_event = on_event or (lambda event: None)
        self.stale_after = stale_after
        self.max_age = max_age
        self.max_streams = max(1, min(max_streams, 1024))
        self.backoff_base, self.backoff_cap = backoff_base, backoff_cap
        self.open_timeout = open_timeout
        self.ping_interval, self.ping_timeout = ping_interval, ping_timeout
        self.reconnects = 0
        self.garbage = 0
        self.connected: set[int] = set()
        self._ids = itertools.count(1)
        self._last_close: dict[str, int] = {}  # stream -> open ms of the last close passed on
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._groups: list[_Group] = []
        self._ready = threading.Event()

    # ---- owner side (any thread) ---------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="marketcache-stream", daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def stop(self, timeout: float = 15.0) -> None:
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stopping.set)
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def renew(self, reason: str = "asked") -> None:
        """Renew every connection now (the owner found it stale)."""
        if self._loop is None:
            return
        for group in self._groups:
            self._loop.call_soon_threadsafe(self._renew, group, reason)

    # ---- the loop ------------------------------------------------------------------------

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        names = list(self.series)
        self._groups = [
            _Group(names[i : i + self.max_streams]) for i in range(0, len(names), self.max_streams)
        ]
        self._ready.set()
        tasks = [asyncio.create_task(self._follow(g)) for g in self._groups]
        await self._stopping.wait()
        # cancelled, and told by the flag too: Python 3.11's wait_for can swallow a
        # cancellation that races a message arriving
        while tasks:
            for task in tasks:
                task.cancel()
            done, pending = await asyncio.wait(tasks, timeout=1.0)
            for task in done:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    task.result()
            tasks = list(pending)

    @staticmethod
    def _renew(group: _Group, reason: str) -> None:
        group.reason = group.reason or reason
        group.renew.set()

    async def _follow(self, group: _Group) -> None:
        """Connect, read, renew; forever."""
        from websockets.asyncio.client import connect

        url = f"{self.url}/stream?streams={'/'.join(group.streams)}"
        attempt = 0
        stopping = self._stopping
        while stopping is None or not stopping.is_set():
            conn = next(self._ids)
            reason = ""
            started = time.monotonic()
            try:
                async with connect(
                    url,
                    open_timeout=self.open_timeout,
                    ping_interval=self.ping_interval,
                    ping_timeout=self.ping_timeout,
                    close_timeout=1.0,
                    max_size=2**20,
                    max_queue=1024,
                ) as ws:
                    self.connected.add(conn)
                    group.renew.clear()
                    group.reason = ""
                    self.on_connect(conn, [self.series[s] for s in group.streams])
                    reason = await self._read(ws, group, conn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # refused, reset, timeout, closed: all mean reconnect
                reason = _describe(exc)
            finally:
                self.connected.discard(conn)
            if reason == "stop":
                return
            healthy = time.monotonic() - started > max(5.0, self.stale_after)
            attempt = 1 if healthy or reason in ("server shutdown", "age") else attempt + 1
            self.reconnects += 1
            wait = (
                0.0
                if reason in ("server shutdown", "age")
                else backoff(attempt, base=self.backoff_base, cap=self.backoff_cap)
            )
            detail = {"reason": reason, "wait": round(wait, 3)}
            cut = tuple(self.series[s] for s in group.streams)
            self.on_event(StreamEvent("reconnect", conn, detail, cut))
            log.info("stream connection %d ended (%s); reconnecting in %.2fs", conn, reason, wait)
            if wait:
                await asyncio.sleep(wait)

    async def _read(self, ws: Any, group: _Group, conn: int) -> str:
        """Pass messages on until the connection must be renewed; why it must."""
        opened = time.monotonic()
        heard = dict.fromkeys(group.streams, opened)
        tick = min(1.0, self.stale_after / 4)
        while True:
            if self._stopping is not None and self._stopping.is_set():
                return "stop"
            if group.renew.is_set():
                return group.reason or "renew"
            now = time.monotonic()
            if now - opened >= self.max_age:
                return "age"
            silent = [s for s, t in heard.items() if now - t >= self.stale_after]
            if silent:
                quiet = round(now - min(heard[s] for s in silent), 3)
                detail = {"streams": silent, "silent": quiet}
                self.on_event(StreamEvent("stale", conn, detail))
                return "stale"
            try:
                message = await asyncio.wait_for(ws.recv(), tick)
            except TimeoutError:
                continue
            received = time.monotonic()
            what = self._message(message, conn, received)
            if what == "shutdown":
                return "server shutdown"
            if what in heard:
                heard[what] = received

    def _message(self, message: str | bytes, conn: int, received: float) -> str:
        """Handle one message; the stream it was of ('' for none, 'shutdown')."""
        try:
            body = json.loads(message)
        except (ValueError, UnicodeDecodeError):
            return self._skip(message, "not JSON")
        if not isinstance(body, dict):
            return self._skip(message, "not an object")
        data = body.get("data", body) if "stream" in body else body
        if not isinstance(data, dict):
            return self._skip(message, "no data object")
        event = data.get("e")
        if event == "serverShutdown":
            log.info("stream connection %d: serverShutdown", conn)
            return "shutdown"
        if "result" in body or "error" in body:  # an answer to a control message
            if body.get("error"):
                self.on_event(StreamEvent("error", conn, {"error": str(body["error"])[:200]}))
            return ""
        if event != "kline":
            return self._skip(message, f"unknown event {str(event)[:40]!r}")
        bar = _kline(data, conn, received)
        if bar is None:
            return self._skip(message, "a kline without its fields")
        stream = stream_name(bar.symbol, bar.timeframe)
        if stream not in self.series:
            return self._skip(message, f"a stream not asked for: {stream}")
        if bar.closed:
            if self._last_close.get(stream, -1) >= bar.open_ms:
                return stream  # delivered twice (or after a reconnect): passed on once
            self._last_close[stream] = bar.open_ms
        self.on_bar(bar)
        return stream

    def _skip(self, message: str | bytes, why: str) -> str:
        self.garbage += 1
        text = message if isinstance(message, str) else repr(message[:60])
        log.warning("stream message skipped (%s): %.80s", why, text)
        return ""


def _kline(data: dict[str, Any], conn: int, received: float) -> StreamBar | None:
    k = data.get("k")
    if not isinstance(k, dict):
        return None
    try:
        closed = k["x"]
        if not isinstance(closed, bool):
            return None
        return StreamBar(
            symbol=str(k["s"]).upper(),
            timeframe=str(k["i"]),
            open_ms=int(k["t"]),
            open=float(k["o"]),
            high=float(k["h"]),
            low=float(k["l"]),
            close=float(k["c"]),
            volume=float(k["v"]),
            closed=closed,
            event_ms=int(data.get("E", 0)),
            conn=conn,
            received=received,
        )
    except (KeyError, TypeError, ValueError):
        return None


def _describe(exc: BaseException) -> str:
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    if isinstance(exc, InvalidStatus):
        return f"refused: HTTP {exc.response.status_code}"
    if isinstance(exc, ConnectionClosed):
        code = exc.rcvd.code if exc.rcvd is not None else None
        return f"closed: {code}" if code is not None else "connection lost"
    if isinstance(exc, TimeoutError):
        return "timeout"
    return f"{type(exc).__name__}: {exc}"[:200]
