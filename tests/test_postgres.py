"""The PostgreSQL backend against a real server: every command, copy, SQL readers, locks,
kills and races."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from conftest import SYNCED_RATE_PROBE, CliResult, make_bars, most_within, race_probes
from fakes import FakeBinance, config_for
from marketcache import UnifiedCache
from marketcache.config.parser import parse_settings
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
    because the bucket lives in the database (settings.rate_limit_store). They start from one
    instant (a start line) and are counted per 2 s window, as the local test of the shared
    limit is, so that a loaded machine neither hides an unshared limit nor fails a shared one."""
    fake_binance.add("RATEUSDT", "1h", make_bars("2024-01-01", 10, "1h"))
    conf = tmp_path / "p.yaml"
    conf.write_text(config_for(binance=fake_binance, rate="{per_second: 4}", timeout=10)
                    + f"settings: {{rate_limit_store: '{pg_server}'}}\n")  # fmt: skip
    line = tmp_path / "line"
    line.mkdir()
    race_probes([[sys.executable, "-c", SYNCED_RATE_PROBE, str(conf),
                  str(tmp_path / f"machine{i}"), str(line), "10"] for i in range(2)], line)  # fmt: skip
    times = sorted(fake_binance.arrivals)
    assert len(times) == 20
    most = most_within(times, 2.0)
    assert most <= 12, f"{most} requests within 2 s at a shared limit of 4/s"
    assert times[-1] - times[0] >= 3.0, "20 requests at 4/s take at least four windows"
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


# ---- hostile records, quarantine, schema damage, secrets (issue 20) ----------------------------

INJECTION = (
    "adj_close) FROM STDIN WITH (FORMAT csv); COMMIT; CREATE TABLE public.pwned (x int);"
    " DROP SCHEMA IF EXISTS victim CASCADE; --"
)


def _outside(server: str, schema: str) -> list[Any]:
    """Every schema and table of the server but the cache's own."""
    import psycopg

    with psycopg.connect(server) as conn:
        tables = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables WHERE table_schema"
            " NOT IN (%s, 'pg_catalog', 'information_schema') ORDER BY 1, 2",
            [schema],
        ).fetchall()
        return tables + conn.execute("SELECT nspname FROM pg_namespace ORDER BY 1").fetchall()


def test_a_crafted_column_name_copied_into_postgresql_runs_no_sql(
    cli: Cli, pg_url: str, pg_server: str, tmp_path: Path
) -> None:
    """A folder cache whose record names a column `adj_close) …; <SQL>; --` (data and sha256
    untouched): copy refuses that year as corrupt, copies the rest, and runs nothing."""
    import psycopg

    src = UnifiedCache(tmp_path / "a", settings=parse_settings(""), lock_wait=5)
    src.put(make_bars("2023-12-30", 96), "ABCUSDT", "1h", provider="binance")
    src.put(make_bars("2024-01-01", 24, seed=3), "XYZUSDT", "1h", provider="binance")
    meta = tmp_path / "a" / "ABCUSDT" / "1h" / "2023.metadata.json"
    record = json.loads(meta.read_text())
    record["file_info"]["columns"].append(INJECTION)
    meta.write_text(json.dumps(record))
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS victim")
        conn.execute("CREATE TABLE IF NOT EXISTS victim.keep (x int)")
    schema = pg_url.rsplit("schema=", 1)[1]
    assert cli("list", "--cache-dir", pg_url).code == 2  # a read does not make the schema
    UnifiedCache(pg_url, settings=parse_settings("")).backend.conn.close()  # made, before the copy
    before = _outside(pg_server, schema)
    r = cli("copy", str(tmp_path / "a"), pg_url, "--json")
    assert _outside(pg_server, schema) == before, "nothing outside the schema changed"
    assert r.code == 1, r.err
    assert "Traceback" not in r.err and "unexpected" not in r.err
    years = {(y["symbol"], y["year"]): y for y in r.json()["years"]}
    bad = years[("ABCUSDT", 2023)]
    assert bad["status"] == "failed" and "unknown column" in bad["reason"], bad
    assert "2023.metadata.json" in bad["reason"]
    assert [y["status"] for k, y in years.items() if k != ("ABCUSDT", 2023)] == ["copied"] * 2
    pg = UnifiedCache(pg_url, settings=parse_settings(""))
    assert pg.list_years("ABCUSDT", "1h") == [2024] and len(pg.get("XYZUSDT", "1h")) == 24


