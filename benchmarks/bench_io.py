"""Speed benchmark: marketcache vs plain pandas, measured side by side, printed as ratios.

    python benchmarks/bench_io.py            # or: make bench
    python benchmarks/bench_io.py --quick    # smaller populate run

One year of 1-minute bars (525,600 rows, prices on a 0.01 tick). Every target of issue 5 is
checked and printed; the script exits 1 if the files stop being plain csv.gz that zcat,
pandas and pyarrow read back to the same rows. It never fails on a speed target: it reports.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.csv as pacsv

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the fake Binance server lives with the tests

from marketcache import UnifiedCache  # noqa: E402
from marketcache.config.parser import parse_settings  # noqa: E402

ROWS = 525_600


def year_of_minutes(year: int = 2023, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ts = pd.date_range(f"{year}-01-01", periods=ROWS, freq="1min")
    close = np.round(30_000 + np.cumsum(rng.normal(0, 5, ROWS)), 2)
    open_ = np.r_[close[0], close[:-1]]
    high = np.round(np.maximum(open_, close) + rng.uniform(0, 3, ROWS), 2)
    low = np.round(np.minimum(open_, close) - rng.uniform(0, 3, ROWS), 2)
    volume = np.round(rng.uniform(0, 50, ROWS), 5)
    return pd.DataFrame(
        {"timestamp": ts, "open": open_, "high": high, "low": low, "close": close, "volume": volume}
    )


def best(fn: Callable[[], Any], repeat: int = 3) -> float:
    """Best of `repeat` runs, with the garbage collector paused as `timeit` does (both sides)."""
    times = []
    for _ in range(repeat):
        gc.collect()
        gc.disable()
        try:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        finally:
            gc.enable()
    return min(times)


def row(
    name: str,
    ours: float,
    theirs: float,
    target: str,
    ok: bool,
    unit: str = "s",
    ratio: str = "speedup",
) -> dict[str, Any]:
    """`ratio`: 'speedup' prints baseline/ours, 'share' prints ours/baseline as a percent."""
    return {"operation": name, "marketcache": ours, "baseline": theirs, "target": target,
            "met": ok, "unit": unit, "ratio": ratio}  # fmt: skip


def bench_io(work: Path) -> list[dict[str, Any]]:
    df = year_of_minutes()
    settings = parse_settings("")
    results = []

    # write a year
    pandas_path = work / "pandas.csv.gz"
    t_pandas_write = best(lambda: df.to_csv(pandas_path, index=False, compression="gzip"), 1)

    def put_year() -> None:
        shutil.rmtree(work / "cache", ignore_errors=True)
        UnifiedCache(work / "cache", settings=settings).put(df, "BTCUSDT", "1m", "binance")

    t_put = best(put_year)
    ours_path = work / "cache" / "BTCUSDT" / "1m" / "2023.csv.gz"
    size_ratio = ours_path.stat().st_size / pandas_path.stat().st_size
    speedup = t_pandas_write / t_put
    results.append(row("write a year (put vs to_csv gzip)", t_put, t_pandas_write,
                       ">= 10x faster", speedup >= 10))  # fmt: skip
    results.append(row("file size vs pandas gzip", ours_path.stat().st_size,
                       pandas_path.stat().st_size, "<= 1.15x", size_ratio <= 1.15, "bytes"))  # fmt: skip

    # read it
    cache = UnifiedCache(work / "cache", settings=settings)
    t_get = best(lambda: cache.get("BTCUSDT", "1m"), 7)
    t_pandas_read = best(lambda: pd.read_csv(pandas_path, parse_dates=["timestamp"]), 5)
    results.append(row("read a year (get vs read_csv)", t_get, t_pandas_read,
                       ">= 2x faster", t_pandas_read / t_get >= 2))  # fmt: skip

    # append one day to a full year
    head, day = df.iloc[:-1440], df.iloc[-1440:]

    def append_day() -> float:
        shutil.rmtree(work / "cache", ignore_errors=True)
        c = UnifiedCache(work / "cache", settings=settings)
        c.put(head, "BTCUSDT", "1m", "binance")
        t0 = time.perf_counter()
        c.put(day, "BTCUSDT", "1m", "binance")
        return time.perf_counter() - t0

    t_append = min(append_day() for _ in range(3))
    results.append(row("append a day (1,440 bars) vs write the year", t_append, t_put,
                       "<= 5% of writing", t_append <= 0.05 * t_put, ratio="share"))  # fmt: skip

    # validate a year vs read it
    validator = cache.validator("BTCUSDT", "1m")
    frame = cache.get("BTCUSDT", "1m")
    t_validate = best(lambda: validator.validate(frame))
    results.append(row("validate a year vs read it", t_validate, t_get,
                       "<= read time", t_validate <= t_get, ratio="share"))  # fmt: skip

    # the file stays plain csv.gz: zcat, pandas and pyarrow agree with get()
    stored = cache.get("BTCUSDT", "1m")
    zcat = subprocess.run(["zcat", str(ours_path)], capture_output=True, check=True).stdout
    by_pandas = pd.read_csv(ours_path, parse_dates=["timestamp"])
    by_arrow = pacsv.read_csv(str(ours_path)).to_pandas()  # pyarrow decompresses .gz itself
    same = (
        zcat.count(b"\n") == ROWS + 1
        and len(by_pandas) == len(by_arrow) == len(stored) == ROWS
        and all(
            np.array_equal(by_pandas[c].to_numpy(), stored[c].to_numpy()) for c in df.columns[1:]
        )
        and all(
            np.array_equal(by_arrow[c].to_numpy(), stored[c].to_numpy()) for c in df.columns[1:]
        )
        and all(np.array_equal(df[c].to_numpy(), stored[c].to_numpy()) for c in df.columns[1:])
    )
    results.append(row("zcat / pandas / pyarrow read the same rows", float(same), 1.0,
                       "identical", same, "bool"))  # fmt: skip
    return results


def bench_parquet(work: Path) -> list[dict[str, Any]]:
    """The Parquet format beside csv.gz and pandas: write, read, and an append (a rewrite)."""
    df = year_of_minutes()
    settings = parse_settings("settings: {format: parquet}")
    results = []
    pandas_path = work / "pandas.parquet"
    t_pandas_write = best(lambda: df.to_parquet(pandas_path, compression="zstd"), 3)

    def put_year(root: str, conf: Any) -> None:
        shutil.rmtree(work / root, ignore_errors=True)
        UnifiedCache(work / root, settings=conf).put(df, "BTCUSDT", "1m", "binance")

    t_put = best(lambda: put_year("pq", settings))
    t_put_csv = best(lambda: put_year("csv", parse_settings("")))
    path = work / "pq" / "BTCUSDT" / "1m" / "2023.parquet"
    results.append(row("parquet: write a year (put) vs pandas to_parquet zstd", t_put,
                       t_pandas_write, "report", True))  # fmt: skip
    results.append(row("parquet: write a year vs csv.gz put", t_put, t_put_csv, "report", True))  # fmt: skip
    results.append(row("parquet: file size vs csv.gz", path.stat().st_size,
                       (work / "csv" / "BTCUSDT" / "1m" / "2023.csv.gz").stat().st_size,
                       "report", True, "bytes"))  # fmt: skip
    cache = UnifiedCache(work / "pq", settings=settings)
    csv_cache = UnifiedCache(work / "csv", settings=parse_settings(""))
    t_get = best(lambda: cache.get("BTCUSDT", "1m"), 7)
    t_pandas_read = best(lambda: pd.read_parquet(pandas_path), 7)
    t_get_csv = best(lambda: csv_cache.get("BTCUSDT", "1m"), 7)
    results.append(row("parquet: read a year (get, sha256 checked) vs pd.read_parquet",
                       t_get, t_pandas_read, "report", True))  # fmt: skip
    results.append(row("parquet: read a year vs csv.gz get", t_get, t_get_csv, "report", True))  # fmt: skip
    head, day = df.iloc[:-1440], df.iloc[-1440:]

    def append_day() -> float:
        shutil.rmtree(work / "pq", ignore_errors=True)
        c = UnifiedCache(work / "pq", settings=settings)
        c.put(head, "BTCUSDT", "1m", "binance")
        t0 = time.perf_counter()
        c.put(day, "BTCUSDT", "1m", "binance")
        return time.perf_counter() - t0

    t_append = min(append_day() for _ in range(3))
    results.append(row("parquet: append a day (rewrites the year) vs write the year",
                       t_append, t_put, "report (no appends in parquet)", True, ratio="share"))  # fmt: skip
    stored = cache.get("BTCUSDT", "1m")
    by_pandas = pd.read_parquet(path)
    same = len(by_pandas) == ROWS and all(
        np.array_equal(by_pandas[c].to_numpy(), stored[c].to_numpy()) for c in df.columns[1:]
    )
    results.append(row("parquet: pandas reads the same rows", float(same), 1.0, "identical",
                       same, "bool"))  # fmt: skip
    return results


def bench_metadata(work: Path) -> dict[str, Any]:
    """1,000 symbol-timeframe-years: info/list read metadata only, vs reading the data."""
    root = work / "many"
    settings = parse_settings("")
    cache = UnifiedCache(root, settings=settings)
    rng = np.random.default_rng(1)
    for i in range(250):
        days = pd.date_range("2021-01-01", "2024-12-31", freq="1D")
        close = np.round(100 + np.cumsum(rng.normal(0, 1, len(days))), 2)
        df = pd.DataFrame({"timestamp": days, "open": close, "high": close + 1, "low": close - 1,
                           "close": close, "volume": 1000.0})  # fmt: skip
        cache.put(df, f"SYM{i:03d}USDT", "1d", "binance")  # 4 years each → 1,000 year files
    fresh = UnifiedCache(root, settings=settings)
    t_info = best(fresh.get_stats)
    t_list = best(lambda: [fresh.list_timeframes(s) for s in fresh.list_symbols()])

    def read_all() -> None:
        for s in fresh.list_symbols():
            fresh.get(s, "1d")

    t_data = best(read_all, 1)
    files = fresh.get_stats()["files"]
    return row(f"info over {files} year files vs reading the data", t_info, t_data,
               ">= 50x faster", t_data / t_info >= 50) | {"list_seconds": t_list}  # fmt: skip


def _serve(port_q: Any, stop: Any, years: int) -> None:
    from fakes import FakeBinance

    server = FakeBinance()
    rng = np.random.default_rng(2)
    n = ROWS * years
    ts = pd.date_range("2021-01-01", periods=n, freq="1min")
    close = np.round(30_000 + np.cumsum(rng.normal(0, 5, n)), 2)
    server.add("BTCUSDT", "1m", pd.DataFrame({"timestamp": ts, "open": close, "high": close + 1,
                                               "low": close - 1, "close": close, "volume": 1.5}))  # fmt: skip
    port_q.put(server.url)
    stop.wait()
    server.close()


def bench_populate(work: Path, years: int) -> dict[str, Any]:
    """Peak Python memory of populate over `years` of 1m bars vs one year's frame."""
    ctx = multiprocessing.get_context("spawn")
    q, stop = ctx.Queue(), ctx.Event()
    proc = ctx.Process(target=_serve, args=(q, stop, years), daemon=True)
    proc.start()
    url = q.get(timeout=300)
    try:
        from marketcache.pipeline.jobs import PopulateRequest, build_jobs
        from marketcache.pipeline.populate import run_populate

        conf = (f"providers: {{binance: {{base_url: '{url}', rate_limit: {{per_second: 100000}},"
                f" timeout: 30}}}}\n")  # fmt: skip
        settings = parse_settings(conf)
        cache = UnifiedCache(work / "pop", settings=settings)
        request = PopulateRequest(symbols=["BTCUSDT"], timeframes="1m", start="2021-01-01",
                                  end=f"{2021 + years}-01-01", provider="binance")  # fmt: skip
        jobs = build_jobs(request, settings)
        tracemalloc.start()
        t0 = time.perf_counter()
        report = run_populate(cache, jobs, request)
        elapsed = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert report.exit_code == 0, report.as_json()
        one_year = int(year_of_minutes().memory_usage(deep=True).sum())
        rows = report.results[0].rows_added
    finally:
        stop.set()
        proc.join(timeout=30)
    return row(f"populate {years}y of 1m bars ({rows:,} rows, {elapsed:.0f}s): peak memory",
               peak, one_year, "<= 2x one year's frame", peak <= 2 * one_year, "bytes")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="populate 1 year instead of 3")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--no-populate", action="store_true", help="skip the populate run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results = bench_io(work)
        results += bench_parquet(work)
        results.append(bench_metadata(work))
        if not args.no_populate:
            results.append(bench_populate(work, 1 if args.quick else 3))
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
              f"pandas {pd.__version__}")  # fmt: skip
        print(f"{'operation':62} {'marketcache':>12} {'baseline':>12} {'ratio':>8}  target")
        for r in results:
            ours, base = r["marketcache"], r["baseline"]
            if r["unit"] == "s":
                share = r["ratio"] == "share"
                ratio = f"{ours / base:.1%}" if share else f"{base / ours:.1f}x"
                a, b = f"{ours * 1000:.0f} ms", f"{base * 1000:.0f} ms"
            elif r["unit"] == "bytes":
                ratio = f"{ours / base:.2f}x"
                a, b = f"{ours / 1e6:.1f} MB", f"{base / 1e6:.1f} MB"
            else:
                ratio, a, b = "-", "yes" if ours else "NO", ""
            mark = "ok" if r["met"] else "MISSED"
            print(f"{r['operation']:62} {a:>12} {b:>12} {ratio:>8}  {r['target']} [{mark}]")
    return 0 if all(r["met"] for r in results if r["unit"] == "bool") else 1


if __name__ == "__main__":
    raise SystemExit(main())
