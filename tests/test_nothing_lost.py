"""Nothing lost: kill -9, racing runs, a full disk, corruption, hostile provider bodies, secrets."""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import CliResult, make_bars
from fakes import FakeAlphaVantage, FakeBinance, config_for
from marketcache import UnifiedCache
from marketcache.config.parser import parse_settings
from marketcache.core.timeframes import Timeframe
from marketcache.errors import ProviderError
from marketcache.providers.registry import provider_class
from marketcache.storage.layout import TEMP_MARK
from marketcache.storage.lock import hold

Cli = Callable[..., CliResult]
SYMBOLS = ("AAAUSDT", "BBBUSDT", "CCCUSDT")
START, END = "2023-12-22", "2024-01-09"  # 1m bars across a year end: two year files each


@pytest.fixture(scope="module", params=["csv.gz", "parquet"])
def market(request: pytest.FixtureRequest) -> Iterator[tuple[FakeBinance, str]]:
    """The fake exchange, and a config that writes the cache in one format (the kill and race
    trials run on every format)."""
    server = FakeBinance()
    for i, sym in enumerate(SYMBOLS):
        server.add(sym, "1m", make_bars(START, 60 * 24 * 18, "1min", seed=10 + i))
    conf = config_for(binance=server, retry_budget=5)
    yield server, conf + f"settings: {{format: {request.param}}}\n"
    server.close()


def run_populate(
    conf_path: Path, cache_dir: Path, symbols: tuple[str, ...] = SYMBOLS, **kw: Any
) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "MARKETCACHE_CONFIG": str(conf_path),
        "MARKETCACHE_CACHE_DIR": str(cache_dir),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "marketcache", "populate", *symbols, "-t", "1m", "--start", START,
         "--end", END, "--json", "-q"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL, **kw,
    )  # fmt: skip


def snapshot(cache_dir: Path) -> dict[str, pd.DataFrame]:
    cache = UnifiedCache(cache_dir, settings=parse_settings(""))
    return {sym: cache.get(sym, "1m") for sym in SYMBOLS if sym in cache.list_symbols()}


def assert_consistent(cache_dir: Path) -> None:
    """Every committed year reads back whole and matches its metadata."""
    cache = UnifiedCache(cache_dir, settings=parse_settings(""), lock_wait=30)
    for sym, tf, year in cache.years_on_disk():
        if year not in cache.list_years(sym, tf):
            continue  # data without metadata: an uncommitted first write, a leftover
        meta = cache.metadata(sym, tf, year)
        cache.verify_year(sym, tf, year)
        assert len(cache.read_year(sym, tf, year)) == meta["file_info"]["rows"]


