"""The live tail on every backend: what an append costs, and what a live-filled year weighs.

    python benchmarks/bench_live_tail.py                  # every backend, a few minutes
    python benchmarks/bench_live_tail.py --backend csv.gz # one of csv.gz parquet s3 postgresql
    python benchmarks/bench_live_tail.py --backend csv.gz --days 365   # a whole year filled live

1. Flushes of 200 series, one bar each, as a follower makes them (16 threads: series are
   independent, each append takes its own series lock): p50/p99 of `append_live`, and of the
   time until a separate reader's `UnifiedCache.get` returns the bar, and the flush's wall time.
2. A span of 1m bars filled live — an hour of bars per append, a fold every hour (the default
   `live_fold_every`) — against the same bars written by one `commit_range`: size on disk (from
   the records) and `get` read time (best of 3), as ratios (targets: <= 1.15x, <= 1.2x). The
   span is a month on the file backends and a week on S3 (moto) and PostgreSQL, where each fold
   commits through the network round trips of the real protocol; say so below each figure.

S3 is moto's server on 127.0.0.1 (a process of its own) and PostgreSQL a server started here on a unix socket: the
figures show the protocol's costs (requests, lease settle, transactions) on this machine, not a
cloud's latency. It reports, it does not fail on a target.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from conftest import make_bars  # noqa: E402
from marketcache import UnifiedCache  # noqa: E402
from marketcache.config.parser import parse_settings  # noqa: E402
from marketcache.storage.tail import open_tail  # noqa: E402

SERIES = 200
FLUSHES = 4
THREADS = 16
BACKENDS = ("csv.gz", "parquet", "s3", "postgresql")
SPAN = {"csv.gz": 30, "parquet": 30, "s3": 7, "postgresql": 7}  # days filled live


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def moto_server() -> subprocess.Popen[bytes]:
    """moto's S3 server in a process of its own (as S3 is a service of its own: in this
    process it would share the interpreter lock with the 16 appending threads)."""
    import os
    import socket
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(endpoint, timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    os.environ.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench-secret",
        AWS_DEFAULT_REGION="us-east-1",
    )
    return server


class Place:
    """Where a fresh cache of one backend lives (servers started once)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp, self.n = tmp, 0
        self.moto: Any = None
        self.pg: tuple[str, Path, list[str], Path] | None = None

    def url(self, kind: str) -> str:
        self.n += 1
        if kind == "s3":
            if self.moto is None:
                self.moto = moto_server()
            from bench_objects import bucket

            return bucket(f"live-bench-{self.n}")
        if kind == "postgresql":
            if self.pg is None:
                from bench_postgres import start as pg_start

                self.pg = pg_start()
            return f"{self.pg[0]}&schema=live_bench_{self.n}"
        return str(self.tmp / f"cache-{self.n}")

    def cache(self, kind: str, extra: str = "") -> UnifiedCache:
        fmt = kind if kind in ("csv.gz", "parquet") else "csv.gz"
        settings = parse_settings(f"settings: {{format: {fmt}{extra}}}")
        return UnifiedCache(self.url(kind), settings=settings, lock_wait=120)

    def close(self) -> None:
        import shutil

        if self.moto is not None:
            self.moto.terminate()
            self.moto.wait()
        if self.pg is not None:
            _, bindir, as_user, home = self.pg
            subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(home / "data"), "-m",
                            "fast", "stop"], capture_output=True)  # fmt: skip
            shutil.rmtree(home, ignore_errors=True)


def flushes(place: Place, kind: str) -> dict[str, float]:
    cache = place.cache(kind)
    reader = UnifiedCache(cache.backend.location if kind in ("s3", "postgresql") else cache.root,
                          settings=cache.settings)  # fmt: skip
    symbols = [f"S{i:03d}USDT" for i in range(SERIES)]
    bars = make_bars("2024-06-01", FLUSHES + 1, "1min")
    for sym in symbols:  # a stored history, as a follower starts from
        cache.commit_range(bars.iloc[:1], sym, "1m", "binance")
    appends: list[float] = []
    readable: list[float] = []
    walls: list[float] = []

    def one(sym: str, i: int) -> None:
        began = time.perf_counter()
        cache.append_live(sym, "1m", bars.iloc[i : i + 1])
        appends.append(time.perf_counter() - began)
        got = reader.get(sym, "1m", start=bars["timestamp"].iloc[i])
        assert len(got) == 1
        readable.append(time.perf_counter() - began)

    with ThreadPoolExecutor(THREADS) as pool:
        for i in range(1, FLUSHES + 1):
            began = time.perf_counter()
            list(pool.map(lambda s: one(s, i), symbols))  # noqa: B023 - consumed at once
            walls.append(time.perf_counter() - began)
    return {
        "append_p50": pct(appends, 0.5),
        "append_p99": pct(appends, 0.99),
        "readable_p50": pct(readable, 0.5),
        "readable_p99": pct(readable, 0.99),
        "flush_wall": statistics.median(walls),
    }


