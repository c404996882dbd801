"""A cache on object storage: moto's S3 server (the real S3 HTTP API, conditional writes
included) through s3fs. Processes share nothing but the bucket: each has its own temporary
folder (XDG cache, config) and its own AWS_* variables."""

from __future__ import annotations

import copy
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pandas as pd
import pytest

from conftest import CountingProxy, make_bars, s3_environment
from fakes import FakeBinance, config_for
from marketcache import UnifiedCache
from marketcache.cache.copy import COPIED_FROM
from marketcache.config.parser import parse_settings
from marketcache.errors import Conflict, LockTimeout
from marketcache.storage.backend import Key
from marketcache.storage.objects.backend import PENDING, ObjectBackend

SYMBOLS = ("AAAUSDT", "BBBUSDT", "CCCUSDT")
START, END = "2023-12-22", "2024-01-09"  # 1m bars across a year end: two year objects each


def settings(fmt: str = "csv.gz", lease: float = 5) -> Any:
    return parse_settings(f"settings: {{format: {fmt}, lease_seconds: {lease}}}")


def objects(url: str) -> dict[str, bytes]:
    """Every object under the cache prefix, read with plain boto3 (not our code)."""
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    s3 = boto3.client("s3")
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        for item in page.get("Contents", []):
            name = item["Key"][len(prefix) + 1 :]
            out[name] = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return out


def one_data_object_per_record(url: str, suffix: str) -> None:
    names = set(objects(url))
    records = {n.removesuffix(".metadata.json") for n in names if n.endswith(".metadata.json")}
    data = {n.removesuffix(suffix) for n in names if n.endswith(suffix)}
    assert records == data, records ^ data
    assert not [n for n in names if n.endswith(".pending")]


# ---- the commit protocol ---------------------------------------------------------------------


def test_pandas_reads_the_year_objects_directly(s3_url: str) -> None:
    cache = UnifiedCache(s3_url, settings=settings())
    df = make_bars("2024-03-01", 48)
    cache.put(df, "ETHUSDT", "1h", provider="binance")
    view = pd.read_csv(f"{s3_url}/ETHUSDT/1h/2024.csv.gz", parse_dates=["timestamp"])
    assert len(view) == 48 and view["close"].tolist() == df["close"].tolist()
    record = json.loads(objects(s3_url)["ETHUSDT/1h/2024.metadata.json"])
    assert record["file_info"]["rows"] == 48 and PENDING not in record


def test_duckdb_and_pandas_read_a_parquet_bucket_directly(s3_url: str) -> None:
    """What a backtest node does without marketcache: glob the year objects of a timeframe."""
    import duckdb
    import s3fs

    cache = UnifiedCache(s3_url, settings=settings("parquet"))
    frames = {}
    for i, sym in enumerate(("AAAUSDT", "BBBUSDT")):
        frames[sym] = make_bars("2023-12-20", 24 * 30, seed=i)  # two year objects each
        cache.put(frames[sym], sym, "1h", provider="binance")
    cache.put(make_bars("2024-01-01", 5, freq="1D"), "AAAUSDT", "1d")  # another timeframe
    con = duckdb.connect()
    con.register_filesystem(s3fs.S3FileSystem())  # the AWS_* variables, as boto3's would
    got = con.sql(
        f"SELECT filename, timestamp, close FROM read_parquet('{s3_url}/*/1h/*.parquet',"
        " filename = true) ORDER BY filename, timestamp"
    ).df()
    assert len(got) == 2 * 24 * 30
    for sym, frame in frames.items():
        mine = got[got["filename"].str.contains(f"/{sym}/")]
        assert mine["close"].tolist() == frame["close"].tolist()
        assert (mine["timestamp"].to_numpy() == frame["timestamp"].to_numpy()).all()
    view = pd.read_parquet(f"{s3_url}/AAAUSDT/1h/2024.parquet")
    assert len(view) == len(frames["AAAUSDT"][frames["AAAUSDT"]["timestamp"] >= "2024-01-01"])


def test_a_writer_that_lost_its_place_cannot_overwrite_a_newer_commit(s3_url: str) -> None:
    a = UnifiedCache(s3_url, settings=settings(), lock_wait=5)
    b = UnifiedCache(s3_url, settings=settings(), lock_wait=5)
    bars = make_bars("2024-01-01", 300)
    a.put(bars.iloc[:100], "ABCUSDT", "1h")
    key = Key.of("ABCUSDT", "1h", 2024)
    seen = a.backend.read_record(key)  # what A planned from
    rows = a.backend.read_rows(key, seen)
    b.put(bars.iloc[100:200], "ABCUSDT", "1h")  # a newer commit by another machine
    stale = copy.deepcopy(seen)
    with pytest.raises(Conflict):
        a.backend.write_year(key, rows.iloc[:50], stale)
    # a year A planned as new, created meanwhile by B
    b.put(make_bars("2025-01-01", 10), "ABCUSDT", "1h")
    with pytest.raises(Conflict):
        a.backend.write_year(Key.of("ABCUSDT", "1h", 2025), rows.iloc[:5], copy.deepcopy(seen))
    got = UnifiedCache(s3_url, settings=settings()).get("ABCUSDT", "1h")
    assert len(got) == 210, "B's commits stand, nothing of A's stale writes"
    one_data_object_per_record(s3_url, ".csv.gz")
    # A re-plans from the new state: its put merges into B's year
    a.put(bars.iloc[200:], "ABCUSDT", "1h")
    assert len(UnifiedCache(s3_url, settings=settings()).get("ABCUSDT", "1h")) == 310


def _commit_states(url: str, tmp: Path) -> tuple[dict[str, bytes], dict[str, bytes]]:
    cache = UnifiedCache(url, settings=settings())
    bars = make_bars("2024-01-01", 200)
    cache.put(bars.iloc[:100], "ABCUSDT", "1h")
    first = objects(url)
    cache.put(bars.iloc[100:], "ABCUSDT", "1h")
    return first, objects(url)


