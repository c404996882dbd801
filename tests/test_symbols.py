from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import make_bars
from fakes import FakeBinance, FakeYahoo, config_for
from marketcache import UnifiedCache
from marketcache.config.parser import parse_settings
from marketcache.core.symbols import (
    AssetClass,
    classify,
    decode_symbol,
    encode_symbol,
    normalize_symbol,
)
from marketcache.errors import UsageError
from marketcache.storage.layout import CacheLayout


@pytest.mark.parametrize(
    ("symbol", "folder"),
    [
        ("aapl", "AAPL"),
        ("BRK.B", "BRK.B"),
        ("EURUSD=X", "EURUSD=X"),
        ("^GSPC", "^GSPC"),
        ("A B", "A%20B"),
        (".X", "%2EX"),
        ("_METADATA", "%5FMETADATA"),
        ("C:X", "C%3AX"),
        ("€", "%E2%82%AC"),
    ],
)
def test_encoding_is_safe_and_reversible(symbol: str, folder: str) -> None:
    assert encode_symbol(symbol) == folder
    assert decode_symbol(folder) == symbol.upper()


@pytest.mark.parametrize("bad", ["", " ", ".", "..", "A\x00B", "X" * 65, "a\nb"])
def test_unusable_symbols_are_refused(bad: str) -> None:
    with pytest.raises(UsageError):
        encode_symbol(bad)


def test_foreign_folder_names_are_not_symbols() -> None:
    assert decode_symbol("_metadata") is None
    assert decode_symbol("btcusdt") is None  # we never write lower case
    assert decode_symbol("%2") is None


@given(st.text(min_size=1, max_size=80))
@settings(max_examples=300, deadline=None)
def test_no_symbol_resolves_outside_the_root(
    tmp_path_factory: pytest.TempPathFactory, text: str
) -> None:
    root = Path("/tmp/marketcache-hypothesis-root")
    layout = CacheLayout(root)
    try:
        path = layout.data_path(text, "1d", 2024)
    except UsageError:
        return
    assert root in path.resolve().parents
    assert path.parent.parent.parent == root
    assert decode_symbol(path.parent.parent.name) == normalize_symbol(text)


@pytest.mark.parametrize(
    ("symbol", "kind"),
    [
        ("BTCUSDT", AssetClass.CRYPTO),
        ("ETHBTC", AssetClass.CRYPTO),
        ("BTC/USD", AssetClass.CRYPTO),
        ("BTC-USD", AssetClass.CRYPTO),
        ("EURUSD=X", AssetClass.FX),
        ("AAPL", AssetClass.STOCK),
        ("OCDO.L", AssetClass.STOCK),
        ("ETH", AssetClass.STOCK),
    ],
)
def test_classification(symbol: str, kind: AssetClass) -> None:
    assert classify(symbol) is kind


def test_classification_override() -> None:
    assert classify("AAPL", "crypto") is AssetClass.CRYPTO


# ---- the library parts of issue 19.12 -----------------------------------------------------


def test_a_pair_written_with_a_slash_names_the_same_series(tmp_path: Path) -> None:
    """ccxt and freqtrade write BTC/USDT; it is the series BTCUSDT, not a second one."""
    cache = UnifiedCache(tmp_path / "c", settings=parse_settings(""))
    cache.put(make_bars("2024-01-01", 24), "BTC/USDT", "1h", provider="binance")
    cache.put(make_bars("2024-01-02", 24), "btcusdt", "1h", provider="binance")
    assert cache.list_symbols() == ["BTCUSDT"]
    assert len(cache.get("BTC/USDT", "1h")) == len(cache.get("BTCUSDT", "1h")) == 48
    assert [p.name for p in (tmp_path / "c").iterdir() if p.name != "_metadata"] == ["BTCUSDT"]
    assert classify(normalize_symbol("BTC/EUR")) is AssetClass.CRYPTO


@pytest.mark.parametrize(
    ("given", "series", "kind"),
    [("EUR/USD", "EURUSD=X", AssetClass.FX), ("usd/jpy", "USDJPY=X", AssetClass.FX),
     ("ETH/BTC", "ETHBTC", AssetClass.CRYPTO), ("BTC/USD", "BTCUSD", AssetClass.CRYPTO)],
)  # fmt: skip
def test_a_slash_joins_only_what_is_a_pair(given: str, series: str, kind: AssetClass) -> None:
    assert normalize_symbol(given) == series and classify(series) is kind


def test_a_share_class_written_with_a_slash_is_refused_with_how_to_write_it(cli: Any) -> None:
    """BRK/B is Berkshire's class B (BRK-B), not a ticker BRKB nor a crypto pair."""
    with pytest.raises(UsageError, match=r"'BRK/B' is not a pair: write a share class as BRK-B"):
        normalize_symbol("BRK/B")
    r = cli("populate", "BRK/B", "--dry-run")
    assert r.code == 2 and "BRK-B" in r.err and len(r.err.strip().splitlines()) == 1, r.err


def test_populate_of_a_slash_pair_asks_binance_for_the_pair_and_stores_one_series(
    cli: Any, fake_binance: FakeBinance, tmp_path: Path
) -> None:
    fake_binance.add("ABCUSDT", "1h", make_bars("2024-01-01", 48))
    conf = tmp_path / "p.yaml"
    conf.write_text(config_for(binance=fake_binance))
    args = ("-t", "1h", "--start", "2024-01-01", "--end", "2024-01-03", "--json",
            "--config", str(conf), "--cache-dir", "c")  # fmt: skip
    first = cli("populate", "ABC/USDT", *args)
    assert first.code == 0, first.err
    assert first.json()["results"][0]["symbol"] == "ABCUSDT"
    assert {q["symbol"] for q in fake_binance.data_requests()} == {"ABCUSDT"}
    again = cli("populate", "ABCUSDT", *args)
    assert again.json()["results"][0]["requests"] == 0, "the same series: nothing to fetch"
    assert cli("list", "--json", "--cache-dir", "c").json() == [
        {"symbol": "ABCUSDT", "timeframes": ["1h"]}
    ]


