"""The storage contract, run on every format of the file backend: partitioning, merging, never
shrinking, the commit protocol, integrity, retention, repair, listing, index files.
Byte-format tests are kept per codec."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from conftest import make_bars
from marketcache import CorruptFile, UnifiedCache
from marketcache.config.parser import parse_settings
from marketcache.storage.backend import Key

FORMATS = ["csv.gz", "parquet", "postgresql", "s3-csv.gz", "s3-parquet"]


@pytest.fixture(params=FORMATS)
def cache(cache_dir: Path, request: pytest.FixtureRequest) -> UnifiedCache:
    """The contract's cache: one per backend × format (a real PostgreSQL server, and moto's S3
    server through s3fs, for the last three)."""
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_url")
        return UnifiedCache(url, settings=parse_settings(""), lock_wait=5)
    fmt = request.param.removeprefix("s3-")
    settings = parse_settings(f"settings: {{format: {fmt}, lease_seconds: 5}}")
    where = request.getfixturevalue("s3_url") if request.param.startswith("s3-") else cache_dir
    return UnifiedCache(where, settings=settings, lock_wait=5)


class ObjectPath:
    """A year object in the bucket, handled as the tests handle a year file."""

    def __init__(self, cache: UnifiedCache, name: str) -> None:
        self.cache, self.name_in_store = cache, name
        self.name = name.rpartition("/")[2]

    def read_bytes(self) -> bytes:
        found = self.cache.backend.store.get(self.name_in_store)  # type: ignore[attr-defined]
        assert found is not None, self.name_in_store
        data: bytes = found[0]
        return data

    def write_bytes(self, data: bytes) -> None:
        self.cache.backend.store.put(self.name_in_store, data)  # type: ignore[attr-defined]

    def with_name(self, name: str) -> ObjectPath:
        return ObjectPath(self.cache, self.name_in_store.rpartition("/")[0] + "/" + name)

    def __str__(self) -> str:
        return f"{self.cache.backend.location}/{self.name_in_store}"


def data_file(cache: UnifiedCache, symbol: str, tf: str, year: int) -> Any:
    """The year's data file (or object)."""
    if cache.backend.name == "object":
        return ObjectPath(cache, cache.backend._names(Key.of(symbol, tf, year))[0])  # type: ignore[attr-defined]
    if cache.backend.name != "files":
        pytest.skip("a file-backend behaviour (bytes on disk)")
    path: Path = cache.layout.data_path(symbol, tf, year)
    return path


def suffix(cache: UnifiedCache) -> str:
    return ".parquet" if cache.backend.format == "parquet" else ".csv.gz"


def files_only(cache: UnifiedCache) -> None:
    if cache.backend.name != "files":
        pytest.skip("a file-backend behaviour (files on disk)")


def csv_only(cache: UnifiedCache) -> None:
    if cache.backend.format != "csv.gz" or cache.backend.name != "files":
        pytest.skip("a csv.gz byte-format behaviour")


def test_put_get_round_trip_is_bit_identical_across_years(cache: UnifiedCache) -> None:
    df = make_bars("2023-12-30", 24 * 5)
    df["close"] = df["close"] + np.random.default_rng(3).random(len(df)) * 1e-9  # long floats
    df["low"] = np.minimum(df["low"], df["close"])
    df["high"] = np.maximum(df["high"], df["close"])
    result = cache.put(df, "btcusdt", "1h", provider="binance")
    assert [y.year for y in result.years] == [2023, 2024]
    assert result.rows_added == len(df)
    got = cache.get("BTCUSDT", "1h")
    assert list(got.columns) == ["timestamp", "open", "high", "low", "close", "volume"]
    for col in ("open", "high", "low", "close", "volume"):
        assert np.array_equal(got[col].to_numpy(), df[col].to_numpy()), col
    assert (got["timestamp"].to_numpy() == df["timestamp"].to_numpy()).all()
    assert cache.list_years("BTCUSDT", "1h") == [2023, 2024]


