"""Derived timeframes: built from the cached base over calendar buckets, never partial."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import CliResult, make_bars
from fakes import FakeAlphaVantage, FakeBinance, config_for
from marketcache import UnifiedCache
from marketcache.config.parser import load_settings
from marketcache.core.calendars import expected_bars
from marketcache.core.timeframes import Timeframe

Cli = Callable[..., CliResult]


def binance_hours(minutes: pd.DataFrame) -> pd.DataFrame:
    """What Binance's own 1h klines are: every trade of the hour (the minutes that exist)."""
    g = minutes.set_index("timestamp").resample("1h")
    out = pd.DataFrame({"open": g["open"].first(), "high": g["high"].max(), "low": g["low"].min(),
                        "close": g["close"].last(), "volume": g["volume"].sum()}).dropna()  # fmt: skip
    return out.reset_index()


def populate(cli: Cli, root: Path, conf: Path, *args: str) -> CliResult:
    return cli("populate", *args, "--cache-dir", str(root), "--config", str(conf), "--json")


def test_1h_derived_from_the_recorded_1m_binance_data_equals_the_providers_1h(
    cli: Cli, fake_binance: FakeBinance, tmp_path: Path
) -> None:
    symbol, _, minutes = fake_binance.add_fixture("klines-XRPETH-1m.json")  # real gaps
    fake_binance.add(symbol, "1h", binance_hours(minutes))
    conf = tmp_path / "p.yaml"
    conf.write_text(config_for(binance=fake_binance))
    start, end = "2019-10-11", "2019-10-14"
    derived = populate(cli, tmp_path / "d", conf, symbol, "-t", "1h", "--derive-from", "1m",
                       "--start", start, "--end", end)  # fmt: skip
    assert derived.code == 0, derived.err
    jobs = {j["timeframe"]: j for j in derived.json()["results"]}
    assert jobs["1h"]["providers"] == ["derived:1m"] and jobs["1h"]["requests"] == 0
    asked = populate(cli, tmp_path / "p", conf, symbol, "-t", "1h", "--start", start, "--end", end)
    assert asked.code == 0, asked.err
    ours = UnifiedCache(tmp_path / "d", settings=load_settings(conf)).get(symbol, "1h")
    theirs = UnifiedCache(tmp_path / "p", settings=load_settings(conf)).get(symbol, "1h")
    both = ours.merge(theirs, on="timestamp", suffixes=("", "_binance"))
    # every hour matches Binance's own kline: the recording stops at 11:19 and Binance answers
    # no minute after it (a 24/7 market: no trades), so the last hour is complete too
    assert len(both) == len(ours) == len(theirs) > 40
    for col in ("open", "high", "low", "close", "volume"):
        assert np.allclose(both[col], both[f"{col}_binance"], rtol=1e-12), col
    meta = UnifiedCache(tmp_path / "d", settings=load_settings(conf)).metadata(symbol, "1h", 2019)
    assert meta["data_source"] == "derived:1m"
    assert meta["coverage"]["missing_ranges"] == []


def _nyse_minutes(days: str, until: str) -> pd.DataFrame:
    index = expected_bars("XNYS", Timeframe("1m"), pd.Timestamp(days), pd.Timestamp(until))
    return make_bars("", 0, index=index, seed=4)


def test_a_derived_1d_is_the_session_early_close_included_and_never_partial(
    cli: Cli, fake_av: FakeAlphaVantage, tmp_path: Path
) -> None:
    minutes = _nyse_minutes("2023-11-20", "2023-11-28")  # Thanksgiving week: 24th closes 13:00
    served = minutes[minutes["timestamp"] < "2023-11-27 15:00"]  # as of mid-session on the 27th
    fake_av.add_intraday("ABC", "1min", served)
    conf = tmp_path / "p.yaml"
    conf.write_text(config_for(alpha_vantage=fake_av, retry_budget=1))
    r = populate(cli, tmp_path / "c", conf, "ABC", "-t", "1d", "--derive-from", "1m",
                 "--start", "2023-11-20", "--end", "2023-11-28")  # fmt: skip
    assert r.code == 0, r.err
    cache = UnifiedCache(tmp_path / "c", settings=load_settings(conf))
    daily = cache.get("ABC", "1d").set_index("timestamp")
    sessions = ["2023-11-20", "2023-11-21", "2023-11-22", "2023-11-24"]
    assert [f"{d:%Y-%m-%d}" for d in daily.index] == sessions  # no 23rd (holiday), no 27th
    early = minutes[minutes["timestamp"].dt.strftime("%Y-%m-%d") == "2023-11-24"]
    assert early["timestamp"].iloc[-1] == pd.Timestamp("2023-11-24 17:59")  # 13:00 New York
    row = daily.loc["2023-11-24"]
    assert (row["open"], row["close"]) == (early["open"].iloc[0], early["close"].iloc[-1])
    assert row["high"] == early["high"].max() and row["low"] == early["low"].min()
    assert row["volume"] == pytest.approx(early["volume"].sum(), rel=1e-12)
    missing = cache.metadata("ABC", "1d", 2023)["coverage"]["missing_ranges"]
    assert [(m["start"][:10], m["reason"]) for m in missing] == [
        ("2023-11-27", "base timeframe incomplete")
    ]
    # the session ends: the next run extends the base and re-derives that bucket alone
    fake_av.add_intraday("ABC", "1min", minutes)
    again = populate(cli, tmp_path / "c", conf, "ABC", "-t", "1d", "--derive-from", "1m",
                     "--start", "2023-11-20", "--end", "2023-11-28")  # fmt: skip
    job = next(j for j in again.json()["results"] if j["timeframe"] == "1d")
    # one range: the 27th, after re-asking the last three stored sessions (21st, 22nd, 24th)
    assert [f["start"][:10] for f in job["ranges_fetched"]] == ["2023-11-21"]
    assert "2023-11-27" in {f"{d:%Y-%m-%d}" for d in cache.get("ABC", "1d")["timestamp"]}
    assert not cache.metadata("ABC", "1d", 2023)["coverage"]["missing_ranges"]


def test_derive_from_a_coarser_base_is_a_usage_error(cli: Cli, tmp_path: Path) -> None:
    r = cli("populate", "ABCUSDT", "-t", "1m", "--derive-from", "1h", "--cache-dir", str(tmp_path))
    assert r.code == 2 and "finer" not in r.err and "--derive-from 1h" in r.err