def test_a_year_edited_by_another_service_is_set_aside_in_postgresql_never_deleted(
    cli: Cli, pg_url: str, pg_server: str, fake_binance: FakeBinance, tmp_path: Path
) -> None:
    """Rows changed with UPDATE: the next populate moves the year's rows and record into the
    quarantine tables under a unique name and fetches the year again; cleanup removes a
    quarantined year only after settings.quarantine_days (30)."""
    import psycopg

    fake_binance.add("ABCUSDT", "1d", make_bars("2023-01-01", 365 + 10, "1D"))
    conf = tmp_path / "p.yaml"
    conf.write_text(config_for(binance=fake_binance))
    args = ("--cache-dir", pg_url, "--config", str(conf))
    span = ("--start", "2023-01-01", "--end", "2024-01-11")
    assert cli("populate", "ABCUSDT", "-t", "1d", *span, *args).code == 0
    schema = pg_url.rsplit("schema=", 1)[1]
    with psycopg.connect(pg_server, autocommit=True) as conn:  # another service's edit
        conn.execute(
            f"UPDATE {schema}.ohlcv SET volume = volume + 1 WHERE ts < '2024-01-01'"
            " AND symbol = 'ABCUSDT'"
        )
    again = cli("populate", "ABCUSDT", "-t", "1d", *span, "--json", *args)
    assert again.code == 0, again.err
    with psycopg.connect(pg_server) as conn:
        asides = conn.execute(
            f"SELECT aside, year, reason, record::jsonb -> 'file_info' ->> 'rows'"
            f" FROM {schema}.quarantine_records"
        ).fetchall()
        assert len(asides) == 1 and asides[0][1:] == (2023, "corrupt", "365"), asides
        kept = conn.execute(
            f"SELECT count(*) FROM {schema}.quarantine_ohlcv WHERE aside = %s", [asides[0][0]]
        ).fetchone()[0]
    assert kept == 365, "every edited row was kept aside"
    assert asides[0][0].startswith("ABCUSDT/1d/2023.corrupt-")
    assert asides[0][0] in json.dumps(again.json()), "the report names where it went"
    assert len(UnifiedCache(pg_url, settings=parse_settings("")).get("ABCUSDT", "1d")) == 375
    assert cli("validate", *args).code == 0
    # cleanup: a quarantined year younger than 30 days stays, an older one goes
    assert cli("cleanup", *args).code == 0
    with psycopg.connect(pg_server, autocommit=True) as conn:
        assert conn.execute(f"SELECT count(*) FROM {schema}.quarantine_records").fetchone()[0]
        conn.execute(
            f"UPDATE {schema}.quarantine_records SET quarantined_at = now() - interval '31 days'"
        )
    dry = cli("cleanup", "--dry-run", "--json", *args)
    assert dry.code == 0 and asides[0][0] in dry.out, dry.out
    gone = cli("cleanup", "--json", *args)
    assert gone.code == 0 and "quarantined more than 30 days ago" in gone.out, gone.out
    with psycopg.connect(pg_server) as conn:
        for table in ("quarantine_records", "quarantine_ohlcv"):
            assert conn.execute(f"SELECT count(*) FROM {schema}.{table}").fetchone()[0] == 0


def test_a_put_with_sub_microsecond_stamps_verifies_on_every_later_read(
    cli: Cli, pg_url: str
) -> None:
    """timestamptz keeps microseconds: the stamps are floored before the checksum, so the year
    reads back verified (and validate passes) instead of being judged corrupt."""
    bars = make_bars("2024-01-01", 48)
    bars["timestamp"] = bars["timestamp"] + pd.to_timedelta(np.arange(48) * 7 + 3, unit="ns")
    cache = UnifiedCache(pg_url, settings=parse_settings(""), lock_wait=5)
    cache.put(bars, "ABCUSDT", "1h", provider="binance")
    back = UnifiedCache(pg_url, settings=parse_settings("")).get("ABCUSDT", "1h")
    assert len(back) == 48
    assert (back["timestamp"].to_numpy("datetime64[ns]").astype(np.int64) % 1000 == 0).all()
    assert back["close"].tolist() == bars["close"].tolist()
    assert cli("validate", "--cache-dir", pg_url).code == 0