def test_files_are_plain_csv_gz_in_the_documented_format(cache: UnifiedCache) -> None:
    csv_only(cache)
    df = make_bars("2024-01-01", 3, freq="1D")
    df["adj_close"] = df["close"] * 0.5
    cache.put(df, "AAPL", "1d", provider="yahoo")
    path = data_file(cache, "AAPL", "1d", 2024)
    lines = gzip.decompress(path.read_bytes()).decode().splitlines()
    assert lines[0] == "timestamp,open,high,low,close,volume,adj_close"
    assert lines[1].startswith("2024-01-01 00:00:00,")
    pandas_view = pd.read_csv(path, parse_dates=["timestamp"])
    assert np.array_equal(pandas_view["adj_close"].to_numpy(), df["adj_close"].to_numpy())


def test_metadata_has_every_documented_field(cache: UnifiedCache) -> None:
    cache.put(make_bars("2024-03-01", 48), "ETHUSDT", "1h", provider="binance")
    meta = cache.metadata("ETHUSDT", "1h", 2024)
    for key in ("schema_version", "symbol", "timeframe", "year", "data_source", "created_at",
                "last_updated", "start_date", "end_date", "data_quality", "file_info",
                "provider_info", "coverage"):  # fmt: skip
        assert key in meta, key
    assert meta["start_date"] == "2024-03-01T00:00:00"
    assert meta["end_date"] == "2024-03-02T23:00:00"
    info = meta["file_info"]
    assert info["rows"] == 48 and info["format"] == cache.backend.format
    if cache.backend.format != "postgresql":  # files: sha256 and size of the bytes on disk
        data = data_file(cache, "ETHUSDT", "1h", 2024).read_bytes()
        record = data_file(cache, "ETHUSDT", "1h", 2024).with_name("2024.metadata.json")
        assert json.loads(record.read_bytes()) == meta
        assert info["sha256"] == hashlib.sha256(data).hexdigest()
        assert info["size_bytes"] == len(data)
    assert set(meta["data_quality"]["breakdown"]) >= {"completeness", "validity"}
    assert meta["coverage"]["calendar"] == "24/7"
    assert meta["coverage"]["sources"] == [
        {"provider": "binance", "start": "2024-03-01T00:00:00", "end": "2024-03-02T23:00:00"}
    ]
    assert meta["provider_info"]["name"] == "binance"


def test_new_values_replace_old_and_nothing_is_lost(cache: UnifiedCache) -> None:
    df = make_bars("2024-01-01", 100)
    cache.put(df, "ABCUSDT", "1h")
    fewer = df.iloc[40:60].copy()
    fewer["close"] = fewer["close"] + 0.01
    fewer["high"] = fewer["high"] + 0.01
    result = cache.put(fewer, "ABCUSDT", "1h", provider="yahoo")
    assert result.years[0].mode == "rewrite"
    assert result.rows_updated == 20 and result.rows_added == 0
    got = cache.get("ABCUSDT", "1h")
    assert len(got) == 100  # never shrinks
    assert np.array_equal(got["close"].to_numpy()[40:60], fewer["close"].to_numpy())
    assert np.array_equal(got["close"].to_numpy()[:40], df["close"].to_numpy()[:40])
    sources = cache.metadata("ABCUSDT", "1h", 2024)["coverage"]["sources"]
    assert {s["provider"] for s in sources} == {"unknown", "yahoo"}


def test_an_identical_put_writes_nothing(cache: UnifiedCache) -> None:
    df = make_bars("2024-01-01", 100)
    cache.put(df, "ABCUSDT", "1h")
    files_only(cache)
    path = data_file(cache, "ABCUSDT", "1h", 2024)
    before = path.stat().st_mtime_ns
    result = cache.put(df.iloc[10:20], "ABCUSDT", "1h")
    assert result.years[0].mode == "unchanged"
    assert path.stat().st_mtime_ns == before


def test_appends_add_gzip_members_and_keep_the_score_current(cache: UnifiedCache) -> None:
    csv_only(cache)
    df = make_bars("2024-01-01", 24 * 30)
    cache.put(df.iloc[:600], "ABCUSDT", "1h")
    first_size = cache.metadata("ABCUSDT", "1h", 2024)["file_info"]["size_bytes"]
    r1 = cache.put(df.iloc[600:650], "ABCUSDT", "1h")
    r2 = cache.put(df.iloc[660:], "ABCUSDT", "1h")  # leaves a 10-bar hole
    assert [r1.years[0].mode, r2.years[0].mode] == ["append", "append"]
    meta = cache.metadata("ABCUSDT", "1h", 2024)
    assert meta["file_info"]["members"] == 3
    assert meta["file_info"]["size_bytes"] > first_size
    assert meta["data_quality"]["gaps"] == 1
    assert meta["data_quality"]["missing_bars"] == 10
    full = cache.validator("ABCUSDT", "1h").validate(cache.get("ABCUSDT", "1h"))
    assert meta["data_quality"]["score"] == full.score
    assert meta["data_quality"]["counts"]["expected_bars"] == full.counts.expected_bars
    # and the hole is filled by a rewrite
    assert cache.put(df.iloc[650:660], "ABCUSDT", "1h").years[0].mode == "rewrite"
    assert cache.metadata("ABCUSDT", "1h", 2024)["file_info"]["members"] == 1
    assert len(cache.get("ABCUSDT", "1h")) == len(df)


