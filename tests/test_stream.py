"""The kline stream client against the fake market (manual clock: every step scripted)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from fake_market import FakeMarket
from marketcache.live.stream import StreamBar, StreamClient, StreamEvent, backoff

START = "2024-03-01 12:00:30"


class Seen:
    def __init__(self) -> None:
        self.bars: list[StreamBar] = []
        self.events: list[StreamEvent] = []
        self.connects: list[int] = []
        self.lock = threading.Lock()

    def bar(self, bar: StreamBar) -> None:
        with self.lock:
            self.bars.append(bar)

    def event(self, event: StreamEvent) -> None:
        with self.lock:
            self.events.append(event)

    def connect(self, conn: int, series: list[tuple[str, str]]) -> None:
        with self.lock:
            self.connects.append(conn)

    def closes(self, symbol: str = "BTCUSDT") -> list[int]:
        with self.lock:
            return [b.open_ms for b in self.bars if b.closed and b.symbol == symbol]

    def kinds(self) -> list[str]:
        with self.lock:
            return [e.kind for e in self.events]


def wait(predicate: Any, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.01)


@pytest.fixture
def market() -> Iterator[FakeMarket]:
    m = FakeMarket(("BTCUSDT", "ETHUSDT"), start=START, speed=0, update_every=10)
    yield m
    m.close()


def client(m: FakeMarket, seen: Seen, connections: int = 1, **kw: Any) -> StreamClient:
    opts: dict[str, Any] = {"stale_after": 30.0, "backoff_base": 0.05, "backoff_cap": 0.2, **kw}
    c = StreamClient(
        m.stream_url,
        [("BTCUSDT", "1m"), ("ETHUSDT", "1m")],
        seen.bar,
        on_connect=seen.connect,
        on_event=seen.event,
        **opts,
    )
    c.start()
    wait(lambda: len(m.open_connections()) == connections and c.connected, what="connected")
    return c


def test_closes_are_final_once_and_match_rest(market):
    seen = Seen()
    c = client(market, seen)
    try:
        market.duplicate_close("btcusdt@kline_1m")
        first = market.close_bar()
        market.advance(10)  # an update of the forming bar
        wait(lambda: any(not b.closed for b in seen.bars), what="an update")
        wait(lambda: len(seen.closes("ETHUSDT")) == 1, what="eth close")
        assert seen.closes() == [int(first.value // 1_000_000)]  # sent twice, passed on once
        assert market.logged("duplicate_close")
        bar = next(b for b in seen.bars if b.closed and b.symbol == "BTCUSDT")
        k = market.kline("BTCUSDT", "1m", first)
        assert (bar.open, bar.close, bar.volume) == (k.o / 100, k.c / 100, float(k.v) / 1e8)
        assert market.connections[0].path.startswith("/stream?streams=btcusdt@kline_1m/")
        assert not market.connections[0].control  # streams in the URL: no SUBSCRIBE sent
    finally:
        c.stop()
    assert not c.alive


def test_garbage_is_skipped_and_the_connection_kept(market):
    seen = Seen()
    c = client(market, seen)
    try:
        market.send_garbage()
        wait(lambda: c.garbage >= 5, what="garbage counted")
        market.close_bar()
        wait(lambda: len(seen.closes()) == 1, what="a close after the garbage")
        assert len(market.connections) == 1
    finally:
        c.stop()


def test_drop_reconnects_and_tells_the_owner_first(market):
    seen = Seen()
    c = client(market, seen)
    try:
        market.refuse_connections(attempts=2)
        market.drop(1001)
        wait(lambda: len(market.open_connections()) == 1 and len(seen.connects) == 2,
             what="reconnected")  # fmt: skip
        assert len(market.logged("refused")) == 2  # it kept trying through refusals
        assert seen.kinds().count("reconnect") == 3
        market.close_bar()
        wait(lambda: len(seen.closes()) == 1, what="a close on the new connection")
        assert seen.bars[-1].conn == seen.connects[-1] or seen.bars[-2].conn == seen.connects[-1]
    finally:
        c.stop()


def test_a_reconnect_names_only_the_series_its_connection_carried(market):
    seen = Seen()
    c = client(market, seen, connections=2, max_streams=1)  # one connection per series
    try:
        assert market.drop(1001, stream="ethusdt@kline_1m") == 1
        wait(lambda: "reconnect" in seen.kinds(), what="the reconnect")
        wait(lambda: len(market.open_connections()) == 2, what="reconnected")
        (cut,) = [e for e in seen.events if e.kind == "reconnect"]
        assert cut.series == (("ETHUSDT", "1m"),)  # BTCUSDT's connection was never cut
    finally:
        c.stop()


def test_a_silent_stream_is_stale_and_renewed(market):
    seen = Seen()
    c = client(market, seen, stale_after=0.5)
    try:
        market.go_silent()
        wait(lambda: "stale" in seen.kinds() and len(seen.connects) == 2, what="renewed")
    finally:
        c.stop()


def test_server_shutdown_and_age_renew_at_once(market):
    seen = Seen()
    c = client(market, seen, max_age=1.0)
    try:
        wait(lambda: len(seen.connects) >= 2, what="age renewal")
        reasons = [e.detail["reason"] for e in seen.events if e.kind == "reconnect"]
        assert reasons[0] == "age"
        before = len(seen.connects)
        market.server_shutdown(close_after=5)
        wait(lambda: len(seen.connects) > before, timeout=3, what="renewed on serverShutdown")
        assert "server shutdown" in [e.detail["reason"] for e in seen.events]
    finally:
        c.stop()


def test_backoff_is_capped_and_jittered():
    waits = [backoff(n, base=0.5, cap=30) for n in range(1, 40)]
    assert all(0 < w <= 30 for w in waits)
    assert max(waits[-10:]) > 14  # it grows to the cap and stays there, never giving up
    assert len({round(backoff(8), 6) for _ in range(20)}) > 1