def test_an_interrupted_commit_reads_as_old_or_new_and_is_resolved(
    s3_url: str, tmp_path: Path
) -> None:
    first, second = _commit_states(s3_url, tmp_path)
    meta, data = "ABCUSDT/1h/2024.metadata.json", "ABCUSDT/1h/2024.csv.gz"
    bucket, _, prefix = s3_url.removeprefix("s3://").partition("/")
    s3 = boto3.client("s3")

    def put(name: str, body: bytes) -> None:
        s3.put_object(Bucket=bucket, Key=f"{prefix}/{name}", Body=body)

    old_doc, new_doc = json.loads(first[meta]), json.loads(second[meta])
    claimed = json.dumps({**old_doc, PENDING: [new_doc]}).encode()
    for data_now, rows in ((first[data], 100), (second[data], 200)):
        put(meta, claimed)  # killed after step 1 (claim) or after step 2 (data)
        put(data, data_now)
        reader = UnifiedCache(s3_url, settings=settings())
        assert len(reader.get("ABCUSDT", "1h")) == rows, "a reader sees the old or the new year"
        actions = reader.cleanup_leftovers()
        assert [a.reason for a in actions] == ["interrupted commit"]
        after = json.loads(objects(s3_url)[meta])
        if rows == 200:  # the data arrived: the candidate is promoted as it was
            assert after == new_doc
        else:  # the old year stands, its bytes re-marked so that the dead writer's If-Match fails
            assert {**after, "file_info": {}} == {**old_doc, "file_info": {}}
            assert after["file_info"]["sha256"] != old_doc["file_info"]["sha256"]
            assert objects(s3_url)[data] != first[data]
        assert len(reader.get("ABCUSDT", "1h")) == rows
        assert reader.cleanup_leftovers() == []
    # a new year killed after its pending record and data, and one killed before its data
    pend = "ABCUSDT/1h/2024.metadata.json.pending"
    s3.delete_object(Bucket=bucket, Key=f"{prefix}/{meta}")
    put(pend, json.dumps({PENDING: [new_doc]}).encode())
    assert UnifiedCache(s3_url, settings=settings()).list_years("ABCUSDT", "1h") == []
    put(
        "ABCUSDT/1h/2023.metadata.json.pending",
        json.dumps({PENDING: [{**new_doc, "year": 2023}]}).encode(),
    )
    put("ABCUSDT/1h/2022.csv.gz", b"an orphan no record names")
    cleaner = UnifiedCache(s3_url, settings=settings())
    reasons = sorted(a.reason for a in cleaner.cleanup_leftovers())
    assert reasons == ["data without metadata", "interrupted commit", "interrupted commit"]
    assert cleaner.list_years("ABCUSDT", "1h") == [2024], "the pending record matching was promoted"
    assert len(cleaner.get("ABCUSDT", "1h")) == 200
    one_data_object_per_record(s3_url, ".csv.gz")


def test_memory_and_file_urls_run_the_same_cache(tmp_path: Path) -> None:
    df = make_bars("2023-12-31", 48)
    mem = UnifiedCache("memory://marketcache-test/cache", settings=settings("parquet"))
    mem.put(df, "ABCUSDT", "1h")
    assert isinstance(mem.backend, ObjectBackend)
    assert mem.backend.describe()["conditional_writes"] == "checked before writing"
    assert len(mem.get("ABCUSDT", "1h")) == 48 and mem.list_years("ABCUSDT", "1h") == [2023, 2024]
    local = UnifiedCache(f"file://{tmp_path}/c", settings=settings())
    local.put(df, "ABCUSDT", "1h")
    assert (tmp_path / "c" / "ABCUSDT" / "1h" / "2024.csv.gz").exists()