def wait_for_first_commit(
    cache_dir: Path, proc: subprocess.Popen[str], timeout: float = 120
) -> None:
    """Return once the run has committed a first year (its metadata is written last), or has ended."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and not list(cache_dir.rglob("*.metadata.json")):
        assert time.monotonic() < deadline, "the run committed nothing in time"
        time.sleep(0.005)


@pytest.fixture(scope="module")
def reference(
    market: tuple[FakeBinance, str], tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, pd.DataFrame], float]:
    _, conf = market
    work = tmp_path_factory.mktemp("reference")
    (work / "p.yaml").write_text(conf)
    began = time.monotonic()
    proc = run_populate(work / "p.yaml", work / "cache")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return snapshot(work / "cache"), time.monotonic() - began


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_nothing_committed(
    market: tuple[FakeBinance, str],
    reference: tuple[dict[str, pd.DataFrame], float],
    tmp_path: Path,
) -> None:
    _, conf = market
    expected, duration = reference
    (tmp_path / "p.yaml").write_text(conf)
    rng = random.Random(20261121)
    # Half the kills fall at random moments of a run; the other half wait for the run's first
    # commit and then fall a little later, so that some kills always land between commits, however
    # fast or slow the machine (a schedule drawn only from the reference run's length put 10 of 12
    # kills before the first commit on a slow CI machine).
    kills = [(False, rng.uniform(0.15, 1.0) * duration) for _ in range(6)]
    kills += [(True, rng.uniform(0.0, 0.1) * duration) for _ in range(6)]
    killed_between_commits = 0
    for trial, (after_first_commit, delay) in enumerate(kills):
        cache_dir = tmp_path / f"cache{trial}"
        proc = run_populate(tmp_path / "p.yaml", cache_dir)
        if after_first_commit:
            wait_for_first_commit(cache_dir, proc)
        time.sleep(delay)
        running = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert_consistent(cache_dir)
        killed_between_commits += running and bool(list(cache_dir.rglob("*.metadata.json")))
        again = run_populate(tmp_path / "p.yaml", cache_dir)
        _, err = again.communicate(timeout=300)
        assert again.returncode == 0, err
        got = snapshot(cache_dir)
        assert set(got) == set(expected)
        for sym, frame in expected.items():
            pd.testing.assert_frame_equal(got[sym], frame, check_exact=True)
        assert not [p for p in cache_dir.rglob(f"*{TEMP_MARK}*")], "stale temp files were removed"
    assert killed_between_commits >= 3, (
        "some kills must land while a run has committed part of its work"
    )


@pytest.mark.slow
def test_three_racing_runs_end_as_one_run(
    market: tuple[FakeBinance, str],
    reference: tuple[dict[str, pd.DataFrame], float],
    tmp_path: Path,
) -> None:
    _, conf = market
    expected, _ = reference
    (tmp_path / "p.yaml").write_text(conf)
    cache_dir = tmp_path / "cache"
    procs = [run_populate(tmp_path / "p.yaml", cache_dir, pair) for pair in
             [(SYMBOLS[0], SYMBOLS[1]), (SYMBOLS[1], SYMBOLS[2]), (SYMBOLS[2], SYMBOLS[0])]]  # fmt: skip
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    got = snapshot(cache_dir)
    for sym, frame in expected.items():
        pd.testing.assert_frame_equal(got[sym], frame, check_exact=True)
    assert not [p for p in cache_dir.rglob(f"*{TEMP_MARK}*")]
    assert not [p for p in cache_dir.rglob("*.pending")]
    assert_consistent(cache_dir)


def test_a_lock_dies_with_its_holder(tmp_path: Path) -> None:
    lock = tmp_path / "X" / "1m" / ".lock"
    code = ("import sys,time; from pathlib import Path; from marketcache.storage.lock import hold\n"
            "with hold(Path(sys.argv[1]), wait=1):\n print('held', flush=True); time.sleep(60)")  # fmt: skip
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(lock)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    from marketcache.errors import LockTimeout

    with pytest.raises(LockTimeout), hold(lock, wait=0.2):
        pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with hold(lock, wait=2):  # the kernel released it with the process
        pass


def _limit_file_size(limit: int) -> Callable[[], None]:
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_full_disk_fails_cleanly_and_keeps_the_old_file(
    fake_binance: FakeBinance, tmp_path: Path
) -> None:
    fake_binance.add("DSKUSDT", "1m", make_bars("2024-01-01", 60 * 24 * 20, "1min"))
    conf = tmp_path / "p.yaml"
    conf.write_text(config_for(binance=fake_binance, rate="{}"))  # no rate-limit database
    cache_dir = tmp_path / "cache"
    settings_ = parse_settings(conf.read_text())
    cache = UnifiedCache(cache_dir, settings=settings_)
    first = make_bars("2024-01-01", 60 * 24 * 2, "1min")
    cache.put(
        fake_binance.series[("DSKUSDT", "1m")].iloc[: 60 * 24 * 2], "DSKUSDT", "1m", "binance"
    )
    path = cache_dir / "DSKUSDT" / "1m" / "2024.csv.gz"
    before = path.read_bytes()
    meta_before = cache.metadata("DSKUSDT", "1m", 2024)
    env = {**os.environ, "MARKETCACHE_CONFIG": str(conf), "MARKETCACHE_CACHE_DIR": str(cache_dir)}
    proc = subprocess.run(
        [sys.executable, "-m", "marketcache", "populate", "DSKUSDT", "-t", "1m", "--start", "2024-01-01",
         "--end", "2024-01-21", "--provider", "binance"],
        env=env, capture_output=True, text=True, timeout=300, preexec_fn=_limit_file_size(len(before) + 4096),
    )  # fmt: skip
    assert proc.returncode == 1
    assert "File too large" in proc.stderr and "DSKUSDT" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert path.read_bytes() == before, "the committed file is untouched"
    assert cache.metadata("DSKUSDT", "1m", 2024)["file_info"] == meta_before["file_info"]
    assert len(cache.get("DSKUSDT", "1m")) == len(first)
    assert not [p for p in path.parent.iterdir() if TEMP_MARK in p.name]


def test_fewer_rows_never_shrink_and_full_refresh_keeps_vanished_rows(
    cli: Cli, fake_binance: FakeBinance, tmp_path: Path
) -> None:
    full = make_bars("2024-01-01", 200, "1h")
    fake_binance.add("SHRUSDT", "1h", full)
    conf = tmp_path / "p.yaml"
    conf.write_text(config_for(binance=fake_binance))
    args = ("populate", "SHRUSDT", "-t", "1h", "--start", "2024-01-01", "--end", "2024-01-09",
            "--config", str(conf), "--cache-dir", "data-cache", "--json")  # fmt: skip
    assert cli(*args).code == 0
    revised = full.drop(index=range(50, 100)).copy()  # the provider now lacks 50 bars
    revised["close"] = revised["close"] + 0.5
    revised["high"] = revised["high"] + 0.5
    fake_binance.add("SHRUSDT", "1h", revised)
    r = cli(*args, "--full-refresh")
    assert r.code == 0
    stored = UnifiedCache(tmp_path / "data-cache", settings=parse_settings("")).get("SHRUSDT", "1h")
    assert len(stored) == 192, "rows the provider no longer returns are kept"
    kept = stored.set_index("timestamp")
    assert kept.loc[full["timestamp"].iloc[60], "close"] == full["close"].iloc[60]  # untouched
    assert kept.loc[full["timestamp"].iloc[10], "close"] == full["close"].iloc[10] + 0.5  # replaced
    assert r.json()["results"][0]["rows_updated"] == 142


def test_populate_moves_a_corrupt_year_aside_and_fetches_it_again(
    cli: Cli, fake_binance: FakeBinance, tmp_path: Path
) -> None:
    fake_binance.add("CORUSDT", "1h", make_bars("2024-01-01", 100, "1h"))
    conf = tmp_path / "p.yaml"
    conf.write_text(config_for(binance=fake_binance))
    args = ("populate", "CORUSDT", "-t", "1h", "--start", "2024-01-01", "--end", "2024-01-05",
            "--config", str(conf), "--cache-dir", "data-cache", "--json")  # fmt: skip
    assert cli(*args).code == 0
    year = tmp_path / "data-cache" / "CORUSDT" / "1h" / "2024.csv.gz"
    raw = bytearray(year.read_bytes())
    raw[100] ^= 0xFF
    year.write_bytes(bytes(raw))
    r = cli(*args)
    assert r.code == 0, r.err
    job = r.json()["results"][0]
    assert any("sha256 does not match" in n and "moved aside" in n for n in job["notes"])
    aside = list(year.parent.glob("2024.csv.gz.corrupt-*"))
    assert aside and aside[0].read_bytes() == bytes(raw), "the damaged file is kept, not deleted"
    assert job["rows_added"] == 96
    assert (
        len(UnifiedCache(tmp_path / "data-cache", settings=parse_settings("")).get("CORUSDT", "1h"))
        == 96
    )


# ---- hostile provider bodies ------------------------------------------------------------------

_number = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from(["1.5", "abc", "", "NaN", "-1", "1e400", None]),
)
_kline = st.lists(
    st.one_of(
        st.integers(min_value=1704067200000 - 10**9, max_value=1704067200000 + 10**9),
        st.text(max_size=5),
    ),
    min_size=1,
    max_size=1,
).flatmap(lambda t: st.tuples(st.just(t[0]), _number, _number, _number, _number, _number))
_bodies = st.one_of(
    st.lists(_kline.map(lambda k: [*k, 0, "0", 0, "0", "0", "0"]), max_size=40).map(json.dumps),
    st.lists(st.lists(_number, max_size=4), max_size=5).map(json.dumps),  # rows missing fields
    st.just("<html><body>Service Unavailable</body></html>"),
    st.just('{"code": 0, "msg": "ok"}'),
    st.text(max_size=50),
)


class _RawBinance(FakeBinance):
    body = "[]"

    def answer(self, path: str, query: dict[str, str]) -> Any:
        from fakes import Answer

        return Answer(200, self.body.encode("utf-8", "surrogatepass"))


@pytest.fixture(scope="module")
def raw_binance() -> Iterator[_RawBinance]:
    server = _RawBinance()
    yield server
    server.close()


@given(body=_bodies)
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_fuzzed_provider_bodies_never_crash_and_never_store_garbage(
    raw_binance: _RawBinance, tmp_path_factory: pytest.TempPathFactory, body: str
) -> None:
    raw_binance.body = body
    settings_ = parse_settings(config_for(binance=raw_binance, retry_budget=0))
    p = provider_class("binance")(settings_.providers["binance"], None, sleep=lambda s: None)
    start, end = pd.Timestamp("2023-12-20"), pd.Timestamp("2024-01-12")
    try:
        result = p.fetch("FUZZUSDT", Timeframe("1h"), start, end)
    except ProviderError:
        return  # the range failed with a clear error
    frame = result.frame
    if frame.empty:
        return
    cache = UnifiedCache(tmp_path_factory.mktemp("fuzz"), settings=settings_)
    cache.put(frame, "FUZZUSDT", "1h", "binance")
    stored = cache.get("FUZZUSDT", "1h")
    check = cache.validator("FUZZUSDT", "1h").validate(stored)
    assert check.counts.bad_rows == 0 and check.counts.duplicates == 0
    assert stored["timestamp"].is_monotonic_increasing
    assert ((stored["timestamp"] >= start) & (stored["timestamp"] < end)).all()
    prices = stored[["open", "high", "low", "close", "volume"]].to_numpy()
    assert np.isfinite(prices).all()


def test_another_symbols_data_is_refused(fake_yahoo: Any, tmp_path: Path) -> None:
    from fakes import FakeYahoo

    assert isinstance(fake_yahoo, FakeYahoo)
    fake_yahoo.add_recorded("chart-BTC-USD-2020-01-01-to-2020-01-03.json")
    fake_yahoo.raw[("ETH-USD", "1d")] = fake_yahoo.raw[("BTC-USD", "1d")]  # wrong symbol's body
    settings_ = parse_settings(config_for(yahoo=fake_yahoo, retry_budget=0))
    p = provider_class("yahoo")(settings_.providers["yahoo"], tmp_path, sleep=lambda s: None)
    with pytest.raises(ProviderError, match="BTC-USD's data when asked for ETH-USD"):
        p.fetch("ETH-USD", Timeframe("1d"), pd.Timestamp("2020-01-01"), pd.Timestamp("2020-01-04"))


# ---- secrets ---------------------------------------------------------------------------------

SECRET = "SEKRIT-av-key-4242"


def test_the_api_key_appears_nowhere(
    cli: Cli, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ALPHAVANTAGE_API_KEY", SECRET)
    av = FakeAlphaVantage(SECRET)
    try:
        av.add_fixture("intraday-1min-MSFT.json")
        av.add_daily("IBM", make_bars("2024-01-02", 20, "B"))
        conf = tmp_path / "p.yaml"
        conf.write_text(
            config_for(alpha_vantage=av, retry_budget=0.2) + "settings: {min_score: 0.1}\n"
        )
        base = ("--config", str(conf), "--cache-dir", "data-cache")
        outputs = [
            cli(
                "populate",
                "MSFT",
                "-t",
                "1m",
                "--start",
                "2017-12-18",
                "--end",
                "2017-12-19",
                "--json",
                *base,
            ),
            cli(
                "populate",
                "IBM",
                "-t",
                "1d",
                "--start",
                "2024-01-02",
                "--end",
                "2024-02-01",
                "--provider",
                "alpha_vantage",
                "--json",
                "-v",
                *base,
            ),
            cli(
                "populate",
                "NOPE",
                "-t",
                "1h",
                "--start",
                "2017-12-18",
                "--end",
                "2017-12-19",
                "--json",
                "-v",
                *base,
            ),
            cli("info", "MSFT", "--json", *base),
            cli("validate", "-v", *base),
        ]
        av.fail_next(20, status=503, body=b"<html>down</html>")
        outputs.append(cli("populate", "MSFT", "-t", "1m", "--start", "2017-12-18", "--end", "2017-12-20",
                           "--full-refresh", "-v", *base))  # fmt: skip
        av.close()
        outputs.append(
            cli(
                "populate",
                "IBM",
                "-t",
                "1h",
                "--start",
                "2024-01-02",
                "--end",
                "2024-01-03",
                "-v",
                *base,
            )
        )
        assert outputs[0].code == 0 and outputs[0].json()["results"][0]["rows_added"] == 100
        assert outputs[2].code == 1  # an unknown symbol: the error message is there, the key is not
        for out in outputs:
            assert SECRET not in out.out and SECRET not in out.err
        for path in (tmp_path / "data-cache").rglob("*"):
            if path.is_file():
                assert SECRET.encode() not in path.read_bytes(), path
        assert any(SECRET in q.get("apikey", "") for q in av.data_requests()), "the key was used"
    finally:
        av.close()


_value = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.sampled_from(["12.5", "x", "", "-3"]),
)


def _yahoo_body(n: int, draw_values: Any, stamps: Any) -> dict[str, Any]:
    return {"chart": {"error": None, "result": [{
        "meta": {"symbol": "FUZ", "exchangeTimezoneName": "America/New_York", "dataGranularity": "1d"},
        "timestamp": stamps,
        "indicators": {"quote": [{c: draw_values for c in ("open", "high", "low", "close", "volume")}],
                       "adjclose": [{"adjclose": draw_values}]},
    }]}}  # fmt: skip


_yahoo_bodies = st.one_of(
    st.builds(
        lambda stamps, values: _yahoo_body(len(stamps), values, stamps),
        st.lists(st.integers(min_value=1704200000, max_value=1706000000), max_size=25),
        st.lists(_value, max_size=25),
    ),
    st.builds(
        lambda v: {"chart": {"result": v, "error": None}},
        st.one_of(st.none(), st.just([]), st.just([None]), st.just([{}])),
    ),
    st.builds(lambda t: {"chart": t}, st.one_of(st.none(), st.text(max_size=5), st.integers())),
    st.text(max_size=30),
)


@given(body=_yahoo_bodies)
@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_fuzzed_yahoo_charts_never_crash_and_never_store_garbage(yahoo_raw: Any, body: Any) -> None:
    yahoo_raw.raw[("FUZ", "1d")] = body
    settings_ = parse_settings(config_for(yahoo=yahoo_raw, retry_budget=0))
    p = provider_class("yahoo")(settings_.providers["yahoo"], None, sleep=lambda s: None)
    try:
        frame = p.fetch(
            "FUZ", Timeframe("1d"), pd.Timestamp("2024-01-01"), pd.Timestamp("2024-02-01")
        ).frame
    except ProviderError:
        return
    if len(frame):
        assert frame["timestamp"].is_monotonic_increasing and frame["timestamp"].is_unique
        assert np.isfinite(frame[["open", "high", "low", "close", "volume"]].to_numpy()).all()
        assert (frame["high"] >= frame[["open", "close"]].max(axis=1)).all()


@pytest.fixture(scope="module")
def yahoo_raw() -> Iterator[Any]:
    from fakes import FakeYahoo

    server = FakeYahoo()
    yield server
    server.close()


_av_rows = st.dictionaries(
    st.one_of(st.sampled_from(["2024-01-03 10:31:00", "2024-01-03 10:32:00", "2024-01-03 10:33:00"]), st.text(max_size=12)),
    st.one_of(st.dictionaries(st.sampled_from(["1. open", "2. high", "3. low", "4. close", "5. volume"]),
                              _value.map(lambda v: v if isinstance(v, str) or v is None else repr(v))), st.integers()),
    max_size=6,
)  # fmt: skip


@given(series=_av_rows)
@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_fuzzed_alpha_vantage_series_never_crash(av_raw: Any, series: dict[str, Any]) -> None:
    av_raw.intraday[("FUZ", "1min")] = series
    settings_ = parse_settings(config_for(alpha_vantage=av_raw, retry_budget=0))
    p = provider_class("alpha_vantage")(
        settings_.providers["alpha_vantage"], None, sleep=lambda s: None
    )
    try:
        frame = p.fetch(
            "FUZ", Timeframe("1m"), pd.Timestamp("2024-01-03"), pd.Timestamp("2024-01-04")
        ).frame
    except ProviderError:
        return
    if len(frame):
        assert frame["timestamp"].is_unique
        assert np.isfinite(frame[["open", "high", "low", "close", "volume"]].to_numpy()).all()


@pytest.fixture(scope="module")
def av_raw() -> Iterator[Any]:
    key = "fuzz-key"
    old = os.environ.get("ALPHAVANTAGE_API_KEY")
    os.environ["ALPHAVANTAGE_API_KEY"] = key
    server = FakeAlphaVantage(key)
    yield server
    server.close()
    if old is None:
        os.environ.pop("ALPHAVANTAGE_API_KEY", None)
    else:
        os.environ["ALPHAVANTAGE_API_KEY"] = old