def test_get_reads_only_the_years_it_needs(cache: UnifiedCache) -> None:
    cache.put(make_bars("2022-12-31", 24 * 400), "ABCUSDT", "1h")
    (data_file(cache, "ABCUSDT", "1h", 2022)).write_bytes(b"garbage")
    got = cache.get("ABCUSDT", "1h", start="2023-03-01", end="2023-03-02")
    assert len(got) == 24 and got["timestamp"].iloc[0] == pd.Timestamp("2023-03-01")
    with pytest.raises(CorruptFile, match=f"2022{suffix(cache)}"):
        cache.get("ABCUSDT", "1h", start="2022-12-31")


def test_a_flipped_byte_or_truncation_is_detected(cache: UnifiedCache) -> None:
    cache.put(make_bars("2024-01-01", 500), "ABCUSDT", "1h")
    path = data_file(cache, "ABCUSDT", "1h", 2024)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptFile, match="sha256"):
        cache.get("ABCUSDT", "1h")
    path.write_bytes(bytes(data[:100]))
    with pytest.raises(CorruptFile, match="truncated"):
        cache.get("ABCUSDT", "1h")


def test_a_torn_tail_is_ignored_by_readers_and_cut_by_writers(cache: UnifiedCache) -> None:
    csv_only(cache)
    df = make_bars("2024-01-01", 500)
    cache.put(df.iloc[:400], "ABCUSDT", "1h")
    path = data_file(cache, "ABCUSDT", "1h", 2024)
    with open(path, "ab") as fh:  # a crash in the middle of an append
        fh.write(gzip.compress(b"2024-02-01 00:00:00,1,1,1,1,1\n")[:15])
    assert len(cache.get("ABCUSDT", "1h")) == 400
    cache.put(df.iloc[400:], "ABCUSDT", "1h")
    assert len(cache.get("ABCUSDT", "1h")) == 500
    assert len(pd.read_csv(path)) == 500  # pandas reads the same rows: the tail was cut


def test_an_interrupted_commit_rolls_forward_or_back(cache: UnifiedCache) -> None:
    files_only(cache)  # a PostgreSQL year commits in one transaction: no in-between state
    df = make_bars("2024-01-01", 300)
    cache.put(df.iloc[:200], "ABCUSDT", "1h")
    tf_dir = cache.root / "ABCUSDT" / "1h"
    old_meta = (tf_dir / "2024.metadata.json").read_bytes()
    old_data = data_file(cache, "ABCUSDT", "1h", 2024).read_bytes()
    cache.put(df.iloc[100:300].assign(close=df["close"].iloc[100:300] + 0.001,
                                      high=df["high"].iloc[100:300] + 0.001), "ABCUSDT", "1h")  # fmt: skip
    new_meta = (tf_dir / "2024.metadata.json").read_bytes()
    # crash after the data rename, before the metadata: readers see the new state (in memory,
    # writing nothing), and the next writer promotes the pending record
    (tf_dir / "2024.metadata.json").write_bytes(old_meta)
    (tf_dir / "2024.metadata.json.pending").write_bytes(new_meta)
    assert len(cache.get("ABCUSDT", "1h")) == 300
    assert (tf_dir / "2024.metadata.json").read_bytes() == old_meta, "a reader wrote"
    assert (tf_dir / "2024.metadata.json.pending").exists()
    cache.remove_stale_temp_files("ABCUSDT", "1h")
    cache.cleanup_leftovers()
    assert not (tf_dir / "2024.metadata.json.pending").exists()
    assert json.loads((tf_dir / "2024.metadata.json").read_bytes()) == json.loads(new_meta)
    # crash before the data rename: the pending record does not match and is dropped
    data_file(cache, "ABCUSDT", "1h", 2024).write_bytes(old_data)
    (tf_dir / "2024.metadata.json").write_bytes(old_meta)
    (tf_dir / "2024.metadata.json.pending").write_bytes(new_meta)
    assert len(cache.get("ABCUSDT", "1h")) == 200
    cache.put(df.iloc[:1], "ABCUSDT", "1h")  # a writer settles it (nothing new to add)
    assert not (tf_dir / "2024.metadata.json.pending").exists()
    assert json.loads((tf_dir / "2024.metadata.json").read_bytes()) == json.loads(old_meta)


