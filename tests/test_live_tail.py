"""The live tail (issue 23, the storage half): closed bars appended with `append_live` are
durable and readable at once on every backend, folded into the years as a populate would
write them, and never lost or doubled — across SIGKILLs, a fold cut in two, and a cron
`populate` of the same series running in another process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from conftest import make_bars
from fakes import FakeBinance, config_for
from marketcache import DataManager, UnifiedCache
from marketcache.cache.tail import is_tail
from marketcache.config.parser import parse_settings
from marketcache.errors import ConfigError, UsageError
from marketcache.serve.reader import RangeReader
from marketcache.serve.results import ResultCache
from marketcache.storage.tail import TAIL_NAME, open_tail
from serving import API, cache_on, served

SYM, TF = "BTCUSDT", "1m"
BACKENDS = ["csv.gz", "parquet", "s3", "postgresql"]
TESTS = Path(__file__).resolve().parent
BARS = make_bars("2024-03-01", 240, "1min")


@pytest.fixture(params=BACKENDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def live(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> UnifiedCache:
    cache = cache_on(kind, tmp_path, request)
    if kind == "s3":  # a SIGKILLed writer's lease expires in seconds, not a minute
        return UnifiedCache(location(cache), settings=parse_settings(LEASE), lock_wait=30)
    return cache


LEASE = "settings: {lease_seconds: 6}"  # short, yet a loaded machine renews it in time


def location(cache: UnifiedCache) -> str:
    return str(cache.backend.location if cache.backend.name != "files" else cache.root)


def twin(kind: str, cache: UnifiedCache, tmp_path: Path) -> UnifiedCache:
    """A second, empty cache on the same kind of backend."""
    if kind == "postgresql":
        import psycopg

        url = str(cache.backend.location).replace("schema=", "schema=r")
        server, schema = url.rsplit("&schema=", 1)[0], url.rsplit("schema=", 1)[1]
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        return UnifiedCache(url, settings=parse_settings(""))
    if kind == "s3":
        return UnifiedCache(location(cache).rsplit("/", 1)[0] + "/ref", settings=cache.settings)
    return UnifiedCache(tmp_path / "ref", settings=cache.settings, lock_wait=5)


def values(df: pd.DataFrame) -> np.ndarray:
    cols = ["open", "high", "low", "close", "volume"]
    stamps = df["timestamp"].to_numpy("datetime64[ns]").astype(np.int64)[:, None]
    return np.hstack([stamps.astype("float64"), df[cols].to_numpy("float64")])


def same_bars(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert len(got) == len(want)
    assert got["timestamp"].is_unique and got["timestamp"].is_monotonic_increasing
    assert (values(got) == values(want.reset_index(drop=True))).all()


def one_by_one(cache: UnifiedCache, bars: pd.DataFrame, size: int = 1) -> None:
    """Append `bars` as a follower does: a flush of `size` bars at a time."""
    for i in range(0, len(bars), size):
        part = bars.iloc[i : i + size]
        assert cache.append_live(SYM, TF, part.set_index("timestamp")) == len(part)


# the backends on which a trial takes more than a few seconds run it with the slow trials
SLOW_ON = [
    "csv.gz",
    *(pytest.param(k, marks=pytest.mark.slow) for k in ("parquet", "s3", "postgresql")),
]


# ---- appends and reads -----------------------------------------------------------------------


def test_appended_bars_are_read_by_every_reader_and_stored_once(live: UnifiedCache) -> None:
    live.commit_range(BARS.iloc[:60], SYM, TF, "binance")
    one_by_one(live, BARS.iloc[60:100], size=4)
    same_bars(live.get(SYM, TF), BARS.iloc[:100])
    # a bar delivered twice, a batch overlapping the tail and the year: the new ones only
    assert live.append_live(SYM, TF, BARS.iloc[99:100]) == 0
    assert live.append_live(SYM, TF, BARS.iloc[50:110]) == 10
    assert live.last_stored(SYM, TF) == BARS["timestamp"].iloc[109]
    same_bars(live.get(SYM, TF), BARS.iloc[:110])
    same_bars(live.get(SYM, TF, "2024-03-01 01:30", "2024-03-01 01:45"), BARS.iloc[90:105])
    # the year is untouched until a fold; list/info see only it
    assert live.record(SYM, TF, 2024).rows == 60
    assert live.list_years(SYM, TF) == [2024] and live.list_timeframes(SYM) == [TF]
    records = live.range_records(SYM, TF)
    assert [r.year for r in records] == [2024, 0] and is_tail(records[-1])
    assert not any(is_tail(r) for r in live.range_records(SYM, TF, None, "2024-03-01 00:30"))
    # DataManager, the HTTP API and (PostgreSQL) plain SQL read it too
    dm = DataManager(live)
    same_bars(dm.get_ohlcv(SYM, TF, fetch_missing=False), BARS.iloc[:110])
    assert dm.latest([SYM], TF)["timestamp"].tolist() == [BARS["timestamp"].iloc[109]]
    assert dm.availability()[["last", "rows"]].values.tolist() == [["2024-03-01T01:49:00", 110]]
    if live.backend.name == "postgresql":
        import psycopg

        url = str(live.backend.location)
        schema = url.rsplit("schema=", 1)[1]
        with psycopg.connect(url.rsplit("&schema=", 1)[0]) as conn:
            count = conn.execute(f"SELECT count(*), max(ts) FROM {schema}.live_bars").fetchone()
        assert count is not None and count[0] == 110
    with served(live) as url, httpx.Client(base_url=url, timeout=60) as http:
        got = http.get(f"{API}/historical/{SYM}", params={"interval": TF}).json()["bars"]
        assert len(got) == 110 and got[-1]["close"] == BARS["close"].iloc[109]
        quote = http.get(f"{API}/quote/{SYM}", params={"interval": TF}).json()
        assert quote["timestamp"] == "2024-03-01T01:49:00Z"


def test_a_series_can_start_live_and_a_hole_before_the_years_last_goes_into_its_year(
    live: UnifiedCache,
) -> None:
    assert live.last_stored(SYM, TF) is None
    one_by_one(live, BARS.iloc[:5])  # no year yet: the tail alone
    same_bars(live.get(SYM, TF), BARS.iloc[:5])
    assert live.list_years(SYM, TF) == []  # no year: listed for its tail
    assert live.list_symbols() == [SYM] and live.list_timeframes(SYM) == [TF]
    assert DataManager(live).availability()[["first", "last", "rows"]].values.tolist() == [
        ["2024-03-01T00:00:00", "2024-03-01T00:04:00", 5]
    ]
    tf_info = live.get_data_info(SYM)["timeframes"][TF]
    assert tf_info["years"] == [] and tf_info["rows"] == 5
    assert tf_info["live"] == {"rows": 5, "start": "2024-03-01T00:00:00",
                               "end": "2024-03-01T00:04:00"}  # fmt: skip
    assert live.fold_live(SYM, TF, force=True) == 5
    gapped = BARS.iloc[5:60].drop(index=30)
    live.commit_range(gapped, SYM, TF, "binance")
    assert live.append_live(SYM, TF, BARS.iloc[30:31]) == 1  # the hole: into the year at once
    assert live.record(SYM, TF, 2024).rows == 60
    assert open_tail(live.backend, SYM, TF).read().empty
    same_bars(live.get(SYM, TF), BARS.iloc[:60])


def test_a_bad_bar_is_refused_naming_it_and_nothing_is_stored(live: UnifiedCache) -> None:
    bad = BARS.iloc[:3].copy()
    bad.loc[1, "high"] = bad.loc[1, "low"] - 1
    with pytest.raises(UsageError, match=r"BTCUSDT 1m: bar 2024-03-01T00:01:00 is not a valid"):
        live.append_live(SYM, TF, bad)
    off_grid = BARS.iloc[:1].assign(timestamp=pd.Timestamp("2024-03-01 00:00:30"))
    with pytest.raises(UsageError, match="00:00:30"):
        live.append_live(SYM, TF, off_grid)
    assert live.last_stored(SYM, TF) is None and live.get(SYM, TF).empty


# ---- folds -----------------------------------------------------------------------------------


def _comparable(record: dict[str, Any], fmt: str) -> dict[str, Any]:
    out = {k: v for k, v in record.items() if k not in ("created_at", "last_updated")}
    info = dict(out["file_info"])
    if fmt == "csv.gz":  # appended gzip members: other bytes, the same rows
        for k in ("sha256", "size_bytes", "members"):
            info.pop(k)
    out["file_info"] = info
    return out


def test_a_fold_makes_the_year_a_populate_makes(
    kind: str, live: UnifiedCache, tmp_path: Path
) -> None:
    ref = twin(kind, live, tmp_path)
    start = BARS.iloc[:60]
    for cache in (live, ref):
        cache.commit_range(start, SYM, TF, "binance")
    one_by_one(live, BARS.iloc[60:180], size=10)
    assert live.fold_live(SYM, TF, force=True) == 120
    ref.commit_range(BARS.iloc[60:180], SYM, TF, "binance")
    assert open_tail(live.backend, SYM, TF).read().empty
    same_bars(live.read_year(SYM, TF, 2024), ref.read_year(SYM, TF, 2024))
    fmt = live.backend.format
    mine = _comparable(live.metadata(SYM, TF, 2024), fmt)
    assert mine == _comparable(ref.metadata(SYM, TF, 2024), fmt)
    assert mine["coverage"]["sources"] == [
        {"provider": "binance", "start": "2024-03-01T00:00:00", "end": "2024-03-01T02:59:00"}
    ]
    assert live.fold_live(SYM, TF, force=True) == 0
    live.verify_year(SYM, TF, 2024)


def test_a_fold_is_due_after_live_fold_every_of_bars(tmp_path: Path) -> None:
    settings = parse_settings("settings: {live_fold_every: 10m}")
    cache = UnifiedCache(tmp_path / "c", settings=settings, lock_wait=5)
    now = pd.Timestamp.now(tz="UTC").tz_localize(None).floor("min")
    recent = make_bars(str(now - pd.Timedelta(minutes=8)), 5, "1min")
    one_by_one(cache, recent)
    assert cache.fold_live(SYM, TF) == 0  # 5 minutes of bars, the oldest 8 minutes old
    assert len(open_tail(cache.backend, SYM, TF).read()) == 5
    old = make_bars("2024-03-01", 12, "1min")
    cache2 = UnifiedCache(tmp_path / "d", settings=settings, lock_wait=5)
    one_by_one(cache2, old)
    assert cache2.fold_live(SYM, TF) == 12 and cache2.record(SYM, TF, 2024).rows == 12
    with pytest.raises(ConfigError, match="settings.live_fold_every"):
        parse_settings("settings: {live_fold_every: soon}")


def test_a_tail_nobody_folds_stays_bounded(tmp_path: Path) -> None:
    settings = parse_settings("settings: {live_fold_every: 5m}")
    cache = UnifiedCache(tmp_path / "c", settings=settings, lock_wait=5)
    one_by_one(cache, BARS.iloc[:25])  # 4 × 5 minutes: folded by the append itself
    assert len(open_tail(cache.backend, SYM, TF).read()) < 20
    same_bars(cache.get(SYM, TF), BARS.iloc[:25])
    assert cache.get_stats()["rows"] == cache.record(SYM, TF, 2024).rows >= 20  # the index too


def test_a_bar_folded_meanwhile_is_read_once_by_serve_and_get(live: UnifiedCache) -> None:
    """A reader holding the records from before a fold reads the year after it."""
    live.commit_range(BARS.iloc[:60], SYM, TF, "binance")
    one_by_one(live, BARS.iloc[60:90], size=5)
    reader = RangeReader(live, ResultCache(64 << 20))
    plan = reader.plan(SYM, TF, None, None)
    assert live.fold_live(SYM, TF, force=True) == 30
    same_bars(reader.frame(plan), BARS.iloc[:90])  # the year's newer commit, the old tail
    same_bars(reader.tail(SYM, TF, None, 40), BARS.iloc[50:90])
    one_by_one(live, BARS.iloc[90:95])
    same_bars(reader.tail(SYM, TF, None, 40), BARS.iloc[55:95])


# ---- crashes ---------------------------------------------------------------------------------

APPENDER = """
import sys
sys.path.insert(0, sys.argv[2])
from conftest import make_bars
from marketcache import UnifiedCache
from marketcache.config.parser import parse_settings
settings = parse_settings("settings: {live_fold_every: 1d, lease_seconds: 3}")
cache = UnifiedCache(sys.argv[1], settings=settings)
bars = make_bars("2024-03-01", 240, "1min")
for i in range(len(bars)):
    cache.append_live("BTCUSDT", "1m", bars.iloc[i : i + 1])
    print(i, flush=True)
