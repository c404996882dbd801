"""CLI: exit codes and key output of info, list, validate and cleanup over a real cache."""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import CliResult, make_bars
from fakes import FakeAlphaVantage, FakeYahoo, config_for
from marketcache import UnifiedCache
from marketcache.config.parser import parse_settings

Cli = Callable[..., CliResult]


@pytest.fixture
def filled(tmp_path: Path) -> Path:
    """A cache with crypto 1h over two years and a stock 1d series, written through the API."""
    root = tmp_path / "data-cache"
    cache = UnifiedCache(root, settings=parse_settings(""))
    cache.put(make_bars("2023-12-01", 24 * 62), "BTCUSDT", "1h", provider="binance")
    cache.put(make_bars("2022-01-03", 500, freq="B"), "AAPL", "1d", provider="yahoo")
    return root


def one_error_line(result: CliResult) -> str:
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert "Traceback" not in result.err
    return lines[0]


def test_version_and_module_entry_point() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "marketcache", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "marketcache 0.1.0"


def test_info_on_an_empty_cache(cli: Cli, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    r = cli("info", "--json", "--cache-dir", str(tmp_path / "empty"))
    assert r.code == 0
    assert r.json()["symbols"] == 0 and r.json()["files"] == 0
    assert cli("list", "--json", "--cache-dir", str(tmp_path / "empty")).json() == []


@pytest.mark.parametrize(
    "args",
    [("info",), ("list",), ("info", "--stale"), ("info", "BTCUSDT", "1h"), ("list", "BTCUSDT")],
)
def test_info_and_list_on_a_cache_that_does_not_exist_exit_2(
    cli: Cli, tmp_path: Path, args: tuple[str, ...]
) -> None:
    """A typo in --cache-dir is a usage error naming the path, as validate says, not an empty
    cache (exit 0) that a cron job would take for 'nothing cached yet'."""
    missing = tmp_path / "no-such-cache"
    r = cli(*args, "--cache-dir", str(missing))
    assert r.code == 2, r.out
    line = one_error_line(r)
    assert f"--cache-dir {missing} does not exist" in line
    assert not missing.exists()


def test_info_csv_has_one_value_per_cell(cli: Cli, filled: Path) -> None:
    out = cli("info", "--format", "csv", "--cache-dir", str(filled)).out
    rows = {row["what"]: row["value"] for row in csv.DictReader(io.StringIO(out))}
    assert rows["backend.backend"] == "files" and rows["backend.format"] == "csv.gz"
    assert rows["backend.location"] == str(filled)
    assert not [v for v in rows.values() if v.startswith(("{", "["))], rows


def test_info_and_list(cli: Cli, filled: Path) -> None:
    r = cli("info", "--cache-dir", str(filled))
    assert r.code == 0
    assert "symbols" in r.out and "binance, yahoo" in r.out
    stats = cli("info", "--json", "--cache-dir", str(filled)).json()
    assert stats["symbols"] == 2 and stats["files"] == 4
    assert stats["rows"] == 24 * 62 + 500
    assert stats["timeframes"] == ["1h", "1d"]

    detail = cli("info", "btcusdt", "1h", "--json", "--cache-dir", str(filled)).json()
    years = detail["timeframes"]["1h"]["years"]
    assert [(y["year"], y["rows"]) for y in years] == [(2023, 24 * 31), (2024, 24 * 31)]
    text = cli("info", "AAPL", "--cache-dir", str(filled)).out
    assert "2022" in text and "yahoo" in text

    assert cli("list", "--json", "--cache-dir", str(filled)).json() == [
        {"symbol": "AAPL", "timeframes": ["1d"]},
        {"symbol": "BTCUSDT", "timeframes": ["1h"]},
    ]
    tfs = cli("list", "AAPL", "--json", "--cache-dir", str(filled)).json()
    assert tfs[0]["timeframe"] == "1d" and tfs[0]["years"] == [2022, 2023]
    years_out = cli("list", "BTCUSDT", "1h", "--cache-dir", str(filled))
    assert "2023" in years_out.out and "2024" in years_out.out


def test_quiet_prints_nothing(cli: Cli, filled: Path) -> None:
    r = cli("list", "-q", "--cache-dir", str(filled))
    assert r.code == 0 and r.out == "" and r.err == ""


def test_info_and_list_read_metadata_only(cli: Cli, filled: Path) -> None:
    for path in filled.rglob("*.csv.gz"):
        path.write_bytes(b"destroyed")
    assert cli("info", "--cache-dir", str(filled)).code == 0
    assert cli("list", "AAPL", "1d", "--cache-dir", str(filled)).code == 0


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("info", "BTCUSDT", "7m"), "unknown timeframe '7m'"),
        (("info", ".."), "not a usable name"),
        (("info", "NOPE"), "NOPE is not in the cache"),
        (("cleanup", "--before", "2024-02-30"), "--before '2024-02-30' is not a date"),
        (("cleanup", "--older-than", "400"), "needs a unit"),
        (("cleanup", "--symbol", "AAPL"), "need --before"),
        (("validate", "--min-score", "2"), "--min-score"),
        (("validate", "--min-score", "x"), "'--min-score': Input should be a valid number"),
        (("validate", "--min-score", "nan"), "'--min-score': Input should be a finite number"),
        (("validate", "--min-score", "-inf"), "'--min-score': Input should be a finite number"),
        (("validate", "--min-score", "1e400"), "'--min-score': Input should be a finite number"),
        (("populate", "AAPL", "--workers", "9" * 30), "'--workers'"),
        (("populate", "AAPL", "--workers", "0"), "greater than or equal to 1"),
        (("populate", "AAPL", "--workers", "two"), "'--workers': Input should be a valid integer"),
        (("info", "--bogus"), "No such option: --bogus"),
        (("populate", "AAPL", "--start", "2024-02-01", "--end", "2024-01-01"), "not before"),
        (("populate", "AAPL", "-t", "1h,9x"), "unknown timeframe '9x'"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    cli: Cli, filled: Path, args: tuple[str, ...], needle: str
) -> None:
    r = cli(*args, "--cache-dir", str(filled))
    assert r.code == 2, r.err
    assert needle in one_error_line(r)


