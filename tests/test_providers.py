"""One contract, every adapter: the real provider libraries over real HTTP against the fakes."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import requests

from conftest import SYNCED_RATE_PROBE, make_bars, most_within, race_probes
from fakes import HTML_ERROR, FakeAlphaVantage, FakeBinance, FakeServer, FakeYahoo, config_for
from marketcache.config.parser import parse_settings
from marketcache.core.timeframes import Timeframe
from marketcache.errors import (
    ProviderError,
    ProviderUnavailable,
    QuotaExhausted,
    RangeUnavailable,
    RateLimited,
    SymbolNotFound,
)
from marketcache.providers.alpha_vantage import map_alpha_vantage_error
from marketcache.providers.base import Provider
from marketcache.providers.binance import map_binance_error
from marketcache.providers.registry import provider_class
from marketcache.providers.yahoo import map_yahoo_error


@dataclass
class Case:
    """One adapter wired to its fake server, with a series that needs several pages."""

    provider: Provider
    server: FakeServer
    symbol: str
    timeframe: Timeframe
    served: pd.DataFrame  # what the server holds, canonical columns, UTC-naive bar opens
    start: pd.Timestamp
    end: pd.Timestamp
    sleeps: list[float]


# Each answer's deadline in these cases: long enough that a loaded machine answers a normal
# request within it (else a retry, and a sleep the tests count, would be a flake).
CASE_TIMEOUT = 2.0


def _recent(hours: int, freq: str = "1h") -> pd.DatetimeIndex:
    end = pd.Timestamp.now().floor("D") - pd.Timedelta(days=3)
    return pd.date_range(end=end, periods=hours, freq=freq)


def _build(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Case:
    sleeps: list[float] = []
    if name == "binance":
        server: FakeServer = FakeBinance()
        served = make_bars("2023-01-01", 2500, "1h", seed=1)
        server.add("ABCUSDT", "1h", served)  # type: ignore[attr-defined]
        symbol, tf = "ABCUSDT", Timeframe("1h")
        settings = parse_settings(config_for(binance=server, timeout=CASE_TIMEOUT, retry_budget=10))
    elif name == "yahoo":
        server = FakeYahoo()
        served = make_bars("", 0, index=_recent(24 * 400), seed=2)
        server.add("BTC-USD", "1h", served)  # type: ignore[attr-defined]
        symbol, tf = "BTC-USD", Timeframe("1h")
        settings = parse_settings(config_for(yahoo=server, timeout=CASE_TIMEOUT, retry_budget=10))
    else:
        monkeypatch.setenv("ALPHAVANTAGE_API_KEY", "demo-key")
        server = FakeAlphaVantage("demo-key")
        served = make_bars("2024-01-01", 24 * 60, "1h", seed=3)
        server.add_intraday("IBM", "60min", served)  # type: ignore[attr-defined]
        symbol, tf = "IBM", Timeframe("1h")
        settings = parse_settings(
            config_for(alpha_vantage=server, timeout=CASE_TIMEOUT, retry_budget=10)
        )
    provider = provider_class(name)(
        settings.providers[name], tmp_path / "state", sleep=sleeps.append
    )
    start = served["timestamp"].iloc[0]
    end = served["timestamp"].iloc[-1] + pd.Timedelta(hours=1)
    return Case(provider, server, symbol, tf, served, start, end, sleeps)


@pytest.fixture(params=["binance", "yahoo", "alpha_vantage"])
def case(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Case]:
    built = _build(request.param, tmp_path, monkeypatch)
    yield built
    built.server.close()


def fetch(
    c: Case, start: pd.Timestamp | None = None, end: pd.Timestamp | None = None
) -> pd.DataFrame:
    return c.provider.fetch(c.symbol, c.timeframe, start or c.start, end or c.end).frame


def test_canonical_sorted_utc_frame_equal_to_what_was_served(case: Case) -> None:
    result = case.provider.fetch(case.symbol, case.timeframe, case.start, case.end)
    got = result.frame
    assert list(got.columns[:6]) == ["timestamp", "open", "high", "low", "close", "volume"]
    assert str(got["timestamp"].dtype) == "datetime64[ns]"
    assert got["timestamp"].is_monotonic_increasing and got["timestamp"].is_unique
    assert len(got) == len(case.served)
    for col in ("open", "high", "low", "close", "volume"):
        assert np.array_equal(got[col].to_numpy(), case.served[col].to_numpy()), col
    assert np.array_equal(
        got["timestamp"].to_numpy(), case.served["timestamp"].to_numpy("datetime64[ns]")
    )
    assert result.requests >= 2, "the range needs more than one page"
    assert len(case.server.data_requests()) >= 2


def test_a_range_with_no_bars_is_empty_not_an_error(case: Case) -> None:
    before = case.start - pd.Timedelta(days=20)
    got = fetch(case, before, before + pd.Timedelta(days=5))
    assert got.empty


def test_an_unknown_symbol_is_symbol_not_found(case: Case) -> None:
    with pytest.raises(SymbolNotFound):
        case.provider.fetch("NOSUCH", case.timeframe, case.start, case.end)


def test_429_retry_after_is_honoured(case: Case) -> None:
    case.server.fail_next(2, status=429, headers={"Retry-After": "1"})
    got = fetch(case)
    assert len(got) == len(case.served)
    assert 1.0 in case.sleeps


def test_a_burst_of_5xx_is_retried(case: Case) -> None:
    case.server.fail_next(3, status=503)
    assert len(fetch(case)) == len(case.served)
    assert case.sleeps and all(0 < s <= 30 for s in case.sleeps)


def test_a_truncated_body_is_retried(case: Case) -> None:
    case.server.fail_next(1, truncate=True)
    assert len(fetch(case)) == len(case.served)
    assert len(case.sleeps) == 1


def test_an_html_error_page_is_retried(case: Case) -> None:
    case.server.fail_next(2, status=502, body=HTML_ERROR)
    assert len(fetch(case)) == len(case.served)


def test_a_stalled_connection_times_out_and_is_retried(case: Case) -> None:
    case.server.fail_next(1, delay=3 * CASE_TIMEOUT, status=200, truncate=True)
    assert len(fetch(case)) == len(case.served)
    assert case.sleeps


def test_a_dead_provider_fails_within_its_retry_budget(case: Case) -> None:
    object.__setattr__(case.provider.settings, "retry_budget", 2.0)
    case.server.fail_next(50, status=503)
    with pytest.raises(ProviderUnavailable):
        fetch(case)
    assert sum(case.sleeps) <= 2.0


def test_binance_never_returns_the_still_open_kline(
    fake_binance: FakeBinance, tmp_path: Path
) -> None:
    now = pd.Timestamp.now(tz="UTC").tz_localize(None)
    index = pd.date_range(end=now.floor("min"), periods=30, freq="1min")
    fake_binance.add("OPENUSDT", "1m", make_bars("", 0, index=index))
    settings = parse_settings(config_for(binance=fake_binance))
    p = provider_class("binance")(settings.providers["binance"], tmp_path)
    got = p.fetch("OPENUSDT", Timeframe("1m"), index[0], now + pd.Timedelta(minutes=5)).frame
    assert got["timestamp"].iloc[-1] == index[-2]  # the bar opened at floor(now) is still open


def test_yahoo_daily_bars_carry_the_session_date_and_raw_prices(
    fake_yahoo: FakeYahoo, tmp_path: Path
) -> None:
    symbol, recorded, body = fake_yahoo.add_fixture("chart-AAPL-2020-08-31-to-2020-11-07.json")
    settings = parse_settings(config_for(yahoo=fake_yahoo))
    p = provider_class("yahoo")(settings.providers["yahoo"], tmp_path)
    got = p.fetch(
        "AAPL", Timeframe("1d"), pd.Timestamp("2020-08-01"), pd.Timestamp("2020-12-01")
    ).frame
    quote = body["chart"]["result"][0]["indicators"]["quote"][0]
    adj = body["chart"]["result"][0]["indicators"]["adjclose"][0]["adjclose"]
    assert got["timestamp"].iloc[0] == pd.Timestamp("2020-08-31")  # 13:30Z = 09:30 New York
    assert (got["timestamp"].dt.hour == 0).all()
    assert np.array_equal(got["close"].to_numpy(), np.array(quote["close"], dtype=float))
    assert np.array_equal(got["adj_close"].to_numpy(), np.array(adj, dtype=float))
    assert (got["adj_close"] != got["close"]).any(), "raw close, adjusted close kept apart"
    from yfinance.cache import _CookieDBManager, _TzDBManager

    for manager in (_CookieDBManager, _TzDBManager):  # yfinance's caches live in the cache folder
        assert Path(manager.get_location()) == tmp_path / "yfinance"


def test_yahoo_weekend_minute_request_without_timestamps_is_empty(
    fake_yahoo: FakeYahoo, tmp_path: Path
) -> None:
    body = fake_yahoo.add_recorded(
        "chart-AAPL-2025-02-01-to-2025-02-02-includePrePost-false-interval-1m.json"
    )
    assert "timestamp" not in body["chart"]["result"][0]
    settings = parse_settings(config_for(yahoo=fake_yahoo))
    p = provider_class("yahoo")(settings.providers["yahoo"], tmp_path)
    saturday = pd.Timestamp.now().normalize() - pd.Timedelta(
        days=(pd.Timestamp.now().day_of_week + 2) % 7
    )
    got = p.fetch("AAPL", Timeframe("1m"), saturday, saturday + pd.Timedelta(days=1))
    # one daily answer to learn the splits up to now (intraday bars are split-adjusted), one 1m
    assert got.frame.empty and got.requests == 2
    with pytest.raises(RangeUnavailable, match="only since"):  # 1m is kept for 30 days only
        p.fetch("AAPL", Timeframe("1m"), pd.Timestamp("2025-02-01"), pd.Timestamp("2025-02-02"))


def test_alpha_vantage_quota_is_reported_not_retried(
    fake_av: FakeAlphaVantage, tmp_path: Path
) -> None:
    fake_av.add_fixture("intraday-1min-MSFT.json")
    fake_av.quota_left = 0
    sleeps: list[float] = []
    settings = parse_settings(config_for(alpha_vantage=fake_av))
    p = provider_class("alpha_vantage")(
        settings.providers["alpha_vantage"], tmp_path, sleep=sleeps.append
    )
    with pytest.raises(QuotaExhausted, match="25 requests per day") as caught:
        p.fetch("MSFT", Timeframe("1m"), pd.Timestamp("2017-12-18"), pd.Timestamp("2017-12-19"))
    assert sleeps == [] and len(fake_av.data_requests()) == 1
    said = str(caught.value)
    assert fake_av.key not in said and "API key as ***" in said, "the key it quotes is not shown"
    assert "next run after 00:00 UTC" in said and "rate_limit.per_day" in said
    assert "\n" not in said


def test_alpha_vantage_recorded_intraday_is_converted_to_utc_bar_opens(
    fake_av: FakeAlphaVantage, tmp_path: Path
) -> None:
    _, body = fake_av.add_fixture("intraday-1min-MSFT.json")
    settings = parse_settings(config_for(alpha_vantage=fake_av))
    p = provider_class("alpha_vantage")(settings.providers["alpha_vantage"], tmp_path)
    got = p.fetch(
        "MSFT", Timeframe("1m"), pd.Timestamp("2017-12-18"), pd.Timestamp("2017-12-19")
    ).frame
    series = body["Time Series (1min)"]
    assert len(got) == len(series)
    # Alpha Vantage labels bars by their start: the documented extended-hours day runs
    # 04:00-20:00 and its 5min series ends at 19:55; a Paris 1min series ends 11:29 New York,
    # the minute before the 17:30 close (alpha_vantage issue #205). So 14:56 New York (EST,
    # UTC-5) is the bar that opened 14:56 → 19:56 UTC; the first label opens the first bar.
    last = got.iloc[-1]
    assert last["timestamp"] == pd.Timestamp("2017-12-18 19:56:00")
    assert got.iloc[0]["timestamp"] == pd.Timestamp("2017-12-18 18:17:00")
    assert last["close"] == float(series["2017-12-18 14:56:00"]["4. close"])


def test_alpha_vantage_without_a_key_is_not_usable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ALPHAVANTAGE_API_KEY", raising=False)
    settings = parse_settings("providers: {alpha_vantage: {api_key: '${ALPHAVANTAGE_API_KEY}'}}")
    assert not provider_class("alpha_vantage")(settings.providers["alpha_vantage"]).available()


# ---- every third-party exception maps to ours (httpx's test_exceptions is the model) ---------


def _exception_classes(module: Any) -> list[type[BaseException]]:
    return [
        obj
        for _, obj in inspect.getmembers(module, inspect.isclass)
        if issubclass(obj, Exception) and obj.__module__.startswith(module.__name__.split(".")[0])
    ]


def _instance(cls: type[BaseException]) -> BaseException:
    exc = cls.__new__(cls)
    Exception.__init__(exc, "boom")
    for attr, value in {"message": "boom", "code": 0, "status_code": 500, "response": None}.items():
        with contextlib.suppress(AttributeError):
            setattr(exc, attr, value)
    return exc


def test_every_third_party_exception_is_mapped() -> None:
    import alpha_vantage  # noqa: F401  (its errors are ValueError)
    import binance.exceptions
    import requests.exceptions
    import yfinance.exceptions

    mappers = [
        (
            map_binance_error,
            [*_exception_classes(binance.exceptions), *_exception_classes(requests.exceptions)],
        ),
        (
            map_yahoo_error,
            [*_exception_classes(yfinance.exceptions), *_exception_classes(requests.exceptions)],
        ),
        (map_alpha_vantage_error, [ValueError, *_exception_classes(requests.exceptions)]),
    ]
    seen = 0
    for mapper, classes in mappers:
        assert classes
        for cls in classes:
            mapped = mapper(_instance(cls), "SYM")
            assert isinstance(mapped, ProviderError), (mapper.__name__, cls)
            seen += 1
    assert seen > 40


def test_mapping_distinguishes_the_cases_that_matter() -> None:
    from binance.exceptions import BinanceAPIException
    from yfinance.exceptions import YFPricesMissingError, YFRateLimitError

    class R:
        def __init__(self, status: int, headers: dict[str, str] | None = None) -> None:
            self.status_code = status
            self.headers = headers or {}
            self.text = ""

    unknown = BinanceAPIException(R(400), 400, '{"code": -1121, "msg": "Invalid symbol."}')
    assert isinstance(map_binance_error(unknown, "X"), SymbolNotFound)
    limited = BinanceAPIException(
        R(429, {"Retry-After": "7"}), 429, '{"code": -1003, "msg": "Too many"}'
    )
    mapped = map_binance_error(limited, "X")
    assert isinstance(mapped, RateLimited) and mapped.retry_after == 7.0
    banned = BinanceAPIException(R(418), 418, "<html>teapot</html>")
    assert isinstance(map_binance_error(banned, "X"), RateLimited)
    assert isinstance(
        map_yahoo_error(YFRateLimitError(), "X", R(429, {"Retry-After": "3"})), RateLimited
    )
    assert isinstance(map_yahoo_error(YFPricesMissingError("X", ""), "X"), SymbolNotFound)
    assert isinstance(map_yahoo_error(requests.exceptions.ReadTimeout(), "X"), ProviderUnavailable)
    assert map_yahoo_error(requests.exceptions.ReadTimeout(), "X").retryable
    assert not map_binance_error(unknown, "X").retryable


def test_two_processes_share_one_rate_limit(fake_binance: FakeBinance, tmp_path: Path) -> None:
    """Two processes, 10 requests each, at a shared 4/s: counted per window so that it holds
    on a loaded machine. A request the load delays by up to a second can land beside the
    next second's, so any 2 s hold at most 3 s of the limit (12); two unshared limits put 16
    there. And 20 requests at 4/s span at least 4 s of acquisitions (3 s allowing a delay),
    where two unshared ones finish in about 2 s."""
    import sys

    fake_binance.add("RATEUSDT", "1h", make_bars("2024-01-01", 10, "1h"))
    conf = tmp_path / "p.yaml"
    conf.write_text(config_for(binance=fake_binance, rate="{per_second: 4}", timeout=10))
    state, line = tmp_path / "cache" / "_metadata", tmp_path / "line"
    line.mkdir()
    args = [sys.executable, "-c", SYNCED_RATE_PROBE, str(conf), str(state), str(line), "10"]
    race_probes([args, args], line)
    times = sorted(fake_binance.arrivals)
    assert len(times) == 20
    most = most_within(times, 2.0)
    assert most <= 12, f"{most} requests within 2 s at a shared limit of 4/s"
    assert times[-1] - times[0] >= 3.0, "20 requests at 4/s take at least four windows"
