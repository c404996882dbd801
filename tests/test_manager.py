"""DataManager (read-through), fundamentals, and freshness — as a notebook and a CI job use them."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from conftest import CliResult, make_bars
from fakes import SUMMARY_PATH, FakeAlphaVantage, FakeBinance, FakeYahoo, config_for
from marketcache import DataManager, SymbolNotFound
from marketcache.config.parser import parse_settings
from marketcache.core.calendars import expected_bars
from marketcache.core.timeframes import Timeframe

Cli = Callable[..., CliResult]


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_get_ohlcv_fetches_what_is_missing_once_then_reads(
    fake_binance: FakeBinance, tmp_path: Path
) -> None:
    fake_binance.add("ABCUSDT", "1h", make_bars("2024-01-01", 24 * 20, "1h"))
    settings = parse_settings(config_for(binance=fake_binance))
    with DataManager(tmp_path / "c", settings=settings) as dm:
        first = dm.get_ohlcv("abcusdt", "1h", start="2024-01-02", end="2024-01-05")
        asked = len(fake_binance.data_requests())
        assert len(first) == 72 and asked >= 1
        second = dm.get_ohlcv("ABCUSDT", "1h", start="2024-01-02", end="2024-01-05")
        assert len(fake_binance.data_requests()) == asked, "the second call makes no request"
        pd.testing.assert_frame_equal(first, second)
        wider = dm.get_ohlcv("ABCUSDT", "1h", start="2024-01-01", end="2024-01-06")
        assert len(wider) == 120 and wider["timestamp"].is_monotonic_increasing
        # a pure read gives what is stored (empty outside it) and asks nothing
        asked = len(fake_binance.data_requests())
        assert dm.get_ohlcv("ABCUSDT", "1h", "2024-01-10", "2024-01-11", fetch_missing=False).empty
        assert len(fake_binance.data_requests()) == asked


def test_get_ohlcv_in_a_loop_leaks_no_thread_or_socket(
    fake_binance: FakeBinance, tmp_path: Path
) -> None:
    fake_binance.add("ABCUSDT", "1h", make_bars("2024-01-01", 24 * 40, "1h"))
    settings = parse_settings(config_for(binance=fake_binance))
    dm = DataManager(tmp_path / "c", settings=settings)
    dm.get_ohlcv("ABCUSDT", "1h", start="2024-01-01", end="2024-01-02")
    threads, fds = threading.active_count(), _fds()
    for day in range(2, 30):
        dm.get_ohlcv("ABCUSDT", "1h", start=f"2024-01-{day:02d}", end=f"2024-01-{day + 1:02d}")
    assert threading.active_count() <= threads
    assert _fds() <= fds + 2
    dm.close()


def test_errors_are_the_librarys_own(
    fake_binance: FakeBinance, fake_yahoo: FakeYahoo, tmp_path: Path
) -> None:
    settings = parse_settings(config_for(binance=fake_binance, yahoo=fake_yahoo))
    with DataManager(tmp_path / "c", settings=settings) as dm:
        with pytest.raises(SymbolNotFound, match="no provider knows NOPEUSDT"):
            dm.get_ohlcv("NOPEUSDT", "1d", start="2024-01-01", end="2024-01-10")
        assert dm.get_ohlcv("NOPEUSDT", "1d", fetch_missing=False).empty
    assert not (tmp_path / "c" / "NOPEUSDT").exists()


def test_get_many_latest_and_availability(fake_binance: FakeBinance, tmp_path: Path) -> None:
    for i, sym in enumerate(("AAAUSDT", "BBBUSDT")):
        fake_binance.add(sym, "1d", make_bars("2024-01-01", 30, "1D", seed=i))
    settings = parse_settings(config_for(binance=fake_binance))
    with DataManager(tmp_path / "c", settings=settings) as dm:
        many = dm.get_many(["AAAUSDT", "BBBUSDT"], "1d", start="2024-01-01", end="2024-01-31")
        assert list(many.columns[:2]) == ["symbol", "timestamp"]
        assert many.groupby("symbol").size().to_dict() == {"AAAUSDT": 30, "BBBUSDT": 30}
        last = dm.latest(["AAAUSDT", "BBBUSDT", "NONEUSDT"], "1d")
        assert last["symbol"].tolist() == ["AAAUSDT", "BBBUSDT"]
        assert (last["timestamp"] == pd.Timestamp("2024-01-30")).all()
        table = dm.availability()
        row = table.set_index("symbol").loc["AAAUSDT"]
        assert (row["rows"], row["first"][:10], row["last"][:10]) == (
            30,
            "2024-01-01",
            "2024-01-30",
        )
        assert bool(row["stale"]), "January 2024 is far behind the calendar today"
        assert row["quality"] == 1.0 and row["missing"] == 0


def test_info_stale_and_validate_max_age(
    cli: Cli, fake_binance: FakeBinance, tmp_path: Path
) -> None:
    now = pd.Timestamp.now(tz="UTC").tz_localize(None)
    fresh = pd.date_range(end=now.floor("h") - pd.Timedelta(hours=1), periods=48, freq="1h")
    fake_binance.add("NEWUSDT", "1h", make_bars("", 0, index=fresh, seed=1))
    fake_binance.add("OLDUSDT", "1h", make_bars("", 0, index=fresh[:24], seed=2))
    conf = tmp_path / "p.yaml"
    conf.write_text(config_for(binance=fake_binance))
    root = str(tmp_path / "c")
    for sym in ("NEWUSDT", "OLDUSDT"):
        r = cli("populate", sym, "-t", "1h", "--start", f"{fresh[0]:%Y-%m-%d %H:%M}",
                "--cache-dir", root, "--config", str(conf))  # fmt: skip
        assert r.code == 0, r.err
    info = cli("info", "--stale", "--json", "--cache-dir", root, "--config", str(conf)).json()
    assert [s["symbol"] for s in info["stale"]] == ["OLDUSDT"] and info["checked"] == 2
    assert info["stale"][0]["behind"] >= 23
    late = cli("validate", "--max-age", "6h", "--cache-dir", root, "--config", str(conf))
    assert late.code == 3 and "OLDUSDT 1h is stale" in late.err and "NEWUSDT" not in late.err
    ok = cli("validate", "NEWUSDT", "--max-age", "6h", "--cache-dir", root, "--config", str(conf))
    assert ok.code == 0, ok.err
    assert cli("validate", "--max-age", "soon", "--cache-dir", root).code == 2


def _summary_requests(server: FakeYahoo) -> int:
    return sum(p.startswith(SUMMARY_PATH) for p, _ in server.requests)


def test_fundamentals_twice_within_a_week_ask_once_and_combine_by_priority(
    cli: Cli, fake_yahoo: FakeYahoo, fake_av: FakeAlphaVantage, tmp_path: Path
) -> None:
    conf = tmp_path / "p.yaml"
    conf.write_text(config_for(yahoo=fake_yahoo, alpha_vantage=fake_av))
    root = str(tmp_path / "c")
    first = cli("fundamentals", "AAPL", "--json", "--cache-dir", root, "--config", str(conf))
    assert first.code == 0, first.err
    report = first.json()["results"][0]
    fields = report["fields"]
    assert fields["beta"] == {"value": 1.24, "provider": "yahoo"}  # Yahoo first; AV's Beta = beta
    assert "Beta" not in fields
    assert fields["PERatio"] == {"value": 37.5, "provider": "alpha_vantage"}  # kept apart
    assert fields["trailingPE"]["provider"] == "yahoo"
    assert "ForwardPE" not in fields and "maxAge" not in fields  # "None" and housekeeping dropped
    assert {s["provider"]: s["reused"] for s in report["snapshots"]} == {"yahoo": False,
                                                                          "alpha_vantage": False}  # fmt: skip
    asked = (_summary_requests(fake_yahoo), len(fake_av.data_requests()))
    assert asked == (1, 1)
    again = cli("fundamentals", "AAPL", "--json", "--cache-dir", root, "--config", str(conf))
    assert all(s["reused"] for s in again.json()["results"][0]["snapshots"])
    assert (_summary_requests(fake_yahoo), len(fake_av.data_requests())) == asked
    assert again.json()["results"][0]["fields"] == fields
    snaps = sorted(p.name for p in (Path(root) / "AAPL" / "fundamentals").iterdir())
    assert (
        len(snaps) == 2 and snaps[0].startswith("alpha_vantage_") and snaps[1].startswith("yahoo_")
    )
    doc = json.loads((Path(root) / "AAPL" / "fundamentals" / snaps[1]).read_text())
    assert doc["provider"] == "yahoo" and doc["fields"]["sector"] == "Technology"


def test_fundamentals_refresh_keep_failover_and_unknown_symbols(
    cli: Cli, fake_yahoo: FakeYahoo, fake_av: FakeAlphaVantage, tmp_path: Path
) -> None:
    conf = tmp_path / "p.yaml"
    conf.write_text(config_for(yahoo=fake_yahoo, alpha_vantage=fake_av, retry_budget=0.3)
                    + "settings: {fundamentals_keep: 3}\n")  # fmt: skip
    root = str(tmp_path / "c")
    args = ("--json", "--cache-dir", root, "--config", str(conf))
    for _ in range(5):  # --max-age 0 always fetches; same-second snapshots never collide
        assert cli("fundamentals", "AAPL", "--max-age", "0", "--provider", "yahoo", *args).code == 0
    kept = sorted((Path(root) / "AAPL" / "fundamentals").iterdir())
    assert len(kept) == 3, "only the newest 3 snapshots per provider are kept"
    fake_yahoo.fail_next(100, status=503)
    fake_yahoo.summaries = {}  # and yahoo would not know it anyway
    r = cli("fundamentals", "AAPL", "--max-age", "0", *args)
    assert r.code == 0, r.err
    fields = r.json()["results"][0]["fields"]
    assert fields["Beta"]["provider"] == "alpha_vantage"  # yahoo down: AV's fields stand in
    unknown = cli("fundamentals", "NOPE", "--max-age", "0", *args)
    assert unknown.code == 1 and "NOPE" in unknown.err


def test_a_daily_stock_series_is_not_stale_over_a_weekend() -> None:
    from marketcache.core.freshness import freshness

    friday = "2024-03-08T00:00:00"
    sunday = pd.Timestamp("2024-03-10 12:00")
    assert not freshness("ABC", "1d", "XNYS", friday, now=sunday).stale
    tuesday = pd.Timestamp("2024-03-12 23:00")  # Monday and Tuesday closed, nothing stored
    late = freshness("ABC", "1d", "XNYS", friday, now=tuesday)
    assert late.stale and late.behind == 2
    assert len(expected_bars("XNYS", Timeframe("1d"), pd.Timestamp(friday), tuesday)) == 3


def _today() -> pd.Timestamp:
    return pd.Timestamp.now(tz="UTC").tz_localize(None).normalize()


def test_strict_false_returns_what_is_cached_with_a_warning_when_no_provider_can_serve(
    fake_yahoo: FakeYahoo, tmp_path: Path
) -> None:
    from marketcache import MarketCacheWarning, ProviderUnavailable

    year = expected_bars(
        "XNYS", Timeframe("1d"), pd.Timestamp("2024-01-01"), pd.Timestamp("2025-01-01")
    )
    fake_yahoo.add("ABC", "1d", make_bars("", 0, index=year, seed=4))
    settings = parse_settings(config_for(yahoo=fake_yahoo, retry_budget=0.3))
    with DataManager(tmp_path / "c", settings=settings) as dm:
        assert len(dm.get_ohlcv("ABC", "1d", start="2024-01-01", end="2025-01-01")) == 252
        fake_yahoo.fail_next(1000, status=503)  # from now on every provider fails
        with pytest.raises(ProviderUnavailable, match="ABC 1d"):
            dm.get_ohlcv("ABC", "1d", start="2024-01-01")  # strict by default: all or nothing
        with pytest.warns(MarketCacheWarning, match="ABC 1d.*HTTP 503") as caught:
            got = dm.get_ohlcv("ABC", "1d", start="2024-01-01", strict=False)
        assert len(caught) == 1
        assert len(got) == 252 and got["timestamp"].iloc[-1] == year[-1]
    assert issubclass(MarketCacheWarning, UserWarning)


def test_an_open_end_asks_again_only_once_a_new_bar_can_have_closed(
    fake_yahoo: FakeYahoo, tmp_path: Path
) -> None:
    # the newest session is late at the provider: the open end keeps a tail to re-ask, but
    # until another session closes there is nothing new it could bring
    sessions = expected_bars("XNYS", Timeframe("1d"), pd.Timestamp("2015-01-01"), _today())
    fake_yahoo.add("MSFT", "1d", make_bars("", 0, index=sessions[:-1], seed=2))
    settings = parse_settings(config_for(yahoo=fake_yahoo))
    with DataManager(tmp_path / "c", settings=settings) as dm:
        began = _today()
        first = dm.get_ohlcv("MSFT", "1d", start="2015-01-01")
        assert len(first) == len(sessions) - 1
        assert _chart(fake_yahoo) == 1, "twelve years, one answer"
        for _ in range(9):
            assert len(dm.get_ohlcv("MSFT", "1d", start="2015-01-01")) == len(first)
        closed = len(expected_bars("XNYS", Timeframe("1d"), began, _today()))  # midnight passed
        assert _chart(fake_yahoo) == 1 + min(closed, 1)
        dm.get_ohlcv("MSFT", "1d", start="2014-01-01")  # an earlier start is a new range
        assert _chart(fake_yahoo) == 2 + min(closed, 1)


def _chart(server: FakeYahoo) -> int:
    return sum(p.startswith("/v8/finance/chart/") for p, _ in server.requests)


@pytest.mark.slow
def test_an_open_end_asks_again_after_the_next_bar_closes(
    fake_binance: FakeBinance, tmp_path: Path
) -> None:
    import time

    now = pd.Timestamp.now(tz="UTC").tz_localize(None)
    index = pd.date_range(end=now.floor("min") + pd.Timedelta(minutes=5), periods=200, freq="1min")
    fake_binance.add("NOWUSDT", "1m", make_bars("", 0, index=index, seed=6))
    settings = parse_settings(config_for(binance=fake_binance))
    with DataManager(tmp_path / "c", settings=settings) as dm:
        start = f"{index[0]:%Y-%m-%d %H:%M}"
        dm.get_ohlcv("NOWUSDT", "1m", start=start)
        asked = len(fake_binance.data_requests())
        minute = pd.Timestamp.now(tz="UTC").floor("min")
        dm.get_ohlcv("NOWUSDT", "1m", start=start)
        if pd.Timestamp.now(tz="UTC").floor("min") == minute:  # no bar closed in between
            assert len(fake_binance.data_requests()) == asked
        while pd.Timestamp.now(tz="UTC").floor("min") <= minute:
            time.sleep(0.5)
        before = len(fake_binance.data_requests())
        got = dm.get_ohlcv("NOWUSDT", "1m", start=start)
        assert len(fake_binance.data_requests()) == before + 1, "the new bar is asked for"
        assert got["timestamp"].iloc[-1] >= minute.tz_localize(None) - pd.Timedelta(minutes=1)


def test_fundamentals_without_the_alpha_vantage_key_say_it_is_left_out_once(
    cli: Cli, fake_yahoo: FakeYahoo, fake_av: FakeAlphaVantage, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Yahoo's fields alone, and one warning naming the variable — not a silent half answer
    that looks as if Alpha Vantage had nothing."""
    monkeypatch.delenv("ALPHAVANTAGE_API_KEY", raising=False)
    fake_yahoo.summaries["MSFT"] = fake_yahoo.summaries["AAPL"]
    conf = tmp_path / "p.yaml"
    conf.write_text(config_for(yahoo=fake_yahoo, alpha_vantage=fake_av))
    r = cli("fundamentals", "AAPL", "MSFT", "--cache-dir", str(tmp_path / "c"),
            "--config", str(conf))  # fmt: skip
    assert r.code == 0, r.err
    warned = [line for line in r.err.splitlines() if "alpha_vantage is left out" in line]
    assert len(warned) == 1 and "ALPHAVANTAGE_API_KEY is not set" in warned[0], r.err
    assert fake_av.data_requests() == []
    as_json = cli("fundamentals", "AAPL", "--json", "--max-age", "0",
                  "--cache-dir", str(tmp_path / "c"), "--config", str(conf))  # fmt: skip
    assert any("ALPHAVANTAGE_API_KEY" in w for w in as_json.json()["results"][0]["warnings"])


