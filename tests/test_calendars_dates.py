from __future__ import annotations

import pandas as pd
import pytest

from marketcache.core.calendars import calendar_for, expected_bars
from marketcache.core.models import DateRange, parse_date
from marketcache.core.symbols import AssetClass
from marketcache.core.timeframes import Timeframe, parse_timeframe, parse_timeframes
from marketcache.errors import UsageError


def ts(s: str) -> pd.Timestamp:
    return pd.Timestamp(s)


def test_nyse_daily_2024_has_its_252_sessions_and_skips_holidays() -> None:
    idx = expected_bars("XNYS", Timeframe("1d"), ts("2024-01-01"), ts("2025-01-01"))
    assert len(idx) == 252
    for holiday in ("2024-01-01", "2024-07-04", "2024-11-28", "2024-12-25", "2024-03-29"):
        assert ts(holiday) not in idx
    assert ts("2024-11-29") in idx  # early close is still a session


def test_nyse_hourly_honours_the_early_close() -> None:
    idx = expected_bars("XNYS", Timeframe("1h"), ts("2024-11-29"), ts("2024-11-30"))
    # 14:30-18:00 UTC: bars at 14:30, 15:30, 16:30, 17:30
    assert list(idx.strftime("%H:%M")) == ["14:30", "15:30", "16:30", "17:30"]
    full = expected_bars("XNYS", Timeframe("1h"), ts("2024-12-02"), ts("2024-12-03"))
    assert len(full) == 7


def test_crypto_is_always_open_and_fx_closes_for_the_weekend() -> None:
    week = (ts("2024-12-02"), ts("2024-12-09"))  # Monday to Monday
    assert len(expected_bars("24/7", Timeframe("1h"), *week)) == 7 * 24
    fx = expected_bars("24/5", Timeframe("1h"), *week)
    assert len(fx) == 5 * 24
    assert not any(d == 5 for d in fx.day_of_week)
    assert len(expected_bars("24/5", Timeframe("1d"), *week)) == 5


def test_calendar_for() -> None:
    assert calendar_for("AAPL", AssetClass.STOCK) == "XNYS"
    assert calendar_for("OCDO.L", AssetClass.STOCK) == "XLON"
    assert calendar_for("BTCUSDT", AssetClass.CRYPTO) == "24/7"
    assert calendar_for("EURUSD=X", AssetClass.FX) == "24/5"
    assert calendar_for("SAP.DE", AssetClass.STOCK, "XFRA") == "XFRA"


def test_timeframes() -> None:
    assert [t.name for t in parse_timeframes("1h, 1d,1h")] == ["1h", "1d"]
    assert parse_timeframe("1M").name == "1M"
    assert Timeframe("4h").floor(ts("2024-01-01 05:59")) == ts("2024-01-01 04:00")
    assert Timeframe("1w").floor(ts("2024-01-04")) == ts("2024-01-01")
    with pytest.raises(UsageError, match="unknown timeframe '7m'"):
        parse_timeframe("7m")


def test_dates() -> None:
    assert parse_date("2024-03-01") == ts("2024-03-01")
    assert parse_date("2024-03-01T10:00:00+02:00") == ts("2024-03-01 08:00")
    assert parse_date("30d") < parse_date("1d")
    for bad in ("2024-13-01", "yesterday", "1800-01-01", "3000-01-01", "20240101"):
        with pytest.raises(UsageError):
            parse_date(bad, option="--start")
    with pytest.raises(UsageError, match="not before"):
        DateRange(ts("2024-02-01"), ts("2024-01-01"))
