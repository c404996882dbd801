"""`marketcache copy`: between formats, verified, incremental, scoped."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from conftest import CliResult, make_bars
from marketcache import UnifiedCache
from marketcache.config.parser import parse_settings

Cli = Callable[..., CliResult]
STORAGE_FIELDS = ("format", "size_bytes", "raw_bytes", "sha256", "members", "copied_from_sha256")


def _fill(root: Path) -> UnifiedCache:
    cache = UnifiedCache(root, settings=parse_settings(""), lock_wait=5)
    df = make_bars("2023-12-30", 24 * 5)
    cache.put(df.iloc[:60], "BTCUSDT", "1h", provider="binance")
    cache.put(df.iloc[60:], "BTCUSDT", "1h", provider="binance")  # an appended gzip member
    daily = make_bars("2024-01-02", 40, "1D", seed=2).assign(adj_close=lambda d: d["close"] * 0.9)
    cache.put(daily, "AAPL", "1d", provider="yahoo")
    cache.record_actions("AAPL", [], [], source="yahoo", checked_through="2024-02-10")
    cache.update_coverage("AAPL", "1d", missing=[(_Span("2024-03-01", "2024-03-05"), "test")])
    return cache


class _Span:
    def __init__(self, start: str, end: str) -> None:
        self.start, self.end = pd.Timestamp(start), pd.Timestamp(end)


def _records(cache: UnifiedCache) -> dict[tuple[str, str, int], dict]:
    out = {}
    for sym, tf, year, meta in cache.iter_metadata():
        assert isinstance(meta, dict)
        meta["file_info"] = {k: v for k, v in meta["file_info"].items() if k not in STORAGE_FIELDS}
        out[(sym, tf, year)] = meta
    return out


def test_copy_round_trips_csv_gz_parquet_csv_gz_to_identical_rows_and_records(
    cli: Cli, tmp_path: Path
) -> None:
    src = _fill(tmp_path / "a")
    r = cli("copy", str(tmp_path / "a"), str(tmp_path / "b"), "--format", "parquet", "--json")
    assert r.code == 0, r.err
    assert r.json()["summary"]["copied"] == 3 and r.json()["format"] == "parquet"
    assert list((tmp_path / "b" / "AAPL" / "1d").glob("2024.parquet"))
    back = cli("copy", str(tmp_path / "b"), str(tmp_path / "c"), "--format", "csv.gz", "--json")
    assert back.code == 0, back.err
    mid = UnifiedCache(tmp_path / "b", settings=parse_settings(""))
    end = UnifiedCache(tmp_path / "c", settings=parse_settings(""))
    for cache in (mid, end):
        for sym, tf in (("BTCUSDT", "1h"), ("AAPL", "1d")):
            pd.testing.assert_frame_equal(cache.get(sym, tf), src.get(sym, tf), check_exact=True)
        assert _records(cache) == _records(src)
        assert cache.get_actions("AAPL") == src.get_actions("AAPL")
    assert end.backend.format == "csv.gz" and mid.backend.format == "parquet"
    assert end.get_stats()["rows"] == src.get_stats()["rows"]


def test_a_second_copy_copies_only_what_changed(cli: Cli, tmp_path: Path) -> None:
    src = _fill(tmp_path / "a")
    args = ("copy", str(tmp_path / "a"), str(tmp_path / "b"), "--format", "parquet", "--json")
    assert cli(*args).json()["summary"]["copied"] == 3
    again = cli(*args).json()
    assert again["summary"] == {"copied": 0, "skipped": 3, "failed": 0, "rows": 0}
    src.put(make_bars("2024-02-20", 3, "1D", seed=5), "AAPL", "1d", provider="yahoo")
    third = cli(*args).json()
    copied = [(y["symbol"], y["year"]) for y in third["years"] if y["status"] == "copied"]
    assert copied == [("AAPL", 2024)]
    scoped = cli("copy", str(tmp_path / "a"), str(tmp_path / "d"), "--symbol", "aapl", "--json")
    assert [y["symbol"] for y in scoped.json()["years"]] == ["AAPL"]


def test_copy_verifies_the_source_and_names_bad_input(cli: Cli, tmp_path: Path) -> None:
    src = _fill(tmp_path / "a")
    path = src.layout.data_path("BTCUSDT", "1h", 2024)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    r = cli("copy", str(tmp_path / "a"), str(tmp_path / "b"), "--json")
    assert r.code == 1
    failed = [y for y in r.json()["years"] if y["status"] == "failed"]
    assert [(y["symbol"], y["year"]) for y in failed] == [("BTCUSDT", 2024)]
    assert "sha256 does not match" in r.err
    assert cli("copy", str(tmp_path / "nope"), str(tmp_path / "x")).code == 2
    assert cli("copy", str(tmp_path / "a"), str(tmp_path / "y"), "--format", "xml").code == 2
    assert cli("copy", str(tmp_path / "b"), str(tmp_path / "a"), "--format", "parquet").code == 2
