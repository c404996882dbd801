"""`marketcache get` (the read side of the CLI) and `output_format` on the Python API."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import CliResult
from marketcache import DataManager, UnifiedCache
from marketcache.config.parser import parse_settings
from marketcache.errors import UsageError
from serving import cache_on, fill, naive, parse, same

Cli = Callable[..., CliResult]


@pytest.fixture
def filled(tmp_path: Path) -> tuple[UnifiedCache, str]:
    cache = fill(cache_on("csv.gz", tmp_path, None))
    return cache, str(tmp_path / "data-cache")


def test_get_prints_csv_off_a_terminal_and_json_equal_to_the_api_read(
    cli: Cli, filled: tuple[UnifiedCache, str]
) -> None:
    cache, root = filled
    r = cli("get", "BTC/USDT", "1h", "--cache-dir", root)
    assert r.code == 0, r.err
    assert r.out.startswith("timestamp,open,high,low,close,volume\n2023-12-20 00:00:00,")
    same(naive(pd.read_csv(io.StringIO(r.out))), cache.get("BTCUSDT", "1h"))
    r = cli("get", "AAPL", "1d", "--start", "2022-10-01", "--end", "2023-09-01",
            "--adjust", "all", "--json", "--cache-dir", root)  # fmt: skip
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert doc["symbol"] == "AAPL" and doc["interval"] == "1d"
    same(parse("json", r.out.encode()),
         cache.get("AAPL", "1d", "2022-10-01", "2023-09-01", adjust="all"))  # fmt: skip


def test_get_tail_reads_back_only_as_far_as_it_needs(
    cli: Cli, filled: tuple[UnifiedCache, str]
) -> None:
    cache, root = filled
    r = cli("get", "BTCUSDT", "1h", "--tail", "3", "--format", "csv", "--cache-dir", root)
    assert r.code == 0, r.err
    same(naive(pd.read_csv(io.StringIO(r.out))), cache.get("BTCUSDT", "1h").iloc[-3:])
    r = cli("get", "BTCUSDT", "1h", "--tail", "2", "--end", "2024-01-01 01:00", "--cache-dir", root)
    got = naive(pd.read_csv(io.StringIO(r.out)))
    assert got["timestamp"].astype(str).tolist() == ["2023-12-31 23:00:00", "2024-01-01 00:00:00"]
    # the years before the tail are never decoded: a corrupt 2023 does not stop a 2024 tail
    path = Path(cache.where(_key("BTCUSDT", "1h", 2023)))
    path.write_bytes(path.read_bytes()[:-40] + b"\0" * 40)
    r = cli("get", "BTCUSDT", "1h", "--tail", "5", "--cache-dir", root)
    assert r.code == 0, r.err
    assert len(pd.read_csv(io.StringIO(r.out))) == 5


def _key(sym: str, tf: str, year: int) -> Any:
    from marketcache.storage.backend import Key

    return Key.of(sym, tf, year)


def test_get_writes_parquet_with_o_atomically(
    cli: Cli, filled: tuple[UnifiedCache, str], tmp_path: Path
) -> None:
    cache, root = filled
    out = tmp_path / "aapl.parquet"
    r = cli("get", "AAPL", "1d", "--adjust", "splits", "-o", str(out), "--cache-dir", root)
    assert r.code == 0, r.err
    same(naive(pd.read_parquet(out)), cache.get("AAPL", "1d", adjust="splits"))
    assert pq.read_schema(out).field("timestamp").type == pa.timestamp("ns", tz="UTC")
    csv = tmp_path / "btc.csv"
    assert cli("get", "BTCUSDT", "1h", "-o", str(csv), "--cache-dir", root).code == 0
    same(naive(pd.read_csv(csv)), cache.get("BTCUSDT", "1h"))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_get_exit_codes_unknown_series_2_corrupt_year_3_in_one_line(
    cli: Cli, filled: tuple[UnifiedCache, str], tmp_path: Path
) -> None:
    cache, root = filled
    for args in (("ETHUSDT", "1h"), ("BTCUSDT", "5m"), ("../../etc", "1h"), ("BTCUSDT", "7x"),
                 ("BTCUSDT", "1h", "--start", "2024-02-01", "--end", "2024-01-01"),
                 ("BTCUSDT", "1h", "--format", "xml"), ("BTCUSDT", "1h", "--adjust", "maybe")):  # fmt: skip
        r = cli("get", *args, "--cache-dir", root)
        assert r.code == 2, (args, r.err)
        assert len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err
        assert r.out == ""
    path = Path(cache.where(_key("BTCUSDT", "1h", 2024)))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    out = tmp_path / "x.parquet"
    r = cli("get", "BTCUSDT", "1h", "-o", str(out), "--cache-dir", root)
    assert r.code == 3 and str(path) in r.err and len(r.err.strip().splitlines()) == 1
    assert not out.exists()
    r = cli("get", "BTCUSDT", "1h", "--cache-dir", root)
    assert r.code == 3 and r.out == "", "nothing of the other year is printed"


def test_get_shows_a_table_of_the_last_rows_at_a_terminal(filled: tuple[UnifiedCache, str]) -> None:
    import pty

    cache, root = filled
    env = {**os.environ, "COLUMNS": "120", "MARKETCACHE_CACHE_DIR": root}
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "marketcache", "get", "BTCUSDT", "1h"],
                            stdout=follower, stderr=follower, env=env)  # fmt: skip
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(60)
    os.close(leader)
    screen = b"".join(chunks).decode()
    assert proc.returncode == 0, screen
    last = cache.get("BTCUSDT", "1h").iloc[-20:]
    assert "the last 20 bars" in screen and "2024-01-13 23:00:00" in screen
    assert repr(float(last["close"].iloc[-1])) in screen
    assert "2024-01-13 03:00:00" not in screen  # the 21st bar from the end is not shown


def test_output_format_arrow_and_polars_on_get_get_ohlcv_and_get_many(
    filled: tuple[UnifiedCache, str],
) -> None:
    import polars as pl

    cache, root = filled
    want = cache.get("AAPL", "1d", "2023-01-01", adjust="splits")
    table = cache.get("AAPL", "1d", "2023-01-01", adjust="splits", output_format="arrow")
    assert isinstance(table, pa.Table)
    assert table.schema.field("timestamp").type == pa.timestamp("ns", tz="UTC")
    same(naive(table.to_pandas()), want)
    frame = cache.get("AAPL", "1d", "2023-01-01", adjust="splits", output_format="polars")
    assert isinstance(frame, pl.DataFrame) and frame.height == len(want)
    same(naive(frame.to_pandas()), want)
    with DataManager(root, settings=parse_settings("")) as dm:
        got = dm.get_ohlcv("BTCUSDT", "1h", fetch_missing=False, output_format="arrow")
        same(naive(got.to_pandas()), cache.get("BTCUSDT", "1h"))
        many = dm.get_many(["AAPL", "BTCUSDT"], "1d", fetch_missing=False, output_format="polars")
        assert isinstance(many, pl.DataFrame)
        pandas_many = dm.get_many(["AAPL", "BTCUSDT"], "1d", fetch_missing=False)
        assert many.columns == list(pandas_many.columns) and many["symbol"].to_list() == (
            pandas_many["symbol"].tolist()
        )
        for call in (
            lambda: cache.get("AAPL", "1d", output_format="numpy"),
            lambda: dm.get_ohlcv("AAPL", "1d", output_format="dict"),
            lambda: dm.get_many(["AAPL"], "1d", output_format="excel"),
        ):
            with pytest.raises(UsageError, match="output_format"):
                call()


def test_metadata_commands_start_without_the_serving_libraries(
    filled: tuple[UnifiedCache, str],
) -> None:
    _, root = filled
    probe = (
        "import sys\n"
        "from marketcache.cli.app import main\n"
        "code = main(sys.argv[1:])\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & "
        "{'fastapi', 'uvicorn', 'starlette', 'talib', 'polars', 'httpx'})\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    for args in (["--help"], ["list", "--cache-dir", root], ["info", "--cache-dir", root],
                 ["get", "--help"], ["serve", "--help"]):  # fmt: skip
        r = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True)
        assert "HEAVY []" in r.stderr, (args, r.stderr)
