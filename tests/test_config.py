"""providers.yaml: typed settings, env interpolation, secrets, errors that name the key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from conftest import busiest_second, make_bars
from fakes import FakeAlphaVantage, FakeYahoo, config_for
from marketcache.config.files import default_config_text
from marketcache.config.parser import load_settings, parse_settings
from marketcache.core.calendars import expected_bars
from marketcache.core.symbols import AssetClass
from marketcache.core.timeframes import Timeframe
from marketcache.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
DEAD = "http://127.0.0.1:9"  # nothing listens: a provider the test does not use


def test_the_default_config_loads_and_matches_the_packaged_one() -> None:
    assert (ROOT / "providers.yaml").read_text() == default_config_text()
    s = parse_settings(default_config_text())
    assert s.providers["binance"].rate_limit.per_minute == 1100
    assert s.selection[0].symbol_type is AssetClass.CRYPTO
    assert s.selection[0].providers == ("binance", "yahoo")
    assert s.symbols["BTCUSDT"].aliases == {"yahoo": "BTC-USD"}
    assert s.datasets[1].symbols == ("AAPL", "MSFT")
    assert s.options.min_score == 0.8
    assert s.warnings == ()


def test_env_interpolation_and_secrets_never_show(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AV_KEY", "sekrit-123")
    s = parse_settings('providers: {alpha_vantage: {api_key: "${AV_KEY}"}}')
    key = s.providers["alpha_vantage"].api_key
    assert key.reveal() == "sekrit-123"
    assert "sekrit" not in str(key) and "sekrit" not in repr(s)
    monkeypatch.delenv("AV_KEY")
    assert (
        not parse_settings('providers: {alpha_vantage: {api_key: "${AV_KEY}"}}')
        .providers["alpha_vantage"]
        .api_key
    )


@pytest.mark.parametrize(
    ("text", "key", "what"),
    [
        (
            "providers: {binance: {rate_limit: {per_minute: fast}}}",
            "providers.binance.rate_limit.per_minute",
            "number",
        ),
        ("providers: {kraken: {}}", "providers.kraken", "unknown provider"),
        ("providers: {yahoo: {base_url: ftp://x}}", "providers.yahoo.base_url", "not an http"),
        (
            "providers: {binance: {reliability: 2}}",
            "providers.binance.reliability",
            "between 0 and 1",
        ),
        ("selection: [{providers: [nope]}]", "selection[0].providers", "unknown provider"),
        (
            "selection: [{symbol_type: bond, providers: [yahoo]}]",
            "selection[0].symbol_type",
            "crypto, stock, fx",
        ),
        (
            "datasets: [{symbols: [AAPL], timeframes: [7m], start: 2020-01-01}]",
            "datasets[0].timeframes",
            "unknown timeframe",
        ),
        ("datasets: [{symbols: [AAPL], start: '2020-1-x'}]", "datasets[0].start", "not a date"),
        ("datasets: [{symbols: [AAPL]}]", "datasets[0].start", "required"),
        (
            "datasets: [{symbols: ['..'], start: 2020-01-01}]",
            "datasets[0].symbols",
            "not a usable name",
        ),
        ("symbols: {AAPL: {calendar: MOON}}", "symbols.AAPL.calendar", "unknown calendar"),
        ("providers: [binance]", "providers", "mapping"),
        ("settings: {min_score: 3}", "settings.min_score", "between"),
    ],
)
def test_errors_name_the_file_and_key(text: str, key: str, what: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings(text, source="my.yaml")
    message = str(err.value)
    assert message.startswith("my.yaml: ")
    assert f"key '{key}'" in message
    assert what in message


def test_yaml_tags_and_broken_yaml_are_refused() -> None:
    with pytest.raises(ConfigError, match="invalid YAML"):
        parse_settings("providers: !!python/object/apply:os.system ['echo hi']")
    with pytest.raises(ConfigError, match="month must be in 1..12"):
        parse_settings("datasets: [{symbols: [AAPL], start: 2020-13-01}]")
    with pytest.raises(ConfigError, match=r"line \d"):
        parse_settings("providers:\n  binance: {base_url: [\n")


def test_unknown_keys_warn() -> None:
    s = parse_settings("providers: {binance: {colour: red}}\nextra: 1", source="p.yaml")
    assert set(s.warnings) == {
        "p.yaml: unknown key 'providers.binance.colour' ignored",
        "p.yaml: unknown key 'extra' ignored",
    }


def test_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MARKETCACHE_CONFIG", raising=False)
    assert load_settings().source == "<packaged default>"
    (tmp_path / "providers.yaml").write_text("settings: {min_score: 0.5}")
    assert load_settings().options.min_score == 0.5
    other = tmp_path / "other.yaml"
    other.write_text("settings: {min_score: 0.6}")
    monkeypatch.setenv("MARKETCACHE_CONFIG", str(other))
    assert load_settings().options.min_score == 0.6
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.yaml")


# ---- a partial providers.yaml is merged over the packaged defaults (issue 19.5) ------------


def test_a_partial_file_keeps_every_packaged_rate_limit_and_setting() -> None:
    s = parse_settings("providers: {binance: {base_url: https://api.binance.us}}", source="p.yaml")
    assert s.providers["binance"].base_url == "https://api.binance.us"
    assert s.providers["binance"].rate_limit.per_minute == 1100
    assert s.providers["binance"].reliability == 0.95
    assert s.providers["yahoo"].rate_limit.per_second == 2
    av = s.providers["alpha_vantage"].rate_limit
    assert (av.per_minute, av.per_day) == (5, 25)
    assert s.symbols["BTCUSDT"].aliases == {"yahoo": "BTC-USD"}
    assert [d.symbols for d in s.datasets] == [("BTCUSDT", "ETHUSDT"), ("AAPL", "MSFT")]
    assert s.warnings == ()


def test_the_merge_rule_mappings_merge_lists_and_rate_limits_replace_null_keeps() -> None:
    s = parse_settings(
        "providers:\n"
        "  binance: {rate_limit: {per_second: 5}}\n"  # a limit replaces the packaged one whole
        "  yahoo:\n"  # null: not set here
        "symbols: {AAPL: {alpha_vantage: AAPL.US}}\n"  # added beside the packaged BTCUSDT alias
        "datasets: [{symbols: [SOLUSDT], timeframes: [1h], start: 2024-01-01}]\n"
        "selection: [{providers: [binance]}]\n"
        "settings: {min_score: 0.5}\n"
    )
    binance = s.providers["binance"].rate_limit
    assert (binance.per_second, binance.per_minute) == (5, None)
    assert s.providers["binance"].archive_url == "https://data.binance.vision"
    assert s.providers["yahoo"].rate_limit.per_second == 2
    assert s.symbols["BTCUSDT"].aliases == {"yahoo": "BTC-USD"}
    assert s.symbols["AAPL"].aliases == {"alpha_vantage": "AAPL.US"}
    assert [d.symbols for d in s.datasets] == [("SOLUSDT",)]
    assert [r.providers for r in s.selection] == [("binance",)]
    assert s.options.min_score == 0.5 and s.options.lock_wait == 600
    assert parse_settings("datasets: []").datasets == ()


def test_a_provider_left_without_a_rate_limit_is_warned_about_by_name(
    cli: Any, tmp_path: Path
) -> None:
    conf = tmp_path / "p.yaml"
    conf.write_text(
        "providers: {yahoo: {rate_limit: {}}, binance: {enabled: false, rate_limit: {}}}"
    )
    assert parse_settings(conf.read_text(), source="p.yaml").warnings == (
        "p.yaml: providers.yahoo has no rate_limit, so its requests are not throttled: set one,"
        " e.g. providers.yahoo.rate_limit: {per_minute: 60}",
    )
    (tmp_path / "c").mkdir()
    r = cli("list", "--config", str(conf), "--cache-dir", str(tmp_path / "c"))
    warned = [line for line in r.err.splitlines() if "rate_limit" in line]
    assert r.code == 0 and len(warned) == 1 and "providers.yahoo" in warned[0], r.err


def test_a_partial_file_keeps_yahoos_limit_on_the_wire(
    cli: Any, fake_yahoo: FakeYahoo, tmp_path: Path
) -> None:
    """The file of the issue, pointed at the fakes: only base URLs. Four symbols fetched by four
    workers at once still reach Yahoo at most 2 a second (the packaged per_second: 2)."""
    symbols = [f"AB{c}" for c in "CDEF"]
    sessions = expected_bars(
        "XNYS", Timeframe("1d"), pd.Timestamp("2024-01-01"), pd.Timestamp("2024-02-01")
    )
    for sym in symbols:
        fake_yahoo.add(sym, "1d", make_bars("", 0, index=sessions))
    conf = tmp_path / "providers.yaml"
    conf.write_text(
        f"providers: {{binance: {{base_url: '{DEAD}'}}, yahoo: {{base_url: '{fake_yahoo.url}'}},"
        f" alpha_vantage: {{base_url: '{DEAD}'}}}}\n"
    )
    r = cli("populate", *symbols, "-t", "1d", "--start", "2024-01-01", "--end", "2024-02-01",
            "--workers", "4", "--json", "--config", str(conf), "--cache-dir", "c")  # fmt: skip
    assert r.code == 0, r.err
    assert sum(j["rows_added"] for j in r.json()["results"]) == 4 * len(sessions)
    assert len(fake_yahoo.arrivals) >= 4
    assert busiest_second(fake_yahoo.arrivals) <= 2, sorted(fake_yahoo.arrivals)


def test_a_partial_file_keeps_alpha_vantages_limit_on_the_wire(
    cli: Any, fake_av: FakeAlphaVantage, tmp_path: Path
) -> None:
    """Only a base URL and a short retry budget: the packaged 5 a minute still holds, so the
    sixth symbol's request never leaves (it waits past the budget and is reported)."""
    symbols = [f"AB{c}" for c in "CDEFGH"]
    days = expected_bars(
        "XNYS", Timeframe("1d"), pd.Timestamp("2024-01-01"), pd.Timestamp("2024-02-01")
    )
    for sym in symbols:
        fake_av.add_daily(sym, make_bars("", 0, index=days))
    conf = tmp_path / "providers.yaml"
    conf.write_text(
        f"providers: {{binance: {{base_url: '{DEAD}'}}, yahoo: {{base_url: '{DEAD}'}},"
        f" alpha_vantage: {{base_url: '{fake_av.url}', retry_budget: 1}}}}\n"
    )
    r = cli("populate", *symbols, "-t", "1d", "--start", "2024-01-01", "--end", "2024-02-01",
            "--provider", "alpha_vantage", "--workers", "6", "--json", "--config", str(conf),
            "--cache-dir", "c")  # fmt: skip
    assert len(fake_av.arrivals) == 5, sorted(fake_av.arrivals)
    jobs = r.json()["results"]
    assert sorted(j["status"] for j in jobs).count("ok") == 5 and r.code == 1, jobs


