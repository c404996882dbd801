"""Network-bound speed: the Binance archive vs REST, throughput at the rate limit, start-up.

    python benchmarks/bench_network.py          # or: make bench

Everything runs against the fake servers of the tests on 127.0.0.1 (no internet), and prints
side-by-side figures and ratios; it never fails on a target, it reports.

1. One year of 1m bars for one symbol: requests and wall time via the archive vs REST only;
   and a year of 1h and of 1d bars: every file from the archive (the rule before issue 19.11)
   vs what populate now does (REST, where the archive costs more requests).
2. 40 one-request jobs against a fake with 100 ms latency and a 10 requests/s limit: the
   achieved request rate with --workers 1, 4 and 8, as a share of the limit.
3. CLI start-up of `--version`, `list` and `info` vs `python -c "import pandas"`.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import make_bars  # noqa: E402
from fakes import FakeBinance, config_for  # noqa: E402
from marketcache.cli.app import main as cli  # noqa: E402


def run(args: list[str]) -> float:
    t0 = time.perf_counter()
    code = cli([*args, "-q", "--json"])
    assert code == 0, code
    return time.perf_counter() - t0


def bench_archive(work: Path) -> list[tuple[str, str, str, str]]:
    server = FakeBinance()
    year = make_bars("2024-01-01", 60 * 24 * 366, "1min", seed=1)
    for col in ("open", "high", "low", "close"):  # a long random walk: keep prices positive
        year[col] += 1000
    server.add("ABCUSDT", "1m", year)
    rows = []
    try:
        for name, archive in (("rest", False), ("archive", True)):
            conf = work / f"{name}.yaml"
            conf.write_text(config_for(binance=server, archive=archive, timeout=60))
            server.requests.clear()
            took = run(["populate", "ABCUSDT", "-t", "1m", "--start", "2024-01-01", "--end",
                        "2025-01-01", "--cache-dir", str(work / name), "--config", str(conf)])  # fmt: skip
            rows.append((name, len(server.requests), took))
    finally:
        server.close()
    (_, rest_n, rest_t), (_, arch_n, arch_t) = rows
    return [
        ("a year of 1m bars: HTTP requests (archive incl. CHECKSUM files vs REST)",
         f"{arch_n}", f"{rest_n}", f"{rest_n / arch_n:.0f}x fewer"),
        ("a year of 1m bars: wall time (archive vs REST, fake servers)",
         f"{arch_t:.1f} s", f"{rest_t:.1f} s", f"{rest_t / arch_t:.1f}x faster"),
    ]  # fmt: skip


def bench_archive_choice(work: Path) -> list[tuple[str, str, str, str]]:
    """1h and 1d years: the old rule (every month from its zip and CHECKSUM) vs populate now."""
    import pandas as pd

    from marketcache.config.parser import load_settings
    from marketcache.providers.binance_archive import Archive, plan_files

    server = FakeBinance()
    server.add("ABCUSDT", "1h", make_bars("2024-01-01", 24 * 366, "1h", seed=2))
    server.add("ABCUSDT", "1d", make_bars("2024-01-01", 366, "1D", seed=3))
    rows = []
    try:
        conf = work / "choice.yaml"
        conf.write_text(config_for(binance=server, archive=True, timeout=60))
        settings = load_settings(conf).providers["binance"]
        for tf in ("1h", "1d"):
            archive = Archive(settings, work / "choice-state", time.sleep)
            files = plan_files(settings.archive_url, "ABCUSDT", tf, pd.Timestamp("2024-01-01"),
                               pd.Timestamp("2025-01-01"), pd.Timestamp.now())  # fmt: skip
            t0 = time.perf_counter()
            for file in files:
                archive.read(file, "ABCUSDT")
            old_t, old_n = time.perf_counter() - t0, archive.session.sent
            archive.close()
            server.requests.clear()
            took = run(["populate", "ABCUSDT", "-t", tf, "--start", "2024-01-01", "--end",
                        "2025-01-01", "--cache-dir", str(work / f"choice-{tf}"), "--config",
                        str(conf)])  # fmt: skip
            now_n = len(server.requests)
            rows += [
                (f"a year of {tf} bars: HTTP requests, now (REST: it costs fewer) vs every"
                 " month from the archive (before)", f"{now_n}", f"{old_n}",
                 f"{old_n / now_n:.0f}x fewer"),
                (f"a year of {tf} bars: wall time, now vs the archive's downloads alone",
                 f"{took:.2f} s", f"{old_t:.2f} s", f"{old_t / took:.1f}x"),
            ]  # fmt: skip
    finally:
        server.close()
    return rows


def bench_throughput(work: Path) -> list[tuple[str, str, str, str]]:
    server = FakeBinance()
    server.latency = 0.1
    symbols = [f"S{i:02d}USDT" for i in range(40)]
    for i, sym in enumerate(symbols):
        server.add(sym, "1d", make_bars("2024-01-01", 20, "1D", seed=i))
    out = []
    try:
        for workers in (1, 4, 8):
            conf = work / f"rate{workers}.yaml"
            conf.write_text(config_for(binance=server, rate="{per_second: 10}"))
            server.arrivals.clear()
            run(["populate", *symbols, "-t", "1d", "--start", "2024-01-01", "--end",
                 "2024-01-21", "--workers", str(workers), "--cache-dir",
                 str(work / f"rate{workers}"), "--config", str(conf)])  # fmt: skip
            arrivals = sorted(server.arrivals)
            span = arrivals[-1] - arrivals[0]
            rate = (len(arrivals) - 1) / span if span else float("inf")
            busiest = max(
                sum(1 for t in arrivals if s <= t < s + 1.0) for s in arrivals
            )  # requests in any one-second window: never above the limit (+1 at the edge)
            out.append((f"40 symbols, --workers {workers}: request rate vs the 10/s limit "
                        f"(busiest second: {busiest})",
                        f"{rate:.1f}/s", "10/s", f"{rate / 10:.0%}"))  # fmt: skip
    finally:
        server.close()
    return out


def bench_startup(work: Path) -> list[tuple[str, str, str, str]]:
    exe = str(Path(sys.executable).with_name("marketcache"))
    cache = work / "rest"

    def median(cmd: list[str]) -> float:
        times = []
        for _ in range(7):
            t0 = time.perf_counter()
            subprocess.run(cmd, capture_output=True, check=False)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    pandas = median([sys.executable, "-c", "import pandas"])
    rows = []
    for args in (
        ["--version"],
        ["list", "--cache-dir", str(cache)],
        ["info", "--cache-dir", str(cache)],
    ):
        t = median([exe, *args])
        rows.append((f"start-up: marketcache {args[0]} vs python -c 'import pandas'",
                     f"{t * 1000:.0f} ms", f"{pandas * 1000:.0f} ms", f"{t / pandas:.0%}"))  # fmt: skip
    return rows


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rows = (
            bench_archive(work)
            + bench_archive_choice(work)
            + bench_throughput(work)
            + bench_startup(work)
        )
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(f"{'measure':92} {'marketcache':>12} {'baseline':>10} {'ratio':>14}")
    for name, ours, base, ratio in rows:
        print(f"{name:92} {ours:>12} {base:>10} {ratio:>14}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