def test_a_foreign_ohlcv_table_exits_2_and_a_dropped_column_exits_3_naming_it(
    cli: Cli, pg_url: str, pg_server: str
) -> None:
    import psycopg

    schema = pg_url.rsplit("schema=", 1)[1]
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        conn.execute(f"CREATE TABLE {schema}.ohlcv (id int, payload text)")  # another tool's
        conn.execute(f"INSERT INTO {schema}.ohlcv VALUES (1, 'theirs')")
    r = cli("list", "--cache-dir", pg_url)
    assert r.code == 2, r.err
    assert len(r.err.strip().splitlines()) == 1 and "unexpected" not in r.err, r.err
    assert f"schema {schema} already holds a table ohlcv" in r.err and "?schema=" in r.err
    with psycopg.connect(pg_server, autocommit=True) as conn:
        assert conn.execute(f"SELECT payload FROM {schema}.ohlcv").fetchall() == [("theirs",)]
        conn.execute(f"DROP SCHEMA {schema} CASCADE")
    cache = UnifiedCache(pg_url, settings=parse_settings(""), lock_wait=5)
    cache.put(make_bars("2024-01-01", 24), "ABCUSDT", "1h", provider="binance")
    cache.backend.close()
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"ALTER TABLE {schema}.ohlcv DROP COLUMN adj_close CASCADE")
    for args in (("validate",), ("info", "ABCUSDT"), ("list",)):
        r = cli(*args, "--cache-dir", pg_url)
        assert r.code == 3, (args, r.err)
        assert len(r.err.strip().splitlines()) == 1 and "unexpected" not in r.err, r.err
        assert f"table {schema}.ohlcv has no column adj_close" in r.err
        assert f"ALTER TABLE {schema}.ohlcv ADD COLUMN adj_close" in r.err


def test_two_caches_of_one_process_in_two_databases_each_take_their_own_lock(
    pg_url: str, pg_server: str
) -> None:
    """The same series in two databases: holding one lock must not count as holding the
    other (the held state is keyed by database, not by the lock name alone)."""
    import psycopg

    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS marketcache_second")
        conn.execute("CREATE DATABASE marketcache_second")
    second = pg_url.replace("/postgres?", "/marketcache_second?")
    one = UnifiedCache(pg_url, settings=parse_settings(""), lock_wait=1)
    two = UnifiedCache(second, settings=parse_settings(""), lock_wait=1)
    schema = pg_url.rsplit("schema=", 1)[1]
    name = f"{schema}:ABCUSDT:1h"
    probe = "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))"
    with one.lock("ABCUSDT", "1h"), two.lock("ABCUSDT", "1h"):
        other_db = second.split("&schema=")[0]
        with psycopg.connect(other_db, autocommit=True) as outsider:
            assert outsider.execute(probe, [name]).fetchone()[0] is False, (
                "the second database's lock was not taken"
            )


