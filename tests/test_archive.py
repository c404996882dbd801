"""Binance's public klines archive: the same rows as REST, fewer requests, holes and all."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from conftest import CliResult, make_bars
from fakes import FakeBinance, config_for
from marketcache import UnifiedCache
from marketcache.config.parser import load_settings

Cli = Callable[..., CliResult]


def _with_holes(frame: pd.DataFrame, outages: int = 3) -> pd.DataFrame:
    """Real series have holes: Binance writes a kline for every interval it is open, trades or
    not, so its holes are outages — a few stretches of bars, and here a whole quiet day."""
    ts = frame["timestamp"]
    quiet_day = ts.dt.normalize() == ts.dt.normalize().iloc[len(ts) // 3]
    keep = ~quiet_day.to_numpy()
    for i in range(outages):
        at = len(ts) * (2 * i + 1) // (2 * outages + 1)
        keep[at : at + 7] = False
    return frame[keep].reset_index(drop=True)


def _long_bars(start: str, periods: int, freq: str, seed: int) -> pd.DataFrame:
    """make_bars for long series: the random walk lifted so that prices stay positive."""
    frame = make_bars(start, periods, freq, seed=seed)
    frame[["open", "high", "low", "close"]] += 1000
    return frame


BINANCE_ONLY = "selection:\n  - {symbol_type: crypto, providers: [binance]}\n"


def _populate(
    cli: Cli, server: FakeBinance, root: Path, archive: bool, *args: str, extra: str = ""
) -> CliResult:
    conf = root.with_suffix(".yaml")
    conf.write_text(config_for(binance=server, archive=archive, timeout=30, extra=extra))
    r = cli("populate", *args, "--cache-dir", str(root), "--config", str(conf), "--json")
    assert r.code == 0, r.err
    return r


def test_the_archive_gives_the_rest_result_row_for_row(
    cli: Cli, fake_binance: FakeBinance, tmp_path: Path
) -> None:
    served = _with_holes(make_bars("2024-11-01", 480 * 120, "3min", seed=7))  # Nov - Feb
    fake_binance.add("ABCUSDT", "3m", served)
    fake_binance.archive_missing = {"ABCUSDT-3m-2024-12"}  # not published: REST fills it
    fake_binance.archive_bad = {"ABCUSDT-3m-2025-02"}  # does not match its CHECKSUM: REST
    fake_binance.archive_header = {"ABCUSDT-3m-2025-01"}  # a header line (and µs stamps)
    args = ("ABCUSDT", "-t", "3m", "--start", "2024-11-01", "--end", "2025-03-01")
    rest_only = _populate(cli, fake_binance, tmp_path / "rest", False, *args)
    rest_requests = len(fake_binance.data_requests())
    fake_binance.requests.clear()
    archived = _populate(cli, fake_binance, tmp_path / "arch", True, *args)
    settings = load_settings(tmp_path / "arch.yaml")
    a, r = (UnifiedCache(tmp_path / p, settings=settings) for p in ("arch", "rest"))
    pd.testing.assert_frame_equal(a.get("ABCUSDT", "3m"), r.get("ABCUSDT", "3m"), check_exact=True)
    for year in (2024, 2025):  # and the same holes known to be empty, nothing missing
        ca, cr = (
            a.metadata("ABCUSDT", "3m", year)["coverage"],
            r.metadata("ABCUSDT", "3m", year)["coverage"],
        )
        assert [(e["start"], e["end"]) for e in ca["verified_empty"]] == [
            (e["start"], e["end"]) for e in cr["verified_empty"]
        ]
        assert ca["missing_ranges"] == cr["missing_ranges"] == []
    assert fake_binance.archive_served == [
        "ABCUSDT-3m-2024-11",
        "ABCUSDT-3m-2025-01",
        "ABCUSDT-3m-2025-02",
    ]
    rest_now = len(fake_binance.data_requests())
    assert 0 < rest_now < rest_requests, "REST asked only for December and February"
    months = {q["startTime"][:6] for q in fake_binance.data_requests()}
    assert len(months) >= 1
    sources = a.metadata("ABCUSDT", "3m", 2025)["coverage"]["sources"]
    assert [s["provider"] for s in sources] == ["binance-archive", "binance"]
    assert sources[0]["start"] == "2025-01-01T00:00:00" and sources[1]["start"].startswith(
        "2025-02-01"
    )
    notes = " ".join(archived.json()["results"][0]["notes"])
    assert "does not match its checksum" in notes and "has no ABCUSDT-3m-2024-12.zip" in notes
    assert rest_only.json()["summary"]["requests"]["total"] == rest_requests


def test_the_last_two_days_and_the_running_month_come_from_rest(
    cli: Cli, fake_binance: FakeBinance, tmp_path: Path
) -> None:
    """Finished months from monthly zips; the days of the running month from REST (a daily
    zip and its CHECKSUM, 2 requests, cost more than the 1,440 bars' 1.4 REST pages), and
    the last two days from REST by the local UTC clock."""
    now = pd.Timestamp.now(tz="UTC").tz_localize(None).floor("min")
    month = now.to_period("M").start_time
    first = (month - pd.Timedelta(days=1)).to_period("M").start_time
    served = make_bars(
        "", 0, index=pd.date_range(first, now - pd.Timedelta(minutes=1), freq="1min")
    )
    fake_binance.add("ABCUSDT", "1m", served)
    start = f"{first:%Y-%m-%d}"
    _populate(cli, fake_binance, tmp_path / "arch", True, "ABCUSDT", "-t", "1m", "--start", start)
    assert fake_binance.archive_served == [f"ABCUSDT-1m-{first:%Y-%m}"]
    asked = [pd.Timestamp(int(q["startTime"]), unit="ms") for q in fake_binance.data_requests()]
    cutoff = now.normalize() - pd.Timedelta(days=2)
    assert min(asked) >= min(month, cutoff), "REST only for the running month and two days"
    stored = UnifiedCache(tmp_path / "arch", settings=load_settings(tmp_path / "arch.yaml")).get(
        "ABCUSDT", "1m"
    )
    assert stored["timestamp"].tolist() == served["timestamp"].tolist()


@pytest.mark.slow
def test_a_year_of_1m_bars_takes_12_zips_and_equals_rest(
    cli: Cli, fake_binance: FakeBinance, tmp_path: Path
) -> None:
    served = _with_holes(make_bars("2024-01-01", 60 * 24 * 366, "1min", seed=9), outages=5)
    fake_binance.add("ABCUSDT", "1m", served)
    args = ("ABCUSDT", "-t", "1m", "--start", "2024-01-01", "--end", "2025-01-01")
    rest = _populate(cli, fake_binance, tmp_path / "rest", False, *args)
    fake_binance.requests.clear()
    arch = _populate(cli, fake_binance, tmp_path / "arch", True, *args)
    assert len(fake_binance.archive_served) == 12 <= 14
    # REST only to confirm the 6 bar-less stretches (5 outages and the quiet day): one each
    assert len(fake_binance.data_requests()) == 6
    assert rest.json()["summary"]["requests"]["total"] >= 520
    assert arch.json()["summary"]["requests"]["total"] == 24 + 6  # 12 zips + 12 CHECKSUMs
    settings = load_settings(tmp_path / "arch.yaml")
    pd.testing.assert_frame_equal(
        UnifiedCache(tmp_path / "arch", settings=settings).get("ABCUSDT", "1m"),
        UnifiedCache(tmp_path / "rest", settings=settings).get("ABCUSDT", "1m"),
        check_exact=True,
    )


def test_a_range_before_the_listing_is_an_empty_answer_not_an_internal_error(
    cli: Cli, fake_binance: FakeBinance, tmp_path: Path
) -> None:
    """Issue 19.2: SOLUSDT lists on 2019-01-01; asking from 2018-12-01 stores the 59 bars, and
    a 1m series whose first zip is not published (404) does not fail every cron run."""
    from marketcache import DataManager

    daily = make_bars("2019-01-01", 59, "1D", seed=3)
    minutes = make_bars("2019-01-01", 60 * 24 * 31, "1min", seed=4)
    fake_binance.add("SOLUSDT", "1d", daily)
    fake_binance.add("SOLUSDT", "1m", minutes)
    fake_binance.archive_missing = {"SOLUSDT-1m-2018-12"}
    root = tmp_path / "arch"
    args = ("--start", "2018-12-01", "--end", "2019-03-01")
    r = _populate(cli, fake_binance, root, True, "SOLUSDT", "-t", "1d", *args, extra=BINANCE_ONLY)
    assert r.json()["results"][0]["rows_added"] == 59
    for _ in range(2):  # the cron job, twice: the month before listing is known empty
        r = _populate(cli, fake_binance, root, True, "SOLUSDT", "-t", "1m", "--start",
                      "2018-12-01", "--end", "2019-02-01", extra=BINANCE_ONLY)  # fmt: skip
        assert r.json()["results"][0]["status"] in ("ok", "up-to-date"), r.out
    settings = load_settings(root.with_suffix(".yaml"))
    stored = UnifiedCache(root, settings=settings).get("SOLUSDT", "1m")
    assert stored["timestamp"].tolist() == minutes["timestamp"].tolist()
    fake_binance.archive_served.clear()
    with DataManager(tmp_path / "dm", settings=settings) as dm:  # a notebook, the same answer
        got = dm.get_ohlcv("SOLUSDT", "1m", start="2018-12-01", end="2019-02-01")
    assert len(got) == len(minutes)
    assert fake_binance.archive_served == ["SOLUSDT-1m-2019-01"]


def test_rows_a_zip_lacks_are_asked_from_rest(
    cli: Cli, fake_binance: FakeBinance, tmp_path: Path
) -> None:
    """Issue 19.3: a monthly file missing two days that REST serves: the archive run equals
    the REST-only run row for row, and nothing is recorded as verified empty there."""
    served = _long_bars("2024-01-01", 480 * 91, "3min", seed=5)  # Jan - Mar 2024
    fake_binance.add("ABCUSDT", "3m", served)
    fake_binance.archive_lacking = {"ABCUSDT-3m-2024-02": ("2024-02-10", "2024-02-12")}
    args = ("ABCUSDT", "-t", "3m", "--start", "2024-01-01", "--end", "2024-04-01")
    _populate(cli, fake_binance, tmp_path / "rest", False, *args)
    fake_binance.requests.clear()
    _populate(cli, fake_binance, tmp_path / "arch", True, *args)
    assert len(fake_binance.archive_served) == 3
    settings = load_settings(tmp_path / "arch.yaml")
    a, r = (UnifiedCache(tmp_path / p, settings=settings) for p in ("arch", "rest"))
    got = a.get("ABCUSDT", "3m")
    assert len(got) == len(served) == 480 * 91
    pd.testing.assert_frame_equal(got, r.get("ABCUSDT", "3m"), check_exact=True)
    coverage = a.metadata("ABCUSDT", "3m", 2024)["coverage"]
    assert coverage["verified_empty"] == [] and coverage["missing_ranges"] == []
    rest = [s for s in coverage["sources"] if s["provider"] == "binance"]
    assert [(s["start"][:10], s["end"][:10]) for s in rest] == [("2024-02-10", "2024-02-11")]
    assert len(fake_binance.data_requests()) == 1, "one REST page covers the two days"


def test_hours_and_days_come_from_rest_where_the_archive_costs_more(
    cli: Cli, fake_binance: FakeBinance, tmp_path: Path
) -> None:
    """Issue 19.11: a year of 1h bars is 9 REST pages, of 1d bars 1, against 24 downloads
    (12 zips and their CHECKSUM files): REST it is; a year of 3m bars (176 pages) still
    comes from the archive."""
    fake_binance.add("ABCUSDT", "1h", make_bars("2024-01-01", 24 * 366, "1h", seed=1))
    fake_binance.add("ABCUSDT", "1d", make_bars("2024-01-01", 366, "1D", seed=2))
    fake_binance.add("ABCUSDT", "3m", _long_bars("2024-01-01", 480 * 366, "3min", seed=3))
    root = tmp_path / "arch"
    counts = {}
    for tf in ("1h", "1d", "3m"):
        r = _populate(cli, fake_binance, root, True, "ABCUSDT", "-t", tf, "--start",
                      "2024-01-01", "--end", "2025-01-01")  # fmt: skip
        counts[tf] = r.json()["summary"]["requests"]["total"]
    assert counts == {"1h": 9, "1d": 1, "3m": 24}
    assert fake_binance.archive_served == [f"ABCUSDT-3m-2024-{m:02d}" for m in range(1, 13)]


def test_a_wrong_archive_url_is_said_once(
    cli: Cli, fake_binance: FakeBinance, tmp_path: Path
) -> None:
    """Issue 19.11: an archive_url where every file is missing (404) while REST has the bars
    is one warning naming archive_url, not a note per file, and is not asked again."""
    for sym in ("ABCUSDT", "XYZUSDT"):
        fake_binance.add(sym, "1m", _long_bars("2024-01-01", 60 * 24 * 91, "1min", seed=1))
    conf = tmp_path / "wrong.yaml"
    good = config_for(binance=fake_binance, archive=True, timeout=30)
    conf.write_text(good.replace(f"archive_url: '{fake_binance.url}'",
                                 f"archive_url: '{fake_binance.url}/wrong'"))  # fmt: skip
    r = cli("populate", "ABCUSDT", "XYZUSDT", "-t", "1m", "--start", "2024-01-01", "--end",
            "2024-04-01", "--cache-dir", str(tmp_path / "c"), "--config", str(conf), "--json")  # fmt: skip
    assert r.code == 0, r.err
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: binance: archive_url"), r.err
    assert "providers.binance.archive_url" in lines[0]
    asked = [p for p, _ in fake_binance.requests if p.startswith("/wrong/")]
    assert len(asked) == 2, "the zips of the first range (Jan, Feb) only: tried once each"
    notes = [n for res in r.json()["results"] for n in res["notes"] if "archive" in n]
    assert len(notes) == 1 and r.json()["warnings"] == [lines[0].removeprefix("warning: ")]


def test_a_month_the_archive_lacks_is_asked_once_a_run_not_once_per_chunk(
    cli: Cli, fake_binance: FakeBinance, tmp_path: Path
) -> None:
    """A 1m year is committed in chunks; a month file that is not published (404) is asked
    once, its CHECKSUM never, and REST serves that month."""
    served = make_bars("2024-01-01", 60 * 24 * 91, "1min", seed=6)  # Jan - Mar 2024
    fake_binance.add("ABCUSDT", "1m", served)
    fake_binance.archive_missing = {"ABCUSDT-1m-2024-02"}
    args = ("ABCUSDT", "-t", "1m", "--start", "2024-01-01", "--end", "2024-04-01")
    r = _populate(cli, fake_binance, tmp_path / "arch", True, *args)
    asked = [p for p, _ in fake_binance.requests if "ABCUSDT-1m-2024-02" in p]
    assert asked == [asked[0]] and asked[0].endswith(".zip"), asked
    assert r.json()["results"][0]["rows_added"] == len(served)
    feb = pd.Timestamp("2024-02-01").value // 10**6, pd.Timestamp("2024-03-01").value // 10**6
    pages = [q for q in fake_binance.data_requests() if feb[0] <= int(q["startTime"]) < feb[1]]
    assert 0 < len(pages) <= -(-60 * 24 * 29 // 1000) + 1, len(pages)
