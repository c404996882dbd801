"""The validator and its score formula, with hand-computed cases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from conftest import make_bars
from fakes import FakeBinance, config_for
from marketcache import UnifiedCache
from marketcache.config.parser import parse_settings
from marketcache.core.calendars import expected_bars
from marketcache.core.quality import WEIGHTS, ValidationCounts, score_counts
from marketcache.core.symbols import AssetClass
from marketcache.core.timeframes import Timeframe
from marketcache.core.validate import OHLCVValidator

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


# ---- validate --fix never leaves an unrecorded hole (issue 19.4), on every backend ---------

YEAR_BARS = make_bars("2023-01-01", 24 * 365, "1h", seed=11)


def _damage_file(root: Path, suffix: str) -> None:
    path = root / "ABCUSDT" / "1h" / f"2023{suffix}"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one flipped bit in the middle of the year
    path.write_bytes(bytes(raw))


def _damage_object(url: str, suffix: str) -> None:
    import boto3

    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    s3 = boto3.client("s3")
    name = f"{prefix}/ABCUSDT/1h/2023{suffix}"
    body = bytearray(s3.get_object(Bucket=bucket, Key=name)["Body"].read())
    body[len(body) // 2] ^= 0x01
    s3.put_object(Bucket=bucket, Key=name, Body=bytes(body))


def _damage_rows(url: str) -> None:
    """What another service's UPDATE does: one bar's close above its high (invalid)."""
    import psycopg

    schema = url.rsplit("schema=", 1)[1]
    with psycopg.connect(url.rsplit("&schema=", 1)[0]) as conn:
        conn.execute(f"UPDATE {schema}.ohlcv SET close = high * 2 WHERE ts = '2023-07-01 12:00+00'")


BACKENDS = ["csv.gz", "parquet", "s3", "postgresql"]


@pytest.fixture(params=BACKENDS)
def damaged(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str, Any]:
    """(cache URL or folder, format, damage function) for each backend --fix applies to: bytes
    damaged in files and objects, a row UPDATEd in PostgreSQL (the rows decode whole there)."""
    kind = request.param
    if kind == "s3":
        url = request.getfixturevalue("s3_url")
        return url, "csv.gz", lambda: _damage_object(url, ".csv.gz")
    if kind == "postgresql":
        url = request.getfixturevalue("pg_url")
        return url, "csv.gz", lambda: _damage_rows(url)
    root = tmp_path / "data-cache"
    suffix = ".parquet" if kind == "parquet" else ".csv.gz"
    return str(root), kind, lambda: _damage_file(root, suffix)


def test_fix_records_what_it_lost_and_its_populate_command_restores_the_year(
    cli: Any,
    fake_binance: FakeBinance,
    damaged: tuple[str, str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import shlex

    where, fmt, damage = damaged
    fake_binance.add("ABCUSDT", "1h", YEAR_BARS)
    conf = tmp_path / "providers.yaml"
    conf.write_text(config_for(binance=fake_binance) + f"settings: {{format: {fmt}}}\n")
    monkeypatch.setenv("MARKETCACHE_CONFIG", str(conf))  # as a user's shell has them, so the
    monkeypatch.setenv("MARKETCACHE_CACHE_DIR", where)  # printed command runs as printed
    first = cli("populate", "ABCUSDT", "-t", "1h", "--start", "2023-01-01", "--end", "2024-01-01")
    assert first.code == 0, first.err
    damage()

    fixed = cli("validate", "--fix", "--json")
    assert fixed.code == 3, fixed.err
    check = fixed.json()["files"][0]
    assert check["status"] == "fixed" and check["lost"] > 0 and check["rows"] < 24 * 365
    cache = UnifiedCache(where, settings=parse_settings(conf.read_text()))
    kept = cache.get("ABCUSDT", "1h")
    record = cache.metadata("ABCUSDT", "1h", 2023)
    ranges = record["coverage"]["missing_ranges"]
    assert ranges and {m["reason"] for m in ranges} == {"lost in repair"}
    assert ranges == check["missing_ranges"]
    in_ranges = np.zeros(len(YEAR_BARS), dtype=bool)
    for m in ranges:
        ts = YEAR_BARS["timestamp"]
        in_ranges |= ((ts >= pd.Timestamp(m["start"])) & (ts < pd.Timestamp(m["end"]))).to_numpy()
    lost = ~YEAR_BARS["timestamp"].isin(kept["timestamp"]).to_numpy()
    assert (in_ranges == lost).all(), "the missing ranges are exactly the lost bars"
    share = 1 - lost.mean()
    assert record["data_quality"]["score"] == pytest.approx(0.6 + 0.4 * share, abs=2e-3)
    assert record["data_quality"]["breakdown"]["completeness"] < 1.0, "the loss counts"
    # the last line on stderr is the command; it asks exactly for the lost range
    hint = check["hint"]
    assert f"run `{hint}`" in fixed.err.splitlines()[-1]
    words = shlex.split(hint)
    assert words[:5] == ["marketcache", "populate", "ABCUSDT", "-t", "1h"]
    assert pd.Timestamp(words[words.index("--start") + 1]) == pd.Timestamp(ranges[0]["start"])
    assert pd.Timestamp(words[words.index("--end") + 1]) == pd.Timestamp(ranges[-1]["end"])

    asked_before = len(fake_binance.data_requests())
    restored = cli(*words[1:], "--json")
    assert restored.code == 0, restored.err
    assert restored.json()["results"][0]["rows_added"] == int(lost.sum())
    assert len(fake_binance.data_requests()) - asked_before <= -(-int(lost.sum()) // 1000) + 1
    after = cache.get("ABCUSDT", "1h")
    want = YEAR_BARS.assign(timestamp=YEAR_BARS["timestamp"].astype("datetime64[ns]"))
    pd.testing.assert_frame_equal(after, want, check_exact=True)
    assert cache.metadata("ABCUSDT", "1h", 2023)["coverage"]["missing_ranges"] == []
    again = cli("validate", "--json")
    year = again.json()["files"][0]
    if where.startswith("postgresql"):  # the rows kept may hold other UPDATEs: check them
        assert year["status"] == "unverified", year
        assert cli(*shlex.split(year["problems"][-1].split("`")[1])[1:]).code == 0
        again = cli("validate", "--json")
    assert again.code == 0 and again.json()["files"][0]["status"] == "ok", again.out


def test_a_gzip_edited_by_hand_is_not_called_truncated_and_keeps_every_valid_row(
    cli: Any, fake_binance: FakeBinance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decompressed, two values edited, compressed again: the file is smaller than its record
    but decodes whole. The row made invalid is lost (and fetched again by the printed
    command); the other edit is caught by the re-verification the year is marked for."""
    import gzip
    import shlex

    fake_binance.add("ABCUSDT", "1h", YEAR_BARS)
    conf = tmp_path / "providers.yaml"
    conf.write_text(config_for(binance=fake_binance))
    monkeypatch.setenv("MARKETCACHE_CONFIG", str(conf))
    monkeypatch.setenv("MARKETCACHE_CACHE_DIR", str(tmp_path / "data-cache"))
    assert cli("populate", "ABCUSDT", "-t", "1h", "--start", "2023-01-01", "--end",
               "2024-01-01").code == 0  # fmt: skip
    path = tmp_path / "data-cache" / "ABCUSDT" / "1h" / "2023.csv.gz"
    lines = gzip.decompress(path.read_bytes()).decode().split("\n")
    bad = lines[100].split(",")
    bad[4] = str(float(bad[2]) * 2)  # close above high: this row cannot be kept
    lines[100] = ",".join(bad)
    nudged = lines[200].split(",")
    nudged[4] = str(float(nudged[4]) + 0.01)  # a plausible wrong close: only the source knows
    lines[200] = ",".join(nudged)
    path.write_bytes(gzip.compress("\n".join(lines).encode()))

    fixed = cli("validate", "--fix", "--json")
    check = fixed.json()["files"][0]
    diagnosis = check["problems"][0]
    assert "decode whole" in diagnosis and "truncated" not in diagnosis.split(":")[-2], diagnosis
    assert "changed after the commit, not truncated" in diagnosis
    assert fixed.code == 3 and check["status"] == "fixed"
    assert (check["rows"], check["lost"]) == (24 * 365 - 1, 1), check
    first_bad = YEAR_BARS["timestamp"].iloc[99]
    assert check["missing_ranges"][0]["start"] == first_bad.isoformat()
    assert any("against-source" in r for r in check["repairs"]), check["repairs"]
    restored = cli(*shlex.split(check["hint"])[1:], "--json")
    assert restored.code == 0 and restored.json()["results"][0]["rows_added"] == 1

    unverified = cli("validate", "--json")
    year = unverified.json()["files"][0]
    assert year["status"] == "unverified" and "--against-source" in year["problems"][-1], year
    command = year["problems"][-1].split("`")[1]
    source = cli(*shlex.split(command)[1:], "--json")
    assert source.code == 0, source.out + source.err
    got = UnifiedCache(tmp_path / "data-cache", settings=parse_settings("")).get("ABCUSDT", "1h")
    want = YEAR_BARS.assign(timestamp=YEAR_BARS["timestamp"].astype("datetime64[ns]"))
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    assert cli("validate", "--json").json()["files"][0]["status"] == "ok"


