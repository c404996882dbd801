"""`marketcache follow` as a real process against the fake Binance market (REST + streams on
127.0.0.1, one tape, a clock sped up 120×: a market minute in 0.5 s).

What must hold whatever the network does: every closed bar stored once, whole and equal to
the REST kline; nothing forming stored; SIGTERM flushes and exits 0; SIGKILL leaves every
committed year readable and a restart backfills the gap.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from fake_market import FakeMarket, market_config
from marketcache import UnifiedCache
from marketcache.config.parser import parse_settings

START = "2024-03-01 12:00:30"
SPEED = 120.0


class Follow:
    """One `marketcache follow --json` process and the events it printed."""

    def __init__(self, market: FakeMarket, tmp: Path, *symbols: str, extra: tuple[str, ...] = ()):
        self.market, self.tmp = market, tmp
        cfg = tmp / "providers.yaml"
        cfg.write_text(market_config(market))
        args = [sys.executable, "-m", "marketcache", "follow", *(symbols or ("BTCUSDT",)),
                "-t", "1m", "--config", str(cfg), "--cache-dir", str(tmp / "cache"), "--json",
                "--flush-every", "0.25s", "--stale-after", "1s", "--heartbeat-every", "0.2s",
                "--backfill", "30m", *extra]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("MARKETCACHE_")}
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env)  # fmt: skip
        self.events: list[dict[str, Any]] = []
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.err = ""

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self.lines.append(line)
                self.events.append(json.loads(line))  # every line is one JSON object

    def of(self, kind: str) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.events if e["event"] == kind]

    def wait_for(self, predicate: Any, timeout: float = 30.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.proc.poll() is not None:
                raise AssertionError(f"follow exited {self.proc.returncode}: {self.stop()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not seen within {timeout}s; events {self.events}")
            time.sleep(0.02)

    def bars(self) -> int:
        return len(self.of("bar"))

    def stop(self, sig: int = signal.SIGTERM) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        assert self.proc.stderr is not None
        self.err = self.proc.stderr.read()
        return self.err


@pytest.fixture
def market() -> Iterator[FakeMarket]:
    m = FakeMarket(("BTCUSDT", "ETHUSDT"), start=START, speed=SPEED, update_every=10,
                   ping_interval=0.5, pong_timeout=2)  # fmt: skip
    yield m
    m.close()


def open_cache(market: FakeMarket, tmp: Path) -> UnifiedCache:
    return UnifiedCache(tmp / "cache", settings=parse_settings(market_config(market)), lock_wait=30)


def market_minutes(market: FakeMarket, n: float) -> None:
    market.wait_until(market.clock.now() + pd.Timedelta(minutes=n), timeout=60)


def assert_whole(market: FakeMarket, cache: UnifiedCache, symbol: str = "BTCUSDT") -> pd.DataFrame:
    """The stored series is contiguous, once per bar, and equal to the market's closed bars."""
    got = cache.get(symbol, "1m")
    assert len(got), "nothing stored"
    assert got["timestamp"].is_unique and got["timestamp"].is_monotonic_increasing
    first, last = got["timestamp"].iloc[0], got["timestamp"].iloc[-1]
    expected = market.frame(symbol, "1m", first, last + pd.Timedelta(minutes=1))
    assert len(got) == len(expected), "a bar is missing (a hole) or one too many"
    pd.testing.assert_frame_equal(
        got[list(expected.columns)].reset_index(drop=True), expected, check_dtype=False
    )
    assert last + pd.Timedelta(minutes=1) <= market.clock.now(), "the forming bar was stored"
    return got


