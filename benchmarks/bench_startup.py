"""CLI start-up: what `--version`, `--help`, `list`, `info` and a shell-completion Tab cost.

    python benchmarks/bench_startup.py                # or: make bench
    python benchmarks/bench_startup.py --compare main # the same commands on another commit too

Each command runs as a fresh process against a small cache (3 symbols, 2 years each), with
byte-code compiled (the benchmark warms its own `PYTHONPYCACHEPREFIX`, so a
`PYTHONDONTWRITEBYTECODE` environment does not measure compilation). Printed: the wall time
(median and best of N runs) and the CPU time (user + system, median; it barely moves when
other jobs load the machine), against `python -c "import pandas"` and `python -c pass`. It reports; it
never fails on a target (the aim: <= 0.2 s for `list` / `info` on an idle machine). The import
set itself is pinned by `tests/test_cli.py::test_start_up_imports_only_what_the_command_needs`.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

COMMANDS: list[tuple[str, list[str], dict[str, str]]] = [
    ("--version", ["--version"], {}),
    ("--help", ["--help"], {}),
    ("list", ["list"], {}),
    ("list --json", ["list", "--json"], {}),
    ("info", ["info"], {}),
    ("info SYMBOL", ["info", "AAAUSDT"], {}),
    ("Tab: `marketcache li`", [],
     {"_MARKETCACHE_COMPLETE": "complete_bash", "COMP_WORDS": "marketcache li", "COMP_CWORD": "1"}),
]  # fmt: skip


def fill(root: Path) -> None:
    from conftest import make_bars
    from marketcache import UnifiedCache

    cache = UnifiedCache(root)
    for i, symbol in enumerate(("AAAUSDT", "BBBUSDT", "CCCUSDT")):
        cache.put(make_bars("2023-06-01", 24 * 400, seed=i), symbol, "1h", provider="binance")


def timed(cmd: list[str], env: dict[str, str], runs: int) -> tuple[float, float, float]:
    """(median wall, best wall, median CPU) seconds of `cmd` as a fresh process. The CPU time
    (user + system) hardly moves when other jobs share the machine; the wall time does."""
    subprocess.run(cmd, capture_output=True, env=env, check=False)  # compiles, warms the disk
    walls, cpus = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run(cmd, capture_output=True, env=env, check=False)
        walls.append(time.perf_counter() - t0)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(walls), min(walls), statistics.median(cpus)


def export(ref: str, into: Path) -> Path:
    """`git archive REF src` unpacked into `into`; returns its src folder."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "src"], capture_output=True, check=True
    ).stdout
    into.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=11)
    parser.add_argument("--compare", metavar="REF", help="also time the code of this commit")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fill(work / "cache")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MARKETCACHE_")}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env.update(PYTHONPYCACHEPREFIX=str(work / "pyc"), MARKETCACHE_CACHE_DIR=str(work / "cache"))
        py = [sys.executable]
        mc = [*py, "-m", "marketcache"]
        bare = timed([*py, "-c", "pass"], env, opts.runs)
        pandas = timed([*py, "-c", "import pandas"], env, opts.runs)
        other = None
        if opts.compare:
            other = {**env, "PYTHONPATH": str(export(opts.compare, work / "other"))}
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, "
              f"Python {platform.python_version()}, load {os.getloadavg()[0]:.2f}")  # fmt: skip
        print(f"python -c pass: {bare[0] * 1000:.0f} ms (CPU {bare[2] * 1000:.0f} ms); "
              f"python -c 'import pandas': {pandas[0] * 1000:.0f} ms (CPU {pandas[2] * 1000:.0f}"
              f" ms); medians of {opts.runs}")  # fmt: skip
        head = f"{'start-up':24} {'wall median/best':>17} {'CPU':>6} {'CPU vs pandas':>14}"
        print(head + (f" {opts.compare + ' CPU':>12} {'faster':>7}" if other else ""))
        for name, args, extra in COMMANDS:
            wall, best, cpu = timed([*mc, *args], {**env, **extra}, opts.runs)
            line = (f"{name:24} {wall * 1000:8.0f} / {best * 1000:4.0f} ms {cpu * 1000:4.0f} ms"
                    f" {cpu / pandas[2]:13.0%}")  # fmt: skip
            if other is not None:
                was = timed([*mc, *args], {**other, **extra}, opts.runs)[2]
                line += f" {was * 1000:9.0f} ms {was / cpu:6.2f}x"
            print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