# ---- hostile config files (issue 20.8): one line naming the file and key, exit 2, fast -------


def _alias_bomb(levels: int, width: int = 9) -> str:
    """The billion laughs in fsspec options: each level a mapping of `width` aliases of the
    level below (872 bytes at 9 levels: 9**9 values once expanded)."""
    lines = ["settings:", "  storage_options:"]
    lines.append("    a: &a {" + ", ".join(f"k{i}: lol" for i in range(width)) + "}")
    for n in range(1, levels):
        name, prev = chr(ord("a") + n), chr(ord("a") + n - 1)
        lines.append(
            f"    {name}: &{name} {{" + ", ".join(f"k{i}: *{prev}" for i in range(width)) + "}"
        )
    return "\n".join(lines) + "\n"


def _run_bounded(args: list[str], cwd: Path) -> tuple[int, str, float, int]:
    """Run the installed CLI with at most 2 GiB of address space (a runaway dies instead of
    taking the machine down); exit code, stderr, seconds and peak RSS in MB."""
    import os
    import resource
    import subprocess
    import sys
    import time

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    err_path = cwd / "stderr.txt"
    started = time.monotonic()
    with open(err_path, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "marketcache", *args], cwd=cwd,
                                stdout=subprocess.DEVNULL, stderr=err, preexec_fn=cap)  # fmt: skip
    deadline = started + 60
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.02)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return (
        proc.returncode,
        err_path.read_text(),
        time.monotonic() - started,
        usage.ru_maxrss // 1024,
    )


