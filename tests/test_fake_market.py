"""The fake Binance market itself: one tape on two faces, its clock, its limits, its faults.

Plain clients only (requests, the `websockets` library, a raw socket), so that what a
follower test learns from the fake is what the fake does, not what our code believes.
Manual-clock tests script every step; the accelerated ones assert bounds, not instants.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import requests
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.sync.client import ClientConnection, connect

from fake_bars import INTERVAL_MS, Tape
from fake_market import FakeMarket, market_config

START = "2024-03-01 12:00:30"  # mid-bar: the 12:00 bar is forming
T1200 = pd.Timestamp("2024-03-01 12:00")
MS = 1_000_000


def ms(ts: pd.Timestamp | str) -> int:
    return int(pd.Timestamp(ts).value // MS)


@pytest.fixture
def market() -> Iterator[Callable[..., FakeMarket]]:
    """Make markets (manual clock at START unless told) and close them all at the end."""
    made: list[FakeMarket] = []

    def make(symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT"), **kw: Any) -> FakeMarket:
        m = FakeMarket(symbols, **{"start": START, "speed": 0, "update_every": 10, **kw})
        made.append(m)
        return m

    yield make
    for m in made:
        m.close()


def ws(m: FakeMarket, path: str, **kw: Any) -> ClientConnection:
    """A plain websockets client; its own keepalive pings off unless asked (they count as
    incoming messages for the 5/s rule)."""
    opts: dict[str, Any] = {"open_timeout": 5, "close_timeout": 0.5, "ping_interval": None, **kw}
    return connect(m.stream_url + path, **opts)


def take(conn: ClientConnection, n: int, timeout: float = 5.0) -> list[Any]:
    """Exactly the next n messages, decoded."""
    return [json.loads(conn.recv(timeout=timeout)) for _ in range(n)]


def nothing_more(conn: ClientConnection, wait: float = 0.2) -> None:
    with pytest.raises(TimeoutError):
        conn.recv(timeout=wait)


def rest(m: FakeMarket, **params: Any) -> requests.Response:
    return requests.get(f"{m.url}/api/v3/klines", params=params, timeout=5)


def rest_row(m: FakeMarket, symbol: str, interval: str, open_ms: int) -> list[Any]:
    rows = rest(m, symbol=symbol, interval=interval, startTime=open_ms, limit=1).json()
    assert rows and rows[0][0] == open_ms
    return list(rows[0])


def as_row(k: dict[str, Any]) -> list[Any]:
    """A stream `k` in the REST row layout."""
    return [
        k["t"],
        k["o"],
        k["h"],
        k["l"],
        k["c"],
        k["v"],
        k["T"],
        k["q"],
        k["n"],
        k["V"],
        k["Q"],
        "0",
    ]


def closes(messages: list[Any]) -> list[dict[str, Any]]:
    return [x["data"]["k"] for x in messages if "data" in x and x["data"]["k"]["x"]]


# ---- one tape, two faces ------------------------------------------------------------------


def test_every_closed_bar_on_the_stream_equals_the_rest_kline_of_its_open_time(market):
    m = market()
    with ws(m, "/stream?streams=btcusdt@kline_1m/btcusdt@kline_5m/ethusdt@kline_1m") as c:
        got: list[Any] = []
        for _ in range(5):  # 12:01 … 12:05: 1m closes of both, and a 5m update or its close
            m.close_bar("1m")
            got += take(c, 3)
        nothing_more(c)
    by_stream: dict[str, list[dict[str, Any]]] = {}
    assert sum(not msg["data"]["k"]["x"] for msg in got) == 4  # the forming 5m bar's updates
    for msg in (x for x in got if x["data"]["k"]["x"]):
        assert msg["data"]["e"] == "kline"
        assert msg["data"]["s"] == msg["data"]["k"]["s"] == msg["stream"].split("@")[0].upper()
        by_stream.setdefault(msg["stream"], []).append(msg["data"]["k"])
    assert [k["t"] for k in by_stream["btcusdt@kline_1m"]] == [
        ms(T1200) + i * 60_000 for i in range(5)
    ]
    for stream, ks in by_stream.items():
        symbol, interval = stream.split("@kline_")
        for k in ks:
            assert as_row(k) == rest_row(m, symbol.upper(), interval, k["t"]), stream
            assert all(isinstance(k[f], str) for f in "ohlcvqVQ")  # prices as strings
    # one market: the 5m bar is its five 1m bars
    five, ones = by_stream["btcusdt@kline_5m"], by_stream["btcusdt@kline_1m"]
    assert [five[0][f] for f in "toc"] == [ones[0]["t"], ones[0]["o"], ones[-1]["c"]]
    assert float(five[0]["h"]) == max(float(k["h"]) for k in ones)
    assert float(five[0]["l"]) == min(float(k["l"]) for k in ones)
    assert five[0]["n"] == sum(k["n"] for k in ones)
    assert (five[0]["f"], five[0]["L"]) == (ones[0]["f"], ones[-1]["L"])


def test_bars_are_valid_ohlcv_on_a_cent_tick_and_the_same_for_the_same_seed(market):
    m, same, other = market(), market(), market(seed=7)
    rows = rest(m, symbol="BTCUSDT", interval="1m", endTime=ms(T1200) - 1, limit=1000).json()
    assert len(rows) == 1000
    assert (
        rows
        == rest(same, symbol="BTCUSDT", interval="1m", endTime=ms(T1200) - 1, limit=1000).json()
    )
    assert (
        rows
        != rest(other, symbol="BTCUSDT", interval="1m", endTime=ms(T1200) - 1, limit=1000).json()
    )
    for r in rows:
        o, h, lo, c, v = (float(x) for x in r[1:6])
        assert lo <= min(o, c) <= max(o, c) <= h and lo > 0 and v > 0
        assert all(x.endswith("000000") for x in r[1:5])  # 0.01 tick, Binance's 8 decimals
        assert r[6] == r[0] + 59_999 and 0 <= float(r[9]) <= v
    assert all(a[4] == b[1] for a, b in itertools.pairwise(rows))  # close = next open


@pytest.mark.parametrize("interval", ["1m", "5m", "1h", "1d"])
def test_a_stream_bar_and_a_rest_page_compute_the_same_values(interval):
    """REST pages use the vectorised path, streams the minute-by-minute one (cached)."""
    tape = Tape(seed=3)
    step = INTERVAL_MS[interval]
    opens = np.arange(ms(T1200), ms(T1200) + 30 * step, step)
    assert tape.closed("ETHUSDT", interval, opens) == [
        tape.kline("ETHUSDT", interval, int(t), int(t) + step) for t in opens
    ]
    t, half = int(opens[0]), step // 2 + 1234
    forming = tape.kline("ETHUSDT", interval, t, t + half)
    final = tape.closed("ETHUSDT", interval, opens[:1])[0]
    assert not forming.closed and forming.o == final.o and forming.f == final.f
    assert final.l <= forming.l <= forming.h <= final.h and forming.v < final.v


def test_rest_serves_the_forming_bar_with_its_partial_values_as_the_stream_does(market):
    m = market()
    with ws(m, "/ws/btcusdt@kline_1m") as c:
        m.advance(5)  # 12:00:35: no tick (update_every=10)
        nothing_more(c)
        m.advance(5)  # 12:00:40, a tick
        (update,) = take(c, 1)
        answer = rest(m, symbol="BTCUSDT", interval="1m", limit=3)
    server_now = ms("2024-03-01 12:00:40")
    assert requests.get(f"{m.url}/api/v3/time", timeout=5).json() == {"serverTime": server_now}
    assert answer.headers["Date"] == "Fri, 01 Mar 2024 12:00:40 GMT"  # the market's clock
    rows = answer.json()
    assert [r[0] for r in rows] == [ms(T1200) - 120_000, ms(T1200) - 60_000, ms(T1200)]
    forming = rows[-1]
    assert forming[6] == ms(T1200) + 59_999 > server_now  # close time in the future
    assert update["e"] == "kline" and update["E"] == server_now and update["k"]["x"] is False
    assert as_row(update["k"]) == forming  # raw /ws payload: no wrapper, same values
    m.close_bar("1m")
    final = rest_row(m, "BTCUSDT", "1m", ms(T1200))
    assert final[1] == forming[1] and float(final[5]) > float(forming[5]) and final[8] > forming[8]
    assert float(final[2]) >= float(forming[2]) and float(final[3]) <= float(forming[3])
    assert final == as_row(m.kline("BTCUSDT", "1m", T1200).stream_k())


def test_rest_pages_like_binance(market):
    m = market(listed="2024-02-28 00:00")
    sym = {"symbol": "BTCUSDT", "interval": "1m"}
    got, cursor = [], ms("2024-02-27 12:00")  # before the listing: starts at the listing
    while True:
        page = rest(m, **sym, startTime=cursor, limit=1000).json()
        if not page:
            break
        got += page
        cursor = page[-1][0] + 60_000
    opens = [r[0] for r in got]
    assert opens[0] == ms("2024-02-28 00:00") and opens[-1] == ms(T1200)  # up to the forming bar
    assert opens == list(range(opens[0], opens[-1] + 1, 60_000))  # contiguous, no repeats
    assert len(rest(m, **sym, limit=5000).json()) == 1000  # the cap
    assert len(rest(m, **sym).json()) == 500  # the default: the most recent
    window = rest(m, **sym, startTime=ms("2024-03-01 10:00"), endTime=ms("2024-03-01 10:05")).json()
    assert [r[0] for r in window] == list(
        range(ms("2024-03-01 10:00"), ms("2024-03-01 10:05") + 1, 60_000)
    )
    ends = rest(m, **sym, endTime=ms("2024-03-01 10:05") + 5, limit=2).json()
    assert [r[0] for r in ends] == [ms("2024-03-01 10:04"), ms("2024-03-01 10:05")]
    assert rest(m, **sym, startTime=ms("2024-03-01 13:00")).json() == []  # nothing from the future
    for params, code in [({"symbol": "NOPEUSDT", "interval": "1m"}, -1121),
                         ({"symbol": "BTCUSDT", "interval": "7m"}, -1120),
                         ({"interval": "1m"}, -1102),
                         ({**sym, "startTime": 2, "endTime": 1}, -1023)]:  # fmt: skip
        answer = rest(m, **params)
        assert answer.status_code == 400 and answer.json()["code"] == code
    assert requests.get(f"{m.url}/api/v3/ping", timeout=5).json() == {}


def test_an_accelerated_clock_drives_rest_and_stream_alike(market):
    m = market(speed=120, start="2024-03-01 12:00:50")  # a market minute in 0.5 s of wall time
    with ws(m, "/stream?streams=btcusdt@kline_1m") as c:
        w0 = time.monotonic()
        t1 = requests.get(f"{m.url}/api/v3/time", timeout=5).json()["serverTime"]
        w1 = time.monotonic()
        got = []
        while len(closes(got)) < 3:
            got.append(json.loads(c.recv(timeout=10)))
        w2 = time.monotonic()
        t2 = requests.get(f"{m.url}/api/v3/time", timeout=5).json()["serverTime"]
        w3 = time.monotonic()
    assert 120 * (w2 - w1) * 1000 - 5 <= t2 - t1 <= 120 * (w3 - w0) * 1000 + 5
    ks = closes(got)
    assert [k["t"] for k in ks] == [ms(T1200) + i * 60_000 for i in range(3)]
    for msg, k in ((x, x["data"]["k"]) for x in got if x["data"]["k"]["x"]):
        assert msg["data"]["E"] >= k["T"] + 1  # a close is sent at or after the close
        assert as_row(k) == rest_row(m, "BTCUSDT", "1m", k["t"])
    updates = [x["data"] for x in got if not x["data"]["k"]["x"]]
    assert updates and all(u["E"] < u["k"]["T"] for u in updates)
    per_bar = pd.Series([u["k"]["t"] for u in updates]).value_counts()
    assert per_bar.max() <= 6  # every 10 market seconds at most (late wake-ups coalesce)


def test_the_date_header_never_says_that_the_forming_bar_has_closed(market):
    m = market(speed=30_000)  # a market minute in 2 ms: the race is 30,000 times as wide
    with requests.Session() as session:
        for _ in range(25):
            answer = session.get(f"{m.url}/api/v3/klines", timeout=5,
                                 params={"symbol": "BTCUSDT", "interval": "1m", "limit": 1})  # fmt: skip
            ((t, *_, close_time, _q, _n, _v, _qq, _i),) = answer.json()
            told = int(parsedate_to_datetime(answer.headers["Date"]).timestamp() * 1000)
            assert t - 1000 < told <= close_time  # the forming bar's own second, or the one before


# ---- the stream protocol ------------------------------------------------------------------


def test_subscribe_unsubscribe_list_and_properties_answer_as_binance_does(market):
    m = market(symbols=("BTCUSDT", "ETHUSDT"))
    with ws(m, "/ws") as c:
        c.send(
            json.dumps(
                {"method": "SUBSCRIBE", "params": ["btcusdt@kline_1m", "ethusdt@kline_1m"], "id": 1}
            )
        )
        c.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": "abc"}))
        assert take(c, 2) == [{"result": None, "id": 1},
                              {"result": ["btcusdt@kline_1m", "ethusdt@kline_1m"], "id": "abc"}]  # fmt: skip
        m.close_bar()
        raw = take(c, 2)
        assert {x["s"] for x in raw} == {"BTCUSDT", "ETHUSDT"} and "stream" not in raw[0]
        c.send(json.dumps({"method": "UNSUBSCRIBE", "params": ["ethusdt@kline_1m"], "id": 2}))
        c.send(json.dumps({"method": "SET_PROPERTY", "params": ["combined", True], "id": 3}))
        c.send(json.dumps({"method": "GET_PROPERTY", "params": ["combined"], "id": 4}))
        assert take(c, 3) == [{"result": None, "id": 2}, {"result": None, "id": 3},
                              {"result": True, "id": 4}]  # fmt: skip
        m.close_bar()
        (wrapped,) = take(c, 1)
        assert wrapped["stream"] == "btcusdt@kline_1m" and wrapped["data"]["k"]["x"] is True
        nothing_more(c)
    assert [method for _, method in m.connections[0].control] == [
        "SUBSCRIBE", "LIST_SUBSCRIPTIONS", "UNSUBSCRIBE", "SET_PROPERTY", "GET_PROPERTY"]  # fmt: skip


@pytest.mark.parametrize(
    ("message", "code", "msg"),
    [
        ("{not json", 3, "Invalid JSON"),
        ('{"params": ["btcusdt@kline_1m"], "id": 1}', 2, "missing field `method`"),
        (
            '{"method": "SUBSCRIBES", "params": ["btcusdt@kline_1m"], "id": 1}',
            2,
            "unknown variant `SUBSCRIBES`",
        ),
        ('{"method": "SUBSCRIBE", "params": ["btcusdt@kline_7m"], "id": 1}', 2, "invalid stream"),
        ('{"method": "SUBSCRIBE", "params": ["BTCUSDT@kline_1m"], "id": 1}', 2, "invalid stream"),
        (
            '{"method": "SUBSCRIBE", "params": ["btcusdt@kline_1m"], "id": 1.5}',
            2,
            "request ID must be",
        ),
        (
            '{"method": "SET_PROPERTY", "params": ["combined", "yes"], "id": 1}',
            1,
            "expected Boolean",
        ),
    ],
)
def test_bad_control_messages_get_binance_error_answers(market, message, code, msg):
    m = market()
    with ws(m, "/ws") as c:
        c.send(message)
        (answer,) = take(c, 1)
        assert answer["error"]["code"] == code and msg in answer["error"]["msg"]
        assert set(answer) == {"error", "id"}
        c.send(json.dumps({"method": "GET_PROPERTY", "params": ["nope"], "id": 9}))
        assert take(c, 1) == [{"code": 0, "msg": "Unknown property", "id": 9}]
        m.close_bar()
        nothing_more(c)  # nothing was subscribed


def test_a_stream_of_an_unlisted_symbol_is_accepted_and_silent_and_bad_paths_are_refused(market):
    m = market()
    with ws(m, "/stream?streams=dogeusdt@kline_1m") as c:
        m.close_bar()
        nothing_more(c)
    for path, status in [("/stream?streams=btcusdt@trade", 400), ("/api/v3/klines", 404)]:
        with pytest.raises(InvalidStatus) as refused:
            ws(m, path)
        assert refused.value.response.status_code == status


def test_more_than_five_incoming_messages_in_a_second_close_the_connection(market):
    m = market()
    with ws(m, "/ws") as c:  # five a second, spaced: kept
        for batch in range(2):
            time.sleep(1.3 * batch)
            for i in range(5):
                c.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": batch * 5 + i}))
            assert len(take(c, 5)) == 5
    assert m.control_rate() == 5 and not m.logged("rate_limit")
    with ws(m, "/ws") as c:
        for i in range(5):
            c.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": i}))
        c.ping()  # a ping frame counts as a message too: the sixth
        with pytest.raises(ConnectionClosed):
            while True:
                c.recv(timeout=5)
        assert (c.close_code, c.close_reason) == (1008, "Too many requests")
    (entry,) = m.logged("rate_limit")
    assert entry.conn == m.connections[1].id and m.connections[1].messages_received == 6
    m.wait_for(lambda: m.connections[1].closed_by == "server", what="the server closing")


def test_more_streams_than_the_limit_are_refused(market):
    m = market()
    streams = [f"s{i:04d}usdt@kline_1m" for i in range(1025)]
    with ws(m, "/ws") as c:
        c.send(json.dumps({"method": "SUBSCRIBE", "params": streams[:1024], "id": 1}))
        assert take(c, 1) == [{"result": None, "id": 1}]
        c.send(json.dumps({"method": "SUBSCRIBE", "params": streams[1024:], "id": 2}))
        with pytest.raises(ConnectionClosed):
            c.recv(timeout=5)
        assert (c.close_code, c.close_reason) == (1008, "Too many streams")
    small = market(max_streams=2)
    with pytest.raises(InvalidStatus) as refused:
        ws(small, "/stream?streams=btcusdt@kline_1m/ethusdt@kline_1m/btcusdt@kline_5m")
    assert refused.value.response.status_code == 400
    assert m.logged("too_many_streams")[0].detail == {"streams": 1025}
    assert small.logged("too_many_streams")


def _raw_client(m: FakeMarket, path: str) -> socket.socket:
    """A WebSocket client by hand that never reads (so never answers a ping)."""
    sock = socket.create_connection(("127.0.0.1", int(m.stream_url.rsplit(":", 1)[1])), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                 f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                 "Sec-WebSocket-Version: 13\r\n\r\n".encode())  # fmt: skip
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101")
    return sock


def test_the_server_pings_and_drops_a_client_that_does_not_pong(market):
    m = market(ping_interval=0.2, pong_timeout=0.8)
    with ws(m, "/ws/btcusdt@kline_1m") as good:  # the library pongs by itself
        raw = _raw_client(m, "/ws/btcusdt@kline_1m")
        unsolicited = Frame(Opcode.PONG, b"").serialize(mask=True)
        with contextlib.suppress(OSError):  # unsolicited pongs do not keep it alive
            for _ in range(6):
                raw.sendall(unsolicited)
                time.sleep(0.2)
        m.wait_for(lambda: m.logged("pong_timeout"), timeout=10, what="the pong timeout")
        kept, dropped = m.connections
        assert kept.open and kept.pings_sent >= 3
        m.wait_for(lambda: not dropped.open, what="the silent client dropped")
        assert dropped.closed_by == "server" and m.logged("pong_timeout")[0].conn == dropped.id
        good.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 1}))
        assert take(good, 1) == [{"result": ["btcusdt@kline_1m"], "id": 1}]
        raw.close()


# ---- scripted faults ----------------------------------------------------------------------


def test_drop_closes_with_1001_mid_bar_or_resets(market):
    m = market()
    with ws(m, "/ws/btcusdt@kline_1m") as c:
        m.advance(10)
        take(c, 1)  # an update of the forming bar: mid-bar
        assert m.drop(1001) == 1
        with pytest.raises(ConnectionClosed):
            c.recv(timeout=5)
        assert c.close_code == 1001
    with ws(m, "/ws/btcusdt@kline_1m") as c:
        m.drop(None)  # no close frame: what the client sees as 1006
        with pytest.raises(ConnectionClosed):
            c.recv(timeout=5)
        assert c.close_code == 1006
    m.wait_for(lambda: not any(r.open for r in m.connections))
    assert [(r.close_code, r.closed_by) for r in m.connections] == [
        (1001, "server"),
        (1006, "server"),
    ]
    assert [e.detail["code"] for e in m.logged("drop")] == [1001, None]


def test_refused_reconnects_leave_a_closed_bar_only_on_rest(market):
    m = market()
    with ws(m, "/ws/btcusdt@kline_1m") as c:
        m.drop(1001)
        with pytest.raises(ConnectionClosed):
            c.recv(timeout=5)
    m.refuse_connections(market_seconds=60)  # until 12:01:30: the 12:00 bar closes meanwhile
    for step in (0, 29.5):  # 12:00:30, 12:00:59.5
        m.advance(step)
        with pytest.raises(InvalidStatus) as refused:
            ws(m, "/ws/btcusdt@kline_1m")
        assert refused.value.response.status_code == 503
    m.advance(59.5)  # 12:01:59
    with ws(m, "/ws/btcusdt@kline_1m") as c:
        m.close_bar()  # 12:02
        (first,) = take(c, 1)
    assert first["k"]["t"] == ms("2024-03-01 12:01")  # no replay: the 12:00 close is REST's only
    assert rest_row(m, "BTCUSDT", "1m", ms(T1200)) == as_row(
        m.kline("BTCUSDT", "1m", T1200).stream_k()
    )
    assert len(m.logged("refused")) == 2 and m.attempts == 4 and len(m.connections) == 2
    m.refuse_connections(attempts=2, status=429)
    for _ in range(2):
        with pytest.raises(InvalidStatus) as refused:
            ws(m, "/ws/btcusdt@kline_1m")
        assert refused.value.response.status_code == 429
    with ws(m, "/ws/btcusdt@kline_1m"):
        pass


def test_a_silent_connection_stays_open_sends_nothing_and_answers_no_ping(market):
    m = market()
    with ws(m, "/ws/btcusdt@kline_1m") as c:  # leaving it: the server never reads the close
        m.advance(10)
        take(c, 1)
        assert m.go_silent() == 1
        m.close_bar()
        nothing_more(c)
        assert not c.ping().wait(0.5)  # no pong
        with ws(m, "/ws/btcusdt@kline_1m") as fresh:  # new connections are served as before
            m.close_bar()
            (bar,) = take(fresh, 1)
            assert bar["k"]["x"] is True
        silent = m.connections[0]
        assert silent.open and silent.closed_by is None and m.logged("silent")[0].conn == silent.id


def test_a_duplicate_close_is_sent_twice(market):
    m = market()
    with ws(m, "/stream?streams=btcusdt@kline_1m/ethusdt@kline_1m") as c:
        m.duplicate_close("ethusdt@kline_1m")
        m.close_bar()
        got = take(c, 3)
        m.close_bar()
        after = take(c, 2)
        nothing_more(c)
    eth = [x for x in got if x["stream"] == "ethusdt@kline_1m"]
    assert len(eth) == 2 and eth[0] == eth[1] and eth[0]["data"]["k"]["x"] is True
    assert sorted(x["stream"] for x in after) == ["btcusdt@kline_1m", "ethusdt@kline_1m"]  # once
    assert m.logged("duplicate_close")[0].detail == {
        "stream": "ethusdt@kline_1m",
        "open_ms": ms(T1200),
    }


def test_a_skipped_close_is_never_sent_but_the_stream_goes_on(market):
    m = market()
    with ws(m, "/ws/btcusdt@kline_1m") as c:
        m.skip_close()
        m.close_bar()
        nothing_more(c)
        m.advance(10)
        (update,) = take(c, 1)
        m.close_bar()
        (nxt,) = take(c, 1)
    assert update["k"]["t"] == nxt["k"]["t"] == ms("2024-03-01 12:01") and nxt["k"]["x"] is True
    assert rest_row(m, "BTCUSDT", "1m", ms(T1200))  # REST has the bar the stream skipped
    assert m.logged("skip_close")[0].detail["open_ms"] == ms(T1200)


def test_a_late_close_arrives_late_and_the_stream_lags_behind_it(market):
    m = market()
    with ws(m, "/ws/btcusdt@kline_1m") as c:
        m.deliver_late(90)
        m.close_bar()  # 12:01: the 12:00 close is held until 12:02:30
        m.advance(50)
        nothing_more(c)  # no update of the 12:01 bar either: the stream lags
        m.advance(10)  # 12:02: the 12:01 bar closes, queued behind the late one
        nothing_more(c)
        m.advance(30)  # 12:02:30
        late, queued = take(c, 2)
        m.advance(10)
        (update,) = take(c, 1)
    assert (late["k"]["t"], queued["k"]["t"]) == (ms(T1200), ms("2024-03-01 12:01"))
    assert late["E"] == queued["E"] == ms("2024-03-01 12:02:30") == late["k"]["T"] + 1 + 90_000
    assert late["k"]["x"] and queued["k"]["x"] and not update["k"]["x"]
    assert as_row(late["k"]) == rest_row(m, "BTCUSDT", "1m", ms(T1200))
    assert m.logged("late_close")[0].detail == {
        "stream": "btcusdt@kline_1m",
        "open_ms": ms(T1200),
        "late_ms": 90_000,
    }


def test_server_shutdown_is_announced_in_binance_format_then_the_connection_closes(market):
    m = market()
    with (
        ws(m, "/stream?streams=btcusdt@kline_1m") as combined,
        ws(m, "/ws/btcusdt@kline_1m") as raw,
    ):
        assert m.server_shutdown(close_after=0.2) == 2
        (wrapped,) = take(combined, 1)
        (plain,) = take(raw, 1)
        for c in (combined, raw):
            with pytest.raises(ConnectionClosed):
                c.recv(timeout=5)
            assert c.close_code == 1001
    now = ms(START)
    assert wrapped == {"stream": "!serverShutdown", "data": {"e": "serverShutdown", "E": now}}
    assert plain == {"e": "serverShutdown", "E": now}
    assert len(m.logged("server_shutdown")) == 2


def test_every_connection_is_cut_at_its_age_limit(market):
    m = market(max_age=0.4)
    with ws(m, "/ws/btcusdt@kline_1m") as first:
        time.sleep(0.2)
        with ws(m, "/ws/ethusdt@kline_1m") as second:
            for c in (first, second):
                with pytest.raises(ConnectionClosed):
                    c.recv(timeout=5)
                assert c.close_code == 1001
    cuts = m.logged("age_cut")
    assert [e.conn for e in cuts] == [r.id for r in m.connections]
    for entry, record in zip(cuts, m.connections, strict=True):
        assert entry.wall - record.opened_wall >= 0.4  # each at its own age


def test_garbage_frames_arrive_and_the_stream_goes_on(market):
    m = market()
    with ws(m, "/stream?streams=btcusdt@kline_1m") as c:
        m.send_garbage()
        frames = [c.recv(timeout=5) for _ in range(6)]
        m.close_bar()
        (bar,) = take(c, 1)
    assert frames[0].startswith("<html>") and isinstance(frames[2], bytes)
    for body in (frames[0], frames[1]):
        with pytest.raises(json.JSONDecodeError):
            json.loads(body)
    assert json.loads(frames[3])["data"].get("k") is None and frames[4:] == ["[]", "null"]
    assert bar["data"]["k"]["x"] is True and len(m.messages("garbage")) == 6


def test_accounting_counts_connections_control_messages_and_what_was_sent(market):
    m = market()
    for _ in range(3):
        with ws(m, "/stream?streams=btcusdt@kline_1m") as c:
            c.send(json.dumps({"method": "SUBSCRIBE", "params": ["ethusdt@kline_1m"], "id": 1}))
            take(c, 1)
            m.close_bar()
            take(c, 2)
    assert m.attempts == len(m.connections) == 3
    assert [r.streams for r in m.connections] == [["btcusdt@kline_1m", "ethusdt@kline_1m"]] * 3
    assert all(r.messages_sent == 3 and r.messages_received == 1 for r in m.connections)
    assert (
        len(m.messages("close")) == 6 and len(m.messages("close", stream="ethusdt@kline_1m")) == 3
    )
    assert len(m.messages("answer")) == 3 and m.control_rate(conn=m.connections[0].id) == 1
    m.wait_for(lambda: all(r.closed_by == "client" and r.close_code == 1000 for r in m.connections))


# ---- the REST face under the real adapter -----------------------------------------------


def test_populate_through_the_real_adapter_stores_the_closed_bars_and_not_the_forming_one(
    market, cli, tmp_path: Path
):
    from marketcache import UnifiedCache
    from marketcache.config.parser import parse_settings

    m = market(symbols=("BTCUSDT",))
    config = tmp_path / "providers.yaml"
    config.write_text(market_config(m))
    assert f"stream_url: '{m.stream_url}'" in config.read_text()
    cache = tmp_path / "cache"
    run = cli("populate", "BTCUSDT", "-t", "1m", "--start", "2024-03-01 10:00",
              "--end", "2024-03-01 13:00", "--cache-dir", str(cache), "--config", str(config))  # fmt: skip
    assert run.code in (0, 1), run.err  # 1: the bars after the market's now are missing
    stored = UnifiedCache(cache, settings=parse_settings("")).get(
        "BTCUSDT", "1m", start="2024-03-01"
    )
    expected = m.frame("BTCUSDT", "1m", "2024-03-01 10:00", "2024-03-01 13:00")
    assert stored["timestamp"].max() == T1200 - pd.Timedelta("1min")  # 12:00 is still forming
    pd.testing.assert_frame_equal(stored[expected.columns].reset_index(drop=True), expected,
                                  check_dtype=False)  # fmt: skip
