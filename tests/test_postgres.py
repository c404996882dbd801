"""The PostgreSQL backend against a real server: every command, copy, SQL readers, locks,
kills and races."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from conftest import RATE_PROBE, CliResult, busiest_second, make_bars
from fakes import FakeBinance, config_for
from marketcache import UnifiedCache
from marketcache.config import parse_settings
from test_copy import _fill, _records

Cli = Callable[..., CliResult]


def test_copy_to_postgresql_and_back_round_trips(cli: Cli, pg_url: str, tmp_path: Path) -> None:
    src = _fill(tmp_path / "a")
    there = cli("copy", str(tmp_path / "a"), pg_url, "--json")
    assert there.code == 0, there.err
    assert there.json()["summary"]["copied"] == 3
    back = cli("copy", pg_url, str(tmp_path / "b"), "--json")
    assert back.code == 0, back.err
    pg = UnifiedCache(pg_url, settings=parse_settings(""))
    end = UnifiedCache(tmp_path / "b", settings=parse_settings(""))
    for cache in (pg, end):
        for sym, tf in (("BTCUSDT", "1h"), ("AAPL", "1d")):
            pd.testing.assert_frame_equal(cache.get(sym, tf), src.get(sym, tf), check_exact=True)
        assert _records(cache) == _records(src)
        assert cache.get_actions("AAPL") == src.get_actions("AAPL")
    again = cli("copy", str(tmp_path / "a"), pg_url, "--json").json()
    assert again["summary"]["skipped"] == 3 and again["summary"]["copied"] == 0


def test_every_command_runs_on_postgresql_and_other_services_read_plain_sql(
    cli: Cli, pg_url: str, fake_binance: FakeBinance, tmp_path: Path
) -> None:
    import psycopg

    fake_binance.add("ABCUSDT", "1h", make_bars("2023-12-30", 24 * 10, "1h"))
    conf = tmp_path / "p.yaml"
    conf.write_text(config_for(binance=fake_binance))
    args = ("--cache-dir", pg_url, "--config", str(conf))
    r = cli("populate", "ABCUSDT", "-t", "1h", "--start", "2023-12-30", "--end", "2024-01-09",
            "--json", *args)  # fmt: skip
    assert r.code == 0, r.err
    assert r.json()["results"][0]["rows_added"] == 240
    assert cli("list", "--json", *args).json() == [{"symbol": "ABCUSDT", "timeframes": ["1h"]}]
    info = cli("info", "--json", *args).json()
    assert info["rows"] == 240 and info["files"] == 2
    assert info["backend"]["backend"] == "postgresql" and "note" in info["backend"]
    assert cli("validate", *args).code == 0
    assert cli("populate", "ABCUSDT", "-t", "1h", "--start", "2023-12-30", "--end",
               "2024-01-09", "--json", *args).json()["results"][0]["requests"] == 0  # fmt: skip
    schema = pg_url.rsplit("schema=", 1)[1]
    with psycopg.connect(pg_url.rsplit("&schema=", 1)[0]) as conn:  # what a service would run
        rows = conn.execute(
            f"SELECT ts, close FROM {schema}.bars WHERE symbol = 'ABCUSDT' AND timeframe = '1h'"
            " AND ts >= '2024-01-01' ORDER BY ts"
        ).fetchall()
        conn.execute(
            f"UPDATE {schema}.ohlcv SET close = close + 1 WHERE ts = '2024-01-02 00:00+00'"
        )
    assert len(rows) == 24 * 8
    bad = cli("validate", *args)
    assert bad.code == 3 and "sha256 does not match" in bad.err
    # --fix takes the rows as they now are; the edited one breaks high >= close, so it goes and
    # the user is told to fetch it again — which populate does
    fixed = cli("validate", "--fix", "--json", *args)
    assert fixed.code == 3 and "1 of 192 committed rows could not be recovered" in fixed.err
    again = cli("populate", "ABCUSDT", "-t", "1h", "--start", "2023-12-30", "--end",
                "2024-01-09", "--json", *args)  # fmt: skip
    assert again.json()["results"][0]["rows_added"] == 1
    assert cli("validate", *args).code == 0
    cleaned = cli("cleanup", "--before", "2024-01-01", "--json", *args)
    assert cleaned.code == 0, cleaned.err
    assert cli("list", "ABCUSDT", "1h", "--json", *args).json()[0]["year"] == 2024


def test_a_held_advisory_lock_exits_4_and_a_missing_database_exits_2(
    cli: Cli, pg_url: str, fake_binance: FakeBinance, tmp_path: Path
) -> None:
    import psycopg

    fake_binance.add("ABCUSDT", "1h", make_bars("2024-01-01", 24, "1h"))
    conf = tmp_path / "p.yaml"
    conf.write_text(config_for(binance=fake_binance) + "settings: {lock_wait: 0.3}\n")
    schema = pg_url.rsplit("schema=", 1)[1]
    with psycopg.connect(pg_url.rsplit("&schema=", 1)[0], autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", [f"{schema}:ABCUSDT:1h"])
        r = cli("populate", "ABCUSDT", "-t", "1h", "--start", "2024-01-01", "--end",
                "2024-01-02", "--json", "--cache-dir", pg_url, "--config", str(conf))  # fmt: skip
        assert r.code == 4 and "locked by another marketcache run" in r.err
    nodb = pg_url.replace("/postgres?", "/nosuchdb?")
    missing = cli("list", "--cache-dir", nodb)
    assert missing.code == 2 and "nosuchdb" in missing.err and "does not exist" in missing.err


@pytest.mark.slow
def test_populate_killed_at_random_moments_and_racing_runs_on_postgresql(
    pg_url: str, fake_binance: FakeBinance, tmp_path: Path
) -> None:
    symbols = ("AAAUSDT", "BBBUSDT", "CCCUSDT")
    for i, sym in enumerate(symbols):
        fake_binance.add(sym, "1m", make_bars("2023-12-25", 60 * 24 * 10, "1min", seed=20 + i))
    conf = tmp_path / "p.yaml"
    conf.write_text(config_for(binance=fake_binance, retry_budget=5))

    def run(url: str, syms: tuple[str, ...] = symbols) -> subprocess.Popen[str]:
        env = {**os.environ, "MARKETCACHE_CONFIG": str(conf), "MARKETCACHE_CACHE_DIR": url}
        return subprocess.Popen(
            [sys.executable, "-m", "marketcache", "populate", *syms, "-t", "1m", "--start",
             "2023-12-25", "--end", "2024-01-04", "-q"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    def snapshot(url: str) -> dict[str, pd.DataFrame]:
        cache = UnifiedCache(url, settings=parse_settings(""), lock_wait=30)
        for key in cache.backend.keys():  # noqa: SIM118 — every committed year reads back whole
            cache.read_year(*key.series, key.year)
        return {s: cache.get(s, "1m") for s in symbols if s in cache.list_symbols()}

    began = time.monotonic()
    ref = run(f"{pg_url}_ref")
    assert ref.wait(timeout=300) == 0, ref.stderr.read() if ref.stderr else ""
    duration = time.monotonic() - began
    expected = snapshot(f"{pg_url}_ref")
    rng = random.Random(11)
    for trial in range(5):
        url = f"{pg_url}_k{trial}"
        proc = run(url)
        time.sleep(rng.uniform(0.2, 0.9) * duration)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        snapshot(url)
        again = run(url)
        assert again.wait(timeout=300) == 0
        got = snapshot(url)
        for sym, frame in expected.items():
            pd.testing.assert_frame_equal(got[sym], frame, check_exact=True)
    url = f"{pg_url}_race"
    procs = [run(url, pair) for pair in [symbols[:2], symbols[1:], (symbols[2], symbols[0])]]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    got = snapshot(url)
    for sym, frame in expected.items():
        pd.testing.assert_frame_equal(got[sym], frame, check_exact=True)


def test_two_machines_share_one_provider_limit_through_postgresql(
    pg_server: str, fake_binance: FakeBinance, tmp_path: Path
) -> None:
    """Two processes with separate local folders (as on two machines) hold a shared 4/s limit
    because the bucket lives in the database (settings.rate_limit_store)."""
    fake_binance.add("RATEUSDT", "1h", make_bars("2024-01-01", 10, "1h"))
    conf = tmp_path / "p.yaml"
    conf.write_text(config_for(binance=fake_binance, rate="{per_second: 4}")
                    + f"settings: {{rate_limit_store: '{pg_server}'}}\n")  # fmt: skip
    code = RATE_PROBE
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(conf), str(tmp_path / f"machine{i}")])
        for i in range(2)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    times = sorted(fake_binance.arrivals)
    assert len(times) == 12
    busiest = busiest_second(times)
    assert busiest <= 5, f"{busiest} requests within one second at a shared limit of 4/s"
    assert times[-1] - times[0] >= 1.5, "12 requests at 4/s take at least two windows"
    assert not list(tmp_path.glob("machine*/ratelimit.sqlite")), "no local bucket was used"


def test_the_data_manager_reads_through_postgresql(pg_url: str, fake_binance: FakeBinance) -> None:
    from marketcache import DataManager

    for i, sym in enumerate(("AAAUSDT", "BBBUSDT")):
        fake_binance.add(sym, "1d", make_bars("2024-01-01", 30, "1D", seed=i))
    settings = parse_settings(config_for(binance=fake_binance))
    with DataManager(pg_url, settings=settings) as dm:
        first = dm.get_ohlcv("AAAUSDT", "1d", start="2024-01-01", end="2024-01-31")
        asked = len(fake_binance.data_requests())
        assert len(first) == 30
        dm.get_ohlcv("AAAUSDT", "1d", start="2024-01-01", end="2024-01-31")
        assert len(fake_binance.data_requests()) == asked
        many = dm.get_many(["AAAUSDT", "BBBUSDT"], "1d", start="2024-01-01", end="2024-01-31")
        assert many.groupby("symbol").size().to_dict() == {"AAAUSDT": 30, "BBBUSDT": 30}
        assert dm.latest(["AAAUSDT", "BBBUSDT"], "1d")["timestamp"].nunique() == 1
        assert set(dm.availability()["symbol"]) == {"AAAUSDT", "BBBUSDT"}