HOSTILE_FILES = {
    "alias bomb": (_alias_bomb(9), "settings.storage_options.d", "YAML aliases expand"),
    "alias bomb in a list": (
        "x: &x [a, a, a, a, a, a, a, a, a, a]\n"
        + "".join(
            f"l{i}: &l{i} [{', '.join([f'*{p}'] * 10)}]\n"
            for i, p in enumerate(["x", "l0", "l1", "l2", "l3", "l4", "l5"])
        )
        + "datasets: [{symbols: *l6, start: 2024-01-01}]\n",
        "l2",
        "YAML aliases expand",
    ),
    "recursive alias": (
        "settings: {storage_options: &o {endpoint: {more: *o}}}\n",
        "settings.storage_options.endpoint.more",
        "refers to itself",
    ),
    "deep nesting": (
        "settings: {storage_options: " + "{a: " * 200 + "1" + "}" * 201 + "\n",
        "settings.storage_options",
        "nested deeper",
    ),
    "a huge file": ("# " + "x" * (2 << 20) + "\n", "", "may be at most 1,048,576"),
}


@pytest.mark.parametrize("case", list(HOSTILE_FILES))
def test_a_hostile_config_file_fails_fast_naming_the_file_and_key(
    case: str, tmp_path: Path
) -> None:
    text, key, what = HOSTILE_FILES[case]
    (tmp_path / "cache").mkdir()
    conf = tmp_path / "hostile.yaml"
    conf.write_text(text)
    code, err, seconds, peak_mb = _run_bounded(
        ["validate", "--config", str(conf), "--cache-dir", str(tmp_path / "cache")], tmp_path
    )
    lines = err.splitlines()
    assert code == 2, (code, err[-500:])
    assert len(lines) == 1 and lines[0].startswith(f"error: {conf}: "), err[-500:]
    assert what in lines[0] and (not key or f"key '{key}'" in lines[0]), lines[0]
    assert seconds < 20 and peak_mb < 500, (seconds, peak_mb)


