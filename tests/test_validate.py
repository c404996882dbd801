"""The validator and its score formula, with hand-computed cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import make_bars
from marketcache.calendars import expected_bars
from marketcache.quality import WEIGHTS, ValidationCounts, score_counts
from marketcache.symbols import AssetClass
from marketcache.timeframes import Timeframe
from marketcache.validate import OHLCVValidator

CRYPTO_1H = OHLCVValidator(Timeframe("1h"), "24/7", AssetClass.CRYPTO)


def test_clean_series_scores_at_least_0_99() -> None:
    result = CRYPTO_1H.validate(make_bars("2024-01-01", 2000))
    assert result.is_valid
    assert result.score >= 0.99
    assert result.gaps == 0 and result.duplicates == 0
    assert result.errors == []


def test_ten_percent_missing_gives_completeness_0_90_and_the_weighted_score() -> None:
    df = make_bars("2024-01-01", 1000)
    holed = df.drop(index=range(100, 200)).reset_index(drop=True)  # one hole of 100 bars
    result = CRYPTO_1H.validate(holed)
    assert result.breakdown["completeness"] == pytest.approx(0.90)
    assert result.counts.missing_bars == 100
    assert result.gaps == 1
    # only completeness is off: 1 - 0.40 * 0.10
    assert result.score == pytest.approx(0.96)
    assert result.is_valid  # gaps lower the score; they do not make rows invalid


def test_a_year_of_nyse_daily_bars_across_holidays_has_no_gaps() -> None:
    sessions = expected_bars(
        "XNYS", Timeframe("1d"), pd.Timestamp("2024-01-01"), pd.Timestamp("2025-01-01")
    )
    df = make_bars("", 0, index=sessions)
    result = OHLCVValidator(Timeframe("1d"), "XNYS", AssetClass.STOCK).validate(df)
    assert len(df) == 252
    assert result.gaps == 0
    assert result.breakdown["completeness"] == 1.0
    assert result.score >= 0.99
    # the same dates on a naive weekday calendar would look like holes; check one is caught
    missing_one = df[df["timestamp"] != pd.Timestamp("2024-07-05")]
    assert OHLCVValidator(Timeframe("1d"), "XNYS").validate(missing_one).gaps == 1


def test_hand_computed_score_with_every_kind_of_fault() -> None:
    df = make_bars("2024-01-01", 10, freq="1h")
    df.loc[2, "high"] = df.loc[2, "low"] - 1  # OHLC violation
    df.loc[5, "volume"] = -1.0  # negative volume
    df = pd.concat([df, df.iloc[[7]]], ignore_index=True)  # a duplicate (11 rows)
    result = CRYPTO_1H.validate(df)
    c = result.counts
    assert (c.rows, c.bad_rows, c.ohlc_violations, c.negative_volume, c.duplicates) == (
        11,
        2,
        1,
        1,
        1,
    )
    assert not result.is_valid
    # bad rows are left out of completeness: 8 of 10 expected bars are present and sound
    assert result.breakdown["completeness"] == pytest.approx(0.8)
    assert result.breakdown["validity"] == pytest.approx(1 - 2 / 11, abs=1e-6)
    assert result.breakdown["uniqueness"] == pytest.approx(1 - 1 / 11, abs=1e-6)
    expected = 0.40 * 0.8 + 0.25 * (1 - 2 / 11) + 0.15 * (1 - 1 / 11) + 0.10 + 0.05 + 0.05
    assert result.score == pytest.approx(expected, abs=1e-4)
    assert any("negative volume" in e for e in result.errors)
    assert any("high >= open/close >= low" in e for e in result.errors)


def test_weights_sum_to_one() -> None:
    assert sum(WEIGHTS.values()) == pytest.approx(1.0)
    assert score_counts(ValidationCounts())[0] == 1.0  # no rows (verified empty): nothing wrong


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d.__setitem__("close", d["close"].where(d.index != 3, np.nan)), "nonfinite"),
        (lambda d: d.__setitem__("open", d["open"].where(d.index != 3, -5.0)), "nonpositive_price"),
        (lambda d: d.__setitem__("low", d["low"].where(d.index != 3, np.inf)), "nonfinite"),
    ],
)
def test_bad_values_are_counted(mutate: object, field: str) -> None:
    df = make_bars("2024-01-01", 20)
    mutate(df)  # type: ignore[operator]
    result = CRYPTO_1H.validate(df)
    assert getattr(result.counts, field) == 1
    assert not result.is_valid


def test_out_of_order_jumps_stale_runs_and_zero_volume() -> None:
    df = make_bars("2024-01-01", 200)
    swapped = df.iloc[[*range(10), 11, 10, *range(12, 200)]].reset_index(drop=True)
    assert CRYPTO_1H.validate(swapped).counts.out_of_order == 1

    jumpy = df.copy()
    jumpy.loc[50:, ["open", "high", "low", "close"]] *= 3  # +200% between bar 49 and 50
    jumpy.loc[50, "open"] = jumpy.loc[49, "close"]
    jumpy.loc[50, "low"] = jumpy.loc[50, "open"]
    assert CRYPTO_1H.validate(jumpy).counts.jumps == 1
    fx = OHLCVValidator(Timeframe("1h"), "24/7", AssetClass.FX)
    small = df.copy()
    small.loc[50:, ["open", "high", "low", "close"]] *= 1.15
    small.loc[50, ["open", "low"]] = small.loc[49, "close"]
    assert fx.validate(small).counts.jumps == 1  # 15% is a jump for FX
    assert CRYPTO_1H.validate(small).counts.jumps == 0  # but not for crypto

    stale = df.copy()
    stale.loc[100:129, ["open", "high", "low", "close"]] = 50.0  # 30 identical bars
    result = CRYPTO_1H.validate(stale)
    assert result.counts.stale_bars == 29  # 29 unchanged closes in a row, over the 20 threshold
    assert result.breakdown["freshness"] < 1.0

    zero = df.copy()
    zero.loc[60, "volume"] = 0.0
    assert CRYPTO_1H.validate(zero).counts.zero_volume_moves == 1


def test_counts_of_an_appended_chunk_add_up_to_the_whole() -> None:
    df = make_bars("2024-01-01", 3000)
    df = df.drop(index=range(1500, 1510)).reset_index(drop=True)
    df.loc[2000:2040, "close"] = df.loc[2000, "close"]
    df.loc[2000:2040, ["open", "high", "low"]] = df.loc[2000, "close"]
    whole = CRYPTO_1H.validate(df)
    for cut in (700, 1495, 2010, 2995):
        head = CRYPTO_1H.validate(df.iloc[:cut])
        tail = CRYPTO_1H.validate(df.iloc[cut:], head.tail)
        assert head.counts + tail.counts == whole.counts, cut


def test_errors_are_capped_and_readable() -> None:
    df = make_bars("2024-01-01", 500)
    df.loc[::2, "volume"] = -1.0
    result = CRYPTO_1H.validate(df)
    assert len(result.errors) <= 20
    assert result.errors[0].startswith(
        "250 rows with negative volume (first at 2024-01-01 00:00:00)"
    )


def test_missing_columns_and_non_numeric_data() -> None:
    result = CRYPTO_1H.validate(pd.DataFrame({"timestamp": [pd.Timestamp("2024-01-01")]}))
    assert not result.is_valid and result.score == 0.0
    assert "missing columns" in result.errors[0]
    df = make_bars("2024-01-01", 5).astype({"close": str})
    assert any("not numeric" in e for e in CRYPTO_1H.validate(df).errors)


def test_appended_counts_add_up_on_an_exchange_calendar_too() -> None:
    sessions = expected_bars(
        "XNYS", Timeframe("1h"), pd.Timestamp("2024-06-01"), pd.Timestamp("2024-09-01")
    )
    df = make_bars("", 0, index=sessions).drop(index=[5, 6, 200, 201, 202]).reset_index(drop=True)
    nyse = OHLCVValidator(Timeframe("1h"), "XNYS", AssetClass.STOCK)
    whole = nyse.validate(df)
    assert whole.counts.missing_bars == 5 and whole.gaps == 2
    for cut in (4, 5, 100, 198, len(df) - 1):
        head = nyse.validate(df.iloc[:cut])
        tail = nyse.validate(df.iloc[cut:], head.tail)
        assert head.counts + tail.counts == whole.counts, cut
