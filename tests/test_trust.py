"""Trustworthy prices: one basis across splits, dividends and failover; no lost sessions;
holes that count. Every test runs the real adapters against fakes that answer "as of" a date.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

from conftest import CliResult, make_bars
from fakes import FakeAlphaVantage, FakeBinance, FakeYahoo, config_for
from marketcache import UnifiedCache
from marketcache.config.parser import load_settings
from marketcache.core.calendars import expected_bars
from marketcache.core.symbols import AssetClass
from marketcache.core.timeframes import Timeframe
from marketcache.core.validate import OHLCVValidator

Cli = Callable[..., CliResult]

NVDA_SPLIT = [("2021-07-20", 4.0)]
NVDA_DIVIDENDS = [("2021-03-09", 0.16), ("2021-06-09", 0.16), ("2021-08-31", 0.04),
                  ("2021-11-30", 0.04)]  # fmt: skip
MSFT_DIVIDENDS = [("2021-02-17", 0.56), ("2021-05-19", 0.56), ("2021-08-18", 0.56),
                  ("2021-11-17", 0.62)]  # fmt: skip


def sessions(calendar: str, start: str, end: str) -> pd.DatetimeIndex:
    return expected_bars(calendar, Timeframe("1d"), pd.Timestamp(start), pd.Timestamp(end))


def nvda_as_traded() -> pd.DataFrame:
    """A year of NVDA-like bars as traded: ~750 before the 4:1 split of 2021-07-20, ~190 after."""
    frame = make_bars("", 0, index=sessions("XNYS", "2021-01-04", "2022-02-01"), seed=21)
    for col in ("open", "high", "low", "close"):
        frame[col] = (frame[col] * 7.5).round(2)
    after = frame["timestamp"] >= "2021-07-20"
    for col in ("open", "high", "low", "close"):
        frame.loc[after, col] = (frame.loc[after, col] / 4).round(2)
    frame.loc[after, "volume"] *= 4
    return frame


def msft_as_traded() -> pd.DataFrame:
    frame = make_bars("", 0, index=sessions("XNYS", "2021-01-04", "2022-01-01"), seed=22)
    for col in ("open", "high", "low", "close"):
        frame[col] = (frame[col] * 2.5).round(2)
    return frame


def config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "providers.yaml"
    path.write_text(text)
    return path


def populate(cli: Cli, root: Path, conf: Path, *args: str) -> CliResult:
    return cli("populate", *args, "--cache-dir", str(root), "--config", str(conf), "--json")


def open_cache(root: Path, conf: Path) -> UnifiedCache:
    return UnifiedCache(root, settings=load_settings(conf), lock_wait=5)


def assert_same_series(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """Equal rows; prices and volume to 1e-9, adj_close to 1e-6 relative."""
    assert got["timestamp"].tolist() == want["timestamp"].tolist()
    for col in ("open", "high", "low", "close", "volume"):
        assert np.allclose(got[col], want[col], rtol=1e-9, atol=0), col
    assert np.allclose(got["adj_close"], want["adj_close"], rtol=1e-6, atol=0)


def yahoo_adjclose(server: FakeYahoo, symbol: str, start: str, end: str) -> pd.Series:
    """What Yahoo itself answers as `adjclose` today (a fresh download's adjusted close)."""
    p1, p2 = (int(pd.Timestamp(d, tz="UTC").timestamp()) for d in (start, end))
    body = requests.get(
        f"{server.url}/v8/finance/chart/{symbol}",
        params={"interval": "1d", "period1": p1, "period2": p2},
        timeout=5,
    ).json()
    result = body["chart"]["result"][0]
    return pd.Series(result["indicators"]["adjclose"][0]["adjclose"])


# ---- 1 + 2: a split and dividends between nightly runs ---------------------------------------


@pytest.mark.parametrize("nights", [["2021-03-01", "2021-06-01", "2021-07-01", "2021-07-19",
                                     "2021-07-21", "2021-09-02", "2021-12-01", "2022-02-01"]])  # fmt: skip
def test_nvda_across_its_split_filled_night_by_night_equals_a_fresh_download(
    cli: Cli, fake_yahoo: FakeYahoo, tmp_path: Path, nights: list[str]
) -> None:
    truth = nvda_as_traded()
    fake_yahoo.add("NVDA", "1d", truth, splits=NVDA_SPLIT, dividends=NVDA_DIVIDENDS)
    conf = config(tmp_path, config_for(yahoo=fake_yahoo))
    nightly, fresh = tmp_path / "nightly", tmp_path / "fresh"
    for night in nights:
        fake_yahoo.as_of = pd.Timestamp(night)
        r = populate(cli, nightly, conf, "NVDA", "--start", "2021-01-04", "--end", night)
        assert r.code == 0, r.err
    r = populate(cli, fresh, conf, "NVDA", "--start", "2021-01-04", "--end", nights[-1])
    assert r.code == 0, r.err
    got, want = (
        open_cache(nightly, conf).get("NVDA", "1d"),
        open_cache(fresh, conf).get("NVDA", "1d"),
    )
    assert_same_series(got, want)
    # stored prices are as traded: the close before the split is ~4x the one after it
    assert np.allclose(got["close"], truth["close"], rtol=1e-9)
    june25 = got.set_index("timestamp").loc["2021-06-25", "close"]
    july20 = got.set_index("timestamp").loc["2021-07-20", "close"]
    assert june25 / july20 > 3, "one basis: the split day is the only big move"
    # adj_close equals what Yahoo answers as adjclose today, for every bar
    adj = yahoo_adjclose(fake_yahoo, "NVDA", "2021-01-01", "2022-02-01")
    assert np.allclose(got["adj_close"].to_numpy(), adj.to_numpy(), rtol=1e-6)
    # adjust="splits" gives Yahoo's split-adjusted close; "all" gives its adjclose
    split_adj = open_cache(nightly, conf).get("NVDA", "1d", adjust="splits")
    before = (got["timestamp"] < "2021-07-20").to_numpy()
    assert np.allclose(split_adj["close"][before], got["close"][before] / 4, rtol=1e-12)
    assert np.allclose(split_adj["volume"][before], got["volume"][before] * 4, rtol=1e-12)
    total = open_cache(nightly, conf).get("NVDA", "1d", adjust="all")
    assert np.allclose(total["close"], got["adj_close"], rtol=1e-9)
    actions = open_cache(nightly, conf).get_actions("NVDA")
    assert [(s.date, s.ratio) for s in actions.splits] == NVDA_SPLIT
    assert [(d.ex_date, round(d.amount, 9)) for d in actions.dividends] == NVDA_DIVIDENDS
    # the split day is a known split, not a jump; validate passes
    v = cli("validate", "NVDA", "--cache-dir", str(nightly), "--config", str(conf), "--json")
    assert v.code == 0, v.out
    meta = open_cache(nightly, conf).metadata("NVDA", "1d", 2021)
    assert meta["data_quality"]["counts"]["jumps"] == 0


def test_msft_dividends_over_three_nightly_runs_equal_a_fresh_download(
    cli: Cli, fake_yahoo: FakeYahoo, tmp_path: Path
) -> None:
    fake_yahoo.add("MSFT", "1d", msft_as_traded(), dividends=MSFT_DIVIDENDS)
    conf = config(tmp_path, config_for(yahoo=fake_yahoo))
    nightly, fresh = tmp_path / "nightly", tmp_path / "fresh"
    for night in ("2021-05-01", "2021-09-01", "2022-01-01"):
        fake_yahoo.as_of = pd.Timestamp(night)
        r = populate(cli, nightly, conf, "MSFT", "--start", "2021-01-04", "--end", night)
        assert r.code == 0, r.err
    notes = " ".join(r.json()["results"][0]["notes"])
    assert "adj_close recomputed for 2021" in notes  # the November dividend re-adjusted 2021
    populate(cli, fresh, conf, "MSFT", "--start", "2021-01-04", "--end", "2022-01-01")
    got = open_cache(nightly, conf).get("MSFT", "1d")
    assert_same_series(got, open_cache(fresh, conf).get("MSFT", "1d"))
    adj = yahoo_adjclose(fake_yahoo, "MSFT", "2021-01-01", "2022-01-01")
    assert np.allclose(got["adj_close"].to_numpy(), adj.to_numpy(), rtol=1e-6)
    # no adjustment step at a run seam: adj_close / close changes only at ex dates
    ratio = (got["adj_close"] / got["close"]).to_numpy()
    steps = got["timestamp"][1:][~np.isclose(ratio[1:], ratio[:-1], rtol=1e-12)]
    assert [f"{t:%Y-%m-%d}" for t in steps] == [d for d, _ in MSFT_DIVIDENDS]


# ---- 3 + 4: failover between bases, and a provider without adj_close -------------------------


def test_a_failover_night_to_alpha_vantage_keeps_one_basis_and_every_adj_close(
    cli: Cli, fake_yahoo: FakeYahoo, fake_av: FakeAlphaVantage, tmp_path: Path
) -> None:
    truth = nvda_as_traded()
    fake_yahoo.add("NVDA", "1d", truth, splits=NVDA_SPLIT, dividends=NVDA_DIVIDENDS)
    fake_av.add_daily("NVDA", truth)  # Alpha Vantage TIME_SERIES_DAILY: as traded
    conf = config(tmp_path, config_for(yahoo=fake_yahoo, alpha_vantage=fake_av, retry_budget=0.3))
    nightly, fresh = tmp_path / "nightly", tmp_path / "fresh"
    for night in ("2021-07-01", "2021-07-22", "2021-09-02", "2022-02-01"):
        fake_yahoo.as_of = pd.Timestamp(night)
        if night == "2021-07-22":  # yahoo is down tonight: alpha vantage fills
            fake_yahoo.fail_next(200, status=503)
        r = populate(cli, nightly, conf, "NVDA", "--start", "2021-01-04", "--end", night)
        fake_yahoo.faults.clear()
        assert r.code == 0, r.err
        if night == "2021-07-22":
            assert r.json()["results"][0]["providers"] == ["alpha_vantage"]
    populate(cli, fresh, conf, "NVDA", "--start", "2021-01-04", "--end", "2022-02-01")
    cache = open_cache(nightly, conf)
    got = cache.get("NVDA", "1d")
    assert_same_series(got, open_cache(fresh, conf).get("NVDA", "1d"))
    assert not got["adj_close"].isna().any(), "no provider erased a stored adj_close"
    sources = cache.metadata("NVDA", "1d", 2021)["coverage"]["sources"]
    for a, b in itertools.pairwise(sources):
        assert a["end"] < b["start"], f"two providers claim the same bars: {a} {b}"


def test_a_value_a_provider_lacks_never_erases_the_stored_one(
    cache: UnifiedCache, bars: Callable[..., pd.DataFrame]
) -> None:
    df = bars("2024-01-01", 5, "1D")
    df["adj_close"] = df["close"] * 0.9
    cache.put(df, "ABC", "1d", provider="yahoo")
    again = df.drop(columns="adj_close").iloc[2:].copy()
    again.loc[again.index[0], "volume"] = np.nan  # an answer with a hole in one cell
    put = cache.put(again, "ABC", "1d", provider="alpha_vantage")
    stored = cache.get("ABC", "1d")
    assert np.array_equal(stored["adj_close"].to_numpy(), df["adj_close"].to_numpy())
    assert np.array_equal(stored["volume"].to_numpy(), df["volume"].to_numpy())
    assert put.rows_updated == 0


def test_a_seam_in_another_basis_is_never_spliced_the_series_is_fetched_again(
    cli: Cli, fake_yahoo: FakeYahoo, tmp_path: Path
) -> None:
    """A cache written by an older version holds split-adjusted bars; extending it compares
    the re-asked overlap, finds another basis and fetches the whole series again."""
    truth = nvda_as_traded()
    fake_yahoo.add("NVDA", "1d", truth, splits=NVDA_SPLIT, dividends=NVDA_DIVIDENDS)
    conf = config(tmp_path, config_for(yahoo=fake_yahoo))
    root, fresh = tmp_path / "old", tmp_path / "fresh"
    old = truth[truth["timestamp"] < "2021-07-01"].copy()
    for col in ("open", "high", "low", "close"):
        old[col] = old[col] / 4  # stored the way Yahoo answered after the split
    open_cache(root, conf).put(old, "NVDA", "1d", provider="yahoo")
    fake_yahoo.as_of = pd.Timestamp("2021-09-01")
    r = populate(cli, root, conf, "NVDA", "--start", "2021-01-04", "--end", "2021-09-01")
    assert r.code == 0, r.err
    job = r.json()["results"][0]
    assert any("seam" in n and "fetched the series again" in n for n in job["notes"]), job
    populate(cli, fresh, conf, "NVDA", "--start", "2021-01-04", "--end", "2021-09-01")
    assert_same_series(
        open_cache(root, conf).get("NVDA", "1d"), open_cache(fresh, conf).get("NVDA", "1d")
    )


# ---- 5 + 6: sessions east of UTC, FX, and put of tz-aware daily frames ---------------------


@pytest.mark.parametrize(
    ("symbol", "calendar", "tz", "open_at", "months"),
    [
        ("BHP.AX", "XASX", "Australia/Sydney", "10:00", ("2021-01-04", "2021-01-18", "2021-02-01", "2021-02-15")),
        ("AIR.NZ", "XNZE", "Pacific/Auckland", "10:00", ("2021-01-04", "2021-01-18", "2021-02-01", "2021-02-15")),
        ("EURUSD=X", "24/5", "Europe/London", "00:00", ("2021-06-01", "2021-06-15", "2021-07-01", "2021-07-15")),
    ],
)  # fmt: skip
def test_ranges_filled_in_several_runs_lose_no_session(
    cli: Cli, fake_yahoo: FakeYahoo, tmp_path: Path,
    symbol: str, calendar: str, tz: str, open_at: str, months: tuple[str, ...],
) -> None:  # fmt: skip
    days = expected_bars(
        calendar, Timeframe("1d"), pd.Timestamp(months[0]), pd.Timestamp(months[-1])
    )
    fake_yahoo.add(symbol, "1d", make_bars("", 0, index=days, seed=5), tz=tz, open_at=open_at)
    conf = config(tmp_path, config_for(yahoo=fake_yahoo))
    root = tmp_path / "c"
    for start, end in itertools.pairwise(months):
        r = populate(cli, root, conf, symbol, "--start", start, "--end", end)
        assert r.code == 0, r.err
    cache = open_cache(root, conf)
    assert cache.get(symbol, "1d")["timestamp"].tolist() == list(days)
    coverage = cache.metadata(symbol, "1d", 2021)["coverage"]
    assert coverage["missing_ranges"] == [] and coverage["verified_empty"] == []


def test_a_session_the_provider_does_not_return_is_a_missing_range_not_verified_empty(
    cli: Cli, fake_yahoo: FakeYahoo, tmp_path: Path
) -> None:
    days = sessions("XNYS", "2024-03-01", "2024-04-01")
    served = make_bars("", 0, index=days, seed=6).drop(index=[5])  # Yahoo lacks one session
    fake_yahoo.add("ABC", "1d", served)
    conf = config(tmp_path, config_for(yahoo=fake_yahoo))
    r = populate(cli, tmp_path / "c", conf, "ABC", "--start", "2024-03-01", "--end", "2024-04-01")
    assert r.code == 0, r.err
    cov = open_cache(tmp_path / "c", conf).metadata("ABC", "1d", 2024)["coverage"]
    assert cov["verified_empty"] == []
    assert [m["start"][:10] for m in cov["missing_ranges"]] == [f"{days[5]:%Y-%m-%d}"]
    assert r.json()["results"][0]["gaps_left"], "the report names the missing session"


def test_put_of_a_yfinance_style_frame_stores_session_dates(
    cli: Cli, fake_yahoo: FakeYahoo, tmp_path: Path
) -> None:
    days = sessions("XNYS", "2024-03-01", "2024-03-28")
    frame = make_bars("", 0, index=days, seed=7)
    fake_yahoo.add("ABC", "1d", frame)
    conf = config(tmp_path, config_for(yahoo=fake_yahoo))
    yf_like = frame.set_index(days.tz_localize("America/New_York")).drop(columns="timestamp")
    cache = open_cache(tmp_path / "c", conf)
    cache.put(yf_like, "ABC", "1d", provider="yahoo")
    assert (cache.get("ABC", "1d")["timestamp"].dt.hour == 0).all()
    r = populate(cli, tmp_path / "c", conf, "ABC", "--start", "2024-03-01", "--end", "2024-03-28")
    assert r.code == 0, r.err
    assert len(cache.get("ABC", "1d")) == len(days)


# ---- 7: holes lower the score ---------------------------------------------------------------


def test_a_year_whose_ranges_all_failed_fails_validate(
    cli: Cli, fake_yahoo: FakeYahoo, tmp_path: Path
) -> None:
    fake_yahoo.add(
        "ABC", "1d", make_bars("", 0, index=sessions("XNYS", "2023-01-01", "2024-01-01"))
    )
    fake_yahoo.fail_next(500, status=503)
    conf = config(tmp_path, config_for(yahoo=fake_yahoo, retry_budget=0.2))
    root = str(tmp_path / "c")
    r = populate(cli, Path(root), conf, "ABC", "--start", "2023-01-01", "--end", "2024-01-01")
    assert r.code == 1
    v = cli("validate", "--cache-dir", root, "--config", str(conf), "--json")
    assert v.code == 3, v.out
    meta = open_cache(Path(root), conf).metadata("ABC", "1d", 2023)
    assert meta["data_quality"]["breakdown"]["completeness"] == 0.0
    assert meta["data_quality"]["score"] < 0.8


def test_a_failed_head_of_the_range_counts_against_completeness(
    cli: Cli, fake_yahoo: FakeYahoo, tmp_path: Path
) -> None:
    days = sessions("XNYS", "2023-01-01", "2024-01-01")
    fake_yahoo.add("ABC", "1d", make_bars("", 0, index=days))
    conf = config(tmp_path, config_for(yahoo=fake_yahoo, retry_budget=0.2))
    root = tmp_path / "c"
    populate(cli, root, conf, "ABC", "--start", "2023-07-01", "--end", "2024-01-01")
    fake_yahoo.fail_next(500, status=503)
    r = populate(cli, root, conf, "ABC", "--start", "2023-01-01", "--end", "2024-01-01")
    assert r.code == 1
    dq = open_cache(root, conf).metadata("ABC", "1d", 2023)["data_quality"]
    half = (days >= "2023-07-01").sum() / len(days)
    assert dq["breakdown"]["completeness"] == pytest.approx(half, abs=1e-6)


# ---- 8: the provider's clock judges a closed bar -------------------------------------------


def test_a_machine_ahead_of_the_exchange_never_stores_a_half_formed_bar(
    cli: Cli, fake_binance: FakeBinance, tmp_path: Path
) -> None:
    now = pd.Timestamp.now(tz="UTC").tz_localize(None)
    fake_binance.skew = pd.Timedelta(minutes=-5)  # the exchange is 5 minutes behind us
    index = pd.date_range(end=now.floor("min"), periods=60, freq="1min")
    fake_binance.add("ABCUSDT", "1m", make_bars("", 0, index=index, seed=8))
    conf = config(tmp_path, config_for(binance=fake_binance))
    r = populate(
        cli, tmp_path / "c", conf, "ABCUSDT", "-t", "1m", "--start", f"{index[0]:%Y-%m-%d %H:%M}"
    )
    assert r.code == 0, r.err
    stored = open_cache(tmp_path / "c", conf).get("ABCUSDT", "1m")
    exchange_now = pd.Timestamp.now(tz="UTC").tz_localize(None) - pd.Timedelta(minutes=5)
    assert stored["timestamp"].iloc[-1] + pd.Timedelta(minutes=1) <= exchange_now.ceil("s")
    assert stored["timestamp"].iloc[-1] < now.floor("min") - pd.Timedelta(minutes=3)


# ---- the validator and split-sized jumps ------------------------------------------------------


def test_a_split_sized_jump_without_a_known_split_is_reported_and_a_known_one_is_not() -> None:
    frame = make_bars("", 0, index=sessions("XNYS", "2021-07-01", "2021-08-01"), seed=9)
    after = frame["timestamp"] >= "2021-07-20"
    for col in ("open", "high", "low", "close"):
        frame.loc[after, col] /= 4
    unknown = OHLCVValidator(Timeframe("1d"), "XNYS", AssetClass.STOCK).validate(frame)
    assert unknown.counts.split_like_jumps == 1 and unknown.counts.jumps == 1
    assert any("split's size" in e and "2021-07-20" in e for e in unknown.errors)
    known = OHLCVValidator(
        Timeframe("1d"), "XNYS", AssetClass.STOCK, splits={"2021-07-20": 4.0}
    ).validate(frame)
    assert known.counts.jumps == 0 and known.counts.split_like_jumps == 0


# ---- validate --against-source ---------------------------------------------------------------


def test_validate_against_source_reports_restated_bars_and_fix_replaces_them(
    cli: Cli, fake_yahoo: FakeYahoo, tmp_path: Path
) -> None:
    truth = msft_as_traded()
    fake_yahoo.add("MSFT", "1d", truth, dividends=MSFT_DIVIDENDS)
    conf = config(tmp_path, config_for(yahoo=fake_yahoo))
    root = str(tmp_path / "c")
    populate(cli, Path(root), conf, "MSFT", "--start", "2021-01-04", "--end", "2022-01-01")
    args = (
        "validate",
        "MSFT",
        "--against-source",
        "--cache-dir",
        root,
        "--config",
        str(conf),
        "--json",
    )
    same = cli(*args)
    assert same.code == 0, same.out
    assert same.json()["summary"]["bars_restated"] == 0
    restated = truth.copy()  # the source revises three closes and two volumes
    restated.loc[[10, 11, 12], "close"] = restated.loc[[10, 11, 12], "close"] * 1.01
    restated.loc[[10, 11, 12], "high"] = restated.loc[[10, 11, 12], ["high", "close"]].max(axis=1)
    restated.loc[[40, 41], "volume"] += 100
    fake_yahoo.add("MSFT", "1d", restated, dividends=MSFT_DIVIDENDS)
    found = cli(*args)
    assert found.code == 3
    year = found.json()["years"][0]
    assert (year["restated"], year["volume"], year["missing"], year["extra"]) == (3, 2, 0, 0)
    assert year["max_rel_diff"] == pytest.approx(0.01, rel=0.05)
    assert year["first_restated"].startswith(f"{truth['timestamp'][10]:%Y-%m-%d}")
    fixed = cli(*args, "--fix")
    assert fixed.code == 0, fixed.out
    assert fixed.json()["years"][0]["status"] == "fixed"
    stored = open_cache(Path(root), conf).get("MSFT", "1d")
    assert np.allclose(stored["close"], restated["close"], rtol=1e-12)
    assert cli(*args).code == 0
    sampled = cli(*args, "--sample", "1")
    assert sampled.code == 0 and len(sampled.json()["years"]) == 1
    late = cli(*args, "--since", "2021-12-01")
    assert late.json()["years"][0]["compared"] == (truth["timestamp"] >= "2021-12-01").sum()
    assert cli("validate", "--since", "2021-12-01", "--cache-dir", root).code == 2