NON_FINITE = [
    ("settings: {min_score: .nan}", "settings.min_score"),
    ("settings: {lock_wait: .inf}", "settings.lock_wait"),
    ("settings: {lock_wait: 1.0e+400}", "settings.lock_wait"),
    ("settings: {lease_seconds: .inf}", "settings.lease_seconds"),
    ("settings: {verified_empty_recheck_days: .nan}", "settings.verified_empty_recheck_days"),
    ("settings: {fundamentals_keep: " + "9" * 400 + "}", "settings.fundamentals_keep"),
    ("settings: {fundamentals_keep: 2.5}", "settings.fundamentals_keep"),
    ("providers: {binance: {timeout: .inf}}", "providers.binance.timeout"),
    ("providers: {yahoo: {retry_budget: .nan}}", "providers.yahoo.retry_budget"),
    ("providers: {yahoo: {retry_budget: .inf}}", "providers.yahoo.retry_budget"),
    (
        "providers: {alpha_vantage: {rate_limit: {per_minute: .inf}}}",
        "providers.alpha_vantage.rate_limit.per_minute",
    ),
    (
        "providers: {binance: {archive_rate_limit: {per_second: .nan}}}",
        "providers.binance.archive_rate_limit.per_second",
    ),
    ("providers: {binance: {reliability: .nan}}", "providers.binance.reliability"),
]


@pytest.mark.parametrize(("text", "key"), NON_FINITE)
def test_every_numeric_key_is_finite_and_in_range(
    cli: Any, tmp_path: Path, text: str, key: str
) -> None:
    """`min_score: .nan` used to make validate pass a year scoring 0.73; `.inf` timeouts and
    limits ended in an "unexpected" exit 1. Each is now exit 2 naming the key."""
    import time

    from marketcache import UnifiedCache

    root = tmp_path / "cache"
    holed = make_bars("2024-01-01", 1000).drop(index=range(100, 800))  # scores about 0.72
    UnifiedCache(root, settings=parse_settings("")).put(holed, "ABCUSDT", "1h")
    conf = tmp_path / "bad.yaml"
    conf.write_text(text + "\n")
    started = time.monotonic()
    r = cli("validate", "--config", str(conf), "--cache-dir", str(root))
    assert r.code == 2, (r.code, r.err)
    assert r.err.count("\n") == 1 and f"{conf}: key '{key}': must be" in r.err, r.err
    assert "Traceback" not in r.err and time.monotonic() - started < 10


def test_alpha_vantage_left_out_for_its_key_is_said_once_naming_the_variable(
    cli: Any, fake_yahoo: FakeYahoo, fake_binance: Any, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.delenv("ALPHAVANTAGE_API_KEY", raising=False)
    days = expected_bars(
        "XNYS", Timeframe("1d"), pd.Timestamp("2024-01-01"), pd.Timestamp("2024-02-01")
    )
    for sym in ("ABC", "ABD"):
        fake_yahoo.add(sym, "1d", make_bars("", 0, index=days))
    fake_binance.add("ABCUSDT", "1d", make_bars("2024-01-01", 31, "1D"))
    conf = tmp_path / "p.yaml"
    conf.write_text(config_for(binance=fake_binance, yahoo=fake_yahoo, extra=(
        "selection:\n  - {symbol_type: crypto, providers: [binance]}\n"
        "  - {symbol_type: stock, providers: [alpha_vantage, yahoo]}\n")))  # fmt: skip
    args = ("-t", "1d", "--start", "2024-01-01", "--end", "2024-02-01", "--config", str(conf),
            "--cache-dir", "c")  # fmt: skip
    r = cli("populate", "ABC", "ABD", *args, "--json")
    assert r.code == 0, r.err
    said = [line for line in r.err.splitlines() if "ALPHAVANTAGE_API_KEY" in line]
    assert len(said) == 1 and said[0].startswith("warning: alpha_vantage is left out"), r.err
    assert r.json()["warnings"] == [said[0].removeprefix("warning: ")]
    assert cli("populate", "ABC", *args, "-q").err == ""
    crypto = cli("populate", "ABCUSDT", *args)
    assert crypto.code == 0 and "ALPHAVANTAGE" not in crypto.err, "not asked for: not said"
