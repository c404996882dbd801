"""populate end to end: the CLI, the real adapters, the fake servers, and request counting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import CliResult, make_bars
from fakes import FakeAlphaVantage, FakeBinance, FakeYahoo, config_for
from marketcache import UnifiedCache
from marketcache.config.parser import parse_settings
from marketcache.core.calendars import expected_bars
from marketcache.core.timeframes import Timeframe

Cli = Callable[..., CliResult]


def write_config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "providers.yaml"
    path.write_text(text)
    return str(path)


def populate(cli: Cli, conf: str, *args: str) -> CliResult:
    return cli("populate", *args, "--config", conf, "--cache-dir", "data-cache", "--json")


def cache_of(tmp_path: Path, conf: str) -> UnifiedCache:
    return UnifiedCache(tmp_path / "data-cache", settings=parse_settings(Path(conf).read_text()))


@pytest.fixture
def crypto(fake_binance: FakeBinance, tmp_path: Path) -> tuple[FakeBinance, str, pd.DataFrame]:
    series = make_bars("2023-12-01", 24 * 120, "1h", seed=5)  # 2023-12-01 .. 2024-03-30
    fake_binance.add("ABCUSDT", "1h", series)
    return fake_binance, write_config(tmp_path, config_for(binance=fake_binance)), series


def test_first_run_rerun_and_extension(
    cli: Cli, crypto: tuple[FakeBinance, str, pd.DataFrame], tmp_path: Path
) -> None:
    server, conf, series = crypto
    first = populate(
        cli, conf, "ABCUSDT", "-t", "1h", "--start", "2023-12-01", "--end", "2024-02-01"
    )
    assert first.code == 0, first.err
    report = first.json()
    job = report["results"][0]
    assert job["status"] == "ok" and job["providers"] == ["binance"]
    assert job["rows_added"] == 24 * 62
    assert len(server.data_requests()) == 2  # 1,488 bars: two pages of 1,000
    assert [r["start"][:10] for r in job["ranges_fetched"]] == ["2023-12-01", "2024-01-01"]
    assert job["gaps_left"] == [] and job["quality"] >= 0.99
    cache = cache_of(tmp_path, conf)
    stored = cache.get("ABCUSDT", "1h")
    assert np.array_equal(stored["close"].to_numpy(), series["close"].to_numpy()[: 24 * 62])

    server.requests.clear()
    again = populate(
        cli, conf, "ABCUSDT", "-t", "1h", "--start", "2023-12-01", "--end", "2024-02-01"
    )
    assert again.code == 0 and again.json()["results"][0]["status"] == "up-to-date"
    assert server.data_requests() == []  # a complete past range costs no request

    old_year = tmp_path / "data-cache" / "ABCUSDT" / "1h" / "2023.csv.gz"
    mtime = old_year.stat().st_mtime_ns
    server.requests.clear()
    ext = populate(cli, conf, "ABCUSDT", "-t", "1h", "--start", "2023-12-01", "--end", "2024-03-01")
    assert ext.code == 0
    assert ext.json()["results"][0]["rows_added"] == 24 * 29
    asked = server.data_requests()
    assert len(asked) == 1  # 697 bars (696 new + 1 overlap): one page
    assert pd.Timestamp(int(asked[0]["startTime"]), unit="ms") == pd.Timestamp("2024-01-31 23:00")
    assert old_year.stat().st_mtime_ns == mtime, "an extension never rewrites earlier years"
    meta = cache.metadata("ABCUSDT", "1h", 2024)
    assert meta["file_info"]["members"] == 2, "the month was appended, not rewritten"


def test_a_hole_in_the_middle_is_repaired_with_one_request(
    cli: Cli, crypto: tuple[FakeBinance, str, pd.DataFrame], tmp_path: Path
) -> None:
    server, conf, series = crypto
    part = series[series["timestamp"] < "2024-01-10"]
    cache_of(tmp_path, conf).put(part.drop(index=range(300, 340)), "ABCUSDT", "1h", "binance")
    r = populate(cli, conf, "ABCUSDT", "-t", "1h", "--start", "2023-12-01", "--end", "2024-01-10")
    assert r.code == 0
    job = r.json()["results"][0]
    assert job["rows_added"] == 40
    asked = server.data_requests()
    assert len(asked) == 1
    assert pd.Timestamp(int(asked[0]["startTime"]), unit="ms") == series["timestamp"].iloc[300]
    assert len(cache_of(tmp_path, conf).get("ABCUSDT", "1h")) == len(part)


def test_ranges_answered_empty_are_not_asked_again(
    cli: Cli, fake_binance: FakeBinance, tmp_path: Path
) -> None:
    symbol, interval, recorded = fake_binance.add_fixture("klines-XRPETH-1m.json")  # real gaps
    conf = write_config(tmp_path, config_for(binance=fake_binance))
    args = (
        "XRPETH",
        "-t",
        "1m",
        "--start",
        "2019-10-11",
        "--end",
        "2019-10-13 11:00",
        "--provider",
        "binance",
    )
    first = populate(cli, conf, *args)
    assert first.code == 0, first.err
    stored = cache_of(tmp_path, conf).get(symbol, interval)
    in_range = recorded[recorded["timestamp"] < "2019-10-13 11:00"]
    assert len(stored) == len(in_range)
    for col in ("open", "high", "low", "close", "volume"):  # value for value as recorded
        assert np.array_equal(stored[col].to_numpy(), in_range[col].to_numpy()), col
    # the holes inside the answer are recorded as answered empty, with when
    meta = cache_of(tmp_path, conf).metadata(symbol, interval, 2019)
    holes = meta["coverage"]["verified_empty"]
    assert holes and {e["answer"] for e in holes} == {"no bars"}
    missing = sum(
        (pd.Timestamp(e["end"]) - pd.Timestamp(e["start"])) // pd.Timedelta(minutes=1)
        for e in holes
    )
    assert (
        missing >= meta["data_quality"]["missing_bars"] > 1000
    )  # the recorded gaps, and any lead-in
    fake_binance.requests.clear()
    second = populate(cli, conf, *args)
    assert second.code == 0 and second.json()["results"][0]["status"] == "up-to-date"
    assert fake_binance.data_requests() == [], "answered-empty ranges are not asked again"
    # after the re-check age they are asked again
    Path(conf).write_text(Path(conf).read_text() + "settings: {verified_empty_recheck_days: 0}\n")
    third = populate(cli, conf, *args)
    assert third.code == 0 and len(fake_binance.data_requests()) >= 1


def test_holidays_are_not_gaps_over_a_full_nyse_year(
    cli: Cli, fake_yahoo: FakeYahoo, tmp_path: Path
) -> None:
    sessions = expected_bars(
        "XNYS", Timeframe("1d"), pd.Timestamp("2023-01-01"), pd.Timestamp("2024-01-01")
    )
    fake_yahoo.add("AAPL", "1d", make_bars("", 0, index=sessions, seed=9))
    conf = write_config(tmp_path, config_for(yahoo=fake_yahoo))
    r = populate(cli, conf, "AAPL", "-t", "1d", "--start", "2023-01-01", "--end", "2024-01-01")
    assert r.code == 0, r.err
    job = r.json()["results"][0]
    assert job["rows_added"] == 250 and job["providers"] == ["yahoo"]
    meta = cache_of(tmp_path, conf).metadata("AAPL", "1d", 2023)
    assert (
        meta["data_quality"]["gaps"] == 0
        and meta["data_quality"]["breakdown"]["completeness"] == 1.0
    )
    fake_yahoo.requests.clear()
    again = populate(cli, conf, "AAPL", "-t", "1d", "--start", "2023-01-01", "--end", "2024-01-01")
    assert again.json()["results"][0]["status"] == "up-to-date"
    assert fake_yahoo.data_requests() == []


def test_the_recorded_yahoo_daily_series_is_stored_as_traded_with_its_actions(
    cli: Cli, fake_yahoo: FakeYahoo, tmp_path: Path
) -> None:
    # a real answer: AAPL's 4:1 split went ex on its first bar, a 0.205 dividend on 2020-11-06
    _, _, body = fake_yahoo.add_fixture("chart-AAPL-2020-08-31-to-2020-11-07.json")
    conf = write_config(tmp_path, config_for(yahoo=fake_yahoo))
    r = populate(cli, conf, "AAPL", "-t", "1d", "--start", "2020-08-31", "--end", "2020-11-07")
    assert r.code == 0, r.err
    cache = cache_of(tmp_path, conf)
    stored = cache.get("AAPL", "1d")
    result = body["chart"]["result"][0]
    quote = result["indicators"]["quote"][0]
    for col in ("open", "high", "low", "close", "volume"):  # no split after a bar: as sent
        assert np.array_equal(stored[col].to_numpy(), np.array(quote[col], dtype=float)), col
    actions = cache.get_actions("AAPL")
    assert [(s.date, s.ratio) for s in actions.splits] == [("2020-08-31", 4.0)]
    assert [(d.ex_date, d.amount) for d in actions.dividends] == [("2020-11-06", 0.205)]
    # adj_close from the known actions (CRSP): 1 - 0.205 / the close before the ex date
    close = stored["close"].to_numpy()
    before = (stored["timestamp"] < "2020-11-06").to_numpy()
    factor = 1 - 0.205 / close[before][-1]
    assert np.allclose(stored["adj_close"].to_numpy()[before], close[before] * factor, rtol=1e-12)
    assert np.array_equal(stored["adj_close"].to_numpy()[~before], close[~before])
    # the recorded adjclose was computed as of 2025 (dividends beyond this answer's window),
    # which is why the cache computes adj_close from the actions it knows instead of storing it
    recorded = np.array(result["indicators"]["adjclose"][0]["adjclose"])
    assert not np.allclose(stored["adj_close"].to_numpy(), recorded, rtol=1e-3)
    dates = (
        pd.to_datetime(result["timestamp"], unit="s", utc=True)
        .tz_convert("America/New_York")
        .normalize()
    )
    assert np.array_equal(
        stored["timestamp"].to_numpy(), dates.tz_localize(None).to_numpy("datetime64[ns]")
    )
    info = cli(
        "info", "AAPL", "--cache-dir", str(tmp_path / "data-cache"), "--config", str(conf), "--json"
    )
    assert info.code == 0 and info.json()["corporate_actions"]["splits"][0]["ratio"] == 4.0


def test_a_provisional_last_bar_is_replaced_and_the_open_bar_never_stored(
    cli: Cli, fake_binance: FakeBinance, tmp_path: Path
) -> None:
    now = pd.Timestamp.now(tz="UTC").tz_localize(None).floor("min")
    index = pd.date_range(end=now, periods=120, freq="1min")  # the last one is still open
    series = make_bars("", 0, index=index, seed=4)
    fake_binance.add("NOWUSDT", "1m", series.iloc[:-30])
    conf = write_config(tmp_path, config_for(binance=fake_binance))
    args = ("NOWUSDT", "-t", "1m", "--start", str(index[0]))
    assert populate(cli, conf, *args).code == 0
    cache = cache_of(tmp_path, conf)
    last = cache.get("NOWUSDT", "1m")["timestamp"].iloc[-1]
    revised = series.copy()
    revised.loc[revised["timestamp"] == last, ["close", "high"]] = [999.0, 999.0]
    fake_binance.add("NOWUSDT", "1m", revised)
    r = populate(cli, conf, *args)
    assert r.code == 0
    stored = cache.get("NOWUSDT", "1m")
    assert stored.loc[stored["timestamp"] == last, "close"].item() == 999.0
    assert stored["timestamp"].iloc[-1] < pd.Timestamp.now(tz="UTC").tz_localize(None).floor("min")
    assert len(stored) >= 118


def test_dry_run_fetches_nothing(
    cli: Cli, crypto: tuple[FakeBinance, str, pd.DataFrame], tmp_path: Path
) -> None:
    server, conf, _ = crypto
    r = populate(
        cli,
        conf,
        "ABCUSDT",
        "-t",
        "1h",
        "--start",
        "2024-01-01",
        "--end",
        "2024-02-01",
        "--dry-run",
    )
    assert r.code == 0
    job = r.json()["results"][0]
    assert job["status"] == "planned"
    assert job["ranges_fetched"] == [
        {"start": "2024-01-01T00:00:00", "end": "2024-02-01T00:00:00", "provider": "binance"}
    ]
    assert server.data_requests() == []
    assert not (tmp_path / "data-cache" / "ABCUSDT" / "1h" / "2024.csv.gz").exists()
    table = cli("populate", "ABCUSDT", "-t", "1h", "--start", "2024-01-01", "--end", "2024-02-01",
                "--dry-run", "--config", conf, "--cache-dir", "data-cache")  # fmt: skip
    assert "fetch plan" in table.out and "binance" in table.out


def test_one_bad_symbol_does_not_stop_the_others(
    cli: Cli, crypto: tuple[FakeBinance, str, pd.DataFrame], tmp_path: Path
) -> None:
    server, conf, _ = crypto
    server.add("DEFUSDT", "1h", make_bars("2024-01-01", 100, "1h"))
    symbols = tmp_path / "symbols.txt"
    symbols.write_text("# my list\nABCUSDT\nNOPEUSDT  # delisted\n\nDEFUSDT\n")
    r = populate(cli, conf, "--symbols-file", str(symbols), "-t", "1h", "--start", "2024-01-01",
                 "--end", "2024-01-05", "--workers", "2")  # fmt: skip
    assert r.code == 1
    report = r.json()
    by_symbol = {j["symbol"]: j for j in report["results"]}
    assert by_symbol["ABCUSDT"]["status"] == "ok" and by_symbol["DEFUSDT"]["status"] == "ok"
    assert by_symbol["NOPEUSDT"]["status"] == "failed"
    assert "binance does not list NOPEUSDT" in " ".join(by_symbol["NOPEUSDT"]["errors"])
    assert report["summary"]["failed"] == 1 and not report["ok"]
    assert "NOPEUSDT" in r.err


def test_failover_to_yahoo_when_binance_answers_503(
    cli: Cli, fake_binance: FakeBinance, fake_yahoo: FakeYahoo, tmp_path: Path
) -> None:
    served = make_bars("2024-01-01", 48, "1D", seed=8)
    fake_binance.add("ABCUSDT", "1d", served)
    fake_yahoo.add("ABC-USD", "1d", served, tz="UTC")
    fake_binance.fail_next(1000, status=503)
    conf = write_config(
        tmp_path, config_for(binance=fake_binance, yahoo=fake_yahoo, retry_budget=1.0)
    )
    r = populate(cli, conf, "ABCUSDT", "-t", "1d", "--start", "2024-01-01", "--end", "2024-02-18")
    assert r.code == 0, r.err
    job = r.json()["results"][0]
    assert job["providers"] == ["yahoo"] and job["rows_added"] == 48
    stored = cache_of(tmp_path, conf).get("ABCUSDT", "1d")
    assert np.array_equal(stored["close"].to_numpy(), served["close"].to_numpy())
    meta = cache_of(tmp_path, conf).metadata("ABCUSDT", "1d", 2024)
    assert [s["provider"] for s in meta["coverage"]["sources"]] == ["yahoo"]
    assert len(fake_binance.data_requests()) >= 2, "binance was tried (and retried) first"


def test_a_failed_range_is_recorded_and_reported(
    cli: Cli, fake_binance: FakeBinance, tmp_path: Path
) -> None:
    fake_binance.add("ABCUSDT", "1h", make_bars("2024-01-01", 48, "1h"))
    fake_binance.fail_next(1000, status=503)
    conf = write_config(tmp_path, config_for(binance=fake_binance, retry_budget=0.5))
    r = populate(
        cli,
        conf,
        "ABCUSDT",
        "-t",
        "1h",
        "--start",
        "2024-01-01",
        "--end",
        "2024-01-03",
        "--provider",
        "binance",
    )
    assert r.code == 1
    job = r.json()["results"][0]
    assert job["status"] == "failed" and "HTTP 503" in job["gaps_left"][0]["reason"]
    meta = cache_of(tmp_path, conf).metadata("ABCUSDT", "1h", 2024)
    assert meta["coverage"]["missing_ranges"][0]["start"] == "2024-01-01T00:00:00"


def test_bare_populate_refreshes_the_datasets(
    cli: Cli, fake_binance: FakeBinance, fake_av: FakeAlphaVantage, tmp_path: Path
) -> None:
    fake_binance.add("ABCUSDT", "1d", make_bars("2024-01-01", 30, "1D"))
    sessions = expected_bars(
        "XNYS", Timeframe("1h"), pd.Timestamp("2024-01-02"), pd.Timestamp("2024-01-05")
    )
    fake_av.add_intraday("IBM", "60min", make_bars("", 0, index=sessions))
    datasets = (
        "datasets:\n"
        "  - {symbols: [ABCUSDT], timeframes: [1d], start: 2024-01-01, end: 2024-01-31}\n"
        "  - {symbols: [IBM], timeframes: [1h], start: 2024-01-02, end: 2024-01-05}\n"
    )
    conf = write_config(
        tmp_path, config_for(binance=fake_binance, alpha_vantage=fake_av, extra=datasets)
    )
    r = populate(cli, conf)
    assert r.code == 0, r.err
    got = {(j["symbol"], j["timeframe"]): j for j in r.json()["results"]}
    assert got[("ABCUSDT", "1d")]["rows_added"] == 30
    assert got[("IBM", "1h")]["providers"] == ["alpha_vantage"]
    assert got[("IBM", "1h")]["rows_added"] == len(sessions) == 21


def test_a_held_lock_exits_4(
    cli: Cli, crypto: tuple[FakeBinance, str, pd.DataFrame], tmp_path: Path
) -> None:
    _, conf, _ = crypto
    Path(conf).write_text(Path(conf).read_text() + "settings: {lock_wait: 0.3}\n")
    lock = UnifiedCache(tmp_path / "data-cache").layout.lock_path("ABCUSDT", "1h")
    lock.parent.mkdir(parents=True)
    code = ("import fcntl,os,sys,time; fd=os.open(sys.argv[1], os.O_RDWR|os.O_CREAT);"
            "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(30)")  # fmt: skip
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(lock)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        r = populate(
            cli, conf, "ABCUSDT", "-t", "1h", "--start", "2024-01-01", "--end", "2024-01-02"
        )
        assert r.code == 4
        assert r.json()["results"][0]["status"] == "locked"
    finally:
        holder.kill()
        holder.wait()
    assert (
        populate(
            cli, conf, "ABCUSDT", "-t", "1h", "--start", "2024-01-01", "--end", "2024-01-02"
        ).code
        == 0
    )


def test_quiet_and_plain_output(cli: Cli, crypto: tuple[FakeBinance, str, pd.DataFrame]) -> None:
    _, conf, _ = crypto
    args = ("populate", "ABCUSDT", "-t", "1h", "--start", "2024-01-01", "--end", "2024-01-02",
            "--config", conf, "--cache-dir", "data-cache")  # fmt: skip
    table = cli(*args)
    assert table.code == 0 and "ABCUSDT" in table.out and "ok" in table.out
    quiet = cli(*args, "-q")
    assert quiet.code == 0 and quiet.out == "" and quiet.err == ""


def test_the_installed_command_runs_as_a_cron_job_would(
    crypto: tuple[FakeBinance, str, pd.DataFrame], tmp_path: Path
) -> None:
    _, conf, _ = crypto
    env = {
        **os.environ,
        "MARKETCACHE_CONFIG": conf,
        "MARKETCACHE_CACHE_DIR": str(tmp_path / "cron-cache"),
    }
    out = subprocess.run(
        [sys.executable, "-m", "marketcache", "populate", "ABCUSDT", "-t", "1h", "--start", "2024-01-01",
         "--end", "2024-01-03", "--json"],
        capture_output=True, text=True, env=env, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["summary"]["rows_added"] == 48
    assert out.stderr == ""  # no progress bar when stderr is not a terminal


# ---- one request per answer; holes at the end ------------------------------------------------


def _sessions_to_now(start: str) -> pd.DatetimeIndex:
    """Every XNYS session from `start` whose daily bar has closed by now (UTC)."""
    today = pd.Timestamp.now(tz="UTC").tz_localize(None).normalize()
    return expected_bars("XNYS", Timeframe("1d"), pd.Timestamp(start), today)


def _chart_requests(server: FakeYahoo, symbol: str) -> int:
    return sum(p == f"/v8/finance/chart/{symbol}" for p, _ in server.requests)


def test_a_provider_whose_answer_runs_to_now_is_asked_once_per_series_per_run(
    cli: Cli, fake_yahoo: FakeYahoo, tmp_path: Path
) -> None:
    # Yahoo's daily answer runs from its start to now: one answer covers all twelve years. The
    # newest session is not published yet (late, not absent): re-asked, never recorded missing.
    sessions = _sessions_to_now("2015-01-01")
    for seed, symbol in enumerate(("MSFT", "NVDA")):
        fake_yahoo.add(symbol, "1d", make_bars("", 0, index=sessions[:-1], seed=seed))
    conf = write_config(tmp_path, config_for(yahoo=fake_yahoo))
    first = populate(cli, conf, "MSFT", "NVDA", "-t", "1d", "--start", "2015-01-01")
    assert first.code == 0, first.err
    jobs = first.json()["results"]
    assert [j["status"] for j in jobs] == ["ok", "ok"]
    assert [j["rows_added"] for j in jobs] == [len(sessions) - 1] * 2
    assert len(jobs[0]["ranges_fetched"]) == sessions[-1].year - 2015 + 1  # committed per year
    assert (_chart_requests(fake_yahoo, "MSFT"), _chart_requests(fake_yahoo, "NVDA")) == (1, 1)
    meta = cache_of(tmp_path, conf).metadata("MSFT", "1d", sessions[-1].year)
    assert meta["coverage"]["missing_ranges"] == [], "a late session is not a hole"

    fake_yahoo.requests.clear()
    again = populate(cli, conf, "MSFT", "NVDA", "-t", "1d", "--start", "2015-01-01")
    assert again.code == 0, again.err
    rerun = again.json()
    assert [j["status"] for j in rerun["results"]] == ["up-to-date", "up-to-date"]
    assert rerun["summary"]["rows_added"] == 0
    assert (_chart_requests(fake_yahoo, "MSFT"), _chart_requests(fake_yahoo, "NVDA")) == (1, 1)


def test_alpha_vantage_full_history_is_asked_once_per_run_also_after_a_failover(
    cli: Cli, fake_av: FakeAlphaVantage, tmp_path: Path
) -> None:
    # Yahoo is down (nothing listens): the chain fails over to Alpha Vantage, whose
    # TIME_SERIES_DAILY outputsize=full answer is the whole history. The provider lacks one
    # session a year: those holes are re-asked on the re-run, in the same single request.
    sessions = _sessions_to_now("2015-01-01")
    frame = make_bars("", 0, index=sessions[:-1], seed=3)
    lacking = frame.groupby(frame["timestamp"].dt.year).nth(100)["timestamp"]
    fake_av.add_daily("NVDA", frame[~frame["timestamp"].isin(lacking)])
    conf = write_config(tmp_path, config_for(alpha_vantage=fake_av))
    first = populate(cli, conf, "NVDA", "-t", "1d", "--start", "2015-01-01")
    job = first.json()["results"][0]
    assert job["providers"] == ["alpha_vantage"], job
    assert len(fake_av.data_requests()) == 1, [q.get("outputsize") for q in fake_av.data_requests()]
    assert job["rows_added"] == len(frame) - len(lacking)
    assert job["status"] == "partial", "the sessions the provider lacks are holes"
    assert sorted(g["start"][:10] for g in job["gaps_left"]) == [f"{t:%Y-%m-%d}" for t in lacking]
    assert first.code == 0 == _validate_code(cli, conf, "NVDA"), "one session a year: ok scores"
    fake_av.requests.clear()  # re-run with Alpha Vantage alone (Yahoo down would leave doubt)
    again = populate(cli, conf, "NVDA", "-t", "1d", "--start", "2015-01-01", "--provider",
                     "alpha_vantage")  # fmt: skip
    rerun = again.json()["results"][0]
    assert len(fake_av.data_requests()) == 1 and rerun["rows_added"] == 0
    assert rerun["status"] == "partial" and len(rerun["gaps_left"]) == len(lacking)


def _validate_code(cli: Cli, conf: str, symbol: str) -> int:
    return cli("validate", symbol, "--config", conf, "--cache-dir", "data-cache").code


def test_the_sessions_after_a_delisted_stocks_last_bar_are_missing_ranges(
    cli: Cli, fake_yahoo: FakeYahoo, tmp_path: Path
) -> None:
    traded = expected_bars(
        "XNYS", Timeframe("1d"), pd.Timestamp("2022-01-01"), pd.Timestamp("2024-06-15")
    )  # the last session is Friday 2024-06-14
    fake_yahoo.add("GONE", "1d", make_bars("", 0, index=traded, seed=1))
    conf = write_config(tmp_path, config_for(yahoo=fake_yahoo))
    r = populate(cli, conf, "GONE", "-t", "1d", "--start", "2022-01-01")
    job = r.json()["results"][0]
    assert job["rows_added"] == len(traded)
    assert job["status"] == "partial", job
    assert job["gaps_left"][0]["start"] == "2024-06-17T00:00:00", job["gaps_left"]
    cache = cache_of(tmp_path, conf)
    tail = cache.metadata("GONE", "1d", 2024)
    assert [(m["start"], m["end"]) for m in tail["coverage"]["missing_ranges"]] == [
        ("2024-06-17T00:00:00", "2025-01-01T00:00:00")
    ]
    assert tail["data_quality"]["score"] < 0.8, "the empty half of the year counts"
    for year in range(2025, pd.Timestamp.now().year + 1):  # years after it: missing, whole
        assert cache.metadata("GONE", "1d", year)["coverage"]["missing_ranges"], year
    validate = _validate_code(cli, conf, "GONE")
    assert validate == 3 and r.code == validate, (r.code, validate)
    fake_yahoo.requests.clear()
    again = populate(cli, conf, "GONE", "-t", "1d", "--start", "2022-01-01")
    assert again.json()["results"][0]["status"] == "partial" and again.code == 3
    assert _chart_requests(fake_yahoo, "GONE") == 1


def test_a_crypto_series_whose_trades_stop_records_the_rest_as_answered_empty(
    cli: Cli, fake_binance: FakeBinance, tmp_path: Path
) -> None:
    fake_binance.add("GONEUSDT", "1h", make_bars("2024-01-01", 24 * 100, "1h"))  # to 2024-04-10
    conf = write_config(tmp_path, config_for(binance=fake_binance))
    args = ("GONEUSDT", "-t", "1h", "--start", "2024-01-01", "--end", "2024-06-01")
    r = populate(cli, conf, *args)
    assert r.code == 0, r.err
    meta = cache_of(tmp_path, conf).metadata("GONEUSDT", "1h", 2024)
    # a 24/7 market's REST answer without bars is "no trades", like any hole inside it
    assert [(e["start"], e["end"]) for e in meta["coverage"]["verified_empty"]] == [
        ("2024-04-10T00:00:00", "2024-06-01T00:00:00")
    ]
    fake_binance.requests.clear()
    again = populate(cli, conf, *args)
    assert again.json()["results"][0]["status"] == "up-to-date"
    assert fake_binance.data_requests() == [], "the answered-empty tail is not asked again"
    assert _validate_code(cli, conf, "GONEUSDT") == again.code == 0
