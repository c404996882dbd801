"""The pure decisions: what to fetch (GapDetector) and from whom (ProviderSelector)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from marketcache.config.parser import parse_settings
from marketcache.core.calendars import expected_bars
from marketcache.core.gaps import Span, VerifiedEmpty, plan_fetch, split_by_year
from marketcache.core.timeframes import Timeframe
from marketcache.errors import UsageError
from marketcache.pipeline.selector import Choice, select
from marketcache.providers.registry import build_providers

H = Timeframe("1h")
NOW = pd.Timestamp("2024-06-01")
T = pd.Timestamp


def plan(present: pd.DatetimeIndex, **kw: object) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    wanted = kw.pop("wanted", Span(T("2024-01-01"), T("2024-01-11")))
    assert isinstance(wanted, Span)
    exp = expected_bars("24/7", H, wanted.start, wanted.end)
    p = plan_fetch(
        timeframe=H, wanted=wanted, expected=exp, present=present.to_numpy(), now=NOW, **kw
    )  # type: ignore[arg-type]
    return [(s.start, s.end) for s in p.fetch]


def hours(a: str, b: str) -> pd.DatetimeIndex:
    return pd.date_range(a, b, freq="1h", inclusive="left")


def test_a_complete_range_needs_no_request() -> None:
    assert plan(hours("2024-01-01", "2024-01-11")) == []


def test_an_empty_cache_asks_for_everything_once() -> None:
    assert plan(hours("2024-01-01", "2024-01-01")) == [(T("2024-01-01"), T("2024-01-11"))]


def test_a_hole_in_the_middle_is_fetched_and_only_it() -> None:
    present = hours("2024-01-01", "2024-01-11").drop(hours("2024-01-05 03:00", "2024-01-05 09:00"))
    assert plan(present) == [(T("2024-01-05 03:00"), T("2024-01-05 09:00"))]


def test_an_extension_refetches_the_overlap_bars() -> None:
    present = hours("2024-01-01", "2024-01-08")
    assert plan(present, overlap_bars=1) == [(T("2024-01-07 23:00"), T("2024-01-11"))]
    assert plan(present, overlap_bars=3) == [(T("2024-01-07 21:00"), T("2024-01-11"))]


def test_verified_empty_is_not_asked_again_until_the_recheck_age() -> None:
    present = hours("2024-01-01", "2024-01-11").drop(hours("2024-01-03", "2024-01-04"))
    fresh = VerifiedEmpty(T("2024-01-03"), T("2024-01-04"), NOW - pd.Timedelta(days=1))
    stale = VerifiedEmpty(T("2024-01-03"), T("2024-01-04"), NOW - pd.Timedelta(days=30))
    assert plan(present, verified_empty=[fresh]) == []
    assert plan(present, verified_empty=[stale]) == [(T("2024-01-03"), T("2024-01-04"))]


def test_beyond_the_history_window_is_reported_not_fetched() -> None:
    exp = expected_bars("24/7", H, T("2024-01-01"), T("2024-01-11"))
    p = plan_fetch(timeframe=H, wanted=Span(T("2024-01-01"), T("2024-01-11")), expected=exp,
                   present=hours("2024-01-01", "2024-01-01").to_numpy(), now=NOW,
                   earliest=T("2024-01-06"))  # fmt: skip
    assert [(s.start, s.end) for s in p.unreachable] == [(T("2024-01-01"), T("2024-01-06"))]
    assert [(s.start, s.end) for s in p.fetch] == [(T("2024-01-06"), T("2024-01-11"))]


def test_full_refresh_asks_for_the_whole_range() -> None:
    assert plan(hours("2024-01-01", "2024-01-11"), full_refresh=True) == [
        (T("2024-01-01"), T("2024-01-11"))
    ]


def test_ranges_are_cut_at_year_ends() -> None:
    pieces = split_by_year(Span(T("2022-12-30"), T("2024-01-02")))
    assert [(p.start, p.end) for p in pieces] == [
        (T("2022-12-30"), T("2023-01-01")), (T("2023-01-01"), T("2024-01-01")),
        (T("2024-01-01"), T("2024-01-02")),
    ]  # fmt: skip


def test_holidays_are_never_gaps() -> None:
    d = Timeframe("1d")
    exp = expected_bars("XNYS", d, T("2023-01-01"), T("2024-01-01"))
    p = plan_fetch(timeframe=d, wanted=Span(T("2023-01-01"), T("2024-01-01")), expected=exp,
                   present=exp.to_numpy(), now=NOW)  # fmt: skip
    assert p.fetch == [] and p.missing_bars == 0


SETTINGS = parse_settings(
    """
