"""Helpers of the serving tests: a filled cache on any backend, a served app, frames compared
the way a client reads each format."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd

from conftest import make_bars
from marketcache import UnifiedCache
from marketcache.config.parser import parse_settings
from marketcache.core.actions import Dividend, Split

API = "/api/v1/market-data"


def fill(cache: UnifiedCache) -> UnifiedCache:
    """BTCUSDT 1h over a year end (two years), AAPL 1d over three years with an adj_close, a
    split and two dividends."""
    cache.put(make_bars("2023-12-20", 24 * 25, "1h"), "BTCUSDT", "1h", provider="binance")
    days = pd.bdate_range("2022-06-01", "2024-03-01")
    aapl = make_bars("", 0, index=days, seed=3)
    aapl["adj_close"] = np.round(aapl["close"] * 0.97, 4)
    cache.put(aapl, "AAPL", "1d", provider="yahoo")
    cache.record_actions(
        "AAPL",
        [Split("2023-06-05", 4.0)],
        [Dividend("2022-11-04", 0.23), Dividend("2023-08-11", 0.24)],
        source="yahoo",
    )
    return cache


def cache_on(kind: str, tmp_path: Any, request: Any) -> UnifiedCache:
    if kind == "postgresql":
        return UnifiedCache(request.getfixturevalue("pg_url"), settings=parse_settings(""))
    if kind == "s3":
        return UnifiedCache(request.getfixturevalue("s3_url"), settings=parse_settings(""))
    settings = parse_settings(f"settings: {{format: {kind}}}")
    return UnifiedCache(tmp_path / "data-cache", settings=settings, lock_wait=5)


@contextmanager
def served(cache: UnifiedCache, **kw: Any) -> Iterator[str]:
    from marketcache.serve.app import create_app
    from marketcache.serve.server import ServerThread

    with ServerThread(create_app(cache, **kw)) as url:
        yield url


def naive(df: pd.DataFrame) -> pd.DataFrame:
    """A client's frame as `UnifiedCache.get` gives it: naive UTC ns, float columns."""
    out = df.copy()
    if "timestamp" not in out.columns:  # an empty JSON list of bars
        return out
    ts = pd.to_datetime(out["timestamp"], utc=True).dt.tz_localize(None)
    out["timestamp"] = ts.astype("datetime64[ns]")
    for col in out.columns[1:]:
        if col != "symbol":
            out[col] = out[col].astype("float64")
    return out.reset_index(drop=True)


def parse(fmt: str, content: bytes) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if fmt == "json":
        return naive(pd.DataFrame(json.loads(content)["bars"]))
    if fmt == "csv":
        return naive(pd.read_csv(io.BytesIO(content)))
    if fmt == "arrow":
        return naive(pa.ipc.open_stream(content).read_all().to_pandas())
    return naive(pq.read_table(io.BytesIO(content)).to_pandas())


def same(got: pd.DataFrame, want: pd.DataFrame) -> None:
    want = naive(want)
    if not len(want):
        assert not len(got)
        return
    pd.testing.assert_frame_equal(got[list(want.columns)], want, check_exact=True)
