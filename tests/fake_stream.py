"""The WebSocket face of the fake market: Binance's kline streams on `websockets`.

A `StreamServer` runs in its own thread and event loop; each accepted connection is a
`StreamConnection` that keeps its subscriptions, sends each stream's updates and closes when
the market clock makes them due (with the scripted faults applied), pings its client and
enforces Binance's limits. What happens is recorded on the market (`FakeMarket.log`,
`.sent`, `.connections`); see fake_market.py for the whole picture and how to use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response

from fake_bars import INTERVAL_MS, Kline

if TYPE_CHECKING:
    from fake_market import FakeMarket

STREAM_NAME = re.compile(r"^([a-z0-9]+)@kline_(\d+[mhd])$")
METHODS = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")
QUIET = logging.getLogger("fake_market.ws")
QUIET.addHandler(logging.NullHandler())
QUIET.propagate = False


def valid_stream(name: str) -> bool:
    """`<symbol>@kline_<interval>`, lower case, an interval the tape has."""
    match = STREAM_NAME.match(name)
    return match is not None and match.group(2) in INTERVAL_MS


@dataclass
class LogEntry:
    """A fault or limit the market applied (kind: drop, refused, silent, rate_limit, …)."""

    kind: str
    wall: float  # time.monotonic()
    market_ms: int
    conn: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Sent:
    """A message the server sent on a connection."""

    kind: str  # update, close, shutdown, garbage, answer, error
    wall: float
    market_ms: int
    conn: int
    stream: str | None = None
    open_ms: int | None = None
    body: str | bytes = ""


@dataclass
class ConnectionRecord:
    """One accepted WebSocket connection, from handshake to close (for accounting)."""

    id: int
    path: str
    combined: bool
    opened_wall: float
    opened_market_ms: int
    streams: list[str] = field(default_factory=list)
    messages_sent: int = 0
    messages_received: int = 0  # text, binary, ping, pong frames: what the 5/s rule counts
    control: list[tuple[float, str]] = field(default_factory=list)  # (wall, method)
    pings_sent: int = 0
    closed_wall: float | None = None
    close_code: int | None = None  # as the server saw it (1006: no close frame)
    closed_by: str | None = None  # "server" or "client"

    @property
    def open(self) -> bool:
        return self.closed_wall is None


@dataclass
class Rule:
    """A scripted fault that applies to the next `remaining` closes of `stream` (None: any)."""

    kind: str  # late, duplicate, skip
    stream: str | None
    remaining: int
    late_ms: int = 0


@dataclass
class _Sub:
    """One stream of a connection: what it has sent, what is due next."""

    stream: str
    symbol: str
    interval: str
    step: int
    next_close: int  # open time of the next bar whose close is still to send
    last_tick: int
    held: list[tuple[int, Kline]] = field(default_factory=list)  # late closes: (release, bar)


class _Wire(ServerConnection):
    """A server connection that counts every incoming frame, as Binance's 5/s rule does."""

    on_frame: Any = None

    def process_event(self, event: Any) -> None:
        super().process_event(event)
        counted = isinstance(event, Frame) and event.opcode is not Opcode.CLOSE and event.fin
        if counted and self.on_frame is not None:
            self.on_frame(event)


