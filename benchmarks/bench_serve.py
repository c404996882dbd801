"""Serving benchmark: `marketcache serve` on 127.0.0.1, driven by 1 and 16 concurrent clients.

    python benchmarks/bench_serve.py            # or: make bench
    python benchmarks/bench_serve.py --format parquet

The clients are plain `http.client` connections (keep-alive), the Arrow answers read by
pyarrow straight from the response stream, as a service would: httpx's per-chunk overhead
would be measured instead of the server's. Prints requests/s and p50/p99 latency of `historical` (one year of 1d as JSON; one year of 1m
as an Arrow stream) and of `quote`, then the ratio of a first (cold) Arrow request for a year
of 1m to a direct `UnifiedCache.get` of the same range (target <= 1.5x) and how much faster a
repeated request is, served from the result cache (target >= 10x). Every answer is checked
(status, row count). Traffic stays on this machine; request counts are bounded. It reports
speed, it does not fail on it.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the synthetic bars live with the tests

from conftest import make_bars  # noqa: E402
from marketcache import UnifiedCache  # noqa: E402
from marketcache.config.parser import parse_settings  # noqa: E402
from marketcache.serve.app import create_app  # noqa: E402
from marketcache.serve.server import ServerThread  # noqa: E402

API = "/api/v1/market-data"
MINUTE = {"interval": "1m", "from": "2023-01-01", "to": "2024-01-01", "format": "arrow"}
DAILY = {"interval": "1d", "from": "2023-01-01", "to": "2024-01-01", "format": "json"}


def fill(root: Path, fmt: str) -> UnifiedCache:
    cache = UnifiedCache(root, settings=parse_settings(f"settings: {{format: {fmt}}}"))
    cache.put(make_bars("2023-01-01", 525_600, "1min"), "BTCUSDT", "1m", provider="binance")
    cache.put(make_bars("2023-01-01", 365, "1D", seed=1), "BTCUSDT", "1d", provider="binance")
    return cache


def get(conn: http.client.HTTPConnection, path: str, params: dict[str, str]) -> Any:
    conn.request("GET", path + "?" + urlencode(params))
    return conn.getresponse()


def load(url: str, path: str, params: dict[str, str], clients: int, per_client: int,
         check: Any) -> dict[str, float]:  # fmt: skip
    latencies: list[float] = []
    lock = threading.Lock()
    errors: list[str] = []
    host, port = urlsplit(url).hostname, urlsplit(url).port

    def client() -> None:
        conn = http.client.HTTPConnection(host, port, timeout=300)
        for _ in range(per_client):
            t0 = time.perf_counter()
            try:
                check(get(conn, path, params))
            except AssertionError as exc:
                errors.append(str(exc))
            with lock:
                latencies.append(time.perf_counter() - t0)
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if errors:
        raise SystemExit(f"bad answer: {errors[0]}")
    latencies.sort()
    return {
        "rps": len(latencies) / wall,
        "p50": statistics.median(latencies) * 1000,
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
    }


def rows_of_arrow(n: int) -> Any:
    def check(r: Any) -> None:
        assert r.status == 200, r.read()[:200]
        assert pa.ipc.open_stream(r).read_all().num_rows == n
        r.read()  # the end of the chunked body, so the connection can be reused

    return check


def rows_of_json(n: int) -> Any:
    def check(r: Any) -> None:
        body = r.read()
        assert r.status == 200, body[:200]
        assert len(json.loads(body)["bars"]) == n

    return check


def quote_ok(r: Any) -> None:
    body = r.read()
    assert r.status == 200 and "close" in json.loads(body), body[:200]


def best(fn: Any, times: int = 3) -> float:
    out = []
    for _ in range(times):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return min(out)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--format", default="csv.gz", choices=["csv.gz", "parquet"])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        cache = fill(Path(tmp) / "cache", args.format)
        direct = best(lambda: cache.get("BTCUSDT", "1m", "2023-01-01", "2024-01-01"))
        # cold: a fresh server (an empty result cache), warmed up on another series so that
        # the first-request costs of any server (imports, threads) are not counted; the best
        # of 3, like the direct get
        colds = []
        for _ in range(3):
            with ServerThread(create_app(cache), access_log=False) as url:
                parts = urlsplit(url)
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=300)
                rows_of_arrow(365)(
                    get(conn, f"{API}/historical/BTCUSDT", {**DAILY, "format": "arrow"})
                )
                t0 = time.perf_counter()
                rows_of_arrow(525_600)(get(conn, f"{API}/historical/BTCUSDT", MINUTE))
                colds.append(time.perf_counter() - t0)
                conn.close()
        cold = min(colds)
        with ServerThread(create_app(cache), access_log=False) as url:
            parts = urlsplit(url)
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=300)
            check = rows_of_arrow(525_600)
            check(get(conn, f"{API}/historical/BTCUSDT", MINUTE))
            repeat = best(lambda: check(get(conn, f"{API}/historical/BTCUSDT", MINUTE)))
            conn.close()
            print(f"machine: {sys.platform}, cache format {args.format}")
            print(f"{'request':44} {'clients':>7} {'req/s':>9} {'p50 ms':>9} {'p99 ms':>9}")
            cases = [
                ("historical 1y of 1d as JSON", f"{API}/historical/BTCUSDT", DAILY,
                 rows_of_json(365), 200),
                ("historical 1y of 1m as Arrow", f"{API}/historical/BTCUSDT", MINUTE, check, 4),
                ("quote 1m", f"{API}/quote/BTCUSDT", {"interval": "1m"}, quote_ok, 200),
            ]  # fmt: skip
            for name, path, params, ok, per in cases:
                for clients in (1, 16):
                    n = per if clients == 1 else max(2, per // 4)
                    r = load(url, path, params, clients, n, ok)
                    print(
                        f"{name:44} {clients:>7} {r['rps']:>9.1f} {r['p50']:>9.1f} {r['p99']:>9.1f}"
                    )
        ratio = cold / direct
        speedup = cold / repeat
        print(f"direct UnifiedCache.get of 1y of 1m: {direct * 1000:.0f} ms")
        print(f"first Arrow request / direct get: {ratio:.2f}x (target <= 1.5x) "
              f"[{'ok' if ratio <= 1.5 else 'MISSED'}]")  # fmt: skip
        print(f"first request / repeated request (result cache): {speedup:.1f}x (target >= 10x) "
              f"[{'ok' if speedup >= 10 else 'MISSED'}]")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
