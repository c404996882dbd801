"""Commands racing each other: the end state equals some serial order, readers never fail falsely.

The first tests pin each race the round-3 review found, each with real processes, real files
and real locks (a second process holds the series lock, or loops a real command, while this one
works). The race matrix at the end runs every pair of commands on every backend.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from conftest import make_bars
from fakes import FakeBinance, config_for
from marketcache import CorruptFile, DataManager, UnifiedCache
from marketcache.config.parser import parse_settings
from marketcache.storage.backend import Key

SYM, TF = "RACEUSDT", "1h"


def cli_args(*args: str) -> list[str]:
    return [sys.executable, "-m", "marketcache", *args]


# A process that holds the series lock (as a populate does while it fetches), commits the rows
# pickled at the path it is sent on stdin while still holding it, then lets go.
HOLDER = """
import sys
import pandas as pd
from marketcache import UnifiedCache
from marketcache.config.parser import parse_settings
cache = UnifiedCache(sys.argv[1], settings=parse_settings(""))
with cache.lock(sys.argv[2], sys.argv[3]):
    print("held", flush=True)
    line = sys.stdin.readline().strip()
    if line:
        cache.put(pd.read_pickle(line), sys.argv[2], sys.argv[3], "binance")
print("released", flush=True)
"""


class Holder:
    """The series lock held by another process until `commit_and_release`."""

    def __init__(self, where: Path | str, symbol: str = SYM, timeframe: str = TF) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(where), symbol, timeframe],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        assert line == "held", self.proc.stderr.read() if self.proc.stderr else line

    def commit_and_release(self, frame: pd.DataFrame | None, scratch: Path) -> None:
        assert self.proc.stdin is not None
        path = ""
        if frame is not None:
            path = str(scratch / "rows.pickle")
            frame.to_pickle(path)
        self.proc.stdin.write(path + "\n")
        self.proc.stdin.flush()
        _, err = self.proc.communicate(timeout=120)
        assert self.proc.returncode == 0, err


def wait_for_lock_open(proc: subprocess.Popen[str], lock: Path, deadline: float = 90) -> None:
    """Return once `proc` has the lock file open: it is waiting for the lock (or holds it)."""
    end = time.monotonic() + deadline
    target = str(lock)
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"the command ended before it waited: {proc.communicate()}")
        try:
            fds = list(Path(f"/proc/{proc.pid}/fd").iterdir())
        except FileNotFoundError:
            fds = []
        for fd in fds:
            try:
                if os.readlink(fd) == target:
                    return
            except OSError:
                continue
        time.sleep(0.02)
    raise AssertionError(f"the command never opened {lock}")


def assert_same_rows(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    expected = expected.assign(timestamp=expected["timestamp"].astype("datetime64[ns]"))
    pd.testing.assert_frame_equal(got.reset_index(drop=True), expected.reset_index(drop=True),
                                  check_exact=True)  # fmt: skip


def folder_cache(tmp_path: Path, fmt: str) -> tuple[UnifiedCache, Path]:
    conf = tmp_path / "p.yaml"
    conf.write_text(f"settings: {{format: {fmt}}}\n")
    cache = UnifiedCache(
        tmp_path / "cache", settings=parse_settings(conf.read_text()), lock_wait=30
    )
    return cache, conf


# ---- 20.2: cleanup with criteria decides from the record it reads under the lock ---------------


def wait_for_advisory_waiter(pg_server: str, deadline: float = 90) -> None:
    """Return once a second session polls for an advisory lock (the holder's is the first)."""
    import psycopg

    end = time.monotonic() + deadline
    with psycopg.connect(pg_server, autocommit=True) as conn:
        while time.monotonic() < end:
            polling = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
                " AND query LIKE 'SELECT pg_try_advisory_lock%'"
            ).fetchone()
            if polling and polling[0] >= 2:
                return
            time.sleep(0.02)
    raise AssertionError("the command never waited for the series lock")