def test_two_waiters_whose_creates_both_go_through_still_get_one_lease() -> None:
    """memory:// checks a condition, then writes: two simultaneous creates can both succeed
    (as moto's can under true concurrency). The read-back keeps the holders one at a time."""
    import threading

    from marketcache.storage.objects.lease import LeaseLost, Leases
    from marketcache.storage.objects.store import open_store

    inside, most, served, guard = [0], [0], [0], threading.Lock()

    def work(trial: int, barrier: threading.Barrier) -> None:
        leases = Leases(open_store("memory://lease-race/cache", {}), 5)
        name = f"_metadata/locks/t{trial}.lease"
        barrier.wait()
        for _ in range(10):  # as populate does: a lost lease is taken again
            try:
                with leases.hold(name, wait=20, what="t"):
                    leases.check(name)  # before the first write, as every commit does
                    with guard:
                        inside[0] += 1
                        most[0] = max(most[0], inside[0])
                    time.sleep(0.02)
                    with guard:
                        inside[0] -= 1
                        served[0] += 1
                return
            except LeaseLost:
                continue

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # interleave the check and the write of the two creates
    try:
        for trial in range(8):
            barrier = threading.Barrier(3)
            threads = [threading.Thread(target=work, args=(trial, barrier)) for _ in range(3)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
    finally:
        sys.setswitchinterval(switch)
    assert most[0] == 1, f"{most[0]} holders of one lease at once"
    assert served[0] == 8 * 3, "every waiter got the lease in the end"


# ---- leases across processes -----------------------------------------------------------------

HOLDER = """
import sys, time
from marketcache import UnifiedCache
from marketcache.config.parser import parse_settings
import pandas as pd
cache = UnifiedCache(sys.argv[1], settings=parse_settings("settings: {lease_seconds: 3}"), lock_wait=5)
with cache.lock("ABCUSDT", "1h"):
    print("held", flush=True)
    if sys.argv[2] == "write":
        sys.stdin.readline()  # paused (SIGSTOP) until told to go on
        bars = pd.DataFrame({"timestamp": pd.date_range("2024-01-01", periods=5, freq="1h"),
                             "open": 9.0, "high": 9.0, "low": 9.0, "close": 9.0, "volume": 9.0})
        try:
            cache.put(bars, "ABCUSDT", "1h")
            print("wrote", flush=True)
        except Exception as exc:
            print(type(exc).__name__, exc, flush=True)
    else:
        time.sleep(120)
"""


def _holder(url: str, mode: str, env: dict[str, str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, url, mode], env={**os.environ, **env}, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_killed_holder_blocks_only_until_its_lease_expires(
    s3_url: str, s3_server: str, tmp_path: Path
) -> None:
    holder = _holder(s3_url, "sleep", s3_environment(s3_server, tmp_path / "m1"))
    waiter = UnifiedCache(s3_url, settings=settings(lease=2), lock_wait=0.5)
    with pytest.raises(LockTimeout, match="ABCUSDT 1h is locked"), waiter.lock("ABCUSDT", "1h"):
        pass  # a live holder renews its lease: it keeps blocking
    time.sleep(3.5)
    with pytest.raises(LockTimeout), waiter.lock("ABCUSDT", "1h"):
        pass  # still renewed after longer than the lease
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    killed = time.monotonic()
    patient = UnifiedCache(s3_url, settings=settings(lease=2), lock_wait=10)
    with patient.lock("ABCUSDT", "1h"):
        waited = time.monotonic() - killed
    assert waited < 3 + 2.5, f"blocked {waited:.1f}s after the holder died (lease 3s)"
    # a dead holder's lease: left alone by cleanup while it may be live, swept once expired
    dead = _holder(s3_url, "sleep", s3_environment(s3_server, tmp_path / "m2"))
    dead.send_signal(signal.SIGKILL)
    dead.wait()
    assert not [a for a in waiter.cleanup_leftovers() if "lease" in a.reason]
    assert [n for n in objects(s3_url) if n.endswith(".lease")]
    time.sleep(3 + 1.5)  # the lease, and the second of HTTP dates' granularity
    swept = [a.reason for a in waiter.cleanup_leftovers() if "lease" in a.reason]
    assert len(swept) == 1 and swept[0].startswith("expired lease of "), swept
    assert not [n for n in objects(s3_url) if n.endswith(".lease")]


SKEWED_WAITER = """
import sys, time
real = time.time
time.time = lambda: real() + 3600  # this machine's clock runs an hour ahead
from marketcache import UnifiedCache
from marketcache.config.parser import parse_settings
from marketcache.errors import LockTimeout
cache = UnifiedCache(sys.argv[1], settings=parse_settings("settings: {lease_seconds: 2}"), lock_wait=3)
try:
    with cache.lock("ABCUSDT", "1h"):
        print("took a live lease", flush=True)
except LockTimeout:
    print("waited", flush=True)
"""


def test_a_machine_whose_clock_runs_ahead_does_not_take_a_live_lease(
    s3_url: str, s3_server: str, tmp_path: Path
) -> None:
    """Expiry is judged by the store's clock (Date, Last-Modified), not the machines'."""
    holder = _holder(s3_url, "sleep", s3_environment(s3_server, tmp_path / "m1"))
    try:
        skewed = subprocess.run(
            [sys.executable, "-c", SKEWED_WAITER, s3_url], capture_output=True, text=True,
            env={**os.environ, **s3_environment(s3_server, tmp_path / "m2")}, timeout=60,
        )  # fmt: skip
    finally:
        holder.kill()
        holder.wait()
    assert skewed.stdout.strip() == "waited", skewed.stdout + skewed.stderr


def test_a_paused_writer_whose_lease_expired_writes_nothing(
    s3_url: str, s3_server: str, tmp_path: Path
) -> None:
    mine = UnifiedCache(s3_url, settings=settings(lease=2), lock_wait=10)
    mine.put(make_bars("2024-01-01", 20), "ABCUSDT", "1h")
    paused = _holder(s3_url, "write", s3_environment(s3_server, tmp_path / "m1"))
    paused.send_signal(signal.SIGSTOP)  # a long GC pause, a frozen VM
    newer = make_bars("2024-01-01", 30, seed=7)
    mine.put(newer, "ABCUSDT", "1h")  # waits for the lease to expire, takes it over, commits
    paused.send_signal(signal.SIGCONT)
    out, err = paused.communicate("go\n", timeout=60)
    assert "Conflict" in out or "LeaseLost" in out, out + err
    got = UnifiedCache(s3_url, settings=settings()).get("ABCUSDT", "1h")
    assert len(got) == 30 and got["close"].tolist() == newer["close"].tolist(), "ours stands"
    assert (got["close"] != 9.0).all(), "nothing of the paused writer's rows"
    one_data_object_per_record(s3_url, ".csv.gz")


PAUSED_WRITER = """
import sys
import pandas as pd
from marketcache import UnifiedCache
from marketcache.config.parser import parse_settings
cache = UnifiedCache(sys.argv[1], settings=parse_settings("settings: {lease_seconds: 2}"), lock_wait=5)
bars = pd.DataFrame({"timestamp": pd.date_range("2024-01-01", periods=40, freq="1h"),
                     "open": 9.0, "high": 9.0, "low": 9.0, "close": 9.0, "volume": 9.0})
try:
    cache.put(bars, "ABCUSDT", "1h")
    print("wrote", flush=True)
except Exception as exc:
    print(type(exc).__name__, exc, flush=True)
"""


@pytest.mark.parametrize("year_exists", [True, False])
def test_a_writer_paused_between_its_claim_and_its_data_cannot_overwrite_the_next_commit(
    s3_url: str, s3_server: str, tmp_path: Path, year_exists: bool
) -> None:
    """The paused writer's claim went through; then its requests stop (lease renewals too).
    Another machine takes the expired lease and commits. When the pause ends, the paused
    writer's data write must be refused: the other machine's commit stands, readable."""
    mine = UnifiedCache(s3_url, settings=settings(lease=2), lock_wait=15)
    if year_exists:
        mine.put(make_bars("2024-01-01", 20), "ABCUSDT", "1h")

    def after_claim(method: str, path: str, body: bytes) -> bool:
        """The writer's first write of the year's record (or new-year claim): its claim."""
        return method == "PUT" and "/ABCUSDT/1h/2024.metadata.json" in path

    proxy = CountingProxy(s3_server, freeze_after=after_claim)
    try:
        paused = subprocess.Popen(
            [sys.executable, "-c", PAUSED_WRITER, s3_url],
            env={**os.environ, **s3_environment(proxy.url, tmp_path / "m1")},
            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert proxy.frozen.wait(60), "the paused writer never claimed"
        newer = make_bars("2024-01-01", 30, seed=7)
        mine.put(newer, "ABCUSDT", "1h")  # waits out the lease, settles the claim, commits
    finally:
        proxy.thaw.set()
    out, err = paused.communicate(timeout=60)
    proxy.close()
    assert "Conflict" in out or "LeaseLost" in out, out + err
    got = UnifiedCache(s3_url, settings=settings()).get("ABCUSDT", "1h")
    assert got["close"].tolist() == newer["close"].tolist(), "the newer commit stands, whole"
    one_data_object_per_record(s3_url, ".csv.gz")
    assert UnifiedCache(s3_url, settings=settings()).cleanup_leftovers() == []


def test_a_commit_renewing_the_lease_as_its_renewal_thread_does_keeps_it() -> None:
    """`check` renews a lease a third gone while the holder's thread may be renewing it too:
    the two renewals take turns, so neither finds the etag the other just wrote 'changed by
    another writer' (three S3 trials lost their own lease that way on a loaded machine)."""
    from marketcache.storage.objects.lease import Leases
    from marketcache.storage.objects.store import open_store

    leases = Leases(open_store("memory://renewal-race/cache", {}), 3)
    name = "_metadata/locks/r.lease"
    with leases.hold(name, wait=5, what="r"):
        leases.check(name)
        held = leases._held.held(name)
        assert held is not None
        barrier = threading.Barrier(8)

        def renew() -> None:
            barrier.wait()
            for _ in range(25):
                leases._renew(name, held)

        threads = [threading.Thread(target=renew) for _ in range(8)]
        switch = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)  # threads switch between reading the etag and the put
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            sys.setswitchinterval(switch)
        assert not held.lost
        leases.check(name)  # still this holder's: no LeaseLost


def test_a_paused_populate_re_plans_from_the_newer_commit_and_loses_nothing(
    s3_url: str, s3_server: str, fake_binance: FakeBinance, tmp_path: Path
) -> None:
    """A populate frozen right after its claim; another machine fills the same range; when the
    pause ends its data write is refused, it re-plans from the newer state and ends clean."""
    fake_binance.add("ABCUSDT", "1h", make_bars("2024-01-01", 72))
    conf = config_for(binance=fake_binance) + "settings: {lease_seconds: 2, lock_wait: 30}\n"
    mine = tmp_path / "mine.yaml"
    mine.write_text(conf)

    def populate(end: str, endpoint: str, home: Path) -> subprocess.Popen[str]:
        home.mkdir(parents=True, exist_ok=True)
        return subprocess.Popen(
            [sys.executable, "-m", "marketcache", "populate", "ABCUSDT", "-t", "1h", "--start",
             "2024-01-01", "--end", end, "--json", "-q", "--cache-dir", s3_url,
             "--config", str(mine)],
            env={**os.environ, **s3_environment(endpoint, home / "xdg")}, cwd=home, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip

    first = populate("2024-01-02", s3_server, tmp_path / "m0")
    assert first.wait(60) == 0, first.communicate()[1]

    def after_claim(method: str, path: str, body: bytes) -> bool:
        return method == "PUT" and "/ABCUSDT/1h/2024.metadata.json" in path

    proxy = CountingProxy(s3_server, freeze_after=after_claim)
    try:
        paused = populate("2024-01-03", proxy.url, tmp_path / "m1")
        assert proxy.frozen.wait(60), "the paused populate never claimed"
        other = populate("2024-01-04", s3_server, tmp_path / "m2")  # waits out the lease
        out, err = other.communicate(timeout=60)
        assert other.returncode == 0, err
    finally:
        proxy.thaw.set()
    out, err = paused.communicate(timeout=60)
    proxy.close()
    assert paused.returncode == 0, err
    notes = json.loads(out)["results"][0]["notes"]
    assert any("re-planned from the newer state" in n for n in notes), notes
    got = UnifiedCache(s3_url, settings=settings()).get("ABCUSDT", "1h")
    assert got["close"].tolist() == fake_binance.series[("ABCUSDT", "1h")]["close"].tolist()
    one_data_object_per_record(s3_url, ".csv.gz")
    assert UnifiedCache(s3_url, settings=settings()).cleanup_leftovers() == []


# ---- machines that share nothing but the bucket -------------------------------------------------


@pytest.fixture(scope="module", params=["csv.gz", "parquet"])
def s3_market(request: pytest.FixtureRequest) -> Iterator[tuple[FakeBinance, str]]:
    server = FakeBinance()
    for i, sym in enumerate(SYMBOLS):
        server.add(sym, "1m", make_bars(START, 60 * 24 * 18, "1min", seed=10 + i))
    conf = config_for(binance=server, retry_budget=5)
    yield server, conf + f"settings: {{format: {request.param}, lease_seconds: 3}}\n"
    server.close()


def machine(
    conf: str,
    url: str,
    endpoint: str,
    home: Path,
    symbols: tuple[str, ...] = SYMBOLS,
    workers: int = 1,
) -> subprocess.Popen[str]:
    """`marketcache populate` as another machine would run it: its own folder and config."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "p.yaml").write_text(conf)
    env = {
        **os.environ,
        **s3_environment(endpoint, home / "xdg"),
        "MARKETCACHE_CONFIG": str(home / "p.yaml"),
        "MARKETCACHE_CACHE_DIR": url,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "marketcache", "populate", *symbols, "-t", "1m", "--start", START,
         "--end", END, "--json", "-q", "--workers", str(workers)],
        env=env, cwd=home, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def snapshot(url: str) -> dict[str, pd.DataFrame]:
    cache = UnifiedCache(url, settings=parse_settings(""))
    return {sym: cache.get(sym, "1m") for sym in cache.list_symbols()}


def assert_consistent(url: str) -> None:
    cache = UnifiedCache(url, settings=parse_settings(""), lock_wait=30)
    for sym in cache.list_symbols():
        for year in cache.list_years(sym, "1m"):
            meta = cache.metadata(sym, "1m", year)
            assert len(cache.read_year(sym, "1m", year)) == meta["file_info"]["rows"]


@pytest.fixture(scope="module")
def s3_reference(
    s3_market: tuple[FakeBinance, str], s3_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[dict[str, pd.DataFrame], float, str]]:
    """One uninterrupted run into its own bucket: what every other run must end as."""
    _, conf = s3_market
    work = tmp_path_factory.mktemp("s3ref")
    fmt = "parquet" if "format: parquet" in conf else "csv"
    env = s3_environment(s3_server, work / "xdg")
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    bucket = f"reference-{fmt}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    began = time.monotonic()
    proc = machine(conf, f"s3://{bucket}/cache", s3_server, work)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    yield snapshot(f"s3://{bucket}/cache"), time.monotonic() - began, fmt
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.mark.slow
def test_three_machines_racing_on_one_bucket_end_as_one_run(
    s3_market: tuple[FakeBinance, str],
    s3_reference: tuple[dict[str, pd.DataFrame], float, str],
    s3_url: str,
    s3_server: str,
    tmp_path: Path,
) -> None:
    _, conf = s3_market
    expected, _, _ = s3_reference
    pairs = [(SYMBOLS[0], SYMBOLS[1]), (SYMBOLS[1], SYMBOLS[2]), (SYMBOLS[2], SYMBOLS[0])]
    procs = [  # the first machine runs its two symbols on two threads sharing one backend
        machine(conf, s3_url, s3_server, tmp_path / f"m{i}", p, workers=2 if i == 0 else 1)
        for i, p in enumerate(pairs)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    got = snapshot(s3_url)
    assert set(got) == set(expected)
    for sym, frame in expected.items():
        pd.testing.assert_frame_equal(got[sym], frame, check_exact=True)
    assert_consistent(s3_url)
    suffix = ".parquet" if "format: parquet" in conf else ".csv.gz"
    one_data_object_per_record(s3_url, suffix)
    assert not [n for n in objects(s3_url) if n.endswith(".lease")], "every lease was released"


@pytest.mark.slow
def test_sigkill_at_random_moments_on_a_bucket_loses_nothing_committed(
    s3_market: tuple[FakeBinance, str],
    s3_reference: tuple[dict[str, pd.DataFrame], float, str],
    s3_url: str,
    s3_server: str,
    tmp_path: Path,
) -> None:
    _, conf = s3_market
    expected, duration, _ = s3_reference
    suffix = ".parquet" if "format: parquet" in conf else ".csv.gz"
    rng = random.Random(20261121)
    # three kills at random moments of a run, two a little after its first commit, so that some
    # always land between commits however fast or slow the machine is
    kills = [(False, rng.uniform(0.2, 1.0) * duration) for _ in range(3)]
    kills += [(True, rng.uniform(0.0, 0.1) * duration) for _ in range(2)]
    killed_between_commits = 0
    for trial, (after_first_commit, delay) in enumerate(kills):
        url = f"{s3_url}{trial}"
        proc = machine(conf, url, s3_server, tmp_path / f"run{trial}")
        deadline = time.monotonic() + 120
        while after_first_commit and proc.poll() is None and not committed(url):
            assert time.monotonic() < deadline, "the run committed nothing in time"
            time.sleep(0.02)
        time.sleep(delay)
        running = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert_consistent(url)
        killed_between_commits += running and committed(url)
        # the next run: another machine, which waits out the dead run's leases (3 s)
        again = machine(conf, url, s3_server, tmp_path / f"next{trial}")
        _, err = again.communicate(timeout=300)
        assert again.returncode == 0, err
        got = snapshot(url)
        for sym, frame in expected.items():
            pd.testing.assert_frame_equal(got[sym], frame, check_exact=True)
        UnifiedCache(url, settings=parse_settings("")).cleanup_leftovers()
        one_data_object_per_record(url, suffix)
    assert killed_between_commits >= 2, (
        "some kills must land while a run has committed part of its work"
    )


def committed(url: str) -> bool:
    """Whether a run has committed a year yet: its metadata object is written last (keys only)."""
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    listing = boto3.client("s3").list_objects_v2(Bucket=bucket, Prefix=prefix + "/")
    return any(item["Key"].endswith(".metadata.json") for item in listing.get("Contents", []))


# ---- what the commands cost and say -----------------------------------------------------------


def run_cli(
    *args: str, endpoint: str, home: Path, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **s3_environment(endpoint, home / "xdg"), **(extra_env or {})}
    env.pop("MARKETCACHE_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "marketcache", *args], env=env, cwd=home, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip


def test_info_and_list_on_a_bucket_read_records_only(
    s3_url: str, s3_server: str, tmp_path: Path
) -> None:
    cache = UnifiedCache(s3_url, settings=settings())
    for sym in ("AAAUSDT", "BBBUSDT"):
        cache.put(make_bars("2021-06-01", 24 * 365 * 3), sym, "1h")  # 4 years each
        cache.put(make_bars("2021-06-01", 400, freq="1D"), sym, "1d")
    proxy = CountingProxy(s3_server)
    try:
        counts = {}
        for args in (("info",), ("list",), ("info", "AAAUSDT")):
            proxy.seen.clear()
            r = run_cli(*args, "--cache-dir", s3_url, "--json", endpoint=proxy.url, home=tmp_path)
            assert r.returncode == 0, r.stderr
            data = [p for m, p in proxy.seen if ".csv.gz" in p and m == "GET"]
            assert not data, f"{args} read year data: {data}"
            counts[args] = list(proxy.seen)
    finally:
        proxy.close()
    listings = lambda seen: [p for m, p in seen if "list-type" in p]  # noqa: E731
    records = lambda seen: [p for m, p in seen if p.endswith(".metadata.json")]  # noqa: E731
    # the bucket check and cache.json, then: `info` the index object and one listing of the
    # followers' heartbeats (`marketcache follow`); `list` one listing (the live tails in it)
    beats = listings(counts[("info",)])
    assert not records(counts[("info",)]) and len(beats) == 1 and "FOLLOW" in beats[0], beats
    assert len(counts[("info",)]) == 4, counts[("info",)]
    assert not records(counts[("list",)]) and len(listings(counts[("list",)])) == 1
    assert len(counts[("list",)]) == 3, counts[("list",)]
    # one symbol: a listing of its years, one of its live tails, a GET per year record (4 + 2)
    one = counts[("info", "AAAUSDT")]
    assert len(listings(one)) == 2 and len(records(one)) == 6, one
    assert all("prefix=cache%2FAAAUSDT%2F" in p for p in listings(one)), one
    assert len(one) <= 2 + 6 + 3, one


def test_copy_to_a_bucket_and_back_round_trips(s3_url: str, s3_server: str, tmp_path: Path) -> None:
    local = UnifiedCache(tmp_path / "data-cache", settings=parse_settings(""))
    local.put(make_bars("2023-11-01", 24 * 120), "ABCUSDT", "1h", provider="binance")
    local.put(make_bars("2023-12-01", 60, freq="1D").assign(adj_close=1.0), "AAPL", "1d")
    r = run_cli("copy", "data-cache", s3_url, "--json", endpoint=s3_server, home=tmp_path)
    assert r.returncode == 0, r.stderr
    r = run_cli("copy", s3_url, "back", "--json", endpoint=s3_server, home=tmp_path)
    assert r.returncode == 0, r.stderr
    again = run_cli("copy", "data-cache", s3_url, "--json", endpoint=s3_server, home=tmp_path)
    assert {y["status"] for y in json.loads(again.stdout)["years"]} == {"skipped"}
    back = UnifiedCache(tmp_path / "back", settings=parse_settings(""))
    bucket = UnifiedCache(s3_url, settings=parse_settings(""))
    for sym, tf in (("ABCUSDT", "1h"), ("AAPL", "1d")):
        pd.testing.assert_frame_equal(back.get(sym, tf), local.get(sym, tf), check_exact=True)
        for year in local.list_years(sym, tf):
            want, got = local.metadata(sym, tf, year), back.metadata(sym, tf, year)
            # identical records, bytes and sha256 included (the bucket's bytes carry a mark of
            # their own); the copy notes which bytes it came from
            there = bucket.metadata(sym, tf, year)["file_info"]
            assert got["file_info"].pop(COPIED_FROM) == there["sha256"]
            assert there.pop(COPIED_FROM) == want["file_info"]["sha256"]
            assert got == want, (sym, tf, year)


def test_a_missing_bucket_is_exit_2_and_no_secret_is_ever_shown(
    s3_url: str, s3_server: str, tmp_path: Path
) -> None:
    secret = "wJalrXUtnFEMI-marketcache-do-not-print"
    (tmp_path / "p.yaml").write_text(
        "settings:\n  storage_options: {key: AKIAMARKETCACHE, secret: '${MC_S3_SECRET}'}\n"
    )
    extra = {"MC_S3_SECRET": secret}
    for verbose in ((), ("-v",)):
        r = run_cli("info", "--cache-dir", "s3://no-such-bucket/cache", "--config", "p.yaml",
                    *verbose, endpoint=s3_server, home=tmp_path, extra_env=extra)  # fmt: skip
        assert r.returncode == 2, r.stderr
        assert "bucket 'no-such-bucket' does not exist" in r.stderr.strip().splitlines()[-1]
        assert secret not in r.stdout + r.stderr, "not even in the -v traceback"
        if not verbose:
            assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    # an endpoint nobody answers: a runtime failure (exit 1), one line naming the store
    down = run_cli("list", "--cache-dir", s3_url, endpoint="http://127.0.0.1:9", home=tmp_path,
                   extra_env={"AWS_MAX_ATTEMPTS": "2"})  # fmt: skip
    assert down.returncode == 1 and len(down.stderr.strip().splitlines()) == 1, down.stderr
    assert "cannot reach the object store" in down.stderr and "AWS_ENDPOINT_URL" in down.stderr
    cache = UnifiedCache(s3_url, settings=settings())
    cache.put(make_bars("2024-01-01", 24), "ABCUSDT", "1h")
    for args in (("info", "--json"), ("info", "ABCUSDT", "--json"), ("validate", "-v")):
        r = run_cli(*args, "--cache-dir", s3_url, "--config", "p.yaml", endpoint=s3_server,
                    home=tmp_path, extra_env=extra)  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert secret not in r.stdout + r.stderr
    assert not [n for n, body in objects(s3_url).items() if secret.encode() in body]


def test_the_endpoint_and_keys_can_come_from_the_config_alone(
    s3_url: str, s3_server: str, tmp_path: Path
) -> None:
    """No AWS_* variable at all: settings.storage_options with ${ENV} for the secret."""
    UnifiedCache(s3_url, settings=settings()).put(make_bars("2024-01-01", 24), "ABCUSDT", "1h")
    secret = "only-in-the-environment-of-the-config-s3cr3t"
    (tmp_path / "p.yaml").write_text(
        "settings:\n  storage_options:\n"
        f"    endpoint_url: {s3_server}\n    key: AKIAFROMCONFIG\n    secret: '${{S3_SECRET}}'\n"
        "    client_kwargs: {region_name: us-east-1}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.pop("MARKETCACHE_CONFIG", None)
    env["S3_SECRET"] = secret
    for args in (("info", "ABCUSDT", "--json"), ("validate", "-v"), ("list", "--json")):
        r = subprocess.run(
            [sys.executable, "-m", "marketcache", *args, "--cache-dir", s3_url, "--config",
             "p.yaml"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert secret not in r.stdout + r.stderr
    assert json.loads(r.stdout) == [{"symbol": "ABCUSDT", "timeframes": ["1h"]}]


@pytest.mark.parametrize("fmt", ["csv.gz", "parquet"])
def test_every_command_runs_on_a_bucket(
    cli: Any,
    s3_url: str,
    fmt: str,
    fake_binance: FakeBinance,
    fake_yahoo: Any,
    fake_av: Any,
    tmp_path: Path,
) -> None:
    """populate, list, info, validate (and --fix), cleanup, fundamentals and the DataManager on
    s3://, for both formats, the endpoint and keys from AWS_* variables alone."""
    from marketcache import DataManager

    fake_binance.add("ABCUSDT", "1h", make_bars("2023-12-30", 24 * 10, "1h"))
    conf = tmp_path / "p.yaml"
    conf.write_text(
        config_for(binance=fake_binance, yahoo=fake_yahoo, alpha_vantage=fake_av)
        + f"settings: {{format: {fmt}, lease_seconds: 5}}\n"
    )
    args = ("--cache-dir", s3_url, "--config", str(conf))
    span = ("--start", "2023-12-30", "--end", "2024-01-09")
    r = cli("populate", "ABCUSDT", "-t", "1h", *span, "--json", *args)
    assert r.code == 0, r.err
    assert r.json()["results"][0]["rows_added"] == 240
    suffix = ".parquet" if fmt == "parquet" else ".csv.gz"
    assert {f"ABCUSDT/1h/2023{suffix}", f"ABCUSDT/1h/2024{suffix}"} <= set(objects(s3_url))
    assert cli("list", "--json", *args).json() == [{"symbol": "ABCUSDT", "timeframes": ["1h"]}]
    info = cli("info", "--json", *args).json()
    assert info["rows"] == 240 and info["files"] == 2
    assert info["backend"]["backend"] == "object" and info["backend"]["format"] == fmt
    assert cli("validate", *args).code == 0
    again = cli("populate", "ABCUSDT", "-t", "1h", *span, "--json", *args)
    assert again.json()["results"][0]["requests"] == 0
    # an object changed behind the tool's back: validate sees it, --fix keeps what it can
    bucket, _, prefix = s3_url.removeprefix("s3://").partition("/")
    s3 = boto3.client("s3")
    name = f"{prefix}/ABCUSDT/1h/2024{suffix}"
    body = bytearray(s3.get_object(Bucket=bucket, Key=name)["Body"].read())
    body[len(body) // 2] ^= 0xFF  # one flipped byte, same size
    s3.put_object(Bucket=bucket, Key=name, Body=bytes(body))
    bad = cli("validate", *args)
    assert bad.code == 3 and f"2024{suffix}" in bad.err and "sha256" in bad.err, bad.err
    fixed = cli("validate", "--fix", "--json", *args)
    # 3 when rows were lost (populate fetches them again), 0 when every row was kept (a byte
    # Parquet's page checksums do not cover)
    assert fixed.code in (0, 3), fixed.err
    refill = cli("populate", "ABCUSDT", "-t", "1h", *span, "--json", *args)
    lost = fixed.code == 3
    assert refill.code == 0 and (refill.json()["results"][0]["rows_added"] > 0) == lost
    whole = UnifiedCache(s3_url, settings=parse_settings("")).get("ABCUSDT", "1h")
    assert whole["close"].tolist() == fake_binance.series[("ABCUSDT", "1h")]["close"].tolist()
    assert cli("validate", *args).code == 0
    cleaned = cli("cleanup", "--before", "2024-01-01", "--json", *args)
    assert cleaned.code == 0, cleaned.err
    assert cli("list", "ABCUSDT", "1h", "--json", *args).json()[0]["year"] == 2024
    funda = cli("fundamentals", "AAPL", "--json", *args)
    assert funda.code == 0, funda.err
    assert [n for n in objects(s3_url) if n.startswith("AAPL/fundamentals/yahoo_")]
    with DataManager(s3_url, config=str(conf)) as dm:
        got = dm.get_ohlcv("ABCUSDT", "1h", start="2024-01-01", end="2024-01-09")
        assert len(got) == 24 * 8
        assert set(dm.availability()["symbol"]) == {"ABCUSDT"}


def test_a_held_lease_exits_4_naming_the_series(
    cli: Any, s3_url: str, s3_server: str, fake_binance: FakeBinance, tmp_path: Path
) -> None:
    fake_binance.add("ABCUSDT", "1h", make_bars("2024-01-01", 24, "1h"))
    conf = tmp_path / "p.yaml"
    conf.write_text(config_for(binance=fake_binance) + "settings: {lock_wait: 0.5}\n")
    holder = _holder(s3_url, "sleep", s3_environment(s3_server, tmp_path / "m1"))
    try:
        r = cli("populate", "ABCUSDT", "-t", "1h", "--start", "2024-01-01", "--end",
                "2024-01-02", "--cache-dir", s3_url, "--config", str(conf))  # fmt: skip
    finally:
        holder.kill()
        holder.wait()
    assert r.code == 4 and "ABCUSDT 1h is locked by another marketcache run" in r.err, r.err
    assert not [n for n in objects(s3_url) if n.startswith("ABCUSDT/")], "nothing written"


# ---- stores without a clock, local:// (issue 20) ----------------------------------------------


def test_a_local_fsspec_cache_lists_and_reads_what_it_stored(cli: Any, tmp_path: Path) -> None:
    """local:///path runs the object-storage backend on a folder: what a put stored is
    listed and read back (it used to list nothing: 0 rows of a stored series)."""
    url = f"local://{tmp_path}/objects"
    df = make_bars("2023-12-31", 48)
    UnifiedCache(url, settings=settings()).put(df, "ABCUSDT", "1h")
    assert (tmp_path / "objects" / "ABCUSDT" / "1h" / "2024.csv.gz").exists()
    fresh = UnifiedCache(url, settings=settings())
    assert fresh.list_symbols() == ["ABCUSDT"] and fresh.list_years("ABCUSDT", "1h") == [2023, 2024]
    back = fresh.get("ABCUSDT", "1h")
    assert back["timestamp"].tolist() == df["timestamp"].tolist()
    assert back["close"].tolist() == df["close"].tolist()
    listed = cli("list", "ABCUSDT", "1h", "--json", "--cache-dir", url)
    assert listed.code == 0 and [y["year"] for y in listed.json()] == [2023, 2024], listed.err
    assert cli("validate", "--cache-dir", url).code == 0


def test_on_a_store_without_a_clock_a_waiter_whose_clock_runs_ahead_takes_no_live_lease(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two machines on a clockless store (memory:// here, one process): the waiter's clock
    runs 120 s ahead. It must not judge the holder's renewed lease old by comparing clocks;
    once the holder is gone (no renewal), it takes the lease over after one lease length."""
    import threading

    from marketcache.storage.objects.lease import Leases
    from marketcache.storage.objects.store import open_store

    real = time.time
    skewed = threading.local()
    monkeypatch.setattr(time, "time", lambda: real() + (120 if getattr(skewed, "on", 0) else 0))
    store = open_store("memory://clockless/cache", {})
    holder, waiter = Leases(store, 1.5), Leases(store, 1.5)
    name = "_metadata/locks/ABCUSDT/1h.lease"
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with holder.hold(name, wait=5, what="ABCUSDT 1h"):
            held.set()
            release.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert held.wait(10)
        skewed.on = 1  # this thread is the machine whose clock runs ahead
        with pytest.raises(LockTimeout), waiter.hold(name, wait=4, what="ABCUSDT 1h"):
            pass  # 4 s: well past the lease length, and the holder is renewing it
        # the holder stops renewing (its machine died): its lease object stays behind
        lease = holder._held.held(name)
        assert lease is not None and lease.thread is not None
        lease.stop.set()
        lease.thread.join()
        stopped = time.monotonic()
        with waiter.hold(name, wait=20, what="ABCUSDT 1h"):
            waited = time.monotonic() - stopped
        assert 1.5 <= waited < 1.5 + 5, f"took the lease {waited:.1f}s after the last renewal"
    finally:
        skewed.on = 0
        release.set()
        thread.join(30)


def test_machines_sharing_a_local_fsspec_store_judge_leases_without_their_clocks(
    tmp_path: Path,
) -> None:
    """Processes on one local:// store (no store clock): a waiter an hour ahead waits for a
    live holder; once the holder is killed, the next waiter takes over within a lease or two."""
    url = f"local://{tmp_path}/objects"
    holder = _holder(url, "sleep", {})
    try:
        skewed = subprocess.run(
            [sys.executable, "-c", SKEWED_WAITER, url], capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip
    finally:
        holder.kill()
        holder.wait()
    assert skewed.stdout.strip() == "waited", skewed.stdout + skewed.stderr
    killed = time.monotonic()
    patient = UnifiedCache(url, settings=settings(lease=2), lock_wait=20)
    with patient.lock("ABCUSDT", "1h"):
        waited = time.monotonic() - killed
    assert waited < 3 + 6, f"blocked {waited:.1f}s after the holder died (lease 3s)"


@pytest.mark.parametrize("where", ["s3", "memory"])
def test_cleanup_removes_quarantined_objects_only_after_quarantine_days(
    where: str, request: pytest.FixtureRequest
) -> None:
    """A year set aside stays through `cleanup` while younger than quarantine_days, and goes
    once older (by the store's clock on S3, by the stamp in its name on a clockless store)."""
    url = request.getfixturevalue("s3_url") if where == "s3" else "memory://quarantine-age/c"
    cache = UnifiedCache(url, settings=settings())
    cache.put(make_bars("2023-12-31", 48), "ABCUSDT", "1h")
    first = cache.quarantine_year("ABCUSDT", "1h", 2023)
    second = cache.quarantine_year("ABCUSDT", "1h", 2024)
    assert first and second and first != second
    names = [n for n in cache.backend.store.listing() if ".corrupt-" in n]
    assert len(names) == 4, names  # data and record of each year, none overwritten
    assert not [a for a in cache.cleanup_leftovers() if "quarantined" in a.reason]
    time.sleep(2.2)  # older than the quarantine below, by any clock's second
    young = UnifiedCache(url, settings=parse_settings("settings: {quarantine_days: 30}"))
    assert not [a for a in young.cleanup_leftovers() if "quarantined" in a.reason]
    old = UnifiedCache(url, settings=parse_settings(f"settings: {{quarantine_days: {1 / 86400}}}"))
    gone = [a for a in old.cleanup_leftovers(dry_run=True) if "quarantined" in a.reason]
    assert len(gone) == 4 and len([n for n in old.backend.store.listing() if ".corrupt-" in n]) == 4
    assert len([a for a in old.cleanup_leftovers() if "quarantined" in a.reason]) == 4
    assert not [n for n in old.backend.store.listing() if ".corrupt-" in n]