"""


@pytest.mark.parametrize("kind", SLOW_ON)
def test_a_sigkilled_appender_loses_no_acknowledged_bar(live: UnifiedCache) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", APPENDER, location(live), str(TESTS)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    acknowledged = -1
    while acknowledged < 20:
        line = proc.stdout.readline()
        assert line, "the appender died"
        acknowledged = int(line)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    got = live.get(SYM, TF)
    assert len(got) > acknowledged  # every bar acknowledged, maybe one more
    same_bars(got, BARS.iloc[: len(got)])
    one_by_one(live, BARS.iloc[len(got) : len(got) + 3])
    same_bars(live.get(SYM, TF), BARS.iloc[: len(got) + 3])


def test_a_torn_tail_line_is_ignored_and_cut_by_the_next_append(tmp_path: Path) -> None:
    cache = UnifiedCache(tmp_path / "c", settings=parse_settings(""), lock_wait=5)
    one_by_one(cache, BARS.iloc[:3])
    path = cache.layout.timeframe_dir(SYM, TF) / TAIL_NAME
    whole = path.read_bytes()
    with open(path, "ab") as fh:  # what a crash mid-write leaves: a line without its end
        fh.write(b"2024-03-01 00:03:00,100.1,10")
    same_bars(cache.get(SYM, TF), BARS.iloc[:3])
    assert cache.last_stored(SYM, TF) == BARS["timestamp"].iloc[2]
    one_by_one(cache, BARS.iloc[3:5])
    text = path.read_bytes()
    assert text.startswith(whole) and text.count(b"\n") == 6 and b",10\n" not in text
    same_bars(cache.get(SYM, TF), BARS.iloc[:5])


FOLD_KILLED = """
import os, signal, sys
from marketcache import UnifiedCache
from marketcache.config.parser import parse_settings
cache = UnifiedCache(sys.argv[1], settings=parse_settings(sys.argv[2]))
from marketcache.storage.tail import open_tail
tail = type(open_tail(cache.backend, "BTCUSDT", "1m"))
tail.keep = lambda self, rows: os.kill(os.getpid(), signal.SIGKILL)  # the instant after the year
cache.fold_live("BTCUSDT", "1m", force=True)
"""


@pytest.mark.parametrize("kind", SLOW_ON)
def test_a_fold_killed_between_the_year_and_the_tail_loses_and_doubles_nothing(
    live: UnifiedCache,
) -> None:
    live.commit_range(BARS.iloc[:60], SYM, TF, "binance")
    one_by_one(live, BARS.iloc[60:120], size=6)
    run = subprocess.run([sys.executable, "-c", FOLD_KILLED, location(live), LEASE], timeout=120)
    assert run.returncode == -signal.SIGKILL
    assert live.record(SYM, TF, 2024).rows == 120  # the year was written
    assert len(open_tail(live.backend, SYM, TF).read()) == 60  # the tail was not emptied
    same_bars(live.get(SYM, TF), BARS.iloc[:120])
    reader = RangeReader(live, ResultCache(64 << 20))
    same_bars(reader.frame(reader.plan(SYM, TF, None, None)), BARS.iloc[:120])
    assert live.append_live(SYM, TF, BARS.iloc[100:121]) == 1
    assert live.fold_live(SYM, TF, force=True) == 1  # the rest is the year's already
    assert live.record(SYM, TF, 2024).rows == 121
    same_bars(live.get(SYM, TF), BARS.iloc[:121])


# ---- other commands --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", SLOW_ON)
def test_populate_of_the_same_series_interleaves_with_appends_and_folds(
    kind: str, live: UnifiedCache, tmp_path: Path, fake_binance: FakeBinance
) -> None:
    day = make_bars("2024-03-01", 1440, "1min", seed=3)
    fake_binance.add(SYM, TF, day)
    conf = tmp_path / "providers.yaml"
    conf.write_text(config_for(binance=fake_binance) + "settings: {lock_wait: 60}\n")
    where = ["--cache-dir", location(live), "--config", str(conf), "--json"]
    runs = []
    span = ["--start", "2024-03-01", "--end", "2024-03-02"]
    for refresh in ([], ["--full-refresh"], ["--full-refresh"]):
        command = [sys.executable, "-m", "marketcache", "populate", SYM, "-t", TF]
        command += [*span, *refresh, *where]
        runs.append(
            subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
        for i in range(1200 + 40 * len(runs), 1240 + 40 * len(runs)):
            added = live.append_live(SYM, TF, day.iloc[i : i + 1])
            assert added in (0, 1)  # 0: the populate stored it first
            if i % 10 == 0:
                live.fold_live(SYM, TF, force=True)
        out, err = runs[-1].communicate(timeout=300)
        assert runs[-1].returncode == 0, err
        assert json.loads(out)["results"][0]["status"] in ("ok", "up-to-date"), out
    same_bars(live.get(SYM, TF), day)
    live.fold_live(SYM, TF, force=True)
    same_bars(live.get(SYM, TF), day)
    assert live.record(SYM, TF, 2024).rows == 1440


def test_list_validate_and_cleanup_leave_the_tail_alone_and_a_cutoff_trims_it(
    cli: Any, tmp_path: Path
) -> None:
    root = tmp_path / "data-cache"
    cache = UnifiedCache(root, settings=parse_settings(""), lock_wait=5)
    cache.commit_range(BARS.iloc[:60], SYM, TF, "binance")
    one_by_one(cache, BARS.iloc[60:70])
    one_by_one_other = UnifiedCache(root, settings=parse_settings(""), lock_wait=5)
    one_by_one_other.append_live("ETHUSDT", TF, BARS.iloc[:3])  # a series that is only a tail
    where = ("--cache-dir", str(root))
    listed = cli("list", *where, "--format", "json")
    assert listed.code == 0, listed.out
    assert {r["symbol"] for r in listed.json()} == {SYM, "ETHUSDT"}  # ETH: a tail only
    years = cli("list", SYM, TF, *where, "--format", "json").json()
    assert [(y["year"], y["rows"]) for y in years] == [(2024, 60), ("live", 10)]
    eth = cli("info", "ETHUSDT", *where, "--json")
    assert eth.code == 0 and eth.json()["timeframes"][TF]["live"]["rows"] == 3
    checked = cli("validate", *where, "--json")
    assert checked.code == 0, checked.out
    swept = cli("cleanup", *where, "--json")
    assert swept.code == 0 and TAIL_NAME not in swept.out
    same_bars(cache.get(SYM, TF), BARS.iloc[:70])
    same_bars(cache.get("ETHUSDT", TF), BARS.iloc[:3])
    cut = cli("cleanup", *where, "--before", "2024-03-01 01:05", "--symbol", SYM, "--json")
    assert cut.code == 0, cut.out
    assert "trim-tail" in cut.out
    same_bars(cache.get(SYM, TF), BARS.iloc[65:70])
    cut = cli("cleanup", *where, "--before", "2024-03-02", "--symbol", SYM, "--json")
    assert cut.code == 0 and cache.get(SYM, TF).empty
    assert not (cache.layout.timeframe_dir(SYM, TF) / TAIL_NAME).exists()


def test_a_followed_series_is_as_fresh_as_its_tail(cli: Any, tmp_path: Path) -> None:
    """Folded an hour ago, followed since: `info --stale` and `validate --max-age` judge it by
    the tail's last bar, not by the last fold."""
    root = tmp_path / "c"
    cache = UnifiedCache(root, settings=parse_settings(""), lock_wait=5)
    last_closed = pd.Timestamp.now("UTC").tz_localize(None).floor("1min") - pd.Timedelta("1min")
    bars = make_bars(str(last_closed - pd.Timedelta("179min")), 180, "1min")
    cache.commit_range(bars.iloc[:120], SYM, TF, "binance")  # the last fold, an hour ago
    where = ("--cache-dir", str(root))
    behind = cli("info", "--stale", SYM, TF, *where, "--json").json()
    assert [s["symbol"] for s in behind["stale"]] == [SYM]  # the years alone are an hour behind
    one_by_one(cache, bars.iloc[120:], size=10)  # the follower's flushes since
    fresh = cli("info", "--stale", SYM, TF, *where, "--json")
    assert fresh.code == 0 and fresh.json()["stale"] == [], fresh.out
    assert cli("validate", SYM, TF, *where, "--max-age", "10m", "--json").code == 0
    assert cache.record(SYM, TF, last_closed.year).rows <= 120  # nothing was folded by that


