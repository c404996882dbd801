"""Shared fixtures: a temporary cache, synthetic bars, and an in-process CLI runner."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from marketcache import UnifiedCache
from marketcache.cli.app import main
from marketcache.config.parser import parse_settings

FIXTURES = Path(__file__).resolve().parent / "fixtures"  # recorded payloads, see its README


def make_bars(
    start: str,
    periods: int,
    freq: str = "1h",
    *,
    seed: int = 0,
    index: pd.DatetimeIndex | None = None,
) -> pd.DataFrame:
    """Deterministic, valid OHLCV bars with prices on a 0.01 tick."""
    ts = index if index is not None else pd.date_range(start, periods=periods, freq=freq)
    n = len(ts)
    rng = np.random.default_rng(seed)
    close = np.round(100 + np.cumsum(rng.normal(0, 0.3, n)), 2)
    open_ = np.round(np.r_[close[0], close[:-1]], 2)
    high = np.round(np.maximum(open_, close) + rng.uniform(0, 0.5, n), 2)
    low = np.round(np.minimum(open_, close) - rng.uniform(0, 0.5, n), 2)
    volume = np.round(rng.uniform(1, 1000, n), 4)
    return pd.DataFrame(
        {"timestamp": ts, "open": open_, "high": high, "low": low, "close": close, "volume": volume}
    )


@pytest.fixture
def bars() -> Callable[..., pd.DataFrame]:
    return make_bars


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "data-cache"


@pytest.fixture
def cache(cache_dir: Path) -> UnifiedCache:
    return UnifiedCache(cache_dir, settings=parse_settings(""), lock_wait=5)


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
def cli(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Callable[..., CliResult]:
    """Run `marketcache ARGS` in-process with a fixed terminal width; capture code and output."""
    monkeypatch.setenv("COLUMNS", "160")
    monkeypatch.delenv("MARKETCACHE_CACHE_DIR", raising=False)
    monkeypatch.delenv("MARKETCACHE_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        code = main(list(args))
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture
def fake_binance() -> Any:
    from fakes import FakeBinance

    server = FakeBinance()
    yield server
    server.close()


@pytest.fixture
def fake_yahoo() -> Any:
    from fakes import FakeYahoo

    server = FakeYahoo()
    yield server
    server.close()


@pytest.fixture
def fake_av(monkeypatch: pytest.MonkeyPatch) -> Any:
    from fakes import FakeAlphaVantage

    monkeypatch.setenv("ALPHAVANTAGE_API_KEY", "demo-key")
    server = FakeAlphaVantage("demo-key")
    yield server
    server.close()


@pytest.fixture(autouse=True)
def no_internet(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never reach the internet: any connection not to loopback fails loudly."""
    import socket

    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            host = address[0]
            if not (host.startswith("127.") or host in ("::1", "localhost")):
                raise AssertionError(f"a test tried to reach {address}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


def _pg_bin() -> Path | None:
    import glob
    import shutil

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@pytest.fixture(scope="session")
def pg_server() -> Any:
    """A real PostgreSQL server on a unix socket in a temporary folder, for this test run.

    initdb refuses to run as root, so as root it runs as the `postgres` user (Debian's package
    creates it). Skipped when no server binaries are installed (.ci/run installs them)."""
    import os
    import shutil
    import subprocess

    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql)")
    import tempfile

    home = Path(tempfile.mkdtemp(prefix="marketcache-pg-"))  # pytest's tmp is root-only
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(home, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data = home / "data"
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U",
                    "postgres", "--no-sync"], check=True, capture_output=True)  # fmt: skip
    opts = f"-k {home} -c listen_addresses='' -c fsync=off -c synchronous_commit=off"
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l",
                    str(home / "log"), "-w", "start"], check=True, capture_output=True)  # fmt: skip
    os.chmod(home, 0o755)
    yield f"postgresql://postgres@/postgres?host={home}"
    subprocess.run(
        [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
        capture_output=True,
    )
    shutil.rmtree(home, ignore_errors=True)  # fmt: skip


@pytest.fixture
def pg_url(pg_server: str, request: pytest.FixtureRequest) -> str:
    """A fresh schema of the test server per test."""
    import re

    schema = "t_" + re.sub(r"[^a-z0-9_]", "_", request.node.name.lower())[:40]
    import psycopg

    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    return f"{pg_server}&schema={schema}"


# Fetch 6 times from binance with the config at argv[1] and a state folder at argv[2]: two of
# these at once show whether a rate limit is shared between processes.
RATE_PROBE = (
    "import sys; from pathlib import Path; import pandas as pd\n"
    "from marketcache.config.parser import load_settings\n"
    "from marketcache.providers.registry import provider_class\n"
    "from marketcache.core.timeframes import Timeframe\n"
    "s = load_settings(sys.argv[1])\n"
    "p = provider_class('binance')(s.providers['binance'], Path(sys.argv[2]))\n"
    "for _ in range(6):\n"
    "    p.fetch('RATEUSDT', Timeframe('1h'), pd.Timestamp('2024-01-01'), pd.Timestamp('2024-01-02'))\n"
)


# RATE_PROBE with a start line: argv[3] is a folder where the probe says `ready-PID` once
# built, then waits for `go` before its argv[4] fetches, so that the probes race from one
# instant however long a loaded machine takes to start each of them.
SYNCED_RATE_PROBE = (
    "import sys, os, time; from pathlib import Path; import pandas as pd\n"
    "from marketcache.config.parser import load_settings\n"
    "from marketcache.providers.registry import provider_class\n"
    "from marketcache.core.timeframes import Timeframe\n"
    "s = load_settings(sys.argv[1])\n"
    "p = provider_class('binance')(s.providers['binance'], Path(sys.argv[2]))\n"
    "line = Path(sys.argv[3]); (line / f'ready-{os.getpid()}').touch()\n"
    "while not (line / 'go').exists(): time.sleep(0.01)\n"
    "for _ in range(int(sys.argv[4])):\n"
    "    p.fetch('RATEUSDT', Timeframe('1h'), pd.Timestamp('2024-01-01'), pd.Timestamp('2024-01-02'))\n"
)


def race_probes(argvs: list[list[str]], line: Path) -> None:
    """Start SYNCED_RATE_PROBE processes (argv each), let them go at one instant once all are
    ready, and wait for each to exit 0."""
    import subprocess
    import time

    procs = [subprocess.Popen(argv) for argv in argvs]
    try:
        deadline = time.monotonic() + 300  # start-up on a busy machine: generous
        while len(list(line.glob("ready-*"))) < len(procs) and time.monotonic() < deadline:
            assert all(p.poll() is None for p in procs), "a probe died before the start"
            time.sleep(0.05)
        (line / "go").touch()
        assert [p.wait(timeout=300) for p in procs] == [0] * len(procs)
    finally:
        for p in procs:
            p.kill()


def most_within(arrivals: list[float], window: float) -> int:
    """The most requests that arrived within any `window` seconds."""
    times = sorted(arrivals)
    return max(sum(1 for t in times if start <= t < start + window) for start in times)


def busiest_second(arrivals: list[float]) -> int:
    """The most requests that arrived within any 0.95 s."""
    times = sorted(arrivals)
    return max(sum(1 for t in times if start <= t < start + 0.95) for start in times)


@pytest.fixture(scope="session")
def s3_server() -> Any:
    """moto's S3 server (the real S3 HTTP API, conditional writes included) on 127.0.0.1."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def s3_environment(endpoint: str, home: Path) -> dict[str, str]:
    """What a machine of the cluster has: the S3 endpoint and keys in AWS_* variables, its own
    XDG cache folder (the per-machine rate-limit bucket)."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "AKIAMARKETCACHETEST",
        "AWS_SECRET_ACCESS_KEY": "marketcache-test-secret-key",
        "AWS_DEFAULT_REGION": "us-east-1",
        "XDG_CACHE_HOME": str(home),
    }


