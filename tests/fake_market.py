"""A fake Binance market on 127.0.0.1: REST klines and kline WebSocket streams of one tape.

One `FakeMarket` serves, from the same deterministic bars (`fake_bars.Tape`), both faces a
live follower talks to:

- REST (`market.url`, a `FakeBinance` subclass): `GET /api/v3/klines` (paging by startTime /
  endTime / limit as Binance does, the forming bar last with its partial values and a close
  time in the future), `/api/v3/time`, `/api/v3/ping`, and an HTTP `Date` header, all by the
  market's clock. `fail_next(...)` faults work as on `FakeBinance`. The klines archive is not
  served (404: the adapter asks REST), so keep `archive_url: ''` (`config_for`'s default).
- WebSocket (`market.stream_url`, the `websockets` library): `/stream?streams=a/b` (combined:
  `{"stream": …, "data": …}`), `/ws/<stream>` and `/ws` (raw); SUBSCRIBE / UNSUBSCRIBE /
  LIST_SUBSCRIPTIONS / SET_PROPERTY / GET_PROPERTY with Binance's answers and error answers;
  `<symbol>@kline_<interval>` streams only, lower case (anything else is "invalid stream"; a
  well-formed stream of an unlisted symbol is accepted and stays silent, as on Binance). Each
  stream sends an update of the forming bar (`x: false`) every `update_every` market seconds
  and one `x: true` message when a bar closes, equal to the REST kline of that open time.
  Binance's limits are enforced on wall time: more than `max_messages` incoming messages
  (text, binary, ping and pong frames) within any second closes the connection with 1008;
  more than `max_streams` streams closes it (or refuses the handshake); the server pings
  every `ping_interval` seconds and drops a client that leaves a ping unanswered for
  `pong_timeout` seconds (unsolicited pongs do not count); a connection is cut at `max_age`.

The clock (`MarketClock`): market time = `start` + wall time elapsed × `speed`, plus what
`advance` added. `speed=120` plays a market minute in 0.5 s; `speed=0` is the manual mode,
where time moves only by `market.advance(seconds)` / `market.close_bar(interval)`, which
return once every stream has sent what that step made due. Bar events (updates, closes, late
delivery, refusal windows) are in market time; network rules (pings, rates, age) in wall time.
At speed 120 Binance's 2 s update cadence would be 60 messages a second per stream: pass
`update_every=10` or more (updates coalesce when the server wakes late; closes never do).

Scripted faults, each logged in `market.log` (`market.logged(kind)`): `drop(code=1001)`
(`code=None`: a TCP reset), `refuse_connections(market_seconds | attempts)`, `go_silent()`,
`duplicate_close()`, `skip_close()`, `deliver_late(market_seconds)`, `server_shutdown()`,
`send_garbage()`; plus the automatic `rate_limit`, `too_many_streams`, `pong_timeout`,
`age_cut`. Accounting: `market.connections` (one `ConnectionRecord` per accepted handshake:
path, streams, messages sent and received, control messages with their wall times, pings,
close code and who closed), `market.attempts`, `market.sent` (every data message: kind,
stream, open time), `control_rate()` (the most control messages in any second).

A follower test, for example::

    from fake_market import FakeMarket, market_config

    with FakeMarket(["BTCUSDT"], start="2024-03-01 12:00", speed=120, update_every=10,
                    ping_interval=1, pong_timeout=3) as market:
        cfg = tmp_path / "providers.yaml"
        cfg.write_text(market_config(market))     # binance base_url and stream_url → the fake
        proc = subprocess.Popen(["marketcache", "follow", "BTCUSDT", "-t", "1m", "--config", cfg, ...])
        market.wait_until(market.clock.now() + pd.Timedelta("2min"))
        market.drop(1001)                           # mid-bar
        market.refuse_connections(market_seconds=90)  # a bar closes that only REST has
        ...
        expected = market.frame("BTCUSDT", "1m", start, end)   # the closed bars, as stored
        assert market.logged("refused") and len(market.connections) >= 2
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from typing import Any

import numpy as np
import pandas as pd

from fake_bars import INTERVAL_MS, Kline, Tape, frame
from fake_stream import (
    ConnectionRecord,
    LogEntry,
    Rule,
    Sent,
    StreamConnection,
    StreamServer,
)
from fakes import Answer, FakeBinance, _json, config_for


def _ms(ts: pd.Timestamp | str) -> int:
    return int(pd.Timestamp(ts).value // 1_000_000)


class MarketClock:
    """Market time = start + wall time elapsed × speed + what `advance` added (speed 0: manual)."""

    def __init__(self, start: pd.Timestamp | str | None = None, speed: float = 1.0) -> None:
        self.speed = speed
        self._start = _ms(start) if start is not None else int(time.time() * 1000)
        self._wall0 = time.monotonic()
        self._added = 0

    def now_ms(self) -> int:
        return self._start + int((time.monotonic() - self._wall0) * 1000 * self.speed) + self._added

    def now(self) -> pd.Timestamp:
        return pd.Timestamp(self.now_ms(), unit="ms")

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("the market clock never goes back")
        self._added += round(seconds * 1000)

    def wall(self, market_ms: float) -> float | None:
        """Wall seconds that `market_ms` take to pass on their own (None: only `advance`)."""
        return market_ms / 1000 / self.speed if self.speed else None


class FakeMarket(FakeBinance):
    """One fake Binance market: REST and kline streams over one tape and one clock."""

    data_path = "/api/v3/klines"

    def __init__(
        self,
        symbols: list[str] | tuple[str, ...] = ("BTCUSDT",),
        *,
        start: pd.Timestamp | str | None = None,
        speed: float = 1.0,
        seed: int = 0,
        listed: pd.Timestamp | str | None = None,
        update_every: float = 2.0,
        ping_interval: float = 20.0,
        pong_timeout: float = 60.0,
        max_age: float = 86_400.0,
        age_close_code: int = 1001,
        max_messages: int = 5,
        max_streams: int = 1024,
        close_timeout: float = 1.0,
    ) -> None:
        self.clock = MarketClock(start, speed)
        self.tape = Tape(seed)
        since = _ms(listed) if listed is not None else self.clock.now_ms() - 30 * 86_400_000
        self.listed: dict[str, int] = {s.upper(): since for s in symbols}
        self.update_ms = int(update_every * 1000)
        self.ping_interval, self.pong_timeout = ping_interval, pong_timeout
        self.max_age, self.age_close_code = max_age, age_close_code
        self.max_messages, self.max_streams = max_messages, max_streams
        self.close_timeout = close_timeout
        self.log: list[LogEntry] = []
        self.sent: list[Sent] = []
        self.connections: list[ConnectionRecord] = []
        self._extra_skew = pd.Timedelta(0)
        self._told = threading.local()  # per request thread: the market ms its body is from
        self._rules: list[Rule] = []
        self._background: list[Any] = []
        super().__init__()  # FakeServer answers without Nagle's delay (see tests/fakes.py)
        self.streams = StreamServer(self)

    # ---- the REST face -----------------------------------------------------------------

    @property
    def skew(self) -> pd.Timedelta:
        """FakeServer stamps `Date` with time.time() + skew: here the market instant the body
        was computed at (+0.5 ms for the µs between, never into the next second), so a
        forming bar never comes with a `Date` saying it has closed, however fast the clock."""
        told = getattr(self._told, "ms", None)
        market = told + 0.5 if told is not None else self.clock.now_ms()
        return pd.Timedelta(milliseconds=market - time.time() * 1000) + self._extra_skew

    @skew.setter
    def skew(self, value: pd.Timedelta) -> None:
        self._extra_skew = value

    def answer(self, path: str, query: dict[str, str]) -> Answer:
        now = self._told.ms = self.clock.now_ms()
        if path == "/api/v3/time":
            return _json(200, {"serverTime": now})
        if path != self.data_path:
            return super().answer(path, query)
        symbol, interval = query.get("symbol", ""), query.get("interval", "")
        if not symbol:
            return _json(400, {"code": -1102, "msg": "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed."})  # fmt: skip
        if interval not in INTERVAL_MS:
            return _json(400, {"code": -1120, "msg": "Invalid interval."})
        if symbol not in self.listed:
            return _json(400, {"code": -1121, "msg": "Invalid symbol."})
        try:
            lo, hi = (int(query[k]) if k in query else None for k in ("startTime", "endTime"))
            limit = min(max(int(query.get("limit", 500)), 1), 1000)
        except ValueError:
            return _json(400, {"code": -1100, "msg": "Illegal characters found in a parameter."})
        if lo is not None and hi is not None and lo > hi:
            return _json(400, {"code": -1023, "msg": "Start time is greater than end time."})
        rows = [k.rest_row() for k in self.klines(symbol, interval, lo, hi, limit, now)]
        return Answer(200, json.dumps(rows, separators=(",", ":")).encode())

    def klines(
        self,
        symbol: str,
        interval: str,
        lo: int | None,
        hi: int | None,
        limit: int = 1000,
        now: int | None = None,
    ) -> list[Kline]:
        """What GET /api/v3/klines answers at `now`: open times in [lo, hi], the forming bar
        last (with its partial values)."""
        step = INTERVAL_MS[interval]
        now = self.clock.now_ms() if now is None else now
        forming = now - now % step
        first = -(-self.listed[symbol] // step) * step
        top = forming if hi is None else min(forming, hi - hi % step)
        if lo is not None:
            bottom = max(first, -(-lo // step) * step)
            top = min(top, bottom + (limit - 1) * step)
        else:
            bottom = max(first, top - (limit - 1) * step)
        if top < bottom:
            return []
        opens = np.arange(bottom, top + 1, step, dtype=np.int64)
        done = opens[opens + step <= now]
        bars = self.tape.closed(symbol, interval, done)
        if len(done) < len(opens):
            bars.append(self.tape.kline(symbol, interval, int(opens[-1]), now))
        return bars

    def kline(self, symbol: str, interval: str, open_time: pd.Timestamp | str) -> Kline:
        """The bar opening at `open_time` as it stands now (what REST and the stream say)."""
        return self.tape.kline(symbol, interval, _ms(open_time), self.clock.now_ms())

    def frame(
        self, symbol: str, interval: str, start: pd.Timestamp | str, end: pd.Timestamp | str
    ) -> pd.DataFrame:
        """The closed bars opening in [start, end), as the cache should store them."""
        step = INTERVAL_MS[interval]
        lo = max(-(-_ms(start) // step) * step, -(-self.listed[symbol] // step) * step)
        hi = min(_ms(end), self.clock.now_ms() - step + 1)
        return frame(self.tape.closed(symbol, interval, np.arange(lo, max(lo, hi), step)))

    # ---- the clock ---------------------------------------------------------------------

    def advance(self, seconds: float) -> None:
        """Move the market clock on; returns once every stream has sent what became due."""
        self.clock.advance(seconds)
        self.streams.call(self.streams.step_all())

    def advance_to(self, when: pd.Timestamp | str) -> None:
        self.advance(max(0, _ms(when) - self.clock.now_ms()) / 1000)

    def close_bar(self, interval: str = "1m") -> pd.Timestamp:
        """Advance to the close of the forming `interval` bar; returns that bar's open time."""
        step, now = INTERVAL_MS[interval], self.clock.now_ms()
        self.advance((step - now % step) / 1000)
        return pd.Timestamp(now - now % step, unit="ms")

    def wait_until(self, when: pd.Timestamp | str, timeout: float = 30.0) -> None:
        """Sleep (wall time) until the running market clock reaches `when`."""
        target = _ms(when)
        wall = self.clock.wall(target - self.clock.now_ms())
        if wall is None:
            raise RuntimeError("a manual clock only moves by advance()")
        if wall > timeout:
            raise TimeoutError(f"{when} is {wall:.1f} s of wall time away")
        while self.clock.now_ms() < target:
            time.sleep(max(0.001, min(0.05, self.clock.wall(target - self.clock.now_ms()) or 0)))

    def wait_for(self, predicate: Any, timeout: float = 10.0, what: str = "condition") -> None:
        """Poll `predicate()` until it holds (generous deadlines: the machine is busy)."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not reached within {timeout} s")
            time.sleep(0.01)

    # ---- scripted faults ---------------------------------------------------------------

    def drop(self, code: int | None = 1001, reason: str = "", stream: str | None = None) -> int:
        """Close every open connection (that carries `stream`) now; returns how many."""
        conns = [c for c in self.streams.open() if stream is None or stream in c.subs]
        for c in conns:
            self._log("drop", c, code=code)
            self.streams.call(c.hangup(code, reason))
        return len(conns)

    def refuse_connections(
        self, market_seconds: float | None = None, attempts: int = 0, status: int = 503
    ) -> None:
        """Answer new handshakes `status` for `market_seconds` of market time or `attempts`."""
        if market_seconds is not None:
            self.streams.refuse_until = self.clock.now_ms() + int(market_seconds * 1000)
        self.streams.refuse_attempts, self.streams.refuse_status = attempts, status

    def go_silent(self) -> int:
        """Every open connection stays open but sends nothing and answers no ping."""
        conns = self.streams.open()

        async def quiet() -> None:  # on the loop, so nothing more leaves once this returns
            for c in conns:
                c.quiet()

        for c in conns:
            self._log("silent", c)
        self.streams.call(quiet())
        return len(conns)

    def duplicate_close(self, stream: str | None = None, count: int = 1) -> None:
        """The next `count` closes (of `stream`, or of any stream) are sent twice."""
        self._rules.append(Rule("duplicate", stream, count))

    def skip_close(self, stream: str | None = None, count: int = 1) -> None:
        """The next `count` closes are never sent: the bar exists only on REST (kline closes
        that never came: nautilus_trader #1705)."""
        self._rules.append(Rule("skip", stream, count))

    def deliver_late(
        self, market_seconds: float, stream: str | None = None, count: int = 1
    ) -> None:
        """The next `count` closes arrive `market_seconds` after the close, and the stream
        lags behind them: no update and no later close overtakes (~30 s: nautilus #1705)."""
        self._rules.append(Rule("late", stream, count, int(market_seconds * 1000)))

    def server_shutdown(self, close_after: float = 0.2, code: int = 1001) -> int:
        """Send Binance's serverShutdown event on every connection, close them `close_after`
        wall seconds later."""
        conns = self.streams.open()

        async def shutdown(c: StreamConnection) -> None:
            data = {"e": "serverShutdown", "E": self.clock.now_ms()}
            await c.send_event("!serverShutdown", data, "shutdown", None)
            await asyncio.sleep(close_after)
            await c.hangup(code, "server shutdown")

        for c in conns:
            self._log("server_shutdown", c)
            self._background.append(
                asyncio.run_coroutine_threadsafe(shutdown(c), self.streams.loop)
            )
        return len(conns)

    def send_garbage(self, frames: list[str | bytes] | None = None) -> None:
        """Send frames no client should trust: HTML, cut JSON, binary, wrong shapes."""
        frames = frames or [
            "<html><body><h1>502 Bad Gateway</h1></body></html>",
            '{"stream":"btcusdt@kline_1m","data":{"e":"kline","E":17',
            b"\x00\xff\x10binary",
            '{"stream":"btcusdt@kline_1m","data":{"e":"kline","E":1,"s":"BTCUSDT"}}',
            "[]",
            "null",
        ]
        for c in self.streams.open():
            self._log("garbage", c, frames=len(frames))
            for body in frames:
                self.streams.call(c.send_text(body, "garbage"))

    def list_symbol(self, symbol: str, since: pd.Timestamp | str) -> None:
        self.listed[symbol.upper()] = _ms(since)

    # ---- accounting --------------------------------------------------------------------

    def logged(self, kind: str) -> list[LogEntry]:
        with self._lock:
            return [e for e in self.log if e.kind == kind]

    def messages(self, kind: str, stream: str | None = None, conn: int | None = None) -> list[Sent]:
        with self._lock:
            return [s for s in self.sent if s.kind == kind and stream in (None, s.stream)
                    and conn in (None, s.conn)]  # fmt: skip

    @property
    def attempts(self) -> int:
        """WebSocket handshakes tried, refused ones included."""
        return self.streams.attempts

    def open_connections(self) -> list[ConnectionRecord]:
        return [c.record for c in self.streams.open()]

    def control_rate(self, conn: int | None = None, window: float = 1.0) -> int:
        """The most control messages (SUBSCRIBE…) that arrived within any `window` seconds."""
        times = sorted(t for r in self.connections if conn in (None, r.id) for t, _ in r.control)
        return max((sum(1 for u in times if t <= u < t + window) for t in times), default=0)

    # ---- plumbing ----------------------------------------------------------------------

    @property
    def stream_url(self) -> str:
        return f"ws://127.0.0.1:{self.streams.port}"

    def close(self) -> None:
        self.streams.stop()
        # HTTPServer.shutdown() waits out serve_forever's 0.5 s poll; a connection wakes it
        stopping = threading.Thread(target=self.httpd.shutdown, daemon=True)
        stopping.start()
        address = ("127.0.0.1", int(self.httpd.server_address[1]))
        while stopping.is_alive():
            with contextlib.suppress(OSError):
                socket.create_connection(address, timeout=1).close()
            stopping.join(0.02)
        self.httpd.server_close()

    def __enter__(self) -> FakeMarket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _log(self, kind: str, conn: StreamConnection | None = None, **detail: Any) -> None:
        entry = LogEntry(kind, time.monotonic(), self.clock.now_ms(),
                         conn.record.id if conn else None, detail)  # fmt: skip
        with self._lock:
            self.log.append(entry)

    def _take_rule(self, stream: str) -> Rule | None:
        with self._lock:
            for rule in self._rules:
                if rule.remaining > 0 and rule.stream in (None, stream):
                    rule.remaining -= 1
                    return rule
        return None


def market_config(market: FakeMarket, **kwargs: Any) -> str:
    """A providers.yaml for `config_for` with Binance's REST and stream URLs on the fake."""
    text = config_for(market, **kwargs)
    return text.replace("  binance: {", f"  binance: {{stream_url: '{market.stream_url}', ", 1)