def test_no_password_of_a_url_is_ever_shown_by_any_command(
    cli: Cli, pg_server: str, pg_url: str, fake_binance: FakeBinance, tmp_path: Path
) -> None:
    """Passwords in `user:pass@` and `?password=` of --cache-dir, copy's SRC/DEST and
    settings.rate_limit_store: grepped out of every command's stdout, stderr, --json, -v
    tracebacks, log file, the records and index in the database and a copied folder's
    files (_metadata/ included)."""
    import psycopg

    secrets = ("pw-userinfo-7f3a9c", "pw-query-2b8e1d", "pw-ratelimit-5c0f4a")
    schema = pg_url.rsplit("schema=", 1)[1]
    url = pg_url.replace("postgres@", f"postgres:{secrets[0]}@", 1) + f"&password={secrets[1]}"
    store = pg_server.replace("postgres@", f"postgres:{secrets[2]}@", 1)
    missing = url.replace("/postgres?", "/nosuchdb?")
    fake_binance.add("ABCUSDT", "1h", make_bars("2023-12-30", 24 * 4, "1h"))
    conf = tmp_path / "p.yaml"
    conf.write_text(
        config_for(binance=fake_binance) + f"settings: {{rate_limit_store: '{store}'}}\n"
    )
    span = ("--start", "2023-12-30", "--end", "2024-01-03")
    on = ("--cache-dir", url, "--config", str(conf))
    folder = str(tmp_path / "folder")
    commands = [
        ("populate", "ABCUSDT", "-t", "1h", *span, "--log-file", str(tmp_path / "log"), *on),
        ("list", *on), ("list", "ABCUSDT", "1h", *on), ("info", *on), ("info", "ABCUSDT", *on),
        ("validate", *on), ("validate", "--fix", *on), ("cleanup", *on),
        ("cleanup", "--before", "2024-01-01", "--dry-run", *on),
        ("copy", url, folder, "--config", str(conf)), ("copy", folder, url, "--config", str(conf)),
        ("list", "--cache-dir", missing), ("info", "--cache-dir", missing),
        ("copy", missing, folder), ("copy", folder, missing),
        ("populate", "ABCUSDT", "-t", "1h", *span, "--cache-dir", missing, "--config", str(conf)),
    ]  # fmt: skip
    seen: list[str] = []
    for command in commands:
        for extra in ((), ("--json",), ("-v",)):
            r = cli(*command, *extra)
            assert "Traceback" not in r.err or extra == ("-v",), (command, r.err)
            seen.append(f"{command[0]} {extra} -> {r.code}\n{r.out}\n{r.err}")
    # the lock message path, -v, while another session holds the series
    short = tmp_path / "short.yaml"
    short.write_text(conf.read_text().replace("settings: {", "settings: {lock_wait: 0.3, "))
    with psycopg.connect(pg_server, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", [f"{schema}:ABCUSDT:1h"])
        held = cli("populate", "ABCUSDT", "-t", "1h", *span, "-v", "--cache-dir", url,
                   "--config", str(short))  # fmt: skip
    assert held.code == 4, held.err
    assert any("postgresql://postgres@" in s for s in seen), "the URLs are shown, redacted"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", [schema]
        ).fetchall()
        for (table,) in tables:  # records, index, documents, quarantine: every table's rows
            seen += [str(row) for row in conn.execute(f"SELECT * FROM {schema}.{table}")]
    seen += [p.read_bytes().decode("utf-8", "replace") for p in tmp_path.rglob("*") if p.is_file()
             and p.name not in ("p.yaml", "short.yaml")]  # fmt: skip
    text = "\n".join(seen)
    for secret in secrets:
        assert secret not in text, (
            f"{secret} shown: …{text[max(0, text.find(secret) - 300) :][:400]}"
        )


def test_a_mistyped_schema_is_no_cache_and_is_not_created(
    cli: Cli, pg_url: str, pg_server: str
) -> None:
    import psycopg

    typo = pg_url.rsplit("schema=", 1)[0] + "schema=marketcahce_typo"
    for args in (("list",), ("info",), ("validate",)):
        r = cli(*args, "--cache-dir", typo)
        assert r.code == 2, (args, r.err)
        assert "unexpected" not in r.err and len(r.err.strip().splitlines()) == 1, r.err
    with psycopg.connect(pg_server, autocommit=True) as conn:
        made = conn.execute(
            "SELECT 1 FROM information_schema.schemata WHERE schema_name = 'marketcahce_typo'"
        ).fetchone()
    assert made is None  # a read never creates the schema it was pointed at


@pytest.mark.parametrize(
    ("ddl", "needle"),
    [
        (  # another tool's migrations table (Flyway-like: a text version)
            [
                "CREATE TABLE {s}.schema_version (version text, script text)",
                "INSERT INTO {s}.schema_version VALUES ('1.0.3', 'V1__init.sql')",
            ],
            "schema_version that marketcache did not create",
        ),
        (  # a cache written by a newer marketcache
            [
                "CREATE TABLE {s}.schema_version (version int PRIMARY KEY)",
                "CREATE TABLE {s}.ohlcv (symbol text)",
                "INSERT INTO {s}.schema_version VALUES (99)",
            ],
            "made by a newer marketcache (schema version 99",
        ),
    ],
)
def test_a_foreign_or_newer_schema_version_exits_2_and_is_left_alone(
    cli: Cli, pg_url: str, pg_server: str, ddl: list[str], needle: str
) -> None:
    import psycopg

    schema = pg_url.rsplit("schema=", 1)[1]
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
        for statement in ddl:
            conn.execute(statement.format(s=schema))
    for args in (("list",), ("populate", "ABCUSDT", "-t", "1h", "--start", "2024-01-01")):
        r = cli(*args, "--cache-dir", pg_url)
        assert r.code == 2, (args, r.err)
        assert needle in r.err and "unexpected" not in r.err, r.err
    with psycopg.connect(pg_server, autocommit=True) as conn:
        tables = {
            row[0]
            for row in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                [schema],
            )
        }
    assert "year_records" not in tables and "quarantine_ohlcv" not in tables