NOT_TICKERS = ["../../etc", "a/b/c", "A\\B", "X..Y", "\ufeffAAPL", "AA\u200bPL", "AAPL\u202e"]


@pytest.mark.parametrize("bad", NOT_TICKERS)
def test_what_cannot_be_a_ticker_is_refused(bad: str) -> None:
    with pytest.raises(UsageError, match="ticker"):
        normalize_symbol(bad)


@pytest.mark.parametrize("bad", ["../../etc", "A\\B", "AA\u200bPL"])
def test_populate_refuses_a_non_ticker_with_exit_2_before_any_request(
    cli: Any, fake_binance: FakeBinance, fake_yahoo: FakeYahoo, tmp_path: Path, bad: str
) -> None:
    conf = tmp_path / "p.yaml"
    conf.write_text(config_for(binance=fake_binance, yahoo=fake_yahoo))
    r = cli("populate", bad, "-t", "1d", "--start", "2024-01-01", "--end", "2024-02-01",
            "--config", str(conf), "--cache-dir", "c")  # fmt: skip
    assert r.code == 2, (r.code, r.err)
    assert r.err.count("\n") == 1 and "ticker" in r.err and "Traceback" not in r.err
    assert fake_binance.requests == [] and fake_yahoo.requests == []
    assert not (tmp_path / "c").exists(), "nothing written"


def test_a_byte_order_mark_on_a_symbols_file_is_not_part_of_the_symbol(
    cli: Any, fake_binance: FakeBinance, tmp_path: Path
) -> None:
    """Windows editors save UTF-8 with a BOM: the first symbol must still be ABCUSDT."""
    fake_binance.add("ABCUSDT", "1h", make_bars("2024-01-01", 24))
    listed = tmp_path / "symbols.txt"
    listed.write_text("ABCUSDT  # the first line carries the mark\n", encoding="utf-8-sig")
    assert listed.read_bytes().startswith(b"\xef\xbb\xbf")
    conf = tmp_path / "p.yaml"
    conf.write_text(config_for(binance=fake_binance))
    r = cli("populate", "--symbols-file", str(listed), "-t", "1h", "--start", "2024-01-01",
            "--end", "2024-01-02", "--json", "--config", str(conf), "--cache-dir", "c")  # fmt: skip
    assert r.code == 0, r.err
    assert [j["symbol"] for j in r.json()["results"]] == ["ABCUSDT"]
    assert r.json()["results"][0]["rows_added"] == 24


START_TYPES = {
    "date": dt.date(2024, 1, 2),
    "datetime": dt.datetime(2024, 1, 2),
    "aware datetime": dt.datetime(2024, 1, 2, 5, tzinfo=dt.timezone(dt.timedelta(hours=5))),
    "Timestamp": pd.Timestamp("2024-01-02"),
    "aware Timestamp": pd.Timestamp("2024-01-01 19:00", tz="America/New_York"),
    "numpy": np.datetime64("2024-01-02"),
    "text": "2024-01-02",
}


@pytest.mark.parametrize("kind", list(START_TYPES))
def test_get_accepts_every_usual_date_type_naive_as_utc(tmp_path: Path, kind: str) -> None:
    cache = UnifiedCache(tmp_path / "c", settings=parse_settings(""))
    cache.put(make_bars("2024-01-01", 72), "ABCUSDT", "1h", provider="binance")
    start = START_TYPES[kind]
    got = cache.get("ABCUSDT", "1h", start=start, end=dt.date(2024, 1, 3))
    assert got["timestamp"].iloc[0] == pd.Timestamp("2024-01-02 00:00"), kind
    assert len(got) == 24


def test_the_data_manager_accepts_dates_too(fake_binance: FakeBinance, tmp_path: Path) -> None:
    from marketcache import DataManager

    fake_binance.add("ABCUSDT", "1h", make_bars("2024-01-01", 24 * 5))
    settings = parse_settings(config_for(binance=fake_binance))
    with DataManager(tmp_path / "c", settings=settings) as dm:
        got = dm.get_ohlcv("ABCUSDT", "1h", start=dt.date(2024, 1, 2), end=dt.date(2024, 1, 4))
        assert len(got) == 48 and got["timestamp"].iloc[0] == pd.Timestamp("2024-01-02")
        aware = pd.Timestamp("2024-01-02 06:00", tz="Asia/Tokyo")  # 2024-01-01 21:00 UTC
        early = dm.get_ohlcv("ABCUSDT", "1h", start=aware, end=dt.datetime(2024, 1, 2))
        assert early["timestamp"].tolist() == list(
            pd.date_range("2024-01-01 21:00", periods=3, freq="1h")
        )
    with pytest.raises(UsageError, match="start"):
        UnifiedCache(tmp_path / "c", settings=settings).get("ABCUSDT", "1h", start=20240102)


def test_a_fiat_pair_written_with_a_slash_still_reaches_yahoo_as_a_pair() -> None:
    from marketcache.pipeline.selector import native_symbol

    sym = normalize_symbol("BTC/EUR")
    asset = classify(sym)
    assert (sym, asset) == ("BTCEUR", AssetClass.CRYPTO)
    assert native_symbol(sym, "yahoo", asset, parse_settings("")) == "BTC-EUR"
    assert native_symbol(sym, "binance", asset, parse_settings("")) == "BTCEUR"