def test_copy_carries_the_tail(kind: str, live: UnifiedCache, tmp_path: Path) -> None:
    from marketcache.cache.copy import copy_cache

    live.commit_range(BARS.iloc[:60], SYM, TF, "binance")
    one_by_one(live, BARS.iloc[60:75])
    dest = UnifiedCache(tmp_path / "copy", settings=parse_settings("settings: {format: parquet}"))
    report = copy_cache(live, dest)
    assert report.exit_code == 0
    same_bars(dest.get(SYM, TF), BARS.iloc[:75])
    assert dest.fold_live(SYM, TF, force=True) == 15
    same_bars(dest.get(SYM, TF), BARS.iloc[:75])


def test_the_tail_is_read_without_a_lock_while_a_writer_holds_it(tmp_path: Path) -> None:
    cache = UnifiedCache(tmp_path / "c", settings=parse_settings(""), lock_wait=5)
    one_by_one(cache, BARS.iloc[:4])
    began = time.monotonic()
    with cache.lock(SYM, TF):  # as a follower mid-flush or a populate mid-fetch
        reader = UnifiedCache(tmp_path / "c", settings=parse_settings(""), lock_wait=0)
        same_bars(reader.get(SYM, TF), BARS.iloc[:4])
        assert reader.last_stored(SYM, TF) == BARS["timestamp"].iloc[3]
    assert time.monotonic() - began < 5