def test_the_nightly_populate_without_start_fills_what_a_repair_lost(
    cli: Any, fake_binance: FakeBinance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cron job runs `populate` of its datasets, whose window (December) starts after the
    hole `validate --fix` left mid-year: it asks again from the first lost bar anyway, and
    the year ends whole, `ok`, with no missing range."""
    fake_binance.add("ABCUSDT", "1h", YEAR_BARS)
    root = tmp_path / "data-cache"
    conf = tmp_path / "providers.yaml"
    conf.write_text(
        config_for(binance=fake_binance)
        + "datasets:\n  - {symbols: [ABCUSDT], timeframes: [1h], start: '2023-12-01',"
        " end: '2024-01-01'}\n"
    )
    monkeypatch.setenv("MARKETCACHE_CONFIG", str(conf))
    monkeypatch.setenv("MARKETCACHE_CACHE_DIR", str(root))
    first = cli("populate", "ABCUSDT", "-t", "1h", "--start", "2023-01-01", "--end", "2024-01-01")
    assert first.code == 0, first.err
    _damage_file(root, ".csv.gz")
    fixed = cli("validate", "--fix", "--json")
    assert fixed.code == 3, fixed.err
    ranges = fixed.json()["files"][0]["missing_ranges"]
    assert ranges and pd.Timestamp(ranges[0]["start"]) < pd.Timestamp("2023-12-01")
    cache = UnifiedCache(str(root), settings=parse_settings(conf.read_text()))
    lost = 24 * 365 - len(cache.get("ABCUSDT", "1h"))
    assert lost > 0
    later = cli("validate", "--json")  # the next day: the year is not whole, and says so
    assert later.code == 3, later.err
    year = later.json()["files"][0]
    assert year["status"] == "incomplete" and year["missing_ranges"] == ranges, year
    assert year["hint"] == fixed.json()["files"][0]["hint"] and year["hint"] in later.err
    assert "lost in a repair" in later.err.splitlines()[-1]
    shown = cli("info", "ABCUSDT", "1h", "--json").json()["timeframes"]["1h"]["years"][0]
    assert shown["missing_ranges"] == ranges

    nightly = cli("populate", "--json")
    assert nightly.code == 0, nightly.err
    result = nightly.json()["results"][0]
    assert result["rows_added"] == lost, result
    assert any("a repair lost" in n for n in result["notes"]), result["notes"]
    want = YEAR_BARS.assign(timestamp=YEAR_BARS["timestamp"].astype("datetime64[ns]"))
    pd.testing.assert_frame_equal(cache.get("ABCUSDT", "1h"), want, check_exact=True)
    assert cache.metadata("ABCUSDT", "1h", 2023)["coverage"]["missing_ranges"] == []
    again = cli("validate", "--json")
    assert again.code == 0 and again.json()["files"][0]["status"] == "ok", again.out
    assert cli("populate", "--json").json()["results"][0]["status"] == "up-to-date"


def test_against_source_fix_settles_the_holes_a_repair_recorded(
    cli: Any, fake_binance: FakeBinance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The re-verification command alone (no populate first) restores the lost bar and clears
    its "lost in repair" range: the year ends ok, not incomplete."""
    import gzip
    import shlex

    fake_binance.add("ABCUSDT", "1h", YEAR_BARS)
    conf = tmp_path / "providers.yaml"
    conf.write_text(config_for(binance=fake_binance))
    monkeypatch.setenv("MARKETCACHE_CONFIG", str(conf))
    monkeypatch.setenv("MARKETCACHE_CACHE_DIR", str(tmp_path / "data-cache"))
    assert cli("populate", "ABCUSDT", "-t", "1h", "--start", "2023-01-01", "--end",
               "2024-01-01").code == 0  # fmt: skip
    path = tmp_path / "data-cache" / "ABCUSDT" / "1h" / "2023.csv.gz"
    lines = gzip.decompress(path.read_bytes()).decode().split("\n")
    bad = lines[100].split(",")
    bad[4] = str(float(bad[2]) * 2)  # close above high: this row cannot be kept
    lines[100] = ",".join(bad)
    path.write_bytes(gzip.compress("\n".join(lines).encode()))
    fixed = cli("validate", "--fix", "--json").json()["files"][0]
    assert fixed["lost"] == 1 and fixed["missing_ranges"], fixed
    command = next(r for r in fixed["repairs"] if "against-source" in r).split("`")[1]
    source = cli(*shlex.split(command)[1:], "--json")
    assert source.code == 0, source.out + source.err
    cache = UnifiedCache(tmp_path / "data-cache", settings=parse_settings(""))
    assert cache.metadata("ABCUSDT", "1h", 2023)["coverage"]["missing_ranges"] == []
    want = YEAR_BARS.assign(timestamp=YEAR_BARS["timestamp"].astype("datetime64[ns]"))
    pd.testing.assert_frame_equal(cache.get("ABCUSDT", "1h"), want, check_exact=True)
    after = cli("validate", "--json")
    assert after.code == 0 and after.json()["files"][0]["status"] == "ok", after.out


def test_fix_of_an_unreadable_record_keeps_the_rows_unchecked_until_the_source_confirms(
    cli: Any, fake_binance: FakeBinance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record is garbage, the data whole: the rows are kept, but nothing vouches for them
    (no checksum, no sources): the year is `unverified` with the command that compares it with
    its source, and that command makes it ok."""
    import shlex

    fake_binance.add("ABCUSDT", "1h", YEAR_BARS)
    conf = tmp_path / "providers.yaml"
    conf.write_text(config_for(binance=fake_binance))
    monkeypatch.setenv("MARKETCACHE_CONFIG", str(conf))
    monkeypatch.setenv("MARKETCACHE_CACHE_DIR", str(tmp_path / "data-cache"))
    assert cli("populate", "ABCUSDT", "-t", "1h", "--start", "2023-01-01", "--end",
               "2024-01-01").code == 0  # fmt: skip
    meta = tmp_path / "data-cache" / "ABCUSDT" / "1h" / "2023.metadata.json"
    meta.write_text('{"schema_version": 1, "symbol": "ABC')  # cut mid-write by a full disk
    fixed = cli("validate", "--fix", "--json").json()["files"][0]
    assert fixed["status"] == "fixed" and fixed["rows"] == 24 * 365, fixed
    assert any("could not be read" in r and "--against-source" in r for r in fixed["repairs"])
    later = cli("validate", "--json").json()["files"][0]
    assert later["status"] == "unverified", later
    command = later["problems"][-1].split("`")[1]
    assert cli(*shlex.split(command)[1:], "--json").code == 0
    assert cli("validate", "--json").json()["files"][0]["status"] == "ok"