@pytest.fixture
def s3_url(
    s3_server: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> str:
    """A fresh bucket per test; this process's AWS_* variables point at the moto server."""
    import re

    import boto3

    for name, value in s3_environment(s3_server, tmp_path / "xdg").items():
        monkeypatch.setenv(name, value)
    bucket = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:48].strip("-") or "bucket"
    bucket = f"{bucket}-{len(request.node.nodeid)}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return f"s3://{bucket}/cache"


class CountingProxy:
    """An HTTP proxy on 127.0.0.1 in front of the S3 server that counts the requests a client
    sends (method, path) — what `info` and `list` cost on a bucket, measured on the wire.

    `freeze_after(method, path, body)`: once a request it matches has been answered, every
    later request is held until `thaw` is set — a client paused (GC, a frozen VM) at that
    point of its work, its lease renewals included."""

    def __init__(
        self, target: str, freeze_after: Callable[[str, str, bytes], bool] | None = None
    ) -> None:
        import http.client
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import urlsplit

        self.seen: list[tuple[str, str]] = []
        self.frozen, self.thaw = threading.Event(), threading.Event()
        upstream = urlsplit(target)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # answers `Expect: 100-continue` (botocore's PUTs)

            def log_message(self, *args: Any) -> None:
                pass

            def forward(self) -> None:
                if proxy.frozen.is_set():
                    proxy.thaw.wait(120)
                proxy.seen.append((self.command, self.path))
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=30)
                hop = ("host", "expect", "connection")
                headers = {k: v for k, v in self.headers.items() if k.lower() not in hop}
                headers["Host"] = upstream.netloc
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()
                if freeze_after is not None and freeze_after(self.command, self.path, body or b""):
                    proxy.frozen.set()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