class StreamConnection:
    """One accepted connection: its subscriptions, its pump (what is due, sent when due),
    its pinger (Binance's keepalive), its age limit."""

    def __init__(self, market: FakeMarket, ws: _Wire, record: ConnectionRecord) -> None:
        self.market, self.ws, self.record = market, ws, record
        self.subs: dict[str, _Sub] = {}
        self.combined = record.combined
        self.silent = False
        self.closing = False
        self.wake = asyncio.Event()
        self.lock = asyncio.Lock()
        self.arrivals: deque[float] = deque()
        self.tasks: list[asyncio.Task[None]] = []

    # ---- incoming ----------------------------------------------------------------------

    def on_frame(self, frame_: Frame) -> None:
        m = self.market
        now = time.monotonic()
        self.record.messages_received += 1
        self.arrivals.append(now)
        while self.arrivals and self.arrivals[0] <= now - 1.0:
            self.arrivals.popleft()
        if len(self.arrivals) > m.max_messages and not self.closing:
            m._log("rate_limit", self, messages=len(self.arrivals))
            asyncio.get_running_loop().create_task(self.hangup(1008, "Too many requests"))

    async def on_message(self, text: str | bytes) -> None:
        m = self.market
        if isinstance(text, bytes):
            return await self.error(3, "Invalid JSON: expected value at line 1 column 1", None)
        try:
            msg = json.loads(text)
        except json.JSONDecodeError as exc:
            return await self.error(3, f"Invalid JSON: {exc.msg.lower()} at line {exc.lineno} "
                                    f"column {exc.colno}", None)  # fmt: skip
        if not isinstance(msg, dict):
            return await self.error(2, "Invalid request: expected an object", None)
        rid = msg.get("id")
        method = msg.get("method")
        self.record.control.append((time.monotonic(), str(method)))
        if not (rid is None or (isinstance(rid, int) and not isinstance(rid, bool))
                or (isinstance(rid, str) and re.fullmatch(r"[A-Za-z0-9]{1,36}", rid))):  # fmt: skip
            return await self.error(
                2, "Invalid request: request ID must be an unsigned integer", None
            )
        col = len(text)
        if method is None:
            return await self.error(
                2, f"Invalid request: missing field `method` at line 1 column {col}", rid
            )
        if method not in METHODS:
            listed = ", ".join(f"`{x}`" for x in METHODS)
            return await self.error(2, f"Invalid request: unknown variant `{method}`, expected one "
                                    f"of {listed} at line 1 column {col}", rid)  # fmt: skip
        params = msg.get("params", [])
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            if not isinstance(params, list) or not params:
                return await self.error(2, "Invalid request: missing field `params`", rid)
            if not all(isinstance(s, str) and valid_stream(s) for s in params):
                return await self.error(2, "Invalid request: invalid stream", rid)
            if method == "SUBSCRIBE":
                if len(set(self.subs) | set(params)) > m.max_streams:
                    m._log("too_many_streams", self, streams=len(set(self.subs) | set(params)))
                    return await self.hangup(1008, "Too many streams")
                async with self.lock:
                    for s in params:
                        self.add(s)
            else:
                async with self.lock:
                    for s in params:
                        self.subs.pop(s, None)
            self.record.streams = list(self.subs)
            self.wake.set()
            return await self.answer(None, rid)
        if method == "LIST_SUBSCRIPTIONS":
            return await self.answer(list(self.subs), rid)
        if not isinstance(params, list) or not params or not isinstance(params[0], str):
            return await self.error(2, "Invalid request: property name must be a string", rid)
        if params[0] != "combined":
            return await self.send_text(
                json.dumps({"code": 0, "msg": "Unknown property", "id": rid}), "error"
            )
        if method == "GET_PROPERTY":
            return await self.answer(self.combined, rid)
        if len(params) != 2 or not isinstance(params[1], bool):
            return await self.error(1, "Invalid value type: expected Boolean", rid)
        self.combined = params[1]
        return await self.answer(None, rid)

    def add(self, stream: str) -> None:
        if stream in self.subs:
            return
        match = STREAM_NAME.match(stream)
        assert match is not None
        interval = match.group(2)
        step = INTERVAL_MS[interval]
        now = self.market.clock.now_ms()
        self.subs[stream] = _Sub(stream, match.group(1).upper(), interval, step,
                                 now - now % step, now // self.market.update_ms)  # fmt: skip

    # ---- outgoing ----------------------------------------------------------------------

    async def send_text(
        self, body: str | bytes, kind: str, stream: str | None = None, open_ms: int | None = None
    ) -> None:
        if self.silent or self.closing:
            return
        m = self.market
        with contextlib.suppress(ConnectionClosed):
            await self.ws.send(body)
            self.record.messages_sent += 1
            with m._lock:
                m.sent.append(Sent(kind, time.monotonic(), m.clock.now_ms(), self.record.id,
                                   stream, open_ms, body))  # fmt: skip

    async def answer(self, result: Any, rid: Any) -> None:
        await self.send_text(json.dumps({"result": result, "id": rid}), "answer")

    async def error(self, code: int, msg: str, rid: Any) -> None:
        await self.send_text(json.dumps({"error": {"code": code, "msg": msg}, "id": rid}), "error")

    async def send_event(
        self, stream: str, data: dict[str, Any], kind: str, open_ms: int | None
    ) -> None:
        body = {"stream": stream, "data": data} if self.combined else data
        await self.send_text(json.dumps(body), kind, stream, open_ms)

    async def hangup(self, code: int | None, reason: str = "") -> None:
        """Close from the server side (code None: drop the TCP connection, no close frame)."""
        if self.closing:
            return
        self.closing = True
        self.record.closed_by = "server"
        if code is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(code, reason), self.market.close_timeout)
        self.ws.transport.abort()

    # ---- the stream --------------------------------------------------------------------

    async def step(self, now: int) -> None:
        """Send what is due at market time `now`: closes (with faults), then updates."""
        m = self.market
        for sub in list(self.subs.values()):
            listed = m.listed.get(sub.symbol)
            while sub.held and sub.held[0][0] <= now:
                _, bar = sub.held.pop(0)
                await self.send_event(sub.stream, bar.event(now), "close", bar.t)
            while sub.next_close + sub.step <= now:
                t = sub.next_close
                sub.next_close += sub.step
                if listed is None or t < listed:
                    continue
                bar = m.tape.kline(sub.symbol, sub.interval, t, now)
                if sub.held:  # the stream lags behind a late close: this one queues after it
                    sub.held.append((max(t + sub.step, sub.held[-1][0]), bar))
                    continue
                rule = m._take_rule(sub.stream)
                if rule is not None and rule.kind == "late":
                    sub.held.append((t + sub.step + rule.late_ms, bar))
                    m._log("late_close", self, stream=sub.stream, open_ms=t, late_ms=rule.late_ms)
                    continue
                if rule is not None and rule.kind == "skip":
                    m._log("skip_close", self, stream=sub.stream, open_ms=t)
                    continue
                for _ in range(2 if rule is not None else 1):
                    await self.send_event(sub.stream, bar.event(now), "close", t)
                if rule is not None:
                    m._log("duplicate_close", self, stream=sub.stream, open_ms=t)
            tick = now // m.update_ms
            if tick <= sub.last_tick or sub.held:  # a held close makes the stream lag
                continue
            sub.last_tick = tick
            forming = now - now % sub.step
            if listed is not None and forming >= listed and now > forming:
                bar = m.tape.kline(sub.symbol, sub.interval, forming, now)
                await self.send_event(sub.stream, bar.event(now), "update", forming)

    def next_due(self, now: int) -> int | None:
        dues = [s.next_close + s.step for s in self.subs.values()]
        dues += [(s.last_tick + 1) * self.market.update_ms for s in self.subs.values()]
        dues += [r for s in self.subs.values() for r, _ in s.held]
        return min(dues) if dues else None

    async def pump(self) -> None:
        clock = self.market.clock
        while True:
            self.wake.clear()
            async with self.lock:
                await self.step(clock.now_ms())
            due = self.next_due(clock.now_ms())
            wait = clock.wall(due - clock.now_ms()) if due is not None else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), None if wait is None else max(wait, 0.001))

    async def pinger(self) -> None:
        m = self.market
        pending: list[tuple[float, asyncio.Future[float]]] = []
        next_ping = time.monotonic() + m.ping_interval
        while True:
            now = time.monotonic()
            if now >= next_ping:
                with contextlib.suppress(ConnectionClosed):
                    self.record.pings_sent += 1  # a unique payload, the client echoes it
                    payload = f"{m.clock.now_ms()}-{self.record.pings_sent}"
                    pong = await self.ws.ping(payload)
                    assert isinstance(pong, asyncio.Future)
                    pending.append((now, pong))
                next_ping = now + m.ping_interval
            pending = [(t, f) for t, f in pending if not f.done()]
            if pending and now - pending[0][0] >= m.pong_timeout:
                m._log("pong_timeout", self, waited=round(now - pending[0][0], 3))
                return await self.hangup(None)
            deadline = min([next_ping] + [t + m.pong_timeout for t, _ in pending[:1]])
            await asyncio.sleep(max(deadline - now, 0.005))

    async def age_cut(self) -> None:
        await asyncio.sleep(self.market.max_age)
        self.market._log("age_cut", self, age=self.market.max_age)
        await self.hangup(self.market.age_close_code, "connection age limit")

    def quiet(self) -> None:
        """Go silent: send nothing, read nothing (so no pong), keep the TCP connection."""
        self.silent = True
        for task in self.tasks:
            task.cancel()
        self.ws.transport.pause_reading()


