"""Operator experience: offline runs, interrupts, honest exits, repairs that keep data, output
that cron and grep can use."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import CliResult, make_bars
from fakes import FakeBinance, FakeYahoo, config_for
from marketcache import UnifiedCache
from marketcache.config.parser import parse_settings

Cli = Callable[..., CliResult]
DEFAULT_DATASETS = """datasets:
  - {symbols: [BTCUSDT, ETHUSDT], timeframes: [1h, 1d], start: 2020-01-01}
  - {symbols: [AAPL, MSFT], timeframes: [1d], start: 2015-01-01}
"""


def write(tmp_path: Path, text: str, name: str = "providers.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_offline_the_default_datasets_end_fast_with_exit_1_and_one_line_per_provider(
    cli: Cli, tmp_path: Path
) -> None:
    conf = write(tmp_path, config_for(retry_budget=60) + DEFAULT_DATASETS)  # every host refuses
    began = time.monotonic()
    r = cli("populate", "--config", str(conf), "--cache-dir", str(tmp_path / "c"), "--json")
    took = time.monotonic() - began
    assert r.code == 1 and took < 60, (r.code, took)
    report = r.json()
    down = {u["provider"]: u["error"] for u in report["unreachable"]}
    assert set(down) == {"binance", "yahoo"}, down
    assert "binance unreachable: connection refused by 127.0.0.1:9" in down["binance"]
    assert "check the network or base_url" in down["binance"]
    assert r.err.count("error: binance unreachable") == 1
    # each job says what failed in a line per distinct reason (not one per range); the failed
    # ranges are recorded, not skipped, so validate shows them
    for job in report["results"]:
        assert job["status"] == "failed" and 1 <= len(job["errors"]) <= 2, job
        assert all("ranges)" in e and "unreachable" in e for e in job["errors"]), job
    v = cli("validate", "--cache-dir", str(tmp_path / "c"), "--config", str(conf))
    assert v.code == 3


def test_every_request_is_counted_failed_ones_too(
    cli: Cli, fake_binance: FakeBinance, tmp_path: Path
) -> None:
    fake_binance.add("ABCUSDT", "1h", make_bars("2024-01-01", 24, "1h"))
    fake_binance.fail_next(2, status=503)
    conf = write(tmp_path, config_for(binance=fake_binance))
    r = cli("populate", "ABCUSDT", "-t", "1h", "--start", "2024-01-01", "--end", "2024-01-02",
            "--config", str(conf), "--cache-dir", str(tmp_path / "c"), "--json")  # fmt: skip
    assert r.code == 0, r.err
    summary = r.json()["summary"]["requests"]
    assert summary == {"total": 3, "by_provider": {"binance": 3}}
    assert len(fake_binance.data_requests()) == 3


def _slow_market(tmp_path: Path, server: FakeBinance) -> dict[str, str]:
    for i, sym in enumerate(("AAAUSDT", "BBBUSDT", "CCCUSDT", "DDDUSDT")):
        server.add(sym, "1h", make_bars("2023-01-01", 24 * 200, "1h", seed=i))
    conf = write(tmp_path, config_for(binance=server, timeout=10))
    return {**os.environ, "MARKETCACHE_CONFIG": str(conf),
            "MARKETCACHE_CACHE_DIR": str(tmp_path / "c")}  # fmt: skip


@pytest.mark.parametrize(("sig", "code", "name"), [(signal.SIGINT, 130, "SIGINT"),
                                                    (signal.SIGTERM, 143, "SIGTERM")])  # fmt: skip
def test_an_interrupted_populate_says_so_prints_its_partial_report_and_keeps_its_data(
    fake_binance: FakeBinance, tmp_path: Path, sig: int, code: int, name: str
) -> None:
    env = _slow_market(tmp_path, fake_binance)
    fake_binance.latency = 0.4  # every answer takes 0.4 s: the run is mid-way when stopped
    proc = subprocess.Popen(
        [sys.executable, "-m", "marketcache", "populate", "AAAUSDT", "BBBUSDT", "CCCUSDT",
         "DDDUSDT", "-t", "1h", "--start", "2023-01-01", "--end", "2023-07-01", "--json", "-q"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while len(fake_binance.data_requests()) < 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == code, (out, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"interrupted ({name})"), err
    assert "everything committed is kept" in lines[0]
    report = json.loads(out)
    assert report["interrupted"] and report["exit_code"] == code
    assert 1 <= len(report["results"]) < 4  # the first job finished, the run stopped early
    cache = UnifiedCache(tmp_path / "c", settings=parse_settings(""))
    assert len(cache.get("AAAUSDT", "1h")) > 0, "what was committed is kept"


def test_validate_fix_keeps_every_row_before_the_damage_and_exits_3_naming_the_loss(
    cli: Cli, cache: UnifiedCache, cache_dir: Path
) -> None:
    cache.put(make_bars("2023-01-01", 24 * 365, "1h", seed=3), "ABCUSDT", "1h", provider="binance")
    path = cache.layout.data_path("ABCUSDT", "1h", 2023)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped byte in the middle of the only gzip member
    path.write_bytes(bytes(raw))
    r = cli("validate", "--fix", "--json", "--cache-dir", str(cache_dir))
    assert r.code == 3
    check = r.json()["files"][0]
    assert check["status"] == "fixed"
    assert 24 * 365 * 0.3 < check["rows"] < 24 * 365, check  # rows before the damage kept
    assert check["lost"] == 24 * 365 - check["rows"]
    assert "run `marketcache populate ABCUSDT -t 1h --start '2023-" in r.err
    kept = cache.get("ABCUSDT", "1h")
    want = make_bars("2023-01-01", 24 * 365, "1h", seed=3).iloc[: len(kept)].reset_index(drop=True)
    want["timestamp"] = want["timestamp"].astype("datetime64[ns]")
    assert kept.equals(want), "the kept rows are exactly the first ones, unaltered"


def test_validate_on_a_cache_that_does_not_exist_exits_2(cli: Cli, tmp_path: Path) -> None:
    r = cli("validate", "--cache-dir", str(tmp_path / "typo"))
    assert r.code == 2 and "does not exist" in r.err


def test_a_dry_run_creates_nothing_and_an_unknown_symbol_leaves_nothing(
    cli: Cli, fake_binance: FakeBinance, fake_yahoo: FakeYahoo, tmp_path: Path
) -> None:
    fake_binance.add("ABCUSDT", "1h", make_bars("2024-01-01", 48, "1h"))
    conf = write(tmp_path, config_for(binance=fake_binance, yahoo=fake_yahoo))
    root = tmp_path / "c"
    dry = cli("populate", "ABCUSDT", "-t", "1h", "--start", "2024-01-01", "--end", "2024-01-03",
              "--dry-run", "--json", "--config", str(conf), "--cache-dir", str(root))  # fmt: skip
    assert dry.code == 0 and dry.json()["results"][0]["status"] == "planned"
    assert not root.exists(), "a dry run creates no folder, lock or file"
    r = cli("populate", "NOPEUSDT", "-t", "1h", "--start", "2024-01-01", "--end", "2024-01-03",
            "--json", "--config", str(conf), "--cache-dir", str(root))  # fmt: skip
    assert r.code == 1
    assert "no provider knows NOPEUSDT" in r.json()["results"][0]["errors"][0]
    assert cli("list", "--json", "--cache-dir", str(root)).json() == []
    assert not (root / "NOPEUSDT").exists()


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root + setpriv")
def test_a_folder_without_permission_is_named_not_a_traceback(tmp_path: Path) -> None:
    root = tmp_path / "c"
    UnifiedCache(root, settings=parse_settings("")).put(
        make_bars("2024-01-01", 24, "1h"), "ABCUSDT", "1h", provider="binance"
    )
    os.chmod(tmp_path, 0o755)
    os.chmod(root, 0o700)  # owned by root: the unprivileged user below cannot read it
    proc = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m",
         "marketcache", "validate", "--cache-dir", str(root)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "HOME": "/tmp"},
    )  # fmt: skip
    assert proc.returncode in (1, 2), proc.stderr
    assert "Traceback" not in proc.stderr and "unexpected" not in proc.stderr
    assert "permission denied" in proc.stderr or "does not exist" in proc.stderr


def test_error_lines_never_wrap_off_a_terminal(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("COLUMNS", "40")
    conf = write(tmp_path, config_for(retry_budget=1))
    r = cli("populate", "ABCUSDT", "-t", "1h", "--start", "2024-01-01", "--end", "2024-01-02",
            "--config", str(conf), "--cache-dir", str(tmp_path / "c"))  # fmt: skip
    assert r.code == 1
    lines = [ln for ln in r.err.splitlines() if ln]
    assert all(ln.startswith("error: ") for ln in lines), lines
    assert any(len(ln) > 80 for ln in lines)


def test_quiet_silences_third_party_loggers_and_log_file_gets_progress(
    cli: Cli, fake_binance: FakeBinance, tmp_path: Path
) -> None:
    fake_binance.add("ABCUSDT", "1h", make_bars("2024-01-01", 24, "1h"))
    conf = write(tmp_path, config_for(binance=fake_binance))
    log = tmp_path / "run.log"
    r = cli("populate", "ABCUSDT", "-t", "1h", "--start", "2024-01-01", "--end", "2024-01-02",
            "-q", "--log-file", str(log), "--config", str(conf), "--cache-dir", str(tmp_path / "c"))  # fmt: skip
    assert r.code == 0 and r.out == "" and r.err == ""
    assert logging.getLogger("yfinance").getEffectiveLevel() == logging.CRITICAL
    text = log.read_text()
    assert "ABCUSDT 1h: 24 bars to fetch" in text and "ABCUSDT 1h: +24 bars" in text


def test_the_summary_has_totals_and_elapsed_time(
    cli: Cli, fake_binance: FakeBinance, tmp_path: Path
) -> None:
    for sym in ("ABCUSDT", "DEFUSDT"):
        fake_binance.add(sym, "1h", make_bars("2024-01-01", 24, "1h"))
    conf = write(tmp_path, config_for(binance=fake_binance))
    r = cli("populate", "ABCUSDT", "DEFUSDT", "-t", "1h", "--start", "2024-01-01", "--end",
            "2024-01-02", "--config", str(conf), "--cache-dir", str(tmp_path / "c"))  # fmt: skip
    assert r.code == 0, r.err
    assert "2 jobs" in r.out and "all ok" in r.out and "48" in r.out and "elapsed" in r.out


def test_progress_counts_bars_against_the_plans_and_settles_the_total() -> None:
    from rich.console import Console
    from rich.progress import Progress

    from marketcache.cli.render import ProgressSink

    with Progress(console=Console(file=io.StringIO())) as bar:
        task = bar.add_task("", total=None)
        sink = ProgressSink(bar, task, jobs=4)
        sink.plan("A 1h", 100)
        assert bar.tasks[0].total == 400  # three unplanned jobs estimated like the first
        sink.note("A 1h", bars=60, requests=1)
        sink.advance("A 1h")  # 40 planned bars never came (holes): they count as done
        assert bar.tasks[0].completed == 100
        sink.plan("B 1h", 300)
        assert bar.tasks[0].total == 800


def test_small_conveniences(
    cli: Cli, fake_binance: FakeBinance, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bare = cli()
    assert bare.code == 0 and "Usage" in bare.out and "populate" in bare.out
    assert cli("-V").out.startswith("marketcache ")
    fake_binance.add("ABCUSDT", "1h", make_bars("2024-01-01", 24, "1h"))
    conf = write(tmp_path, config_for(binance=fake_binance))
    root = str(tmp_path / "c")
    monkeypatch.setattr(sys, "stdin", io.StringIO("# my list\nABCUSDT\n"))
    r = cli("populate", "--symbols-file", "-", "-t", "1h", "--start", "2024-01-01", "--end",
            "2024-01-02", "--config", str(conf), "--cache-dir", root)  # fmt: skip
    assert r.code == 0, r.err
    rows = list(
        csv.DictReader(io.StringIO(cli("list", "--format", "csv", "--cache-dir", root).out))
    )
    assert rows == [{"symbol": "ABCUSDT", "timeframes": "1h"}]
    as_json = cli("info", "ABCUSDT", "--format", "json", "--cache-dir", root).json()
    assert as_json["timeframes"]["1h"]["rows"] == 24
    years = list(
        csv.DictReader(
            io.StringIO(cli("info", "ABCUSDT", "--format", "csv", "--cache-dir", root).out)
        )
    )
    assert years[0]["year"] == "2024" and years[0]["rows"] == "24"
    assert cli("list", "--format", "xml", "--cache-dir", root).code == 2


@pytest.mark.parametrize(
    "command", [["--version"], ["--help"], ["list"], ["info"], ["info", "ABCUSDT"]]
)
def test_metadata_only_commands_import_no_heavy_library(command: list[str], tmp_path: Path) -> None:
    UnifiedCache(tmp_path / "c", settings=parse_settings("")).put(
        make_bars("2024-01-01", 24, "1h"), "ABCUSDT", "1h", provider="binance"
    )
    code = (
        "import sys; from marketcache.cli.app import main; "
        f"code = main({[*command, '--cache-dir', str(tmp_path / 'c')] if command[0] in ('list', 'info') else command!r}); "
        "heavy = [m for m in ('pandas', 'numpy', 'pyarrow', 'yfinance', 'binance', 'alpha_vantage',"
        " 'exchange_calendars') if m in sys.modules]; "
        "print('HEAVY', heavy, file=sys.stderr); sys.exit(code)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    ("sig", "code", "workers"),
    [(signal.SIGINT, 130, 1), (signal.SIGTERM, 143, 1), (signal.SIGINT, 130, 2)],
)
def test_the_report_of_an_interrupted_run_lists_every_job_that_committed(
    fake_binance: FakeBinance, tmp_path: Path, sig: int, code: int, workers: int
) -> None:
    # jobs of three years each (9 pages a year): stopped once the first year of each running
    # job is committed and its second year is under way
    symbols = ("AAAUSDT", "BBBUSDT")[:workers]
    for i, sym in enumerate(symbols):
        fake_binance.add(sym, "1h", make_bars("2020-01-01", 24 * 1096, "1h", seed=i))
    conf = write(tmp_path, config_for(binance=fake_binance, timeout=10))
    env = {
        **os.environ,
        "MARKETCACHE_CONFIG": str(conf),
        "MARKETCACHE_CACHE_DIR": str(tmp_path / "c"),
    }
    fake_binance.latency = 0.25
    proc = subprocess.Popen(
        [sys.executable, "-m", "marketcache", "populate", *symbols, "-t", "1h", "--start",
         "2020-01-01", "--end", "2023-01-01", "--workers", str(workers), "--json"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    first_years = [tmp_path / "c" / sym / "1h" / "2020.metadata.json" for sym in symbols]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (
        all(p.exists() for p in first_years) and len(fake_binance.data_requests()) >= 12 * workers
    ):
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, (out, err)
    report = json.loads(out)
    cache = UnifiedCache(tmp_path / "c", settings=parse_settings(""))
    jobs = {r["symbol"]: r for r in report["results"]}
    assert sorted(jobs) == sorted(symbols), report["results"]
    for sym, job in jobs.items():
        assert job["status"] == "interrupted", job
        assert job["rows_added"] == len(cache.get(sym, "1h")) >= 24 * 366, sym
        assert job["requests"] >= 10
    assert report["summary"]["rows_added"] == sum(len(cache.get(s, "1h")) for s in symbols)
    assert report["summary"]["requests"]["total"] == len(fake_binance.requests)
