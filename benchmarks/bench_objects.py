"""A cache on object storage (S3 API: moto's server on 127.0.0.1) — what a year costs to write and
read, and what a nightly extension costs there, by the size of the history.

    python benchmarks/bench_objects.py

Objects cannot be appended to, so extending a series rewrites its last year object: the cost
must follow the size of one year, never the size of the history. This prints, for a history of
1 and of 4 years of 1m bars, the time, requests and bytes of adding one day, beside the local
csv.gz append and a year written whole.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_io import best, year_of_minutes  # noqa: E402

from marketcache import UnifiedCache  # noqa: E402
from marketcache.config.parser import parse_settings  # noqa: E402

DAY = 1440


def start() -> tuple[object, str]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://{host}:{port}",
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench-secret",
        AWS_DEFAULT_REGION="us-east-1",
    )
    return server, f"http://{host}:{port}"


def bucket(name: str) -> str:
    import boto3

    boto3.client("s3").create_bucket(Bucket=name)
    return f"s3://{name}/cache"


def history(url: str, fmt: str, years: int) -> UnifiedCache:
    """`years` years of 1m bars, the last one missing its final day."""
    settings = parse_settings(f"settings: {{format: {fmt}}}")
    cache = UnifiedCache(url, settings=settings)
    for i, year in enumerate(range(2025 - years + 1, 2026)):
        df = year_of_minutes(year, seed=i)
        cache.put(df.iloc[:-DAY] if year == 2025 else df, "BTCUSDT", "1m", "binance")
    return cache


def extend(cache: UnifiedCache) -> dict[str, float]:
    """Add the last day, as a nightly run does; what it cost on the wire."""
    store = getattr(cache.backend, "store", None)
    before = (store.requests, store.sent_bytes, store.received_bytes) if store else (0, 0, 0)
    day = year_of_minutes(2025, seed=99).iloc[-DAY:]
    t0 = time.perf_counter()
    cache.put(day, "BTCUSDT", "1m", "binance")
    took = time.perf_counter() - t0
    after = (store.requests, store.sent_bytes, store.received_bytes) if store else (0, 0, 0)
    return {
        "ms": took * 1000,
        "requests": after[0] - before[0],
        "up": (after[1] - before[1]) / 1e6,
        "down": (after[2] - before[2]) / 1e6,
        "year": cache.metadata("BTCUSDT", "1m", 2025)["file_info"]["size_bytes"] / 1e6,
    }


def measure(fmt: str) -> list[tuple[str, str, str]]:
    tag = fmt.replace(".", "")
    df = year_of_minutes(2025)
    settings = parse_settings(f"settings: {{format: {fmt}}}")
    counter = iter(range(100))

    def put_year() -> None:
        url = bucket(f"bench-year-{tag}-{next(counter)}")
        UnifiedCache(url, settings=settings).put(df, "BTCUSDT", "1m", "binance")

    t_write = best(put_year, 3) * 1000
    url = bucket(f"bench-read-{tag}")
    UnifiedCache(url, settings=settings).put(df, "BTCUSDT", "1m", "binance")
    reader = UnifiedCache(url, settings=settings)
    t_read = best(lambda: reader.get("BTCUSDT", "1m"), 3) * 1000
    rows = [
        (fmt, "write a year (put, to the bucket)", f"{t_write:,.0f} ms"),
        (fmt, "read a year (get, sha256 checked)", f"{t_read:,.0f} ms"),
    ]
    for years in (1, 4):
        cost = extend(history(bucket(f"bench-hist-{tag}-{years}"), fmt, years))
        rows.append((
            fmt,
            f"add one day, {years}-year history",
            f"{cost['ms']:,.0f} ms, {cost['requests']:.0f} requests, "
            f"{cost['up']:.1f} MB up / {cost['down']:.1f} MB down "
            f"(the year object: {cost['year']:.1f} MB)",
        ))  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        local = extend(history(tmp, fmt, 1))
    rows.append((fmt, "add one day, local folder (for comparison)", f"{local['ms']:,.0f} ms"))
    return rows


def main() -> int:
    server, _ = start()
    try:
        rows = measure("csv.gz") + measure("parquet")
    finally:
        server.stop()  # type: ignore[attr-defined]
    width = max(len(r[1]) for r in rows)
    for fmt, what, figure in rows:
        print(f"{fmt:8} {what:<{width}}  {figure}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