def test_index_files_are_kept_current(cache: UnifiedCache) -> None:
    cache.put(make_bars("2024-01-01", 30, freq="1D"), "BTCUSDT", "1d", provider="binance")
    cache.put(make_bars("2024-01-01", 10), "AAPL", "1h", provider="alpha_vantage")
    symbols = cache.backend.read_index("symbols.json")
    assert set(symbols) == {"BTCUSDT", "AAPL"}
    assert symbols["BTCUSDT"]["timeframes"]["1d"]["rows"] == 30
    providers = cache.backend.read_index("providers.json")
    assert providers["binance"]["symbols"] == ["BTCUSDT"]
    quality = cache.backend.read_index("quality_scores.json")
    assert (
        quality["AAPL"]["1h"]["2024"] == cache.metadata("AAPL", "1h", 2024)["data_quality"]["score"]
    )
    cache.cleanup_old_data(before="2025-01-01", symbol="AAPL")
    assert "AAPL" not in cache.backend.read_index("symbols.json")


def test_stats_and_info_read_metadata_only(cache: UnifiedCache) -> None:
    cache.put(make_bars("2023-06-01", 24 * 300), "ABCUSDT", "1h", provider="binance")
    for year in (2023, 2024):
        data_file(cache, "ABCUSDT", "1h", year).write_bytes(b"not even gzip")
    stats = cache.get_stats()
    assert stats["symbols"] == 1 and stats["files"] == 2 and stats["rows"] == 24 * 300
    assert stats["compression_ratio"] > 1.5
    assert stats["providers"] == ["binance"]
    info = cache.get_data_info("ABCUSDT")
    assert [y["year"] for y in info["timeframes"]["1h"]["years"]] == [2023, 2024]
    assert cache.list_symbols() == ["ABCUSDT"] and cache.list_timeframes("ABCUSDT") == ["1h"]


def test_cleanup_before_trims_and_deletes_and_dry_run_touches_nothing(cache: UnifiedCache) -> None:
    cache.put(make_bars("2022-06-01", 24 * 800), "ABCUSDT", "1h")
    cache.put(make_bars("2022-06-01", 100, freq="1D"), "ABCUSDT", "1d")
    plan = cache.cleanup_old_data(before="2023-07-01", timeframe="1h", dry_run=True)
    assert [(a.action, a.year) for a in plan] == [("delete-year", 2022), ("trim-year", 2023)]
    assert cache.list_years("ABCUSDT", "1h") == [2022, 2023, 2024]
    done = cache.cleanup_old_data(before="2023-07-01", timeframe="1h")
    assert [(a.action, a.year, a.rows_removed) for a in done] == [
        (a.action, a.year, a.rows_removed) for a in plan
    ]
    got = cache.get("ABCUSDT", "1h")
    assert got["timestamp"].iloc[0] == pd.Timestamp("2023-07-01")
    assert cache.list_years("ABCUSDT", "1d") == [2022]  # other timeframe untouched
    kept = cache.cleanup_old_data(keep_years=1, symbol="ABCUSDT", now=pd.Timestamp("2024-05-01"))
    assert {(a.timeframe, a.year) for a in kept} == {("1h", 2023), ("1d", 2022)}
    assert cache.list_years("ABCUSDT", "1h") == [2024]


