"""Binance's public klines archive: the same rows as REST, fewer requests, holes and all."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from conftest import CliResult, make_bars
from fakes import FakeBinance, config_for
from marketcache import UnifiedCache
from marketcache.config import load_settings

Cli = Callable[..., CliResult]


def _with_holes(frame: pd.DataFrame, every: int = 97) -> pd.DataFrame:
    """Real series have holes: minutes or hours with no trade, and a whole quiet day."""
    ts = frame["timestamp"]
    quiet_day = ts.dt.normalize() == ts.dt.normalize().iloc[len(ts) // 3]
    return frame[(frame.index % every != 5) & ~quiet_day.to_numpy()].reset_index(drop=True)


def _populate(cli: Cli, server: FakeBinance, root: Path, archive: bool, *args: str) -> CliResult:
    conf = root.with_suffix(".yaml")
    conf.write_text(config_for(binance=server, archive=archive, timeout=30))
    r = cli("populate", *args, "--cache-dir", str(root), "--config", str(conf), "--json")
    assert r.code == 0, r.err
    return r


def test_the_archive_gives_the_rest_result_row_for_row(
    cli: Cli, fake_binance: FakeBinance, tmp_path: Path
) -> None:
    served = _with_holes(make_bars("2024-11-01", 24 * 120, "1h", seed=7))  # Nov 2024 - Feb 2025
    fake_binance.add("ABCUSDT", "1h", served)
    fake_binance.archive_missing = {"ABCUSDT-1h-2024-12"}  # not published: REST fills it
    fake_binance.archive_bad = {"ABCUSDT-1h-2025-02"}  # does not match its CHECKSUM: REST
    fake_binance.archive_header = {"ABCUSDT-1h-2025-01"}  # a header line (and µs stamps)
    args = ("ABCUSDT", "-t", "1h", "--start", "2024-11-01", "--end", "2025-03-01")
    rest_only = _populate(cli, fake_binance, tmp_path / "rest", False, *args)
    rest_requests = len(fake_binance.data_requests())
    fake_binance.requests.clear()
    archived = _populate(cli, fake_binance, tmp_path / "arch", True, *args)
    settings = load_settings(tmp_path / "arch.yaml")
    a, r = (UnifiedCache(tmp_path / p, settings=settings) for p in ("arch", "rest"))
    pd.testing.assert_frame_equal(a.get("ABCUSDT", "1h"), r.get("ABCUSDT", "1h"), check_exact=True)
    for year in (2024, 2025):  # and the same holes known to be empty, nothing missing
        ca, cr = (
            a.metadata("ABCUSDT", "1h", year)["coverage"],
            r.metadata("ABCUSDT", "1h", year)["coverage"],
        )
        assert [(e["start"], e["end"]) for e in ca["verified_empty"]] == [
            (e["start"], e["end"]) for e in cr["verified_empty"]
        ]
        assert ca["missing_ranges"] == cr["missing_ranges"] == []
    assert fake_binance.archive_served == [
        "ABCUSDT-1h-2024-11",
        "ABCUSDT-1h-2025-01",
        "ABCUSDT-1h-2025-02",
    ]
    rest_now = len(fake_binance.data_requests())
    assert 0 < rest_now < rest_requests, "REST asked only for December and February"
    months = {q["startTime"][:6] for q in fake_binance.data_requests()}
    assert len(months) >= 1
    sources = a.metadata("ABCUSDT", "1h", 2025)["coverage"]["sources"]
    assert [s["provider"] for s in sources] == ["binance-archive", "binance"]
    assert sources[0]["start"] == "2025-01-01T00:00:00" and sources[1]["start"].startswith(
        "2025-02-01"
    )
    notes = " ".join(archived.json()["results"][0]["notes"])
    assert "does not match its checksum" in notes and "has no ABCUSDT-1h-2024-12.zip" in notes
    assert rest_only.json()["summary"]["requests"]["total"] == rest_requests


def test_the_last_two_days_come_from_rest_and_older_days_from_the_archive(
    cli: Cli, fake_binance: FakeBinance, tmp_path: Path
) -> None:
    now = pd.Timestamp.now(tz="UTC").tz_localize(None).floor("h")
    served = make_bars(
        "", 0, index=pd.date_range(end=now - pd.Timedelta(hours=1), periods=24 * 9, freq="1h")
    )
    fake_binance.add("ABCUSDT", "1h", served)
    start = f"{served['timestamp'].iloc[0]:%Y-%m-%d %H:%M}"
    _populate(cli, fake_binance, tmp_path / "arch", True, "ABCUSDT", "-t", "1h", "--start", start)
    cutoff = now.normalize() - pd.Timedelta(days=2)
    first_rest = min(int(q["startTime"]) for q in fake_binance.data_requests())
    assert pd.Timestamp(first_rest, unit="ms") >= cutoff, "REST only for the last two days"
    assert fake_binance.archive_served, "older days came from daily or monthly zips"
    stored = UnifiedCache(tmp_path / "arch", settings=load_settings(tmp_path / "arch.yaml")).get(
        "ABCUSDT", "1h"
    )
    assert stored["timestamp"].tolist() == served["timestamp"].tolist()


@pytest.mark.slow
def test_a_year_of_1m_bars_takes_12_zips_and_equals_rest(
    cli: Cli, fake_binance: FakeBinance, tmp_path: Path
) -> None:
    served = _with_holes(make_bars("2024-01-01", 60 * 24 * 366, "1min", seed=9), every=1013)
    fake_binance.add("ABCUSDT", "1m", served)
    args = ("ABCUSDT", "-t", "1m", "--start", "2024-01-01", "--end", "2025-01-01")
    rest = _populate(cli, fake_binance, tmp_path / "rest", False, *args)
    fake_binance.requests.clear()
    arch = _populate(cli, fake_binance, tmp_path / "arch", True, *args)
    assert len(fake_binance.archive_served) == 12 <= 14
    assert len(fake_binance.data_requests()) == 0
    assert rest.json()["summary"]["requests"]["total"] >= 520
    assert arch.json()["summary"]["requests"]["total"] == 24  # 12 zips + 12 CHECKSUM files
    settings = load_settings(tmp_path / "arch.yaml")
    pd.testing.assert_frame_equal(
        UnifiedCache(tmp_path / "arch", settings=settings).get("ABCUSDT", "1m"),
        UnifiedCache(tmp_path / "rest", settings=settings).get("ABCUSDT", "1m"),
        check_exact=True,
    )
