"""`marketcache serve`: a real uvicorn on 127.0.0.1 driven with httpx and a WebSocket client,
on every backend; answers compared row for row with `UnifiedCache.get`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from conftest import make_bars, s3_environment
from marketcache import UnifiedCache
from marketcache.config.parser import parse_settings
from serving import API, cache_on, fill, parse, same, served

FORMATS = ("json", "csv", "arrow", "parquet")
ACCEPT = {
    "json": "application/json",
    "csv": "text/csv",
    "arrow": "application/vnd.apache.arrow.stream",
    "parquet": "application/vnd.apache.parquet",
}
RANGES = [  # (symbol, interval, from, to, adjust)
    ("BTCUSDT", "1h", None, None, "none"),
    ("BTCUSDT", "1h", "2023-12-31T20:00", "2024-01-01T05:00", "none"),  # over the year end
    ("BTC/USDT", "1h", "2024-01-05", None, "none"),
    ("AAPL", "1d", None, None, "none"),
    ("AAPL", "1d", "2022-10-01", "2023-09-01", "splits"),
    ("AAPL", "1d", "2022-10-01", "2023-09-01", "all"),  # the dividends' closes span two years
    ("AAPL", "1d", "2030-01-01", None, "none"),  # after the last bar: empty
]


def _query(interval: str, lo: str | None, hi: str | None, adjust: str) -> dict[str, str]:
    q = {"interval": interval, "adjust": adjust}
    q.update({k: v for k, v in (("from", lo), ("to", hi)) if v is not None})
    return q


@pytest.mark.parametrize("backend", ["csv.gz", "parquet", "postgresql", "s3"])
def test_every_route_in_every_format_equals_get(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    cache = fill(cache_on(backend, tmp_path, request))
    with served(cache) as url, httpx.Client(base_url=url, timeout=60) as http:
        for sym, tf, lo, hi, adjust in RANGES:
            want = cache.get(sym, tf, lo, hi, adjust=adjust)
            for fmt in FORMATS:
                by_param = http.get(
                    f"{API}/historical/{sym}", params={**_query(tf, lo, hi, adjust), "format": fmt}
                )
                assert by_param.status_code == 200, by_param.text
                same(parse(fmt, by_param.content), want)
                by_accept = http.get(
                    f"{API}/historical/{sym}",
                    params=_query(tf, lo, hi, adjust),
                    headers={"Accept": ACCEPT[fmt]},
                )
                assert by_accept.headers["content-type"].startswith(ACCEPT[fmt])
                assert by_accept.content == by_param.content
        symbols = http.get(f"{API}/symbols").json()
        assert [s["symbol"] for s in symbols] == ["AAPL", "BTCUSDT"]
        btc = symbols[1]["timeframes"][0]
        assert btc["timeframe"] == "1h" and btc["rows"] == 24 * 25
        assert btc["first"] == "2023-12-20T00:00:00" and btc["last"] == "2024-01-13T23:00:00"
        avail = http.get(f"{API}/availability").json()
        assert {(a["symbol"], a["timeframe"], a["rows"]) for a in avail} == {
            ("AAPL", "1d", len(cache.get("AAPL", "1d"))),
            ("BTCUSDT", "1h", 24 * 25),
        }
        quote = http.get(f"{API}/quote/BTCUSDT", params={"interval": "1h"}).json()
        last = cache.get("BTCUSDT", "1h").iloc[-1]
        assert quote["timestamp"] == "2024-01-13T23:00:00Z" and quote["close"] == last["close"]
        assert quote["stale"] is True and quote["closed"] is True and quote["as_of"].endswith("Z")
        both = http.get(f"{API}/quotes", params={"symbols": "AAPL,BTCUSDT", "interval": "1d"})
        assert both.status_code == 404 and "BTCUSDT has no 1d bars" in both.json()["error"]
        health = http.get("/health").json()
        assert health == {"ok": True, "backend": cache.backend.name, "version": health["version"]}


def test_a_large_range_is_streamed_in_chunks_and_equals_get(tmp_path: Path) -> None:
    cache = UnifiedCache(tmp_path / "c", settings=parse_settings(""))
    cache.put(make_bars("2023-10-01", 60 * 24 * 120, "1min"), "ETHUSDT", "1m")  # 172,800 bars
    with served(cache) as url, httpx.Client(base_url=url, timeout=120) as http:
        for fmt in FORMATS:
            with http.stream("GET", f"{API}/historical/ETHUSDT",
                             params={"interval": "1m", "format": fmt}) as r:  # fmt: skip
                assert r.status_code == 200 and r.headers["transfer-encoding"] == "chunked"
                pieces = list(r.iter_raw())
            assert len(pieces) > 1
            same(parse(fmt, b"".join(pieces)), cache.get("ETHUSDT", "1m"))


def _corrupt(cache: UnifiedCache, sym: str, tf: str, year: int) -> Path:
    path = Path(cache.where(cache.record(sym, tf, year) and _key(sym, tf, year)))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def _key(sym: str, tf: str, year: int) -> Any:
    from marketcache.storage.backend import Key

    return Key.of(sym, tf, year)


@pytest.mark.parametrize("fmt", ["csv.gz", "parquet"])
def test_a_corrupt_year_is_503_naming_it_and_no_bars_of_the_other_years(
    fmt: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    cache = fill(cache_on(fmt, tmp_path, request))
    path = _corrupt(cache, "BTCUSDT", "1h", 2024)
    with served(cache) as url, httpx.Client(base_url=url, timeout=60) as http:
        for f in FORMATS:
            r = http.get(f"{API}/historical/BTCUSDT", params={"interval": "1h", "format": f})
            assert r.status_code == 503, (f, r.status_code)
            assert r.headers["content-type"] == "application/json"
            err = r.json()
            assert err["status"] == 503 and str(path) in err["error"]
            assert "bars" not in err and "Traceback" not in r.text
        ok = http.get(f"{API}/historical/BTCUSDT",
                      params={"interval": "1h", "to": "2024-01-01", "format": "csv"})  # fmt: skip
        assert ok.status_code == 200, ok.text  # [.., 2024-01-01) reads nothing of 2024
        same(parse("csv", ok.content), cache.read_year("BTCUSDT", "1h", 2023))
        quote = http.get(f"{API}/quote/BTCUSDT", params={"interval": "1h"})
        assert quote.status_code == 503 and str(path) in quote.json()["error"]
        ind = http.get(f"{API}/indicators/sma/BTCUSDT", params={"interval": "1h"})
        assert ind.status_code == 503


def test_etag_304_and_a_commit_invalidates_exactly_what_it_changed(tmp_path: Path) -> None:
    cache = fill(cache_on("csv.gz", tmp_path, None))
    span = {"interval": "1h", "format": "arrow"}
    old_year = {**span, "to": "2024-01-01"}
    with served(cache) as url, httpx.Client(base_url=url, timeout=60) as http:
        first = http.get(f"{API}/historical/BTCUSDT", params=span)
        assert first.headers["x-cache"] == "miss" and first.headers["x-years-decoded"] == "2"
        etag = first.headers["etag"]
        again = http.get(f"{API}/historical/BTCUSDT", params=span)
        assert again.headers["x-cache"] == "hit" and again.content == first.content
        assert again.headers["etag"] == etag
        unchanged = http.get(f"{API}/historical/BTCUSDT", params=span,
                             headers={"If-None-Match": etag})  # fmt: skip
        assert unchanged.status_code == 304 and unchanged.content == b""
        before = http.get(f"{API}/historical/BTCUSDT", params=old_year)
        assert before.headers["x-years-decoded"] == "0"  # 2023 was decoded once, kept
        # another writer commits new 2024 bars
        UnifiedCache(tmp_path / "data-cache", settings=parse_settings("")).put(
            make_bars("2024-01-14", 5, "1h", seed=9), "BTCUSDT", "1h"
        )
        after = http.get(f"{API}/historical/BTCUSDT", params=span,
                         headers={"If-None-Match": etag})  # fmt: skip
        assert after.status_code == 200 and after.headers["etag"] != etag
        assert after.headers["x-years-decoded"] == "1"  # 2024 only: 2023's entry still holds
        same(parse("arrow", after.content), cache.get("BTCUSDT", "1h"))
        assert len(parse("arrow", after.content)) == 24 * 25 + 5
        old = http.get(f"{API}/historical/BTCUSDT", params=old_year,
                       headers={"If-None-Match": before.headers["etag"]})  # fmt: skip
        assert old.status_code == 304  # the commit did not touch 2023


def _start_cli_server(args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "marketcache", "serve", "--port", "0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if "listening on " in line:
            return proc, line.split("listening on ", 1)[1].split()[0]
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"serve did not start: {proc.communicate()}")


def test_the_token_guards_every_route_but_health_and_is_never_logged(tmp_path: Path) -> None:
    fill(cache_on("csv.gz", tmp_path, None))
    secret = "tok-3f9a1c77e2"
    env = {
        **os.environ,
        "MARKETCACHE_TOKEN": secret,
        "MARKETCACHE_CACHE_DIR": str(tmp_path / "data-cache"),
    }
    proc, url = _start_cli_server([], env)
    try:
        with httpx.Client(base_url=url, timeout=60) as http:
            assert http.get("/health").status_code == 200
            for path, q in ((f"{API}/symbols", {}), (f"{API}/availability", {}),
                            (f"{API}/historical/BTCUSDT", {"interval": "1h"}),
                            (f"{API}/quote/BTCUSDT", {"interval": "1h"})):  # fmt: skip
                none = http.get(path, params=q)
                assert none.status_code == 401 and none.json()["status"] == 401
                wrong = http.get(path, params=q, headers={"Authorization": "Bearer tok-3f9a1c77e3"})
                assert wrong.status_code == 401 and secret not in wrong.text
                assert http.get(path, params={**q, "token": "nope"}).status_code == 401
                good = http.get(path, params=q, headers={"Authorization": f"Bearer {secret}"})
                assert good.status_code == 200, good.text
                assert http.get(path, params={**q, "token": secret}).status_code == 200
            from websockets.exceptions import InvalidStatus
            from websockets.sync.client import connect

            ws_url = url.replace("http", "ws") + f"{API}/stream"
            with pytest.raises(InvalidStatus) as denied:
                connect(ws_url, open_timeout=30).close()
            assert denied.value.response.status_code == 401
            with connect(ws_url + f"?token={secret}", open_timeout=30) as ws:
                ws.send(
                    json.dumps({"action": "subscribe", "symbols": ["BTCUSDT"], "interval": "1h"})
                )
                assert json.loads(ws.recv(30))["type"] == "subscribed"
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "token=***" in out + err  # the access log shows the request, not the token
    assert secret not in out + err
    assert "Traceback" not in err


def test_a_commit_by_another_process_reaches_a_websocket_subscriber(tmp_path: Path) -> None:
    from websockets.sync.client import connect

    cache = fill(cache_on("csv.gz", tmp_path, None))
    with served(cache, poll_interval=0.2) as url:
        ws_url = url.replace("http", "ws") + f"{API}/stream"
        with connect(ws_url, open_timeout=30) as ws, connect(ws_url, open_timeout=30) as other:
            ws.send("not json")
            bad = json.loads(ws.recv(30))
            assert bad["type"] == "error" and "not JSON" in bad["error"]
            ws.send(json.dumps({"action": "subscribe", "symbols": ["../x"], "interval": "1h"}))
            assert json.loads(ws.recv(30))["type"] == "error"
            ws.send(json.dumps({"action": "subscribe", "symbols": ["BTC/USDT", "NEWUSDT"],
                                "interval": "1h"}))  # fmt: skip
            assert json.loads(ws.recv(30)) == {"type": "subscribed", "interval": "1h",
                                               "symbols": ["BTCUSDT", "NEWUSDT"]}  # fmt: skip
            other.send(
                json.dumps({"action": "subscribe", "symbols": ["BTCUSDT"], "interval": "1h"})
            )
            assert json.loads(other.recv(30))["type"] == "subscribed"
            other.send(
                json.dumps({"action": "unsubscribe", "symbols": ["BTCUSDT"], "interval": "1h"})
            )
            assert json.loads(other.recv(30))["type"] == "unsubscribed"
            new = make_bars("2024-01-14", 3, "1h", seed=5)
            script = (
                "import sys, pandas as pd; sys.path.insert(0, sys.argv[2])\n"
                "from conftest import make_bars\n"
                "from marketcache import UnifiedCache\n"
                "c = UnifiedCache(sys.argv[1])\n"
                "c.put(make_bars('2024-01-14', 3, '1h', seed=5), 'BTCUSDT', '1h')\n"
                "c.put(make_bars('2024-02-01', 2, '1h', seed=6), 'NEWUSDT', '1h')\n"
            )
            tests = str(Path(__file__).parent)
            subprocess.run([sys.executable, "-c", script, str(tmp_path / "data-cache"), tests],
                           check=True, timeout=120)  # fmt: skip
            got: list[dict[str, Any]] = []
            deadline = time.monotonic() + 60
            while len(got) < 5 and time.monotonic() < deadline:
                got.append(json.loads(ws.recv(max(0.1, deadline - time.monotonic()))))
            bars = [m for m in got if m["type"] == "bar"]
            btc = [m for m in bars if m["symbol"] == "BTCUSDT"]
            assert [m["bar"]["timestamp"] for m in btc] == [
                "2024-01-14T00:00:00Z",
                "2024-01-14T01:00:00Z",
                "2024-01-14T02:00:00Z",
            ]
            assert [m["bar"]["close"] for m in btc] == new["close"].tolist()
            assert all(m["closed"] is True and m["interval"] == "1h" for m in bars)
            assert len([m for m in bars if m["symbol"] == "NEWUSDT"]) == 2
            with pytest.raises(TimeoutError):  # each bar once; the unsubscribed client: none
                ws.recv(1.0)
            with pytest.raises(TimeoutError):
                other.recv(0.5)


INDICATORS = [
    ("sma", {"period": 10}, lambda t, c: t.SMA(c, timeperiod=10)),
    ("ema", {"period": 10}, lambda t, c: t.EMA(c, timeperiod=10)),
    ("wma", {"period": 7}, lambda t, c: t.WMA(c, timeperiod=7)),
    ("rsi", {"period": 14}, lambda t, c: t.RSI(c, timeperiod=14)),
    ("macd", {"fast": 6, "slow": 13, "signal": 5},
     lambda t, c: t.MACD(c, fastperiod=6, slowperiod=13, signalperiod=5)),
    ("bbands", {"period": 20, "stddev": 2.5},
     lambda t, c: t.BBANDS(c, timeperiod=20, nbdevup=2.5, nbdevdn=2.5, matype=0)),
]  # fmt: skip


@pytest.mark.parametrize("name,params,direct", INDICATORS, ids=[i[0] for i in INDICATORS])
def test_indicators_equal_talib_over_the_whole_history_from_the_first_bar_in_range(
    name: str, params: dict[str, Any], direct: Any, tmp_path: Path
) -> None:
    import talib

    cache = UnifiedCache(tmp_path / "c", settings=parse_settings(""))
    cache.put(make_bars("2023-06-01", 24 * 300, "1h", seed=11), "BTCUSDT", "1h")
    full = cache.get("BTCUSDT", "1h")
    expected = direct(talib, full["close"].to_numpy("float64"))
    expected = expected if isinstance(expected, tuple) else (expected,)
    lo, hi = pd.Timestamp("2024-01-01 05:00"), pd.Timestamp("2024-02-01")
    inside = ((full["timestamp"] >= lo) & (full["timestamp"] < hi)).to_numpy()
    with served(cache) as url, httpx.Client(base_url=url, timeout=60) as http:
        r = http.get(f"{API}/indicators/{name}/BTCUSDT",
                     params={"interval": "1h", "from": str(lo), "to": str(hi), **params})  # fmt: skip
        assert r.status_code == 200, r.text
        doc = r.json()
    rows = doc["values"]
    assert [v["timestamp"] for v in rows] == [
        t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in full["timestamp"][inside]
    ]
    names = {"macd": ("macd", "signal", "hist"), "bbands": ("upper", "middle", "lower")}
    for out, want in zip(names.get(name, ("value",)), expected, strict=True):
        got = np.array([v[out] for v in rows], dtype="float64")
        assert not np.isnan(got).any(), "the first value in range is defined"
        np.testing.assert_allclose(got, want[inside], rtol=1e-9, atol=0)
    assert doc["warmup"] > 0 and doc["params"] == params


def test_hostile_parameters_are_400_or_404_json(tmp_path: Path) -> None:
    cache = fill(cache_on("csv.gz", tmp_path, None))
    cases = [
        (f"{API}/historical/BTCUSDT?interval=1h&from=yesterday-ish", 400, "from"),
        (f"{API}/historical/BTCUSDT?interval=1h&from=2024-02-01&to=2024-01-01", 400, "from"),
        (f"{API}/historical/BTCUSDT?interval=1h&from=2024-01-01&to=2024-01-01", 400, "from"),
        (f"{API}/historical/BTCUSDT?interval=7x", 400, "interval"),
        (f"{API}/historical/BTCUSDT?interval=1h&format=xml", 400, "format"),
        (f"{API}/historical/BTCUSDT?interval=1h&adjust=maybe", 400, "adjust"),
        (f"{API}/historical/BTCUSDT?interval=1h&frm=2024-01-01", 400, "frm"),
        (f"{API}/historical/BTCUSDT?interval=5m", 404, "5m"),
        (f"{API}/historical/NOSUCH?interval=1h", 404, "NOSUCH"),
        (f"{API}/historical/..%2F..%2Fetc%2Fpasswd?interval=1h", 400, "symbol"),
        (f"{API}/historical/%2e%2e?interval=1h", 400, "symbol"),
        (f"{API}/historical/A%00B?interval=1h", 400, "symbol"),
        (f"{API}/indicators/sma/BTCUSDT?interval=1h&period=10000000", 400, "period"),
        (f"{API}/indicators/sma/BTCUSDT?interval=1h&period=-3", 400, "period"),
        (f"{API}/indicators/sma/BTCUSDT?interval=1h&period=ten", 400, "period"),
        (f"{API}/indicators/macd/BTCUSDT?interval=1h&fast=30&slow=10", 400, "fast"),
        (f"{API}/indicators/bbands/BTCUSDT?interval=1h&stddev=nan", 400, "stddev"),
        (f"{API}/indicators/sma/BTCUSDT?interval=1h&fast=3", 400, "fast"),
        (f"{API}/indicators/zigzag/BTCUSDT?interval=1h", 404, "zigzag"),
        (f"{API}/quotes?interval=1h", 400, "symbols"),
        (f"{API}/quote/BTCUSDT?interval=1w", 404, "1w"),
        (f"{API}/nowhere", 404, "/nowhere"),
    ]
    with served(cache) as url, httpx.Client(base_url=url, timeout=60) as http:
        for path, status, named in cases:
            r = http.get(path)
            assert r.status_code == status, (path, r.status_code, r.text)
            assert r.headers["content-type"] == "application/json", path
            err = r.json()
            assert err["status"] == status and named in err["error"], (path, err)
            assert "Traceback" not in r.text
        assert http.post(f"{API}/symbols").status_code == 405


def test_serve_refuses_follow_a_busy_port_and_a_missing_cache_in_one_line(
    cli: Any, tmp_path: Path
) -> None:
    import socket

    fill(cache_on("csv.gz", tmp_path, None))
    cache = str(tmp_path / "data-cache")
    r = cli("serve", "--cache-dir", cache, "--follow", "BTCUSDT", "-t", "1m")
    assert r.code == 2 and "--follow" in r.err and len(r.err.strip().splitlines()) == 1
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        port = str(busy.getsockname()[1])
        r = cli("serve", "--cache-dir", cache, "--port", port)
        assert r.code == 2 and f"--port {port}" in r.err and len(r.err.strip().splitlines()) == 1
    finally:
        busy.close()
    r = cli("serve", "--cache-dir", str(tmp_path / "nope"))
    assert r.code == 2 and "nope" in r.err


def test_a_bucket_cache_is_served_to_a_subscriber_from_another_machine(
    s3_url: str, s3_server: str, tmp_path: Path
) -> None:
    """A `put` on another machine (its own process and environment) reaches the stream of a
    server reading the same bucket."""
    from websockets.sync.client import connect

    cache = fill(UnifiedCache(s3_url, settings=parse_settings("")))
    with (
        served(cache, poll_interval=0.2) as url,
        connect(url.replace("http", "ws") + f"{API}/stream", open_timeout=30) as ws,
    ):
        ws.send(json.dumps({"action": "subscribe", "symbols": ["BTCUSDT"], "interval": "1h"}))
        assert json.loads(ws.recv(30))["type"] == "subscribed"
        env = {**os.environ, **s3_environment(s3_server, tmp_path / "other")}
        script = (
            "import sys; sys.path.insert(0, sys.argv[2])\n"
            "from conftest import make_bars\n"
            "from marketcache import UnifiedCache\n"
            "UnifiedCache(sys.argv[1]).put(make_bars('2024-01-14', 2, '1h', seed=7), 'BTCUSDT', '1h')\n"
        )
        subprocess.run([sys.executable, "-c", script, s3_url, str(Path(__file__).parent)],
                           check=True, timeout=120, env=env)  # fmt: skip
        got = [json.loads(ws.recv(60)) for _ in range(2)]
    assert [m["bar"]["timestamp"] for m in got] == ["2024-01-14T00:00:00Z", "2024-01-14T01:00:00Z"]


class Follower:
    """A stand-in for the live follower (issue 23) behind the `LiveSource` interface: it
    follows BTCUSDT 1h, has a forming bar, and announces a closed one on demand."""

    def __init__(self) -> None:
        self.callbacks: list[Any] = []

    def follows(self, symbol: str, timeframe: str) -> bool:
        return (symbol, timeframe) == ("BTCUSDT", "1h")

    def forming_bar(self, symbol: str, timeframe: str) -> Any:
        from marketcache.serve.live import LiveBar

        bar = {"timestamp": "2024-01-14T01:00:00", "open": 1.5, "high": 2.0, "low": 1.0,
               "close": 1.75, "volume": 3.0}  # fmt: skip
        return LiveBar(symbol, timeframe, bar, closed=False)

    def on_closed(self, callback: Any) -> Any:
        self.callbacks.append(callback)
        return lambda: self.callbacks.remove(callback)


def test_a_follower_plugs_in_its_forming_bar_and_closed_bars(tmp_path: Path) -> None:
    from websockets.sync.client import connect

    from marketcache.serve.live import LiveBar

    cache = fill(cache_on("csv.gz", tmp_path, None))
    follower = Follower()
    with served(cache, live=follower, poll_interval=0.2) as url:
        with httpx.Client(base_url=url, timeout=60) as http:
            quote = http.get(f"{API}/quote/BTCUSDT", params={"interval": "1h"}).json()
            assert quote["closed"] is True and quote["timestamp"] == "2024-01-13T23:00:00Z"
            assert quote["forming"] == {"timestamp": "2024-01-14T01:00:00Z", "open": 1.5,
                                        "high": 2.0, "low": 1.0, "close": 1.75, "volume": 3.0,
                                        "closed": False}  # fmt: skip
            other = http.get(f"{API}/quote/AAPL", params={"interval": "1d"}).json()
            assert "forming" not in other
        with connect(url.replace("http", "ws") + f"{API}/stream", open_timeout=30) as ws:
            ws.send(json.dumps({"action": "subscribe", "symbols": ["BTCUSDT"], "interval": "1h"}))
            assert json.loads(ws.recv(30))["type"] == "subscribed"
            bar = {"timestamp": "2024-01-14T00:00:00", "open": 1.0, "high": 1.0, "low": 1.0,
                   "close": 1.0, "volume": 1.0}  # fmt: skip
            for callback in follower.callbacks:
                callback(LiveBar("BTCUSDT", "1h", bar, closed=True))
            pushed = json.loads(ws.recv(30))
            assert pushed["type"] == "bar" and pushed["bar"]["timestamp"] == "2024-01-14T00:00:00Z"
            # the follower then commits it: the watcher sees the commit and does not send it again
            cache.put(pd.DataFrame([{**bar, "timestamp": pd.Timestamp(bar["timestamp"])}]),
                      "BTCUSDT", "1h")  # fmt: skip
            with pytest.raises(TimeoutError):
                ws.recv(1.5)