def test_bad_config_exits_2_naming_file_and_key(cli: Cli, filled: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("providers: {binance: {rate_limit: {per_minute: lots}}}")
    r = cli("info", "--config", str(bad), "--cache-dir", str(filled))
    assert r.code == 2
    line = one_error_line(r)
    assert str(bad) in line and "providers.binance.rate_limit.per_minute" in line
    broken = tmp_path / "broken.yaml"
    broken.write_text("providers: [\n")
    assert "invalid YAML" in one_error_line(cli("list", "--config", str(broken)))
    missing = cli("list", "--config", str(tmp_path / "nope.yaml"))
    assert missing.code == 2 and "not found" in missing.err


def test_json_errors_are_a_json_document(cli: Cli, filled: Path) -> None:
    r = cli("info", "NOPE", "--json", "--cache-dir", str(filled))
    assert r.code == 2
    assert r.json() == {"ok": False, "exit_code": 2, "error": r.err.strip().removeprefix("error: ")}


def test_verbose_shows_the_traceback(cli: Cli, filled: Path) -> None:
    r = cli("info", "BTCUSDT", "7m", "-v", "--cache-dir", str(filled))
    assert r.code == 2 and "Traceback" in r.err


def test_validate_clean_cache_passes(cli: Cli, filled: Path) -> None:
    r = cli("validate", "--json", "--cache-dir", str(filled))
    assert r.code == 0
    files = r.json()["files"]
    assert len(files) == 4 and {f["status"] for f in files} == {"ok"}


def test_validate_low_score_exits_3(cli: Cli, tmp_path: Path) -> None:
    root = tmp_path / "c"
    df = make_bars("2024-01-01", 1000)
    UnifiedCache(root, settings=parse_settings("")).put(
        df.drop(index=range(100, 400)), "ETHUSDT", "1h"
    )
    assert cli("validate", "--cache-dir", str(root)).code == 0  # 0.88 >= default 0.8
    r = cli("validate", "ETHUSDT", "--min-score", "0.95", "--json", "--cache-dir", str(root))
    assert r.code == 3
    assert r.json()["files"][0]["status"] == "low-score"


def test_validate_names_corrupt_files_and_fix_repairs(cli: Cli, filled: Path) -> None:
    tf_dir = filled / "BTCUSDT" / "1h"
    data = (tf_dir / "2024.csv.gz").read_bytes()
    (tf_dir / "2024.csv.gz").write_bytes(data[: len(data) // 2])  # truncated gzip
    (filled / "AAPL" / "1d" / "2023.metadata.json").write_text("{not json")
    r = cli("validate", "--cache-dir", str(filled))
    assert r.code == 3
    assert "2024.csv.gz: file is truncated" in r.err
    assert "2023.metadata.json: metadata is not valid JSON" in r.err
    assert "Traceback" not in r.err

    fixed = cli("validate", "--fix", "--json", "--cache-dir", str(filled))
    report = {(f["symbol"], f["year"]): f for f in fixed.json()["files"]}
    assert report[("BTCUSDT", 2024)]["status"] == "fixed"
    assert 0 < report[("BTCUSDT", 2024)]["rows"] < 24 * 31
    assert report[("AAPL", 2023)]["status"] == "fixed"
    assert report[("AAPL", 2023)]["rows"] == 500 - 260
    assert list(tf_dir.glob("2024.csv.gz.corrupt-*")), "the damaged original is kept aside"
    meta = json.loads((tf_dir / "2024.metadata.json").read_text())
    assert (
        meta["data_source"] == "binance" and meta["coverage"]["sources"][0]["provider"] == "binance"
    )
    after = cli("validate", "--json", "--cache-dir", str(filled))  # the rows lost still count
    assert after.code == 3 and [f["status"] for f in after.json()["files"] if f["status"] != "ok"]
    assert {m["reason"] for m in meta["coverage"]["missing_ranges"]} == {"lost in repair"}


def test_validate_detects_a_flipped_byte_and_missing_metadata(cli: Cli, filled: Path) -> None:
    path = filled / "AAPL" / "1d" / "2022.csv.gz"
    raw = bytearray(path.read_bytes())
    raw[-12] ^= 0xFF
    path.write_bytes(bytes(raw))
    (filled / "BTCUSDT" / "1h" / "2023.metadata.json").unlink()
    r = cli("validate", "--cache-dir", str(filled))
    assert r.code == 3
    assert "2022.csv.gz: sha256 does not match" in r.err
    assert "2023.metadata.json: metadata file is missing" in r.err
    fixed = cli("validate", "--fix", "--cache-dir", str(filled))
    assert fixed.code == 3, "a row after the damage could not be recovered: exit 3, say so"
    assert "run `marketcache populate AAPL -t 1d --start 2022-12-30 --end 2022-12-31`" in fixed.err
    later = cli("validate", "--cache-dir", str(filled))  # repaired, but the lost bar is a hole
    assert later.code == 3 and "incomplete" in later.out, later.out
    assert later.err.count("\n") == 1 and "lost in a repair" in later.err, later.err
    assert "run `marketcache populate AAPL -t 1d --start 2022-12-30 --end 2022-12-31`" in later.err
    assert (
        cli("info", "BTCUSDT", "1h", "--json", "--cache-dir", str(filled)).json()["timeframes"][
            "1h"
        ]["years"][0]["rows"]
        == 24 * 31
    )


def test_cleanup_commands(cli: Cli, filled: Path) -> None:
    (filled / "AAPL" / "1d" / ".2022.csv.gz.tmp-1-x").write_bytes(b"x")
    plan = cli("cleanup", "--dry-run", "--json", "--cache-dir", str(filled)).json()
    assert plan["dry_run"] and [a["reason"] for a in plan["actions"]] == [
        "temporary file of an interrupted write"
    ]
    assert cli("cleanup", "--cache-dir", str(filled)).code == 0
    assert not (filled / "AAPL" / "1d" / ".2022.csv.gz.tmp-1-x").exists()

    r = cli(
        "cleanup",
        "--before",
        "2023-01-01",
        "--symbol",
        "aapl",
        "--json",
        "--cache-dir",
        str(filled),
    )
    assert r.code == 0
    assert [(a["action"], a["year"]) for a in r.json()["actions"]] == [("delete-year", 2022)]
    assert cli("list", "AAPL", "--json", "--cache-dir", str(filled)).json()[0]["years"] == [2023]
    assert cli("list", "BTCUSDT", "--json", "--cache-dir", str(filled)).json()[0]["years"] == [
        2023,
        2024,
    ]

    r = cli("cleanup", "--older-than", "50y", "--timeframe", "1h", "--cache-dir", str(filled))
    assert r.code == 0 and "nothing to clean up" in r.out
    r = cli("cleanup", "--keep-years", "1", "--dry-run", "--json", "--cache-dir", str(filled))
    assert {a["year"] for a in r.json()["actions"]} == {2023, 2024}  # keeps only this year


@pytest.fixture
def held_lock(filled: Path) -> Iterator[Path]:
    """Another process holding the BTCUSDT/1h lock."""
    lock = UnifiedCache(filled).layout.lock_path("BTCUSDT", "1h")
    code = (
        "import fcntl,os,pathlib,sys,time; pathlib.Path(sys.argv[1]).parent.mkdir(parents=True, exist_ok=True);"
        "fd=os.open(sys.argv[1], os.O_RDWR|os.O_CREAT);"
        "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(30)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(lock)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    try:
        yield lock
    finally:
        proc.kill()
        proc.wait()


def test_a_held_lock_exits_4(cli: Cli, filled: Path, held_lock: Path, tmp_path: Path) -> None:
    conf = tmp_path / "fast.yaml"
    conf.write_text("settings: {lock_wait: 0.3}")
    r = cli("validate", "BTCUSDT", "--config", str(conf), "--cache-dir", str(filled))
    assert r.code == 4
    assert "BTCUSDT 1h is locked by another marketcache run" in one_error_line(r)
    fd = os.open(held_lock, os.O_RDWR)
    with pytest.raises(BlockingIOError):
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.close(fd)


def test_global_options_before_the_command(
    cli: Cli, filled: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`marketcache --cache-dir X info`, `marketcache -v populate …`: the options every command
    takes work before the command too, and an option after the command wins."""
    monkeypatch.setenv("MARKETCACHE_CACHE_DIR", str(tmp_path / "the-env-names-another-cache"))
    stats = cli("--cache-dir", str(filled), "--json", "info")
    assert stats.code == 0, stats.err
    assert stats.json()["symbols"] == 2, "--cache-dir before the command beats the environment"
    quiet = cli("-q", "--cache-dir", str(filled), "list")
    assert (quiet.code, quiet.out, quiet.err) == (0, "", "")
    loud = cli("-v", "--cache-dir", str(filled), "info", "BTCUSDT", "7m")
    assert loud.code == 2 and "Traceback" in loud.err
    bad = tmp_path / "bad.yaml"
    bad.write_text("providers: {binance: {rate_limit: {per_minute: lots}}}")
    conf = cli("--config", str(bad), "--cache-dir", str(filled), "list")
    assert conf.code == 2 and str(bad) in one_error_line(conf)
    after = cli(
        "--cache-dir", str(tmp_path / "nowhere"), "list", "--json", "--cache-dir", str(filled)
    )
    assert after.code == 0 and len(after.json()) == 2, "the option after the command wins"
    plan = cli("-v", "--json", "--cache-dir", str(tmp_path / "c"), "populate", "AAPL", "--dry-run")
    assert plan.code == 0, plan.err
    assert plan.json()["dry_run"] and plan.json()["results"][0]["status"] == "planned"
    assert "INFO" in plan.err, "-v before populate: progress as log lines"


def test_fundamentals_show_numbers_and_dates_as_people_read_them_and_json_has_the_envelope(
    cli: Cli, fake_yahoo: FakeYahoo, fake_av: FakeAlphaVantage, tmp_path: Path
) -> None:
    fake_yahoo.summaries["MSFT"] = {  # the shape of quoteSummary: {"raw", "fmt"} cells
        "summaryDetail": {"exDividendDate": {"raw": 1731628800, "fmt": "2024-11-15"},
                          "beta": {"raw": 0.9, "fmt": "0.90"}},
        "defaultKeyStatistics": {"lastFiscalYearEnd": {"raw": 1719705600, "fmt": "2024-06-30"},
                                 "sharesOutstanding": {"raw": 7433000000, "fmt": "7.43B"}},
        "price": {"symbol": "MSFT", "regularMarketTime": 1733000000},
    }  # fmt: skip
    fake_av.overviews["MSFT"] = {"Symbol": "MSFT", "CIK": "789019", "PERatio": "35.5"}
    conf = tmp_path / "p.yaml"
    conf.write_text(config_for(yahoo=fake_yahoo, alpha_vantage=fake_av))
    args = ("--config", str(conf), "--cache-dir", str(tmp_path / "c"))
    table = cli("fundamentals", "MSFT", *args)
    assert table.code == 0, table.err
    cells = {ln.split("│")[1].strip(): ln.split("│")[2].strip()
             for ln in table.out.splitlines() if ln.count("│") == 4}  # fmt: skip
    assert cells["CIK"] == "789019", cells  # an identifier, not 789019.0
    assert cells["exDividendDate"] == "2024-11-15" and cells["lastFiscalYearEnd"] == "2024-06-30"
    assert cells["regularMarketTime"] == "2024-11-30T20:53:20Z"
    assert cells["sharesOutstanding"] == "7433000000" and cells["PERatio"] == "35.5"

    doc = cli("fundamentals", "MSFT", "--json", *args).json()
    assert (doc["ok"], doc["exit_code"]) == (True, 0)
    fields = doc["results"][0]["fields"]
    assert fields["exDividendDate"] == {"value": 1731628800, "provider": "yahoo"}  # as given
    failed = cli("fundamentals", "NOPE", "--max-age", "0", "--json", *args)
    assert failed.code == 1
    assert (failed.json()["ok"], failed.json()["exit_code"]) == (False, 1)
    assert failed.json()["results"][0]["symbol"] == "NOPE"


def test_the_package_lists_its_names_without_importing_them() -> None:
    code = (
        "import sys, json, marketcache; names = dir(marketcache); "
        "print(json.dumps([names, [m for m in ('pandas', 'marketcache.cache.facade') if m in sys.modules]]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    names, imported = json.loads(out.stdout)
    assert {"DataManager", "UnifiedCache", "MarketCacheError", "load_settings"} <= set(names)
    assert "__version__" in names
    assert not {"Any", "importlib", "TYPE_CHECKING", "annotations"} & set(names), names
    assert imported == [], "dir() keeps the imports lazy"
    import marketcache

    assert all(getattr(marketcache, name) is not None for name in marketcache.__all__)


def test_the_facades_name_their_cache_and_never_a_password(tmp_path: Path) -> None:
    from marketcache import DataManager

    cache = UnifiedCache(tmp_path / "c", settings=parse_settings(""))
    assert repr(cache) == f"UnifiedCache({str(tmp_path / 'c')!r})"
    with DataManager(cache) as dm:
        assert repr(dm) == f"DataManager({str(tmp_path / 'c')!r})"
    url = "postgresql://me:s3cret@127.0.0.1:9/db?password=0ther&sslmode=require"
    remote = UnifiedCache(url, settings=parse_settings(""))  # connects on first use only
    shown = repr(remote) + repr(DataManager(remote))
    assert "s3cret" not in shown and "0ther" not in shown, shown
    assert "UnifiedCache('postgresql://me@127.0.0.1:9/db?sslmode=require" in shown, shown
    from marketcache.storage.urls import redact

    assert redact("ftp://ann:pw@host/x") == "ftp://ann@host/x"
    assert redact("/srv/cache") == "/srv/cache"


# What start-up may import (its cost is what shell completion pays on every Tab): the CLI's own
# modules, Typer, and — once a command reads a cache — the config's YAML and Rich for tables.
# Never pandas, numpy, pyarrow, pydantic (Typer's coercion, replaced in cli/params.py) or a
# provider library. Names starting with `_` (C helpers, setuptools' hook) and the module every
# Cython extension creates (yaml's C loader) are left aside.
START_UP_ALLOWED = {"marketcache", "typer", "shellingham", "annotated_doc", "yaml", "rich",
                    "cython_runtime"}  # fmt: skip
SHELL_ONLY = {
    "yaml",
    "rich",
    "marketcache.cache.facade",
    "marketcache.config.parser",
    "marketcache.cache.catalog",
}
IMPORTED = (
    "import json, os, sys\n"
    "from marketcache.cli.app import main\n"
    "try:\n"
    "    code = main(sys.argv[1:])\n"
    "except SystemExit as exc:  # shell completion exits from inside Typer\n"
    "    code = exc.code\n"
    "print(json.dumps({'code': code, 'modules': sorted(sys.modules),"
    " 'stdlib': sorted(sys.stdlib_module_names)}), file=sys.stderr)\n"
)


@pytest.mark.parametrize(
    ("args", "completing"),
    [
        (["--help"], ""),
        (["list"], ""),
        (["info"], ""),
        (["info", "BTCUSDT"], ""),
        (["list", "--json"], ""),
        ([], "marketcache li"),
        ([], "marketcache info --f"),
    ],
    ids=["help", "list", "info", "info-symbol", "list-json", "complete-command", "complete-option"],
)
def test_start_up_imports_only_what_the_command_needs(
    filled: Path, tmp_path: Path, args: list[str], completing: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARKETCACHE_")}
    env["MARKETCACHE_CACHE_DIR"] = str(filled)
    if completing:
        env.update(_MARKETCACHE_COMPLETE="complete_bash", COMP_WORDS=completing,
                   COMP_CWORD=str(len(completing.split()) - 1))  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", IMPORTED, *args], capture_output=True,
                          text=True, timeout=60, env=env, cwd=tmp_path)  # fmt: skip
    report = json.loads(proc.stderr.strip().splitlines()[-1])
    assert report["code"] == 0, proc.stderr
    modules, stdlib = set(report["modules"]), set(report["stdlib"])
    roots = {m.split(".")[0] for m in modules} - stdlib - {"__main__"}
    extra = {r for r in roots if not r.startswith("_")} - START_UP_ALLOWED
    assert not extra, f"{args or completing!r} imported {sorted(extra)}"
    if completing or args == ["--help"]:
        assert not SHELL_ONLY & modules, sorted(SHELL_ONLY & modules)
        assert proc.stdout.strip(), "completion answered"
    if args == ["list", "--json"]:
        assert "rich" not in roots, "JSON needs no Rich"


def test_a_symbols_file_that_is_not_utf8_exits_2_naming_its_line(
    cli: Cli, filled: Path, tmp_path: Path
) -> None:
    listed = tmp_path / "symbols.txt"
    listed.write_bytes(b"AAPL\n# a comment\n\xff\xfeM\x00S\x00F\x00T\x00\n")  # a UTF-16 paste
    r = cli("populate", "--symbols-file", str(listed), "--dry-run", "--cache-dir", str(filled))
    assert r.code == 2, r.err
    assert f"--symbols-file {listed}: line 3 is not UTF-8 text" in one_error_line(r)


def test_an_error_whose_text_holds_a_newline_is_one_line_that_keeps_every_part(
    cli: Cli, tmp_path: Path
) -> None:
    """The one-line rule joins lines, it does not cut: a path with a newline (a paste gone
    wrong) still ends in what to do."""
    r = cli("info", "--cache-dir", str(tmp_path / "data\ncache"), "--json")
    assert r.code == 2
    line = one_error_line(r)
    assert line.endswith("does not exist: check the path") and "data cache" in line, line
    assert r.json()["error"] == line.removeprefix("error: ")