def test_no_bar_lost_doubled_or_partial_through_drops_refusals_duplicates_shutdown(
    market, tmp_path
):
    run = Follow(market, tmp_path)
    try:
        run.wait_for(lambda: run.of("backfill") and run.bars() >= 2, what="first bars")
        market.duplicate_close(count=2)
        market_minutes(market, 2)
        market.wait_until(market.clock.now().floor("1min") + pd.Timedelta(seconds=30))
        market.drop(1001)  # mid-minute
        run.wait_for(lambda: len(market.open_connections()) == 1 and len(run.of("backfill")) >= 2,
                     what="reconnect after the drop")  # fmt: skip
        market.refuse_connections(market_seconds=150)  # bars close that only REST has
        market.drop(1001)
        run.wait_for(lambda: len(market.logged("refused")) >= 1, what="a refusal")
        run.wait_for(lambda: len(market.open_connections()) == 1 and len(run.of("backfill")) >= 3,
                     what="reconnect after the refusals")  # fmt: skip
        refused_backfill = run.of("backfill")[-1]
        assert refused_backfill["rows"] >= 2, refused_backfill  # closed while refused: REST
        market.server_shutdown(close_after=0.1)
        run.wait_for(lambda: len(run.of("backfill")) >= 4, what="renewed after serverShutdown")
        market_minutes(market, 2)
        run.wait_for(lambda: run.of("bar") and run.of("bar")[-1]["timestamp"]
                     >= (market.clock.now() - pd.Timedelta(minutes=2)).floor("1min").isoformat(),
                     what="caught up")  # fmt: skip
    finally:
        err = run.stop()
    assert run.proc.returncode == 0, err
    assert market.logged("duplicate_close") and market.logged("server_shutdown")
    reasons = [e["reason"] for e in run.of("reconnect")]
    assert "server shutdown" in reasons and any("refused" in r for r in reasons), reasons
    cache = open_cache(market, tmp_path)
    got = assert_whole(market, cache)
    stream_bars = [e["timestamp"] for e in run.of("bar")]
    assert len(stream_bars) == len(set(stream_bars)), "a close delivered twice was emitted twice"
    assert set(stream_bars) <= set(got["timestamp"].map(pd.Timestamp.isoformat))  # all flushed
    assert not market.logged("rate_limit") and not market.logged("pong_timeout")


def test_a_silent_stream_is_found_stale_and_reconnected(market, tmp_path):
    run = Follow(market, tmp_path)
    try:
        run.wait_for(lambda: run.bars() >= 1, what="first bars")
        market.go_silent()
        run.wait_for(lambda: run.of("stale") and len(run.of("backfill")) >= 2, what="stale")
        market_minutes(market, 2)
        run.wait_for(lambda: run.bars() >= 4, what="bars after the renewal")
    finally:
        err = run.stop()
    assert run.proc.returncode == 0, err
    assert len(market.connections) >= 2
    assert_whole(market, open_cache(market, tmp_path))


def test_pings_answered_and_the_message_rate_kept(market, tmp_path):
    run = Follow(market, tmp_path, "BTCUSDT", "ETHUSDT")
    try:
        run.wait_for(lambda: run.bars() >= 8, what="bars of both")
        time.sleep(2.5)  # > pong_timeout: an unanswered ping would have cut the connection
    finally:
        err = run.stop()
    assert run.proc.returncode == 0, err
    assert len(market.connections) == 1, [e for e in market.log]
    record = market.connections[0]
    assert record.pings_sent >= 4 and sorted(record.streams) == [
        "btcusdt@kline_1m", "ethusdt@kline_1m"]  # fmt: skip
    assert not market.logged("pong_timeout") and not market.logged("rate_limit")
    cache = open_cache(market, tmp_path)
    assert_whole(market, cache, "BTCUSDT")
    assert_whole(market, cache, "ETHUSDT")