def size_of(cache: UnifiedCache) -> int:
    return sum(cache.record("BTCUSDT", "1m", y).file_info.size_bytes
               for y in cache.list_years("BTCUSDT", "1m"))  # fmt: skip


def read_time(cache: UnifiedCache) -> float:
    times = []
    for _ in range(3):
        began = time.perf_counter()
        cache.get("BTCUSDT", "1m")
        times.append(time.perf_counter() - began)
    return min(times)


def filled(place: Place, kind: str) -> dict[str, float]:
    days = SPAN[kind]
    bars = make_bars("2024-01-01", days * 1440, "1min")
    populated = place.cache(kind)
    populated.commit_range(bars, "BTCUSDT", "1m", "binance")
    live = place.cache(kind)
    began = time.perf_counter()
    folds = 0.0
    for hour in range(0, len(bars), 60):
        live.append_live("BTCUSDT", "1m", bars.iloc[hour : hour + 60])
        t = time.perf_counter()
        live.fold_live("BTCUSDT", "1m")  # due: an hour of bars
        folds += time.perf_counter() - t
    filling = time.perf_counter() - began
    assert open_tail(live.backend, "BTCUSDT", "1m").read().empty
    got, want = live.get("BTCUSDT", "1m"), populated.get("BTCUSDT", "1m")
    assert len(got) == len(want) and (got.to_numpy() == want.to_numpy()).all()
    members = live.record("BTCUSDT", "1m", 2024).file_info.members
    return {
        "days": days,
        "size_live": size_of(live),
        "size_populated": size_of(populated),
        "read_live": read_time(live),
        "read_populated": read_time(populated),
        "fold_mean": folds / (len(bars) / 60),
        "filling": filling,
        "members": members,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=BACKENDS, action="append")
    parser.add_argument("--days", type=int, help="the span filled live (default: see above)")
    args = parser.parse_args()
    if args.days:
        SPAN.update(dict.fromkeys(SPAN, args.days))
    kinds = args.backend or list(BACKENDS)
    with tempfile.TemporaryDirectory(prefix="marketcache-livebench-") as tmp:
        place = Place(Path(tmp))
        try:
            print(f"1. {FLUSHES} flushes of {SERIES} series, one bar each, {THREADS} threads")
            print(f"{'backend':12} {'append p50':>11} {'p99':>8} {'readable p50':>13} {'p99':>8}"
                  f" {'flush wall':>11}")  # fmt: skip
            for kind in kinds:
                f = flushes(place, kind)
                print(f"{kind:12} {f['append_p50'] * 1e3:>8.1f} ms {f['append_p99'] * 1e3:>5.0f} ms"
                      f" {f['readable_p50'] * 1e3:>10.1f} ms {f['readable_p99'] * 1e3:>5.0f} ms"
                      f" {f['flush_wall']:>9.2f} s")  # fmt: skip
            print("\n2. a span of 1m bars filled live (an hour per append, a fold per hour) vs one"
                  " commit_range")  # fmt: skip
            print(f"{'backend':12} {'span':>5} {'size live/pop':>22} {'ratio':>6}"
                  f" {'read live/pop':>20} {'ratio':>6} {'fold mean':>10} {'members':>8}")  # fmt: skip
            for kind in kinds:
                r = filled(place, kind)
                size = r["size_live"] / r["size_populated"]
                read = r["read_live"] / r["read_populated"]
                print(f"{kind:12} {r['days']:>4}d {r['size_live'] / 1e6:>9.2f}/"
                      f"{r['size_populated'] / 1e6:<5.2f} MB {size:>5.2f}x"
                      f" {r['read_live'] * 1e3:>7.1f}/{r['read_populated'] * 1e3:<6.1f} ms"
                      f" {read:>5.2f}x {r['fold_mean'] * 1e3:>7.1f} ms {r['members']:>8}")  # fmt: skip
            print("targets: size <= 1.15x, read time <= 1.2x of a populated span")
        finally:
            place.close()
    return 0


if __name__ == "__main__":
    pd.set_option("display.width", 120)
    raise SystemExit(main())