@pytest.mark.parametrize("fmt", ["csv.gz", "parquet", "postgresql"])
def test_cleanup_before_waiting_for_a_populate_keeps_the_rows_it_appended(
    tmp_path: Path, fmt: str, request: pytest.FixtureRequest
) -> None:
    if fmt == "postgresql":
        where = request.getfixturevalue("pg_url")
        conf = tmp_path / "p.yaml"
        conf.write_text("settings: {lock_wait: 60}\n")
        cache = UnifiedCache(where, settings=parse_settings(""), lock_wait=30)
    else:
        cache, conf = folder_cache(tmp_path, fmt)
        where = str(cache.root)
    bars = make_bars("2024-01-01", 24 * 61, "1h", seed=3)
    cache.put(bars.iloc[: 24 * 31], SYM, TF, "binance")  # January
    holder = Holder(where)
    cleanup = subprocess.Popen(
        cli_args("cleanup", "--before", "2024-01-10", "--cache-dir", where,
                 "--config", str(conf), "--json"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    if fmt == "postgresql":
        wait_for_advisory_waiter(request.getfixturevalue("pg_server"))
    else:
        wait_for_lock_open(cleanup, cache.layout.lock_path(SYM, TF))
    holder.commit_and_release(bars.iloc[24 * 31 :], tmp_path)  # February, appended meanwhile
    out, err = cleanup.communicate(timeout=120)
    assert cleanup.returncode == 0, err
    got = cache.get(SYM, TF)
    kept = bars[bars["timestamp"] >= pd.Timestamp("2024-01-10")].reset_index(drop=True)
    assert len(got) == len(kept), f"{len(kept) - len(got)} committed rows lost"
    assert_same_rows(got, kept)


# ---- 20.4: plain cleanup never removes a live commit --------------------------------------------

CLEANUP_LOOP = """
import sys, time
from marketcache.cli.app import main
end = time.monotonic() + float(sys.argv[3])
runs = 0
while time.monotonic() < end:
    code = main(["cleanup", "--cache-dir", sys.argv[1], "--config", sys.argv[2], "-q"])
    assert code == 0, code
    runs += 1
    if runs == 1:
        print("go", flush=True)
print(runs)
"""


YEARS = range(1920, 2020)  # on main, about one put in twelve lost its data to the cleanup


@pytest.mark.parametrize("fmt", ["csv.gz", "parquet"])
def test_plain_cleanup_racing_new_years_removes_none_of_them(tmp_path: Path, fmt: str) -> None:
    cache, conf = folder_cache(tmp_path, fmt)
    cache.put(make_bars("2024-01-01", 24), SYM, "1m", "binance")
    looper = subprocess.Popen(
        [sys.executable, "-c", CLEANUP_LOOP, str(cache.root), str(conf), "600"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    failures: list[str] = []
    try:
        assert looper.stdout is not None and looper.stdout.readline().strip() == "go"
        for year in YEARS:
            try:
                cache.put(make_bars(f"{year}-03-01", 3000, "1min", seed=year), SYM, "1m")
                assert len(cache.read_year(SYM, "1m", year)) == 3000
                with cache.lock(SYM, "1m"):  # checked: keep the cache small, the loop fast
                    cache.backend.delete(Key.of(SYM, "1m", year))
            except Exception as exc:  # counted, reported below
                failures.append(f"{year}: {type(exc).__name__}: {exc}")
    finally:
        looper.kill()
        looper.communicate()
    assert not failures, f"{len(failures)} of {len(YEARS)} puts lost: {failures[:3]}"
    assert cache.list_years(SYM, "1m") == [2024]


# ---- 20.5: lockless readers never see a false CorruptFile ---------------------------------------

# Rewrites the year over and over (every value changes each time, so each put is a rewrite).
REWRITER = """
import sys, time
from marketcache import UnifiedCache
from marketcache.config.parser import parse_settings
sys.path.insert(0, sys.argv[3])
from conftest import make_bars
cache = UnifiedCache(sys.argv[1], settings=parse_settings(""))
bars = make_bars("2024-01-01", 300, "1h", seed=1)
end = time.monotonic() + float(sys.argv[2])
n = 0
print("go", flush=True)
while time.monotonic() < end:
    n += 1
    cache.put(bars.assign(close=bars["close"] + 0.01 * (n % 7), high=bars["high"] + 0.1), "RACEUSDT", "1h", "binance")
print(n, flush=True)
"""


@pytest.mark.parametrize("fmt", ["csv.gz", "parquet", "postgresql"])
def test_lockless_readers_never_see_a_false_corrupt_file_while_a_writer_rewrites(
    tmp_path: Path, fmt: str, request: pytest.FixtureRequest
) -> None:
    """PostgreSQL too: it reads a record and its rows in two statements, and a commit between
    them gave a false CorruptFile as well. (A bucket's readers re-read already; the race
    matrix's readers cover it.)"""
    if fmt == "postgresql":
        where = request.getfixturevalue("pg_url")
        cache = UnifiedCache(where, settings=parse_settings(""), lock_wait=30)
    else:
        cache, _ = folder_cache(tmp_path, fmt)
        where = str(cache.root)
    bars = make_bars("2024-01-01", 300, "1h", seed=1)
    cache.put(bars, SYM, TF, "binance")
    writer = subprocess.Popen(
        [sys.executable, "-c", REWRITER, where, "600", str(Path(__file__).parent)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert writer.stdout is not None and writer.stdout.readline().strip() == "go"
    errors: list[str] = []
    reads = [0]
    stop = threading.Event()

    def reader(kind: str) -> None:
        dm = DataManager(where) if kind == "manager" else None
        mine = UnifiedCache(where, settings=parse_settings(""))
        while not stop.is_set():
            try:
                if dm is not None:
                    got = dm.get_ohlcv(SYM, TF, fetch_missing=False)
                else:
                    got = mine.get(SYM, TF)
                stamps = got["timestamp"].to_numpy("datetime64[ns]")
                assert len(got) == 300 and (stamps == bars["timestamp"].to_numpy()).all()
                reads[0] += 1
            except (CorruptFile, AssertionError) as exc:
                errors.append(f"{kind}: {exc}")

    threads = [threading.Thread(target=reader, args=(k,)) for k in ("cache", "cache", "manager")]
    began = time.monotonic()
    for t in threads:
        t.start()
    try:  # enough reads that main's 1-in-300 window shows up many times over
        while reads[0] < 1000 and time.monotonic() - began < 240 and not errors:
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        writer.kill()
        writer.communicate()
    assert not errors, f"{len(errors)} false errors in {reads[0]} reads: {errors[:2]}"
    assert reads[0] >= 300


# ---- 20.11: readers that find a commit under way take no lock and write nothing ----------------


def files_of(root: Path) -> dict[str, bytes]:
    """Every file under the cache root (the lock files aside) and its bytes."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "locks" not in p.relative_to(root).parts
    }


def mid_commit(cache: UnifiedCache) -> pd.DataFrame:
    """The year as a writer leaves it between its data rename and its record write: the data
    and the pending record are the new state (300 rows), the record the old one (200)."""
    bars = make_bars("2024-01-01", 300, seed=5)
    cache.put(bars.iloc[:200], SYM, TF, "binance")
    tf_dir = cache.layout.timeframe_dir(SYM, TF)
    old_meta = (tf_dir / "2024.metadata.json").read_bytes()
    newer = bars.iloc[100:].assign(close=bars["close"].iloc[100:] + 0.001,
                                   high=bars["high"].iloc[100:] + 0.001)  # fmt: skip
    cache.put(newer, SYM, TF, "binance")
    (tf_dir / "2024.metadata.json.pending").write_bytes(
        (tf_dir / "2024.metadata.json").read_bytes()
    )
    (tf_dir / "2024.metadata.json").write_bytes(old_meta)
    return pd.concat([bars.iloc[:100], newer], ignore_index=True)


@pytest.mark.parametrize("fmt", ["csv.gz", "parquet"])
def test_reads_that_find_a_commit_under_way_take_no_lock_and_write_nothing(
    tmp_path: Path, fmt: str, fake_binance: FakeBinance
) -> None:
    cache, conf = folder_cache(tmp_path, fmt)
    conf.write_text(config_for(binance=fake_binance) + f"settings: {{format: {fmt}}}\n")
    expected = mid_commit(cache)
    holder = Holder(cache.root)  # the writer of that commit still holds the series lock
    before = files_of(cache.root)
    where = ("--cache-dir", str(cache.root), "--config", str(conf))
    commands = {
        "info": ("info", SYM, "--json"),
        "list": ("list", SYM, TF, "--format", "json"),
        "dry-run": (
            "populate",
            SYM,
            "-t",
            TF,
            "--start",
            "2024-01-01",
            "--end",
            "2024-01-14",
            "--dry-run",
            "--json",
        ),
    }
    done = {}
    try:
        for name, args in commands.items():
            began = time.monotonic()
            run = subprocess.run(
                cli_args(*args, *where), capture_output=True, text=True, timeout=90
            )
            assert run.returncode == 0, f"{name}: {run.stderr}"
            assert time.monotonic() - began < 60, f"{name} waited for the writer's lock"
            done[name] = run
        # an in-process reader sees the new state the data holds, and leaves the pending record
        assert len(cache.get(SYM, TF)) == 300
        assert cache.record(SYM, TF, 2024).rows == 300
    finally:
        holder.commit_and_release(None, tmp_path)
    assert files_of(cache.root) == before, "a reader wrote something"
    info = json.loads(done["info"].stdout)
    assert info["timeframes"][TF]["rows"] == 300
    assert_same_rows(cache.get(SYM, TF), expected)
    cache.cleanup_leftovers()  # a writer settles it: the pending record is promoted
    assert not (cache.layout.timeframe_dir(SYM, TF) / "2024.metadata.json.pending").exists()
    assert cache.metadata(SYM, TF, 2024)["file_info"]["rows"] == 300


def test_plain_cleanup_waits_settings_lock_wait_for_a_held_series(tmp_path: Path) -> None:
    cache, conf = folder_cache(tmp_path, "csv.gz")
    conf.write_text("settings: {lock_wait: 2}\n")
    mid_commit(cache)
    holder = Holder(cache.root)
    try:
        began = time.monotonic()
        run = subprocess.run(
            cli_args("cleanup", "--cache-dir", str(cache.root), "--config", str(conf)),
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        waited = time.monotonic() - began
    finally:
        holder.commit_and_release(None, tmp_path)
    assert run.returncode == 4, run.stderr
    assert f"{SYM} {TF} is locked" in run.stderr and "waited 2s" in run.stderr
    assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert waited < 60
    assert (cache.layout.timeframe_dir(SYM, TF) / "2024.metadata.json.pending").exists()


# ---- the race matrix ---------------------------------------------------------------------------
#
# Every pair of {populate, cleanup with criteria, plain cleanup, validate --fix, copy into the
# cache, lockless reads} on every backend. Each command runs in a worker process of its own
# through the CLI's `main` (the entry point `marketcache` calls; a worker serves many trials, so
# the interpreter starts once), against real files, a real S3 API (moto) or a real PostgreSQL,
# with a random delay before each. The end state must be one of the states the two commands
# leave when run one after the other (computed by running them so), each command's exit code
# one it has in a serial order, and no read may fail or return a row the cache never held.

START_TRUTH, END_TRUTH = "2021-05-01", "2024-04-01"
BAD_BAR = pd.Timestamp("2023-11-15 12:00")  # stored invalid (high < low): validate --fix drops it
COMMANDS = ("populate", "cleanup-before", "cleanup", "validate-fix", "copy", "reads")
PAIRS = [(a, b) for i, a in enumerate(COMMANDS) for b in COMMANDS[i + 1 :]]

WORKER = r"""
import contextlib, io, json, sys, threading, time, traceback
import pandas as pd
from marketcache.cli.app import main

real_out = sys.stdout
truth = pd.read_pickle(sys.argv[1]).set_index("timestamp")
bad_at = pd.Timestamp(sys.argv[2])
bad = pd.read_pickle(sys.argv[3]).set_index("timestamp")
COLUMNS = ["open", "high", "low", "close", "volume"]


def reply(doc):
    real_out.write(json.dumps(doc) + "\n")
    real_out.flush()


def check(frame):
    # every row read is a row some commit stored: the provider's, or the one stored invalid
    ts = pd.DatetimeIndex(frame["timestamp"].astype("datetime64[ns]"))
    assert ts.is_monotonic_increasing and ts.is_unique, "rows unsorted or repeated"
    known = truth.reindex(ts)
    assert not known["open"].isna().any(), "a bar the provider never had"
    got = frame[COLUMNS].to_numpy("float64")
    same = (got == known[COLUMNS].to_numpy("float64")).all(axis=1)
    odd = ~same & (ts == bad_at)
    if odd.any():
        same |= odd & (got == bad[COLUMNS].to_numpy("float64")).all(axis=1)
    assert same.all(), f"values no commit stored at {list(ts[~same][:3])}"


def reads(location, config, stop, out):
    from marketcache import DataManager, UnifiedCache
    from marketcache.config.parser import load_settings

    settings = load_settings(config)
    cache = UnifiedCache(location, settings=settings)
    dm = DataManager(location, settings=settings)

    def loop(kind):
        while not stop.is_set():
            try:
                if kind == "manager":
                    frame = dm.get_ohlcv("RACEUSDT", "1h", fetch_missing=False)
                else:
                    frame = cache.get("RACEUSDT", "1h")
                check(frame)
                out["reads"] += 1
            except Exception as exc:
                out["errors"].append(f"{kind}: {type(exc).__name__}: {exc}")
                time.sleep(0.01)

    threads = [threading.Thread(target=loop, args=(k,)) for k in ("cache", "cache", "manager")]
    for t in threads:
        t.start()
    return threads


for line in sys.stdin:
    job = json.loads(line)
    time.sleep(job.get("delay", 0.0))
    began = time.time()
    if "reads" in job:
        stop, out = threading.Event(), {"reads": 0, "errors": []}
        threads = reads(job["reads"], job["config"], stop, out)
        reply({"started": began})
        sys.stdin.readline()  # "stop": the other command has ended
        stop.set()
        for t in threads:
            t.join()
        reply({"code": 0, "reads": out["reads"], "errors": out["errors"][:5], "began": began,
               "ended": time.time()})
        continue
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(job["argv"])
        except BaseException:
            traceback.print_exc()
            code = -1
    reply({"code": code, "out": out.getvalue()[-2000:], "err": err.getvalue()[-2000:],
           "began": began, "ended": time.time()})
"""


class Worker:
    """A process that runs CLI commands (or lockless readers) when told to."""

    def __init__(self, scratch: Path, env: dict[str, str], truth: Path, bad: Path) -> None:
        self.log = scratch / f"worker-{len(list(scratch.glob('worker-*.log')))}.log"
        with open(self.log, "w") as log:  # what the commands' threads print besides
            self.proc = subprocess.Popen(
                [sys.executable, "-c", WORKER, str(truth), str(BAD_BAR), str(bad)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                env=env, cwd=scratch,
            )  # fmt: skip

    def send(self, job: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()

    def answer(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"the worker died: {self.log.read_text()[-2000:]}")
        doc: dict[str, Any] = json.loads(line)
        return doc

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Backend:
    """Fresh caches of one backend, seeded alike, one per trial."""

    def __init__(self, kind: str, scratch: Path, base: str, market: Market) -> None:
        self.kind, self.scratch, self.base, self.market = kind, scratch, base, market
        self.count = 0
        self.template: str | None = None
        fmt = "parquet" if kind == "parquet" else "csv.gz"
        self.config = scratch / f"{kind}.yaml"
        self.config.write_text(config_for(binance=market.server) + f"settings: {{format: {fmt}}}\n")

    def fresh(self) -> str:
        """A new cache in the seeded state (a copy of one seeded once, where the backend
        allows: a folder, the bucket's objects)."""
        self.count += 1
        n = self.count
        if self.kind == "postgresql":
            location = f"{self.base}&schema=race_{os.getpid()}_{n}"
            self.seed(location)
        elif self.kind == "s3":
            location = f"{self.base}/t{n}"
            if self.template is None:
                self.template = f"{self.base}/template"
                self.seed(self.template)
            _copy_prefix(self.template, location)
        else:
            location = str(self.scratch / f"t{n}")
            if self.template is None:
                self.template = str(self.scratch / "template")
                self.seed(self.template)
            shutil.copytree(self.template, location, symlinks=True)
        return location

    def seed(self, location: str) -> None:
        """2022-12 .. 2023-11 of the provider's bars, one of them stored invalid, and (where
        the backend has them) leftovers of a killed writer: a temp file, data of a year whose
        record was never written."""
        settings = parse_settings(self.config.read_text())
        cache = UnifiedCache(location, settings=settings, lock_wait=30)
        truth = self.market.truth
        seed = truth[(truth["timestamp"] >= pd.Timestamp("2022-12-01"))
                     & (truth["timestamp"] < pd.Timestamp("2023-12-01"))].copy()  # fmt: skip
        at = seed["timestamp"] == BAD_BAR
        seed.loc[at, "high"] = seed.loc[at, "low"] - 1.0
        cache.put(seed, SYM, TF, "binance")
        if self.kind != "postgresql":
            cache.put(truth.iloc[:48], SYM, TF, "binance")
            key = Key.of(SYM, TF, 2021)
            if self.kind == "s3":
                cache.backend.store.delete(cache.backend._names(key)[1])  # type: ignore[attr-defined]
            else:
                cache.layout.meta_path(SYM, TF, 2021).unlink()
                tmp = cache.layout.timeframe_dir(SYM, TF) / ".2023.csv.gz.tmp-999999-dead"
                tmp.write_bytes(b"half a write")
        cache.backend.close()

    def command(self, name: str, location: str) -> list[str]:
        where = ["--cache-dir", location, "--config", str(self.config), "--json"]
        return {
            "populate": ["populate", SYM, "-t", TF, "--start", "2023-07-01", "--end",
                         "2024-03-01", "-q", *where],
            "cleanup-before": ["cleanup", "--before", "2023-10-01", *where],
            "cleanup": ["cleanup", *where],
            "validate-fix": ["validate", "--fix", *where],
            "copy": ["copy", str(self.market.source), location, "--symbol", SYM,
                     "--config", str(self.config), "--json"],
        }[name]  # fmt: skip

    def state(self, location: str) -> dict[int, pd.DataFrame]:
        """Every committed year, read and verified against its record."""
        cache = UnifiedCache(location, settings=parse_settings(self.config.read_text()))
        out = {}
        try:
            for year in cache.list_years(SYM, TF):
                rows = cache.read_year(SYM, TF, year)
                assert cache.record(SYM, TF, year).rows == len(rows)
                out[year] = rows
        finally:
            cache.backend.close()
        return out


def _copy_prefix(source: str, dest: str) -> None:
    """Copy a cache's objects (its leases aside) to another prefix of the bucket."""
    import boto3

    bucket, _, src = source.removeprefix("s3://").partition("/")
    dst = dest.removeprefix("s3://").partition("/")[2]
    s3 = boto3.client("s3")
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=src + "/"):
        for item in page.get("Contents", []):
            name = item["Key"][len(src) + 1 :]
            if not name.startswith("_metadata/locks/"):
                s3.copy_object(
                    Bucket=bucket,
                    Key=f"{dst}/{name}",
                    CopySource={"Bucket": bucket, "Key": item["Key"]},
                )


@dataclass
class Market:
    server: FakeBinance
    truth: pd.DataFrame
    source: Path  # the cache `copy` copies from (a folder, csv.gz)
    truth_file: Path
    bad_file: Path


def same_state(a: dict[int, pd.DataFrame], b: dict[int, pd.DataFrame]) -> bool:
    if set(a) != set(b):
        return False
    for year in a:
        x, y = a[year], b[year]
        if list(x.columns) != list(y.columns) or len(x) != len(y):
            return False
        if not all(
            np.array_equal(x[c].to_numpy(), y[c].to_numpy(), equal_nan=c != "timestamp")
            for c in x.columns
        ):
            return False
    return True


def describe(state: dict[int, pd.DataFrame]) -> str:
    return ", ".join(
        f"{y}: {len(f)} rows {f['timestamp'].iloc[0] if len(f) else ''}…" for y, f in state.items()
    )


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Any:
    scratch = tmp_path_factory.mktemp("market")
    server = FakeBinance()
    truth = make_bars(START_TRUTH, 0, index=pd.date_range(START_TRUTH, END_TRUTH, freq="1h",
                                                            inclusive="left"), seed=42)  # fmt: skip
    server.add(SYM, TF, truth)
    source = scratch / "source"
    src = UnifiedCache(source, settings=parse_settings(""))
    span = (truth["timestamp"] >= pd.Timestamp("2023-09-01")) & (
        truth["timestamp"] < pd.Timestamp("2024-02-01")
    )
    src.put(truth[span], SYM, TF, "binance")
    truth_file, bad_file = scratch / "truth.pickle", scratch / "bad.pickle"
    truth.assign(timestamp=truth["timestamp"].astype("datetime64[ns]")).to_pickle(truth_file)
    bad = truth[truth["timestamp"] == BAD_BAR].copy()
    bad["high"] = bad["low"] - 1.0
    bad.assign(timestamp=bad["timestamp"].astype("datetime64[ns]")).to_pickle(bad_file)
    yield Market(server, truth, source, truth_file, bad_file)
    server.close()


def run_pair(
    backend: Backend, workers: tuple[Worker, Worker], pair: tuple[str, str],
    delays: tuple[float, float] | None,
) -> tuple[str, dict[str, dict[str, Any]]]:  # fmt: skip
    """Run the pair on a fresh cache — at once after `delays`, or (None) one after the other
    in the pair's order. Returns the cache and each command's answer."""
    location = backend.fresh()
    answers: dict[str, dict[str, Any]] = {}
    jobs = {}
    for name in pair:
        if name == "reads":
            jobs[name] = {"reads": location, "config": str(backend.config)}
        else:
            jobs[name] = {"argv": backend.command(name, location)}
    if delays is None:
        for name in pair:
            if name == "reads":
                continue
            workers[0].send(jobs[name])
            answers[name] = workers[0].answer()
        return location, answers
    for worker, name, delay in zip(workers, pair, delays, strict=True):
        worker.send({**jobs[name], "delay": delay})
    for worker, name in zip(workers, pair, strict=True):
        if name != "reads":
            answers[name] = worker.answer()
    if "reads" in pair:  # the readers read until the other command has ended
        reader = workers[pair.index("reads")]
        reader.answer()  # started
        reader.send({"stop": True})
        answers["reads"] = reader.answer()
    return location, answers


class Oracle:
    """What a pair of commands leaves when run one after the other, each order computed when
    first needed (on the backend that asks): the end states and each command's exit codes.
    The file layouts (folder csv.gz and Parquet, a bucket) start from one seed and must end
    alike, so they share one oracle; PostgreSQL (no leftovers to seed) has its own."""

    def __init__(self, pair: tuple[str, str]) -> None:
        self.pair = pair
        self.orders = [pair] if "reads" in pair else [pair, pair[::-1]]
        self.states: list[dict[int, pd.DataFrame]] = []
        self.codes: dict[str, set[int]] = {name: set() for name in pair}

    def more(self, backend: Backend, workers: tuple[Worker, Worker]) -> bool:
        """Run the next serial order; False when every order has run."""
        if len(self.states) == len(self.orders):
            return False
        order = self.orders[len(self.states)]
        location, answers = run_pair(backend, workers, order, None)
        self.states.append(backend.state(location))
        for name, answer in answers.items():
            self.codes[name].add(answer["code"])
        return True

    def explains(
        self, end: dict[int, pd.DataFrame], codes: dict[str, int], backend: Backend,
        workers: tuple[Worker, Worker],
    ) -> bool:  # fmt: skip
        while True:
            fits = all(codes[n] in self.codes[n] for n in codes)
            if fits and any(same_state(end, s) for s in self.states):
                return True
            if not self.more(backend, workers):
                return False


ORACLES: dict[tuple[str, tuple[str, str]], Oracle] = {}  # (seed family, pair) → its oracle


def durations(backend: Backend, workers: tuple[Worker, Worker]) -> dict[str, float]:
    """How long each command runs alone on this backend (what the racing delays scale to)."""
    seconds = {"reads": 0.0}
    for name in COMMANDS[:-1]:
        _, answers = run_pair(backend, workers, (name, "reads"), None)
        seconds[name] = answers[name]["ended"] - answers[name]["began"]
    return seconds


def race_matrix(
    kind: str, base: str, market: Market, scratch: Path, env: dict[str, str], trials: int,
    seed: int,
) -> list[str]:  # fmt: skip
    """Every pair, `trials` racing trials each; what went wrong (empty: nothing).

    The second command starts while the first runs: after a random part of the first's
    serial run time (which starts first is random too)."""
    import random

    rng = random.Random(seed)
    backend = Backend(kind, scratch, base, market)
    env = {**os.environ, **env, "XDG_CACHE_HOME": str(scratch / "xdg")}
    workers = (
        Worker(scratch, env, market.truth_file, market.bad_file),
        Worker(scratch, env, market.truth_file, market.bad_file),
    )
    problems: list[str] = []
    family = "postgresql" if kind == "postgresql" else "files"
    try:
        seconds = durations(backend, workers)
        for pair in PAIRS:
            oracle = ORACLES.setdefault((family, pair), Oracle(pair))
            for trial in range(trials):
                first = rng.randrange(2)
                delays = [0.0, 0.0]
                delays[1 - first] = rng.uniform(0, 1.1 * max(seconds[pair[first]], 0.05))
                location, answers = run_pair(backend, workers, pair, (delays[0], delays[1]))
                label = (f"{kind} {pair[0]} × {pair[1]} trial {trial}"
                         f" (delays {delays[0]:.2f}s, {delays[1]:.2f}s)")  # fmt: skip
                reads = answers.pop("reads", None)
                if reads is not None and (reads["errors"] or not reads["reads"]):
                    problems.append(f"{label}: {reads['reads']} reads ok, {reads['errors']}")
                try:
                    end = backend.state(location)
                except Exception as exc:  # reported with the trial
                    problems.append(f"{label}: the end state does not read: {exc}")
                    continue
                codes = {name: answer["code"] for name, answer in answers.items()}
                if not oracle.explains(end, codes, backend, workers):
                    errs = "; ".join(
                        f"{n} exit {a['code']} {a['err'].strip()[-300:]}"
                        for n, a in answers.items()
                    )
                    problems.append(
                        f"{label}: end state {describe(end)} / exit codes {codes} match no serial"
                        f" order (states: {' | '.join(describe(s) for s in oracle.states)};"
                        f" codes {oracle.codes}); {errs}"
                    )
    finally:
        for w in workers:
            w.close()
    return problems


def test_race_matrix_smoke_on_csv_gz(market: Market, tmp_path: Path) -> None:
    """One racing trial per pair on a folder csv.gz cache (the slow matrix runs many, on every
    backend)."""
    problems = race_matrix("csv.gz", "", market, tmp_path, {}, trials=1, seed=20)
    assert not problems, "\n".join(problems)


# racing trials per pair: a bucket's commands take seconds (moto, lease settling), so fewer;
# RACE_TRIALS=N multiplies them for a deeper hunt
TRIALS = {"csv.gz": 3, "parquet": 3, "postgresql": 3, "s3": 1}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["csv.gz", "parquet", "s3", "postgresql"])
def test_race_matrix(
    kind: str, market: Market, tmp_path: Path, request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    base, env = "", {}
    if kind == "s3":
        import boto3

        from conftest import s3_environment

        env = s3_environment(request.getfixturevalue("s3_server"), tmp_path / "xdg")
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        bucket = f"race-matrix-{os.getpid()}"
        boto3.client("s3").create_bucket(Bucket=bucket)
        base = f"s3://{bucket}/cache"
    elif kind == "postgresql":
        base = request.getfixturevalue("pg_server")
    trials = TRIALS[kind] * int(os.environ.get("RACE_TRIALS", "1"))
    problems = race_matrix(kind, base, market, tmp_path, env, trials, seed=sum(map(ord, kind)))
    assert not problems, "\n".join(problems)


def test_cleanup_before_goes_on_past_a_held_series_and_a_corrupt_year_and_names_both(
    tmp_path: Path,
) -> None:
    """One series held (a long populate), one year corrupt: cleanup --before still cuts every
    other series, names what it left (one line each) and exits 4 (locked beats corrupt)."""
    cache, conf = folder_cache(tmp_path, "csv.gz")
    conf.write_text("settings: {lock_wait: 1}\n")
    for sym in (SYM, "OKUSDT", "BADUSDT"):
        cache.put(make_bars("2022-06-01", 24 * 30, seed=3), sym, TF, "binance")
        cache.put(make_bars("2024-01-01", 24 * 30, seed=4), sym, TF, "binance")
    bad = cache.layout.timeframe_dir("BADUSDT", TF) / "2022.metadata.json"
    bad.write_text("{not json")
    holder = Holder(cache.root)  # holds RACEUSDT 1h
    try:
        run = subprocess.run(
            cli_args("cleanup", "--before", "2023-01-01", "--json",
                     "--cache-dir", str(cache.root), "--config", str(conf)),
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        holder.commit_and_release(None, tmp_path)
    assert run.returncode == 4, run.stderr
    actions = {(a["symbol"], a["action"]) for a in json.loads(run.stdout)["actions"]}
    assert actions == {
        (SYM, "skip-locked"),
        ("BADUSDT", "skip-corrupt"),
        ("OKUSDT", "delete-year"),
    }, actions
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 2 and "Traceback" not in run.stderr, run.stderr
    assert any(f"{SYM} {TF} is locked" in line for line in lines)
    assert any("2022.metadata.json" in line and "validate --fix" in line for line in lines)
    assert cache.list_years("OKUSDT", TF) == [2024]
    assert cache.list_years(SYM, TF) == [2022, 2024], "the held series is left as it was"
    assert bad.read_text() == "{not json", "the corrupt year is left for validate --fix"


def test_validate_goes_on_past_a_held_series_waiting_once_and_exits_4(tmp_path: Path) -> None:
    """A series held past lock_wait (a long populate) is reported locked, once, with all its
    years; every other series is still checked; the wait is paid once, not once per year."""
    cache, conf = folder_cache(tmp_path, "csv.gz")
    conf.write_text("settings: {lock_wait: 2}\n")
    for year in (2022, 2023, 2024):
        cache.put(make_bars(f"{year}-03-01", 48, seed=year), SYM, TF, "binance")
    cache.put(make_bars("2024-03-01", 48, seed=9), "OKUSDT", TF, "binance")
    holder = Holder(cache.root)
    try:
        began = time.monotonic()
        run = subprocess.run(
            cli_args("validate", "--json", "--cache-dir", str(cache.root), "--config", str(conf)),
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        waited = time.monotonic() - began
    finally:
        holder.commit_and_release(None, tmp_path)
    assert run.returncode == 4, run.stderr
    files = {(f["symbol"], f["year"]): f["status"] for f in json.loads(run.stdout)["files"]}
    assert files == {(SYM, 2022): "locked", (SYM, 2023): "locked", (SYM, 2024): "locked",
                     ("OKUSDT", 2024): "ok"}, files  # fmt: skip
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{SYM} {TF} is locked" in lines[0], run.stderr
    assert waited < 2 * 2 + 20, "one wait for the held series, not one per year"
