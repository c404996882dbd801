"""Commands racing each other: the end state equals some serial order, readers never fail falsely.

Each test pins one race the round-3 review found, with real processes, real files and real
locks (a second process holds the series lock, or loops a real command, while this one works).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import make_bars
from fakes import FakeBinance, config_for
from marketcache import CorruptFile, DataManager, UnifiedCache
from marketcache.config import parse_settings
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
from marketcache.config import parse_settings
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


@pytest.mark.parametrize("fmt", ["csv.gz", "parquet"])
def test_cleanup_before_waiting_for_a_populate_keeps_the_rows_it_appended(
    tmp_path: Path, fmt: str
) -> None:
    cache, conf = folder_cache(tmp_path, fmt)
    bars = make_bars("2024-01-01", 24 * 61, "1h", seed=3)
    cache.put(bars.iloc[: 24 * 31], SYM, TF, "binance")  # January
    holder = Holder(cache.root)
    cleanup = subprocess.Popen(
        cli_args("cleanup", "--before", "2024-01-10", "--cache-dir", str(cache.root),
                 "--config", str(conf), "--json"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
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
from marketcache.config import parse_settings
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


@pytest.mark.parametrize("fmt", ["csv.gz", "parquet"])
def test_lockless_readers_never_see_a_false_corrupt_file_while_a_writer_rewrites(
    tmp_path: Path, fmt: str
) -> None:
    cache, _ = folder_cache(tmp_path, fmt)
    bars = make_bars("2024-01-01", 300, "1h", seed=1)
    cache.put(bars, SYM, TF, "binance")
    writer = subprocess.Popen(
        [sys.executable, "-c", REWRITER, str(cache.root), "600", str(Path(__file__).parent)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert writer.stdout is not None and writer.stdout.readline().strip() == "go"
    errors: list[str] = []
    reads = [0]
    stop = threading.Event()

    def reader(kind: str) -> None:
        dm = DataManager(cache.root) if kind == "manager" else None
        mine = UnifiedCache(cache.root, settings=parse_settings(""))
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
    info = __import__("json").loads(done["info"].stdout)
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
