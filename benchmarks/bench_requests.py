"""Requests per answer: what a populate, its re-run and a notebook loop cost a quota.

    python benchmarks/bench_requests.py              # or: make bench
    python benchmarks/bench_requests.py --baseline REF   # compare with a git ref (default: main)

Against the fake servers of the tests on 127.0.0.1 (no internet), with eleven-plus years of
daily bars (2015 to now, the newest session not yet published, as on a cron run before the
provider has it), it counts the data requests the fakes receive:

1. `populate NVDA -t 1d --start 2015-01-01` with Yahoo down: Alpha Vantage (25 requests a
   day on the free key) answers `TIME_SERIES_DAILY outputsize=full`; then the same again;
   the same for AMD, of which the provider lacks one session a year (re-asked on re-runs).
2. `populate MSFT NVDA -t 1d --start 2015-01-01` from Yahoo, then the same again (statuses too).
3. Ten `DataManager.get_ohlcv("MSFT", "1d", start="2015-01-01")` calls with an open end.

The same scenarios run on the baseline (the source tree of a git ref, exported to a temporary
folder) in a subprocess, so the table shows before and after side by side. It reports; it
never fails on a figure.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def _populate(root: Path, conf: Path, *args: str) -> dict[str, Any]:
    from marketcache.cli.app import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        main(["populate", *args, "--cache-dir", str(root), "--config", str(conf), "--json"])
    report: dict[str, Any] = json.loads(out.getvalue())
    return report


def measure(work: Path) -> dict[str, Any]:
    """Every figure of the three scenarios, with the code importable as `marketcache`."""
    import pandas as pd

    from conftest import make_bars
    from fakes import FakeAlphaVantage, FakeYahoo, config_for
    from marketcache import DataManager
    from marketcache.config.parser import parse_settings
    from marketcache.core.calendars import expected_bars
    from marketcache.core.timeframes import Timeframe

    os.environ["ALPHAVANTAGE_API_KEY"] = "demo-key"
    today = pd.Timestamp.now(tz="UTC").tz_localize(None).normalize()
    sessions = expected_bars("XNYS", Timeframe("1d"), pd.Timestamp("2015-01-01"), today)[:-1]
    yahoo, av = FakeYahoo(), FakeAlphaVantage("demo-key")
    figures: dict[str, Any] = {"years": sessions[-1].year - 2015 + 1}
    try:
        for seed, symbol in enumerate(("MSFT", "NVDA")):
            frame = make_bars("", 0, index=sessions, seed=seed)
            yahoo.add(symbol, "1d", frame)
            av.add_daily(symbol, frame)
        frame = make_bars("", 0, index=sessions, seed=3)  # AMD: lacks one session a year
        lacking = frame.groupby(frame["timestamp"].dt.year).nth(100)["timestamp"]
        av.add_daily("AMD", frame[~frame["timestamp"].isin(lacking)])

        conf = work / "av.yaml"  # Yahoo at a dead port: the chain fails over to Alpha Vantage
        conf.write_text(config_for(alpha_vantage=av))
        for run in ("first", "rerun"):
            av.requests.clear()
            _populate(work / "av", conf, "NVDA", "-t", "1d", "--start", "2015-01-01")
            figures[f"av_{run}"] = len(av.data_requests())
        for run in ("first", "rerun"):
            av.requests.clear()
            _populate(work / "av", conf, "AMD", "-t", "1d", "--start", "2015-01-01")
            figures[f"av_holes_{run}"] = len(av.data_requests())

        conf = work / "yahoo.yaml"
        conf.write_text(config_for(yahoo=yahoo))
        for run in ("first", "rerun"):
            yahoo.requests.clear()
            report = _populate(
                work / "yahoo", conf, "MSFT", "NVDA", "-t", "1d", "--start", "2015-01-01"
            )
            figures[f"yahoo_{run}"] = len(yahoo.data_requests())
            figures[f"yahoo_{run}_status"] = ",".join(r["status"] for r in report["results"])

        yahoo.requests.clear()
        with DataManager(work / "dm", settings=parse_settings(config_for(yahoo=yahoo))) as dm:
            for _ in range(10):
                dm.get_ohlcv("MSFT", "1d", start="2015-01-01")
        figures["dm_ten_calls"] = len(yahoo.data_requests())
    finally:
        yahoo.close()
        av.close()
    return figures


def baseline(ref: str, work: Path) -> dict[str, Any] | None:
    """The figures of the source tree at `ref` (None when git cannot export it)."""
    tree = work / "baseline"
    tree.mkdir()
    try:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", ref, "src"], capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    proc = subprocess.run(
        [sys.executable, __file__, "--measure-only"], capture_output=True, text=True, env=env
    )
    if proc.returncode != 0:
        print(proc.stderr, file=sys.stderr)
        return None
    figures: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="main", help="git ref to compare with")
    parser.add_argument("--measure-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as tmp:
        work = Path(tmp)
        if args.measure_only:  # the baseline's subprocess: one JSON line
            (work / "now").mkdir()
            print(json.dumps(measure(work / "now")))
            return
        (work / "now").mkdir()
        now = measure(work / "now")
        before = baseline(args.baseline, work) or {}
    years = now["years"]
    rows = [
        (f"Alpha Vantage, NVDA 2015→now ({years} years), first run", "av_first"),
        ("Alpha Vantage, the same again", "av_rerun"),
        ("Alpha Vantage, AMD lacking one session a year, first run", "av_holes_first"),
        ("Alpha Vantage, the same again (the holes re-asked)", "av_holes_rerun"),
        ("Yahoo, MSFT + NVDA 2015→now, first run", "yahoo_first"),
        ("Yahoo, the same again (nothing new)", "yahoo_rerun"),
        ("  its statuses", "yahoo_rerun_status"),
        ("DataManager, ten open-end get_ohlcv calls (MSFT)", "dm_ten_calls"),
    ]
    head = f"baseline ({args.baseline})"
    print(f"{'data requests on the fake servers':<58} {head:>18} {'now':>22}")
    for label, key in rows:
        print(f"{label:<58} {before.get(key, 'n/a')!s:>18} {now[key]!s:>22}")


if __name__ == "__main__":
    main()