def test_cleanup_leftovers(cache: UnifiedCache, cache_dir: Path) -> None:
    files_only(cache)
    cache.put(make_bars("2024-01-01", 50), "ABCUSDT", "1h")
    tf_dir = cache_dir / "ABCUSDT" / "1h"
    sfx = cache.layout.suffix
    (tf_dir / f".2024{sfx}.tmp-123-abcd").write_bytes(b"partial")
    (tf_dir / "2023.metadata.json").write_text("{}")
    (tf_dir / f"2022{sfx}").write_bytes(b"orphan")
    (cache_dir / "EMPTY" / "1d").mkdir(parents=True)
    plan = cache.cleanup_leftovers(dry_run=True)
    reasons = sorted(a.reason for a in plan)
    assert reasons == ["data without metadata", "empty folder", "empty folder",
                       "metadata without data", "temporary file of an interrupted write"]  # fmt: skip
    assert (tf_dir / f"2022{sfx}").exists()
    cache.cleanup_leftovers()
    assert sorted(p.name for p in tf_dir.iterdir() if p.name != ".lock") == sorted(
        [f"2024{sfx}", "2024.metadata.json"]
    )  # fmt: skip
    assert not (cache_dir / "EMPTY").exists()
    assert len(cache.get("ABCUSDT", "1h")) == 50


def test_timezone_aware_and_indexed_frames_are_normalised(cache: UnifiedCache) -> None:
    df = make_bars("2024-01-01", 5)
    aware = df.assign(
        timestamp=df["timestamp"].dt.tz_localize("UTC").dt.tz_convert("America/New_York")
    )
    cache.put(aware.set_index("timestamp"), "ABCUSDT", "1h")
    got = cache.get("ABCUSDT", "1h")
    assert (got["timestamp"].to_numpy() == df["timestamp"].to_numpy()).all()


def test_parquet_years_are_zstd_parquet_read_directly_by_pandas_and_pyarrow(
    cache: UnifiedCache,
) -> None:
    if cache.backend.format != "parquet":
        pytest.skip("a parquet byte-format behaviour")
    import pyarrow.parquet as pq

    df = make_bars("2024-01-01", 3, freq="1D").assign(adj_close=lambda d: d["close"] * 0.5)
    cache.put(df, "AAPL", "1d", provider="yahoo")
    path = data_file(cache, "AAPL", "1d", 2024)
    meta = pq.ParquetFile(io.BytesIO(path.read_bytes())).metadata
    assert meta.row_group(0).column(0).compression == "ZSTD"
    schema = pq.read_schema(io.BytesIO(path.read_bytes()))
    assert schema.names == ["timestamp", "open", "high", "low", "close", "volume", "adj_close"]
    assert str(schema.field("timestamp").type) == "timestamp[us]"
    view = pd.read_parquet(str(path))  # a local path, or s3://… read by pandas through s3fs
    assert np.array_equal(view["adj_close"].to_numpy(), df["adj_close"].to_numpy())
    record = cache.metadata("AAPL", "1d", 2024)["file_info"]
    assert record["format"] == "parquet"
    assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert cache.backend.read_index("cache.json")["format"] == "parquet"


def test_an_append_to_a_parquet_year_rewrites_it_whole(cache: UnifiedCache) -> None:
    if cache.backend.format != "parquet":
        pytest.skip("a parquet byte-format behaviour")
    df = make_bars("2024-01-01", 24 * 30)
    cache.put(df.iloc[:600], "ABCUSDT", "1h")
    result = cache.put(df.iloc[600:], "ABCUSDT", "1h")
    assert result.years[0].mode == "rewrite" and result.rows_added == len(df) - 600
    assert len(cache.get("ABCUSDT", "1h")) == len(df)
    meta = cache.metadata("ABCUSDT", "1h", 2024)
    full = cache.validator("ABCUSDT", "1h").validate(cache.get("ABCUSDT", "1h"))
    assert meta["data_quality"]["score"] == full.score


def test_the_format_of_an_existing_cache_wins_over_the_setting(cache: UnifiedCache) -> None:
    cache.put(make_bars("2024-01-01", 10), "ABCUSDT", "1h")
    other = "parquet" if cache.backend.format == "csv.gz" else "csv.gz"
    again = UnifiedCache(cache.root, settings=parse_settings(f"settings: {{format: {other}}}"))
    assert again.backend.format == cache.backend.format
    assert len(again.get("ABCUSDT", "1h")) == 10


