"""The live Python API (DataManager.get_ohlcv(live=True), stream, get_live_feed), the
stock/FX poller's calendar, and `serve --follow`, against the fake market on 127.0.0.1."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pandas as pd
import pytest

from fake_market import FakeMarket, market_config
from marketcache import DataManager, UnifiedCache
from marketcache.config.parser import parse_settings
from marketcache.core.timeframes import Timeframe
from marketcache.live.poll import due_bars
from marketcache.serve.live import LiveBar

START = "2024-03-01 12:00:30"
FAST = {"flush_every": 0.2, "stale_after": 1.0, "backfill_lookback": "30min"}


@pytest.fixture
def market() -> Iterator[FakeMarket]:
    m = FakeMarket(("BTCUSDT", "ETHUSDT"), start=START, speed=120, update_every=10)
    yield m
    m.close()


def manager(market: FakeMarket, tmp_path: Path) -> DataManager:
    settings = parse_settings(market_config(market))
    dm = DataManager(UnifiedCache(tmp_path / "cache", settings=settings, lock_wait=30))
    dm.live_options = dict(FAST)
    return dm


def our_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("marketcache-")]


def test_get_ohlcv_live_gives_history_closed_bars_and_the_forming_one(market, tmp_path):
    with manager(market, tmp_path) as dm:
        start = market.clock.now().floor("1min") - pd.Timedelta(minutes=20)
        df = dm.get_ohlcv("BTCUSDT", "1m", start=start, fetch_missing=False, live=True)
        assert list(df.columns)[-1] == "closed"
        closed, forming = df[df["closed"]], df[~df["closed"]]
        assert len(forming) == 1 and forming.index[0] == len(df) - 1  # the last row
        assert forming["timestamp"].iloc[0] > closed["timestamp"].iloc[-1]
        want = market.frame(
            "BTCUSDT", "1m", start, closed["timestamp"].iloc[-1] + pd.Timedelta("1min")
        )
        pd.testing.assert_frame_equal(closed[list(want.columns)].reset_index(drop=True), want,
                                      check_dtype=False)  # fmt: skip
        assert len(closed) >= 20
        time.sleep(1.5)  # three market minutes: bars close, the same follower goes on
        again = dm.get_ohlcv("BTCUSDT", "1m", start=start, fetch_missing=False, live=True)
        assert again["timestamp"][again["closed"]].iloc[-1] > closed["timestamp"].iloc[-1]
        assert not dm.cache.get("BTCUSDT", "1m")["timestamp"].isin(
            again["timestamp"][~again["closed"]]).any()  # fmt: skip # never stored
    assert not our_threads()


def test_a_live_feed_calls_back_with_committed_bars_and_stops_promptly(market, tmp_path):
    got: list[LiveBar] = []
    with manager(market, tmp_path) as dm:
        feed = dm.get_live_feed(["BTCUSDT", "ETHUSDT"], "1m", on_bar=got.append)
        deadline = time.monotonic() + 30
        while len({b.symbol for b in got}) < 2 or len(got) < 6:
            assert time.monotonic() < deadline, got
            time.sleep(0.02)
        stopped = time.monotonic()
        feed.stop()
        assert time.monotonic() - stopped < 3
        assert not feed.alive and not our_threads()
        for bar in got:
            assert bar.closed
            stored = dm.cache.get(bar.symbol, "1m", bar.bar["timestamp"],
                                  bar.bar["timestamp"] + pd.Timedelta("1min"))  # fmt: skip
            assert len(stored) == 1 and stored["close"].iloc[0] == bar.bar["close"]  # committed
        per = [b.bar["timestamp"] for b in got if b.symbol == "BTCUSDT"]
        assert per == sorted(set(per))  # each once, in order


def test_stream_is_a_blocking_iterator_and_leaving_it_stops_the_follower(market, tmp_path):
    with manager(market, tmp_path) as dm:
        seen = []
        for bar in dm.stream("BTCUSDT", "1m"):
            seen.append(bar)
            if len(seen) == 3:
                break
        assert [b.closed for b in seen] == [True] * 3
        steps = {b.bar["timestamp"] - a.bar["timestamp"] for a, b in itertools.pairwise(seen)}
        assert steps == {pd.Timedelta("1min")}
        time.sleep(0.2)
        assert not our_threads()


def test_a_follow_process_elsewhere_and_a_feed_here_store_each_bar_once(market, tmp_path):
    cfg = tmp_path / "p.yaml"
    cfg.write_text(market_config(market))
    proc = subprocess.Popen(
        [sys.executable, "-m", "marketcache", "follow", "BTCUSDT", "--config", str(cfg),
         "--cache-dir", str(tmp_path / "cache"), "--flush-every", "0.2s", "--backfill", "30m",
         "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        got: list[LiveBar] = []
        with manager(market, tmp_path) as dm:
            feed = dm.get_live_feed("BTCUSDT", "1m", on_bar=got.append)
            deadline = time.monotonic() + 30
            while len(got) < 5:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            feed.stop()
            df = dm.cache.get("BTCUSDT", "1m")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert (
        df["timestamp"].is_unique and df["timestamp"].diff().dropna().eq(pd.Timedelta("1min")).all()
    )


def test_the_poller_asks_only_for_bars_the_market_printed_after_the_delay():
    tf = Timeframe("5m")
    saturday = pd.Timestamp("2024-03-02 15:00")
    assert due_bars(
        "XNYS", tf, pd.Timestamp("2024-03-01 20:55"), saturday, 20, pd.Timedelta("1D")
    ).empty
    friday = pd.Timestamp("2024-03-01 15:05:10")  # 10:05:10 New York: the 10:00 bar closed 10 s ago
    assert due_bars("XNYS", tf, pd.Timestamp("2024-03-01 14:50"), friday, 20, pd.Timedelta("1D")).tolist() == [
        pd.Timestamp("2024-03-01 14:55")]  # fmt: skip
    later = friday + pd.Timedelta(seconds=15)
    assert due_bars("XNYS", tf, pd.Timestamp("2024-03-01 14:50"), later, 20, pd.Timedelta("1D")).tolist() == [
        pd.Timestamp("2024-03-01 14:55"), pd.Timestamp("2024-03-01 15:00")]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_follow_quotes_the_forming_bar_and_streams_closed_ones(market, tmp_path):
    cfg = tmp_path / "p.yaml"
    cfg.write_text(market_config(market))
    cache = tmp_path / "cache"
    UnifiedCache(cache, settings=parse_settings(market_config(market))).put(
        market.frame("BTCUSDT", "1m", "2024-03-01 11:00", "2024-03-01 11:30"), "BTCUSDT", "1m",
        provider="binance")  # fmt: skip
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARKETCACHE_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "marketcache", "serve", "--port", str(port), "--follow",
         "BTCUSDT", "-t", "1m", "--config", str(cfg), "--cache-dir", str(cache), "-q"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        quote = None
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                answer = httpx.get(f"{url}/api/v1/market-data/quote/BTCUSDT?interval=1m", timeout=5)
                if answer.status_code == 200 and "forming" in answer.json():
                    quote = answer.json()
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        assert quote is not None
        from websockets.sync.client import connect

        with connect(f"ws://127.0.0.1:{port}/api/v1/market-data/stream", open_timeout=10) as ws:
            ws.send(json.dumps({"action": "subscribe", "symbols": ["BTCUSDT"], "interval": "1m"}))
            messages = []
            end = time.monotonic() + 20
            while (
                time.monotonic() < end and len([m for m in messages if m.get("type") == "bar"]) < 2
            ):
                messages.append(json.loads(ws.recv(timeout=10)))
        bars = [m for m in messages if m.get("type") == "bar"]
        assert len(bars) >= 2 and all(m["closed"] for m in bars), messages
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    forming = quote["forming"]
    assert forming["closed"] is False and quote["closed"] is True
    assert forming["timestamp"] > quote["timestamp"]  # the stored last bar, then the forming


@pytest.mark.parametrize("kind", ["csv.gz", "s3", "postgresql"])
def test_heartbeats_on_every_backend_fresh_listed_stale_ignored_removed(kind, tmp_path, request):
    from marketcache.live.heartbeat import Heartbeat, followers
    from serving import cache_on

    cache = cache_on(kind, tmp_path, request)
    now = pd.Timestamp.now("UTC").tz_localize(None)
    fresh, old = Heartbeat(cache.backend, "host-1-a"), Heartbeat(cache.backend, "host-2-b")
    series = [{"symbol": "BTCUSDT", "timeframe": "1m", "last_bar": "2024-03-01T12:00:00"}]
    fresh.write({"id": "host-1-a", "updated_at": now.isoformat(), "every": 5, "series": series})
    old.write({"id": "host-2-b", "updated_at": (now - pd.Timedelta("2h")).isoformat(),
               "every": 5, "series": series})  # fmt: skip
    found = followers(cache.backend)
    assert [f["id"] for f in found] == ["host-1-a"] and found[0]["series"] == series
    assert [f["id"] for f in followers(cache.backend)] == ["host-1-a"]  # the dead one forgotten
    fresh.remove()
    assert followers(cache.backend) == []
    assert cache.list_symbols() == []  # heartbeats are no symbol


def test_stocks_are_polled_after_each_close_only_while_the_market_is_open(fake_yahoo, tmp_path):
    import exchange_calendars as xcals

    from conftest import make_bars
    from fakes import config_for
    from marketcache.live.follower import Follower

    # a recent session before today (Yahoo keeps 60 days of 5m bars)
    day = pd.Timestamp.now("UTC").tz_localize(None).normalize() - pd.Timedelta("1D")
    session = xcals.get_calendar("XNYS").date_to_session(day, direction="previous")
    opens = xcals.get_calendar("XNYS").session_open(session).tz_localize(None)
    bars = make_bars("", 0, index=pd.date_range(opens, periods=78, freq="5min"))
    fake_yahoo.add("AAPL", "5m", bars)
    settings = parse_settings(config_for(yahoo=fake_yahoo) + "settings: {poll_delay: 20}\n")
    cache = UnifiedCache(tmp_path / "cache", settings=settings, lock_wait=30)
    now = [opens + pd.Timedelta(minutes=35, seconds=10)]  # the 6th bar closed 5:10 ago
    follower = Follower(cache, settings, [("AAPL", "5m")], flush_every=0.1,
                        backfill_lookback="1h", clock=lambda: now[0])  # fmt: skip
    with follower:
        deadline = time.monotonic() + 30
        while len(cache.get("AAPL", "5m")) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        got = cache.get("AAPL", "5m")
        assert got["timestamp"].tolist() == bars["timestamp"].iloc[:6].tolist()
        asked = len(fake_yahoo.data_requests())
        time.sleep(1.5)  # nothing new has closed: no request
        assert len(fake_yahoo.data_requests()) == asked
        now[0] = opens + pd.Timedelta(minutes=35, seconds=21)  # the 7th, 21 s after its close
        while len(cache.get("AAPL", "5m")) < 7 and time.monotonic() < deadline + 10:
            time.sleep(0.05)
        assert len(cache.get("AAPL", "5m")) == 7
        now[0] = bars["timestamp"].iloc[-1] + pd.Timedelta(hours=1)  # after the close
        while len(cache.get("AAPL", "5m")) < 78 and time.monotonic() < deadline + 20:
            time.sleep(0.05)
        assert len(cache.get("AAPL", "5m")) == 78  # the rest of the session, polled
        asked = len(fake_yahoo.data_requests())
        now[0] += pd.Timedelta(hours=5)  # night: nothing due
        time.sleep(1.5)
        assert len(fake_yahoo.data_requests()) == asked  # a closed market costs no request