def test_sigterm_flushes_and_removes_the_heartbeat_info_lists_it_while_live(market, tmp_path):
    run = Follow(market, tmp_path)
    heartbeat = tmp_path / "cache" / "_metadata" / "follow"
    try:
        run.wait_for(lambda: run.bars() >= 2, what="bars")
        run.wait_for(lambda: heartbeat.is_dir() and any(heartbeat.iterdir()), what="heartbeat")
        info = subprocess.run(
            [sys.executable, "-m", "marketcache", "info", "--json", "--cache-dir",
             str(tmp_path / "cache"), "--config", str(tmp_path / "providers.yaml")],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert info.returncode == 0, info.stderr
        followers = json.loads(info.stdout)["followers"]
        assert len(followers) == 1 and followers[0]["pid"] == run.proc.pid
        (series,) = followers[0]["series"]
        assert series["symbol"] == "BTCUSDT" and series["timeframe"] == "1m"
        assert series["last_bar"].startswith("2024-03-01T12:") and "lag" in series
        table = subprocess.run(
            [sys.executable, "-m", "marketcache", "info", "--cache-dir",
             str(tmp_path / "cache"), "--config", str(tmp_path / "providers.yaml")],
            capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"},
        )  # fmt: skip
        assert "follower" in table.stdout and "BTCUSDT 1m last bar 2024-03-01" in table.stdout
    finally:
        err = run.stop(signal.SIGTERM)
    assert run.proc.returncode == 0, err
    assert not any(heartbeat.iterdir()), "a clean stop removes its heartbeat"
    got = assert_whole(market, open_cache(market, tmp_path))
    last_event = run.of("bar")[-1]["timestamp"]
    assert got["timestamp"].iloc[-1].isoformat() >= last_event  # everything flushed


def test_sigkill_mid_run_leaves_whole_years_and_a_restart_backfills(market, tmp_path):
    run = Follow(market, tmp_path)
    try:
        run.wait_for(lambda: run.bars() >= 3, what="bars")
    finally:
        run.stop(signal.SIGKILL)
    assert run.proc.returncode == -signal.SIGKILL
    cache = open_cache(market, tmp_path)
    for year in cache.list_years("BTCUSDT", "1m"):
        cache.verify_year("BTCUSDT", "1m", year)  # whole: matches its record
        assert len(cache.read_year("BTCUSDT", "1m", year))
    before = assert_whole(market, cache)["timestamp"].iloc[-1]
    market_minutes(market, 3)  # bars close while no follower runs
    again = Follow(market, tmp_path)
    try:
        again.wait_for(lambda: again.of("backfill"), what="the restart's backfill")
        backfill = again.of("backfill")[0]
        assert pd.Timestamp(backfill["start"]) == before + pd.Timedelta(minutes=1)
        assert backfill["rows"] >= 3
        again.wait_for(lambda: again.bars() >= 1, what="stream bars after the backfill")
    finally:
        err = again.stop()
    assert again.proc.returncode == 0, err
    assert_whole(market, open_cache(market, tmp_path))


def test_a_populate_of_the_followed_series_interleaves_and_exits_0(market, tmp_path):
    run = Follow(market, tmp_path)
    try:
        run.wait_for(lambda: run.bars() >= 2, what="bars")
        now = market.clock.now().floor("1min")
        for _ in range(2):
            done = subprocess.run(
                [sys.executable, "-m", "marketcache", "populate", "BTCUSDT", "-t", "1m",
                 "--start", str(now - pd.Timedelta(hours=2)), "--end", str(now),
                 "--cache-dir", str(tmp_path / "cache"), "--config",
                 str(tmp_path / "providers.yaml")],
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr  # never 4 because a follower runs
        count = run.bars()
        run.wait_for(lambda: run.bars() >= count + 2, what="following goes on")
    finally:
        err = run.stop()
    assert run.proc.returncode == 0, err
    assert_whole(market, open_cache(market, tmp_path))


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["NOSUCHUSDT"], "NOSUCHUSDT: Binance does not list this symbol"),
        (["BTCUSDT", "-t", "7m"], "7m"),
        (["BTCUSDT", "AAPL"], "cannot follow crypto and stock/FX series in one run"),
        (["BTCUSDT", "--flush-every", "soon"], "--flush-every 'soon'"),
        (["AAPL", "-t", "1d"], "follow polls intraday bars only"),
        ([], "at least one SYMBOL"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(market, tmp_path, args, words):
    cfg = tmp_path / "providers.yaml"
    cfg.write_text(market_config(market))
    done = subprocess.run(
        [sys.executable, "-m", "marketcache", "follow", *args, "--config", str(cfg),
         "--cache-dir", str(tmp_path / "cache")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], lines
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "cache").exists()


def test_at_a_terminal_one_live_line_per_series(market, tmp_path):
    cfg = tmp_path / "providers.yaml"
    cfg.write_text(market_config(market))
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MARKETCACHE_", "COLUMNS"))}
    env["TERM"] = "xterm-256color"
    proc = subprocess.Popen(
        [sys.executable, "-m", "marketcache", "follow", "BTCUSDT", "ETHUSDT", "-t", "1m",
         "--config", str(cfg), "--cache-dir", str(tmp_path / "cache"), "--flush-every",
         "0.25s", "--backfill", "10m"],
        stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True,
        start_new_session=True,
    )  # fmt: skip
    os.close(slave)
    received = bytearray()

    def pump(seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:
                    return
                if not chunk:
                    return
                received.extend(chunk)

    try:
        pump(6)
        proc.send_signal(signal.SIGINT)
        pump(5)
        code = proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    text = received.decode("utf-8", "replace")
    assert code == 0, text
    assert "Traceback" not in text
    for sym in ("BTCUSDT", "ETHUSDT"):
        assert f"{sym} 1m  last bar 2024-03-01T12:" in text, text[-2000:]
    assert "reconnects 0" in text