def test_quarantined_copies_never_overwrite_each_other(cache: UnifiedCache) -> None:
    files_only(cache)
    damaged = []
    for i in range(3):  # three corrupt versions of one year set aside within a second
        cache.put(make_bars("2024-01-01", 50, seed=i), "ABCUSDT", "1h")
        path = data_file(cache, "ABCUSDT", "1h", 2024)
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
        damaged.append(bytes(data))
        assert cache.quarantine_year("ABCUSDT", "1h", 2024)
    folder = path.parent
    asides = list(folder.glob(f"2024{suffix(cache)}.corrupt-*"))
    assert sorted(p.read_bytes() for p in asides) == sorted(damaged)
    records = list(folder.glob("2024.metadata.json.corrupt-*"))
    assert len(records) == 3
    stamps = {p.name.partition(".corrupt-")[2] for p in asides}
    assert stamps == {p.name.partition(".corrupt-")[2] for p in records}, "pairs share a stamp"


def test_cleanup_removes_quarantined_copies_older_than_quarantine_days(
    cli: Any, cache: UnifiedCache, tmp_path: Path
) -> None:
    import os
    import time

    files_only(cache)
    folder = cache.layout.timeframe_dir("ABCUSDT", "1h")
    ages: dict[str, float] = {}
    for days in (45, 12, 0):  # three corrupt versions of the year, set aside 45, 12, 0 days ago
        cache.put(make_bars("2024-01-01", 50, seed=int(days)), "ABCUSDT", "1h")
        path = data_file(cache, "ABCUSDT", "1h", 2024)
        path.write_bytes(path.read_bytes()[:-20])
        before = set(folder.iterdir())
        cache.quarantine_year("ABCUSDT", "1h", 2024)
        for aside in set(folder.iterdir()) - before:
            when = time.time() - days * 86400
            os.utime(aside, (when, when))
            ages[aside.name] = days
    assert len(ages) == 6
    cache.put(make_bars("2024-01-01", 50), "ABCUSDT", "1h")
    conf = tmp_path / "p.yaml"
    conf.write_text(f"settings: {{format: {cache.backend.format}}}\n")
    where = ("--cache-dir", str(cache.root), "--config", str(conf))
    plan = cli("cleanup", "--dry-run", "--json", *where)
    assert plan.code == 0, plan.err
    listed = {Path(a["path"]).name: a["reason"] for a in plan.json()["actions"]}
    old = {name for name, days in ages.items() if days > 30}
    assert set(listed) == old
    assert all("quarantined" in why and "30 days" in why for why in listed.values())
    assert all((folder / name).exists() for name in ages), "a dry run removes nothing"
    assert cli("cleanup", *where).code == 0
    assert {p.name for p in folder.glob("*.corrupt-*")} == set(ages) - old
    conf.write_text(f"settings: {{format: {cache.backend.format}, quarantine_days: 7}}\n")
    assert cli("cleanup", *where).code == 0
    assert {p.name for p in folder.glob("*.corrupt-*")} == {n for n, d in ages.items() if d < 7}
    assert len(cache.get("ABCUSDT", "1h")) == 50, "the live year is untouched"


def test_info_with_no_index_answers_at_once_while_a_writer_holds_the_index_lock(
    cli: Any, tmp_path: Path
) -> None:
    """A read never waits for a writer: with the index gone and its lock held (a populate
    committing), `info` computes the totals from the records instead of waiting
    settings.lock_wait (600 s) for the lock to write the index."""
    import subprocess
    import sys
    import time

    root = tmp_path / "c"
    cache = UnifiedCache(root, settings=parse_settings(""))
    cache.put(make_bars("2024-01-01", 48), "ABCUSDT", "1h", provider="binance")
    for name in ("symbols.json", "quality_scores.json", "providers.json"):
        (root / "_metadata" / name).unlink()
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\nfrom marketcache import UnifiedCache\n"
         "from marketcache.config.parser import parse_settings\n"
         f"c = UnifiedCache({str(root)!r}, settings=parse_settings(''))\n"
         "with c.backend.index_lock(wait=5):\n    print('held', flush=True); time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        began = time.monotonic()
        r = cli("info", "--json", "--cache-dir", str(root))
        took = time.monotonic() - began
    finally:
        holder.kill()
        holder.wait()
    assert r.code == 0, r.err
    assert r.json()["symbols"] == 1 and r.json()["rows"] == 48, r.out
    assert took < 30, f"info waited {took:.0f} s for the index lock"