providers: {alpha_vantage: {api_key: "k"}}
selection:
  - {symbol_type: crypto, providers: [binance, yahoo]}
  - {symbol_type: stock, timeframes: [1d, 1w, 1M], providers: [yahoo, alpha_vantage]}
  - {symbol_type: stock, providers: [alpha_vantage, yahoo]}
  - {symbol_type: fx, providers: [yahoo]}
symbols:
  BTCUSDT: {yahoo: BTC-USD}
  SHOP: {type: stock, yahoo: SHOP.TO}
"""
)
PROVIDERS = build_providers(SETTINGS, None)
CAPS = {n: p.capabilities for n, p in PROVIDERS.items()}
ALL = {n: True for n in PROVIDERS}


@pytest.mark.parametrize(
    ("symbol", "tf", "usable", "chain"),
    [
        ("BTCUSDT", "1h", ALL, [Choice("binance", "BTCUSDT"), Choice("yahoo", "BTC-USD")]),
        ("ETH/USDT", "1d", ALL, [Choice("binance", "ETHUSDT"), Choice("yahoo", "ETH-USD")]),
        ("BTCUSDT", "3m", ALL, [Choice("binance", "BTCUSDT")]),  # yahoo has no 3m bars
        ("AAPL", "1d", ALL, [Choice("yahoo", "AAPL"), Choice("alpha_vantage", "AAPL")]),
        ("AAPL", "5m", ALL, [Choice("alpha_vantage", "AAPL"), Choice("yahoo", "AAPL")]),
        ("AAPL", "5m", {**ALL, "alpha_vantage": False}, [Choice("yahoo", "AAPL")]),
        ("SHOP", "1d", ALL, [Choice("yahoo", "SHOP.TO"), Choice("alpha_vantage", "SHOP")]),
        ("EURUSD=X", "1h", ALL, [Choice("yahoo", "EURUSD=X")]),
        ("AAPL", "4h", ALL, []),
    ],
)
def test_selection(symbol: str, tf: str, usable: dict[str, bool], chain: list[Choice]) -> None:
    assert select(symbol, tf, SETTINGS, CAPS, usable) == chain


def test_a_forced_provider() -> None:
    assert select("AAPL", "1d", SETTINGS, CAPS, ALL, forced="alpha_vantage") == [
        Choice("alpha_vantage", "AAPL")
    ]
    with pytest.raises(UsageError, match="has no 4h bars"):
        select("AAPL", "4h", SETTINGS, CAPS, ALL, forced="yahoo")
    with pytest.raises(UsageError, match="not usable"):
        select(
            "AAPL", "1d", SETTINGS, CAPS, {**ALL, "alpha_vantage": False}, forced="alpha_vantage"
        )


def test_long_ranges_are_committed_in_chunks() -> None:
    m = Timeframe("1m")
    wanted = Span(T("2024-01-01"), T("2024-03-01"))
    exp = expected_bars("24/7", m, wanted.start, wanted.end)
    p = plan_fetch(timeframe=m, wanted=wanted, expected=exp, present=np.zeros(0, "datetime64[ns]"),
                   now=NOW, chunk_bars=20_000)  # fmt: skip
    assert len(p.fetch) == 5  # 86,400 bars in pieces of at most 20,000
    assert p.fetch[0].start == wanted.start and p.fetch[-1].end == wanted.end
    assert all(a.end == b.start for a, b in zip(p.fetch, p.fetch[1:], strict=False))
    assert max((s.end - s.start) // pd.Timedelta(minutes=1) for s in p.fetch) == 20_000