class StreamServer:
    """The kline stream server on 127.0.0.1 (port 0), in a thread with its own loop."""

    def __init__(self, market: FakeMarket) -> None:
        self.market = market
        self.conns: dict[int, StreamConnection] = {}
        self.attempts = 0  # handshakes tried, refused ones included
        self.refuse_until: int | None = None  # market ms
        self.refuse_attempts = 0
        self.refuse_status = 503
        self._ids = itertools.count(1)
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.server = self.loop.run_until_complete(self._serve())
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name="fake-market-ws", daemon=True)
        self.thread.start()
        ready.wait(10)

    async def _serve(self) -> Server:
        server = await serve(self._handler, "127.0.0.1", 0, process_request=self._handshake,
                             create_connection=_Wire, ping_interval=None,
                             close_timeout=self.market.close_timeout, logger=QUIET)  # fmt: skip
        self.port = server.sockets[0].getsockname()[1]
        return server

    def call(self, coro: Any, timeout: float = 10.0) -> Any:
        """Run `coro` on the server's loop from the test thread; its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def open(self) -> list[StreamConnection]:
        """Connections that are neither closing nor silent."""
        return [c for c in list(self.conns.values()) if not c.closing and not c.silent]

    async def step_all(self) -> None:
        for c in self.open():
            async with c.lock:
                await c.step(self.market.clock.now_ms())
            c.wake.set()

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.call(self._stop(), timeout=5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    async def _stop(self) -> None:
        for c in list(self.conns.values()):
            c.ws.transport.abort()
        self.server.close(close_connections=False)
        await asyncio.wait_for(self.server.wait_closed(), 3)

    def _handshake(self, ws: ServerConnection, request: Request) -> Response | None:
        """Refuse (scripted), route /stream and /ws, check the streams, register."""
        m = self.market
        self.attempts += 1
        parts = urlsplit(request.path)
        now = m.clock.now_ms()
        if self.refuse_attempts > 0 or (self.refuse_until is not None and now < self.refuse_until):
            self.refuse_attempts = max(0, self.refuse_attempts - 1)
            m._log("refused", None, status=self.refuse_status, path=request.path)
            return ws.respond(self.refuse_status, "Service Unavailable\n")
        if parts.path == "/stream":
            combined, streams = (
                True,
                [s for s in parse_qs(parts.query).get("streams", [""])[0].split("/") if s],
            )
        elif parts.path == "/ws" or parts.path.startswith("/ws/"):
            combined, streams = False, [s for s in parts.path[4:].split("/") if s]
        else:
            return ws.respond(404, "Not Found\n")
        if not all(valid_stream(s) for s in streams):
            return ws.respond(400, '{"code":2,"msg":"Invalid request: invalid stream"}')
        if len(set(streams)) > m.max_streams:
            m._log("too_many_streams", None, streams=len(set(streams)))
            return ws.respond(400, '{"code":2,"msg":"Invalid request: too many streams"}')
        record = ConnectionRecord(next(self._ids), request.path, combined, time.monotonic(), now)
        conn = StreamConnection(m, ws, record)  # type: ignore[arg-type]
        for s in streams:
            conn.add(s)
        record.streams = list(conn.subs)
        ws.market_conn = conn  # type: ignore[attr-defined]
        ws.on_frame = conn.on_frame  # type: ignore[attr-defined]
        with m._lock:  # before the 101 leaves: a fault scripted right after connect sees it
            m.connections.append(record)
        self.conns[record.id] = conn
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        conn: StreamConnection = ws.market_conn  # type: ignore[attr-defined]
        loop = asyncio.get_running_loop()
        conn.tasks = [loop.create_task(conn.pump()), loop.create_task(conn.pinger()),
                      loop.create_task(conn.age_cut())]  # fmt: skip
        try:
            async for message in ws:
                await conn.on_message(message)
        except ConnectionClosed:
            pass
        finally:
            for task in conn.tasks:
                task.cancel()
            conn.record.close_code = ws.close_code if ws.close_code is not None else 1006
            conn.record.closed_by = conn.record.closed_by or "client"
            conn.record.closed_wall = time.monotonic()
            self.conns.pop(conn.record.id, None)