def test_a_provider_left_out_for_its_key_is_a_warning_in_a_notebook_once(
    fake_yahoo: FakeYahoo, fake_av: FakeAlphaVantage, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """What `populate` prints as a warning, DataManager raises as a MarketCacheWarning (once
    per DataManager, not on every call)."""
    from marketcache import MarketCacheWarning

    monkeypatch.delenv("ALPHAVANTAGE_API_KEY", raising=False)
    year = expected_bars(
        "XNYS", Timeframe("1d"), pd.Timestamp("2024-01-01"), pd.Timestamp("2024-03-01")
    )
    fake_yahoo.add("ABC", "1d", make_bars("", 0, index=year, seed=4))
    settings = parse_settings(
        config_for(yahoo=fake_yahoo, alpha_vantage=fake_av)
        + "selection:\n  - {symbol_type: stock, providers: [yahoo, alpha_vantage]}\n"
    )
    with DataManager(tmp_path / "c", settings=settings) as dm:
        with pytest.warns(MarketCacheWarning, match="ALPHAVANTAGE_API_KEY is not set") as caught:
            got = dm.get_ohlcv("ABC", "1d", start="2024-01-01", end="2024-02-01")
        assert len(got) == len(year[year < "2024-02-01"])
        assert sum("alpha_vantage" in str(w.message) for w in caught) == 1
        import warnings

        with warnings.catch_warnings(record=True) as later:
            warnings.simplefilter("always")
            dm.get_ohlcv("ABC", "1d", start="2024-01-01", end="2024-03-01")
        assert not [w for w in later if "alpha_vantage" in str(w.message)]
