"""Live benchmark: `marketcache follow` (a real process) against the fake Binance market.

    python benchmarks/bench_live.py                    # 1, 50, 200 streams; memory over 50
    python benchmarks/bench_live.py --streams 200 --memory-streams 200 --format parquet

For each stream count, the fake market runs at Binance's cadence (a forming-bar update every
2 market seconds, one close a minute) on a clock sped up as far as the fake can send
(≈1,000 messages/s), and the follower commits with `--flush-every 2s`. Printed:

- commit lag, p50/p99: from the close message leaving the server to the follower's `bar`
  event, which it emits once `_store` returned, i.e. once `UnifiedCache.get` reads the bar
  (checked on a sample); bars that closed during the start-up backfill are left out.
  Target: p99 <= flush interval + 0.5 s.
- CPU seconds of the follower process per stream-hour of market time, at that cadence.
  Target (200 streams): under 5 % of one core, i.e. 36 CPU s per hour for all 200.
- memory (RSS) of the follower once caught up vs after an hour's worth of messages
  (`--memory-streams` streams × 1,860 messages). Target: under 10 MB growth.

It reports, it does not fail. Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the fake market lives with the tests

from fake_market import FakeMarket, market_config  # noqa: E402
from marketcache import UnifiedCache  # noqa: E402
from marketcache.config.parser import parse_settings  # noqa: E402

START = "2024-03-01 12:00:00"
UPDATE_EVERY = 2.0  # Binance's kline cadence (market seconds)
MESSAGES_PER_HOUR = 3600 / UPDATE_EVERY + 60  # per stream
SEND_RATE = 1000.0  # messages/s the fake market keeps up with on a busy 2-core machine
TICK = os.sysconf("SC_CLK_TCK")


def symbols(n: int) -> list[str]:
    return [f"S{i:03d}USDT" for i in range(n)]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Run:
    """One follower process over `n` streams of one fake market."""

    def __init__(self, n: int, speed: float, tmp: Path, fmt: str, flush: float) -> None:
        self.n, self.flush = n, flush
        self.market = FakeMarket(symbols(n), start=START, speed=speed, update_every=UPDATE_EVERY,
                                 ping_interval=20, pong_timeout=60)  # fmt: skip
        self.offset = time.time() - time.monotonic()
        cfg = tmp / "providers.yaml"
        cfg.write_text(market_config(self.market) + f"settings: {{format: {fmt}}}\n")
        self.cache_dir = tmp / "cache"
        self.settings = parse_settings(cfg.read_text())
        env = {k: v for k, v in os.environ.items() if not k.startswith("MARKETCACHE_")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "marketcache", "follow", *symbols(n), "-t", "1m", "--json",
             "--config", str(cfg), "--cache-dir", str(self.cache_dir), "--flush-every",
             f"{flush}s", "--backfill", "2m", "--stale-after", "60s"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        self.events: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            event = json.loads(line)
            event["_seen"] = time.time()
            with self.lock:
                self.events.append(event)

    def of(self, kind: str) -> list[dict[str, Any]]:
        with self.lock:
            return [e for e in self.events if e["event"] == kind]

    def caught_up(self, timeout: float = 300) -> float:
        """Wall time (epoch) once every series backfilled and committed a stream bar."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"follow exited {self.proc.returncode}: {self.stop()}")
            done = {e["symbol"] for e in self.of("backfill")}
            bars = {e["symbol"] for e in self.of("bar")}
            if len(done) == self.n and len(bars) == self.n:
                return time.time()
            time.sleep(0.1)
        raise TimeoutError("the follower did not catch up")

    def lags(self, since: float) -> list[float]:
        """Close message sent → bar committed, for closes sent after `since` (epoch)."""
        sent = {}
        for s in self.market.messages("close"):
            wall = s.wall + self.offset
            if wall >= since and s.stream and s.open_ms is not None:
                sent.setdefault((s.stream.split("@")[0].upper(), s.open_ms), wall)
        out = []
        for e in self.of("bar"):
            ms = int(pd.Timestamp(e["timestamp"]).value // 1_000_000)
            key = (e["symbol"], ms)
            if key in sent:
                committed = pd.Timestamp(e["at"]).value / 1e9
                out.append(committed - sent[key])
        return out

    def check_readable(self) -> None:
        """A sample of committed bars, read back by UnifiedCache.get."""
        cache = UnifiedCache(self.cache_dir, settings=self.settings)
        for e in self.of("bar")[-5:]:
            ts = pd.Timestamp(e["timestamp"])
            got = cache.get(e["symbol"], "1m", ts, ts + pd.Timedelta("1min"))
            assert len(got) == 1 and got["close"].iloc[0] == e["close"], e

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.market.close()
        assert self.proc.stderr is not None
        return self.proc.stderr.read()


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def lag_and_cpu(n: int, minutes: float, fmt: str, flush: float) -> dict[str, Any]:
    speed = min(120.0, SEND_RATE * UPDATE_EVERY / n)
    with tempfile.TemporaryDirectory() as tmp:
        run = Run(n, speed, Path(tmp), fmt, flush)
        try:
            since = run.caught_up()
            cpu0, clock0 = cpu_seconds(run.proc.pid), run.market.clock.now()
            run.market.wait_until(clock0 + pd.Timedelta(minutes=minutes), timeout=3600)
            time.sleep(flush + 1)
            cpu1, clock1 = cpu_seconds(run.proc.pid), run.market.clock.now()
            run.check_readable()
            lags = run.lags(since)
        finally:
            err = run.stop()
        assert run.proc.returncode == 0, err
    hours = (clock1 - clock0).total_seconds() / 3600
    per_stream_hour = (cpu1 - cpu0) / (n * hours)
    return {"streams": n, "speed": speed, "bars": len(lags), "p50": pct(lags, 0.5),
            "p99": pct(lags, 0.99), "cpu_per_stream_hour": per_stream_hour,
            "core_share": per_stream_hour * n / 3600}  # fmt: skip


def memory(n: int, fmt: str, flush: float) -> dict[str, Any]:
    speed = min(120.0, SEND_RATE * UPDATE_EVERY / n)
    with tempfile.TemporaryDirectory() as tmp:
        run = Run(n, speed, Path(tmp), fmt, flush)
        try:
            run.caught_up()
            sent0 = len(run.market.sent)
            start_mb = rss_mb(run.proc.pid)
            target = sent0 + n * MESSAGES_PER_HOUR
            deadline = time.monotonic() + 3 * 3600
            while len(run.market.sent) < target and time.monotonic() < deadline:
                time.sleep(1)
                if run.proc.poll() is not None:
                    break
            end_mb = rss_mb(run.proc.pid)
            messages = len(run.market.sent) - sent0
        finally:
            err = run.stop()
        assert run.proc.returncode == 0, err
    return {"streams": n, "messages": messages, "start_mb": start_mb, "end_mb": end_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", default="1,50,200", help="stream counts (comma list)")
    parser.add_argument("--minutes", type=float, default=3, help="market minutes per count")
    parser.add_argument("--memory-streams", type=int, default=50)
    parser.add_argument("--format", default="csv.gz", choices=["csv.gz", "parquet"])
    parser.add_argument("--flush-every", type=float, default=2.0)
    args = parser.parse_args()
    flush = args.flush_every
    print(f"follow: commit lag, CPU and memory ({args.format}, --flush-every {flush:g}s, "
          f"an update every {UPDATE_EVERY:g} market s)")  # fmt: skip
    print(f"{'streams':>8} {'speed':>6} {'bars':>6} {'p50 s':>7} {'p99 s':>7} "
          f"{'CPU s/stream-h':>15} {'core %':>7}")  # fmt: skip
    rows = []
    for n in (int(x) for x in args.streams.split(",")):
        r = lag_and_cpu(n, args.minutes, args.format, flush)
        rows.append(r)
        print(f"{r['streams']:>8} {r['speed']:>5.0f}x {r['bars']:>6} {r['p50']:>7.3f} "
              f"{r['p99']:>7.3f} {r['cpu_per_stream_hour']:>15.3f} "
              f"{100 * r['core_share']:>6.2f}%", flush=True)  # fmt: skip
    target = flush + 0.5
    worst = max(r["p99"] for r in rows)
    print(f"p99 lag target <= {target:g}s: worst {worst:.3f}s "
          f"({'met' if worst <= target else 'MISSED'})")  # fmt: skip
    if args.memory_streams:
        m = memory(args.memory_streams, args.format, flush)
        growth = m["end_mb"] - m["start_mb"]
        print(f"memory over an hour's worth of messages ({m['streams']} streams, "
              f"{m['messages']:,} messages): {m['start_mb']:.1f} MB → {m['end_mb']:.1f} MB "
              f"({growth:+.1f} MB; target < 10 MB: {'met' if growth < 10 else 'MISSED'})")  # fmt: skip


if __name__ == "__main__":
    main()