def test_appended_bars_reach_a_websocket_subscriber_once_and_a_fold_sends_none_again(
    tmp_path: Path,
) -> None:
    from websockets.sync.client import connect

    cache = UnifiedCache(tmp_path / "c", settings=parse_settings(""), lock_wait=5)
    cache.commit_range(BARS.iloc[:10], SYM, TF, "binance")
    one_by_one(cache, BARS.iloc[10:12])  # stored before the subscription: not sent
    with (
        served(cache, poll_interval=0.1) as url,
        connect(url.replace("http", "ws") + f"{API}/stream", open_timeout=30) as ws,
    ):
        ws.send(json.dumps({"action": "subscribe", "symbols": [SYM], "interval": TF}))
        assert json.loads(ws.recv(30))["type"] == "subscribed"
        time.sleep(0.5)  # the watch has started
        one_by_one(cache, BARS.iloc[12:15])
        got = [json.loads(ws.recv(30)) for _ in range(3)]
        assert [m["bar"]["close"] for m in got] == BARS["close"].iloc[12:15].tolist()
        assert cache.fold_live(SYM, TF, force=True) == 5
        one_by_one(cache, BARS.iloc[15:16])
        last = json.loads(ws.recv(30))
        assert last["bar"]["timestamp"] == "2024-03-01T00:15:00Z"
        with pytest.raises(TimeoutError):
            ws.recv(1.0)


def test_a_postgresql_cache_of_schema_version_2_gets_its_tail_table(pg_url: str) -> None:
    import psycopg

    cache = UnifiedCache(pg_url, settings=parse_settings(""))
    cache.commit_range(BARS.iloc[:10], SYM, TF, "binance")
    server, schema = pg_url.rsplit("&schema=", 1)
    with psycopg.connect(server, autocommit=True) as conn:  # as the previous version left it
        conn.execute(f"DROP VIEW {schema}.live_bars")
        conn.execute(f"DROP TABLE {schema}.live_tail")
        conn.execute(f"UPDATE {schema}.schema_version SET version = 2 WHERE version = 3")
    cache.backend.close()
    again = UnifiedCache(pg_url, settings=parse_settings(""))
    assert again.append_live(SYM, TF, BARS.iloc[10:12]) == 2
    same_bars(again.get(SYM, TF), BARS.iloc[:12])
    with psycopg.connect(server, autocommit=True) as conn:
        versions = conn.execute(f"SELECT version FROM {schema}.schema_version ORDER BY 1")
        assert [v for (v,) in versions.fetchall()] == [2, 3]
