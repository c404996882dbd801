"""Hostile servers: answers crafted to hang or to eat memory, against the real CLI.

Each server is a real socket server on 127.0.0.1 (a trickle of one byte every half second, a
2 GiB declared body, an endless body, a redirect loop, a server that accepts and never
answers, a zip bomb with a valid CHECKSUM in the klines archive). Each test runs `marketcache
populate` as a subprocess and asserts what a person sees and what the machine pays: one
error line naming the provider and what happened, exit 1, the range recorded as missing, a
wall-time bound and, for the memory cases, a bound on the child's peak RSS (`getrusage`).
Every server stops by itself (bounded bytes and seconds), also against an unfixed client.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import make_bars
from fakes import FakeBinance, config_for
from marketcache import UnifiedCache
from marketcache.config.parser import load_settings

TIMEOUT = 2.0  # providers.binance.timeout in these tests: the deadline of each answer
BUDGET = 3.0  # providers.binance.retry_budget
WALL = 40.0  # seconds a populate may take here, start-up on a loaded machine included
SERVE_FOR = 60.0  # a hostile server stops after this, so an unfixed client ends too
RSS_MB = 450  # a populate's peak RSS bound (its baseline is ~150 MB; main took 1.7 GB)
MiB = 1024 * 1024


Handler = Callable[[socket.socket, str], None]


class HostileServer:
    """A threaded TCP server on 127.0.0.1: reads each request's head, then `behave(sock,
    path)` does whatever it likes with the connection."""

    def __init__(self, behave: Handler) -> None:
        self.paths: list[str] = []
        outer = self

        class Conn(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                sock: socket.socket = self.request
                sock.settimeout(SERVE_FOR)
                while True:
                    head = b""
                    try:
                        while b"\r\n\r\n" not in head:
                            got = sock.recv(65536)
                            if not got:
                                return
                            head += got
                    except OSError:
                        return
                    path = head.split(b" ", 2)[1].decode("latin-1")
                    outer.paths.append(path)
                    try:
                        behave(sock, path)
                    except OSError:  # the client hung up: what a fixed client does
                        return

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Conn)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hostile() -> Iterator[Callable[[Handler], HostileServer]]:
    servers: list[HostileServer] = []

    def start(behave: Handler) -> HostileServer:
        servers.append(HostileServer(behave))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


# ---- behaviours ------------------------------------------------------------------------------


def trickle_body(sock: socket.socket, path: str) -> None:
    """Slowloris: a valid head, then the body one byte every half second."""
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 100000\r\n\r\n[")  # fmt: skip
    until = time.monotonic() + SERVE_FOR
    while time.monotonic() < until:
        time.sleep(0.5)
        sock.sendall(b" ")


def trickle_head(sock: socket.socket, path: str) -> None:
    """Slowloris in the head: the status line and headers one byte every half second."""
    until = time.monotonic() + SERVE_FOR
    head = b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * 10_000
    for byte in head:
        if time.monotonic() > until:
            return
        sock.sendall(bytes([byte]))
        time.sleep(0.5)


def _flood(sock: socket.socket, limit: int) -> None:
    block = b"0" * MiB
    sent, until = 0, time.monotonic() + SERVE_FOR
    while sent < limit and time.monotonic() < until:
        sock.sendall(block)
        sent += len(block)


def huge_declared(sock: socket.socket, path: str) -> None:
    """`Content-Length: 2147483648`, and the bytes to go with it."""
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 2147483648\r\n\r\n")  # fmt: skip
    _flood(sock, 2 * 1024 * MiB)


def huge_undeclared(sock: socket.socket, path: str) -> None:
    """No length: a body that goes on until the server closes (after 2 GiB)."""
    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n")
    _flood(sock, 2 * 1024 * MiB)
    sock.close()


def redirect_loop(sock: socket.socket, path: str) -> None:
    """Every answer sends the client one hop further, for ever."""
    hop = int(path.rsplit("/hop", 1)[-1].split("?")[0]) + 1 if "/hop" in path else 1
    sock.sendall(f"HTTP/1.1 302 Found\r\nLocation: /api/v3/klines/hop{hop}\r\n"
                 "Content-Length: 0\r\n\r\n".encode())  # fmt: skip


def silent(sock: socket.socket, path: str) -> None:
    """Accepts, reads the request, never answers (until SERVE_FOR)."""
    time.sleep(SERVE_FOR)


# ---- running the CLI -------------------------------------------------------------------------


@dataclass
class Run:
    code: int
    out: str
    err: str
    wall: float
    peak_mb: float


# Runs argv[2:] and writes its peak RSS (KiB) to argv[1]. A child forked from the test
# process would count the test process's own pages until its exec (fork and vfork share
# them), so the populate is started from this small process instead.
MEASURE = (
    "import resource, subprocess, sys\n"
    "code = subprocess.call(sys.argv[2:])\n"
    "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n"
    "sys.exit(code)\n"
)


def populate(tmp_path: Path, conf_text: str, *args: str) -> Run:
    """`marketcache populate ARGS` in a subprocess, with its wall time and its peak RSS."""
    conf = tmp_path / "providers.yaml"
    conf.write_text(conf_text)
    out, err, rss = tmp_path / "stdout", tmp_path / "stderr", tmp_path / "peak-rss"
    env = {**os.environ, "COLUMNS": "200", "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    began = time.monotonic()
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen(
            [sys.executable, "-c", MEASURE, str(rss), sys.executable, "-m", "marketcache",
             "populate", *args, "--cache-dir", str(tmp_path / "cache"), "--config", str(conf)],
            stdout=o, stderr=e, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
        )  # fmt: skip
        try:
            code = proc.wait(timeout=SERVE_FOR + 30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            code = proc.wait()
    peak = int(rss.read_text()) / 1024 if rss.exists() else float("inf")
    run = Run(code, out.read_text(), err.read_text(), time.monotonic() - began, peak)
    print(
        f"populate {' '.join(args)}: exit {run.code}, {run.wall:.1f} s, peak {run.peak_mb:.0f} MB"
    )
    return run


def binance_only(server_url: str, *, archive_url: str = "", extra: str = "") -> str:
    """Binance at `server_url`, the only provider of crypto; tight deadlines and budget."""
    text = config_for(timeout=TIMEOUT, retry_budget=BUDGET)
    dead = "  binance: {base_url: 'http://127.0.0.1:9'"
    assert dead in text and "archive_url: ''" in text
    text = text.replace(dead, f"  binance: {{base_url: '{server_url}'", 1)
    text = text.replace("archive_url: ''", f"archive_url: '{archive_url}'", 1)
    return text + "selection:\n  - {symbol_type: crypto, providers: [binance]}\n" + extra


def assert_one_line_failure(run: Run, *words: str) -> str:
    lines = run.err.strip().splitlines()
    assert run.code == 1, run.err
    assert len(lines) == 1, run.err
    line = lines[0]
    assert line.startswith("error: HOSTUSDT 1d: ") and "binance" in line, line
    for word in words:
        assert word in line, line
    assert "Traceback" not in run.err
    return line


def assert_missing(tmp_path: Path, tf: str = "1d", year: int = 2024) -> None:
    settings = load_settings(tmp_path / "providers.yaml")
    meta = UnifiedCache(tmp_path / "cache", settings=settings).metadata("HOSTUSDT", tf, year)
    assert meta["coverage"]["missing_ranges"], meta["coverage"]


RANGE = ("HOSTUSDT", "-t", "1d", "--start", "2024-01-01", "--end", "2025-01-01")


# ---- the suite -------------------------------------------------------------------------------


@pytest.mark.parametrize("behave", [trickle_body, trickle_head], ids=["body", "head"])
def test_a_trickling_server_is_cut_at_the_deadline(
    hostile: Callable[[Handler], HostileServer], tmp_path: Path, behave: Handler
) -> None:
    """requests' timeout is per read: a byte every half second never trips it. Ours bounds
    the whole answer: each attempt ends after `timeout`, the retry budget ends the range."""
    server = hostile(behave)
    run = populate(tmp_path, binance_only(server.url), *RANGE)
    assert run.wall < WALL, f"{run.wall:.1f} s"
    assert_one_line_failure(run, "timed out", f"within {TIMEOUT:g} s", "providers.binance.timeout")
    assert 1 <= len(server.paths) <= 3, "attempts within the retry budget"
    assert_missing(tmp_path)


def test_a_server_that_never_answers_is_cut_at_the_deadline(
    hostile: Callable[[Handler], HostileServer], tmp_path: Path
) -> None:
    server = hostile(silent)
    run = populate(tmp_path, binance_only(server.url), *RANGE)
    assert run.wall < WALL, f"{run.wall:.1f} s"
    assert_one_line_failure(run, "timed out")
    assert_missing(tmp_path)


@pytest.mark.parametrize("behave", [huge_declared, huge_undeclared], ids=["declared", "real"])
def test_a_huge_answer_is_refused_within_the_size_cap(
    hostile: Callable[[Handler], HostileServer], tmp_path: Path, behave: Handler
) -> None:
    """A 2 GiB answer (declared, or just sent): refused at settings.max_answer_mb (16 here),
    not retried, and the process never holds much more than the cap."""
    server = hostile(behave)
    conf = binance_only(server.url, extra="settings: {max_answer_mb: 16}\n")
    run = populate(tmp_path, conf, *RANGE)
    assert run.wall < WALL, f"{run.wall:.1f} s"
    assert run.peak_mb < RSS_MB, f"peak RSS {run.peak_mb:.0f} MB"
    line = assert_one_line_failure(run, "answer refused", "16 MiB", "settings.max_answer_mb")
    if behave is huge_declared:
        assert "declared an answer of 2 GiB" in line
    assert len(server.paths) == 1, "a refused size is not asked again"
    assert_missing(tmp_path)


def test_endless_redirects_end_after_ten_hops(
    hostile: Callable[[Handler], HostileServer], tmp_path: Path
) -> None:
    server = hostile(redirect_loop)
    run = populate(tmp_path, binance_only(server.url), *RANGE)
    assert run.wall < WALL, f"{run.wall:.1f} s"
    assert_one_line_failure(run, "redirected more than 10 times", "providers.binance.base_url")
    assert len(server.paths) == 11, "the first request and ten hops, not retried"
    assert_missing(tmp_path)


@pytest.fixture(scope="module")
def zip_bomb() -> bytes:
    """A monthly klines zip whose one CSV member inflates to 256 MiB (about 250 KB deflated)."""
    sink = io.BytesIO()
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_DEFLATED) as zf:
        info = zipfile.ZipInfo("HOSTUSDT-1m-2024-01.csv")
        info.compress_type = zipfile.ZIP_DEFLATED
        with zf.open(info, "w", force_zip64=True) as member:
            line = b"1704067200000,1,1,1,1,1,1704067259999,0,0,0,0,0\n" * 20_000
            for _ in range(256 * MiB // len(line)):
                member.write(line)
            member.write(b"0" * (256 * MiB % len(line)))  # 256 MiB exactly
    return sink.getvalue()


def test_a_zip_bomb_in_the_archive_is_refused_unread(
    tmp_path: Path, fake_binance: FakeBinance, hostile: Callable[[Handler], HostileServer],
    zip_bomb: bytes,
) -> None:  # fmt: skip
    """The archive zip matches its CHECKSUM and its member inflates to 256 MiB: refused at
    settings.max_archive_member_mb (16 here) without inflating more than that."""
    digest = hashlib.sha256(zip_bomb).hexdigest().encode()

    def archive(sock: socket.socket, path: str) -> None:
        body = digest + b"  HOSTUSDT-1m-2024-01.zip\n" if path.endswith(".CHECKSUM") else zip_bomb
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)

    server = hostile(archive)
    fake_binance.add("HOSTUSDT", "1m", make_bars("2024-01-01", 60 * 24 * 31, "1min"))
    conf = binance_only(
        fake_binance.url, archive_url=server.url, extra="settings: {max_archive_member_mb: 16}\n"
    )
    run = populate(tmp_path, conf, "HOSTUSDT", "-t", "1m", "--start", "2024-01-01", "--end",
                   "2024-02-01")  # fmt: skip
    assert run.wall < WALL, f"{run.wall:.1f} s"
    assert run.peak_mb < RSS_MB, f"peak RSS {run.peak_mb:.0f} MB"
    lines = run.err.strip().splitlines()
    assert run.code == 1 and len(lines) == 1, run.err
    assert lines[0].startswith("error: HOSTUSDT 1m: ")
    for word in ("binance archive member HOSTUSDT-1m-2024-01.csv", "256 MiB", "16 MiB cap",
                 "settings.max_archive_member_mb"):  # fmt: skip
        assert word in lines[0], lines[0]
    assert not fake_binance.data_requests(), "a hostile archive is not papered over by REST"
    assert_missing(tmp_path, "1m")


@pytest.mark.parametrize("provider", ["yahoo", "alpha_vantage"])
def test_every_adapter_goes_through_the_deadline(
    hostile: Callable[[Handler], HostileServer], tmp_path: Path, provider: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """yfinance (its cookie, crumb and chart requests, with its own 30 s timeouts) and the
    alpha_vantage package send through our session: a trickle is cut there too."""
    monkeypatch.setenv("ALPHAVANTAGE_API_KEY", "demo-key")
    server = hostile(trickle_body)
    text = config_for(timeout=TIMEOUT, retry_budget=BUDGET)
    dead = f"  {provider}: {{base_url: 'http://127.0.0.1:9'"
    assert dead in text
    text = text.replace(dead, f"  {provider}: {{base_url: '{server.url}'", 1)
    text += f"selection:\n  - {{symbol_type: stock, providers: [{provider}]}}\n"
    run = populate(tmp_path, text, "HOST", "-t", "1d", "--start", "2024-01-01", "--end",
                   "2025-01-01")  # fmt: skip
    assert run.wall < WALL, f"{run.wall:.1f} s"
    lines = run.err.strip().splitlines()
    assert run.code == 1 and len(lines) == 1, run.err
    assert lines[0].startswith("error: HOST 1d: ") and f"{provider}: " in lines[0], lines[0]
    assert "timed out" in lines[0] and f"within {TIMEOUT:g} s" in lines[0], lines[0]


def test_an_unreachable_shared_rate_limit_store_fails_the_run_at_once_naming_the_setting(
    fake_binance: FakeBinance, tmp_path: Path
) -> None:
    """settings.rate_limit_store on a server that is down: one line naming the setting within
    seconds (it took ~2 min of PoolTimeouts, each range and provider waiting 10 s), no request
    sent unthrottled, nothing written."""
    fake_binance.add("HOSTUSDT", "1d", make_bars("2024-01-01", 366, "1d"))
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    store = f"postgresql://marketcache:s3cret@127.0.0.1:{port}/limits"
    conf = binance_only(fake_binance.url, extra=f"settings: {{rate_limit_store: '{store}'}}\n")
    run = populate(tmp_path, conf, *RANGE)
    assert run.wall < 25, f"{run.wall:.1f} s"
    assert run.code == 1 and len(run.err.strip().splitlines()) == 1, run.err
    line = run.err.strip()
    assert line.startswith("error: HOSTUSDT 1d: settings.rate_limit_store"), line
    assert f"127.0.0.1:{port}/limits: cannot be reached" in line and "Traceback" not in line
    assert "s3cret" not in run.err
    assert fake_binance.data_requests() == [], "no request goes out without its limit"
    assert not (tmp_path / "cache" / "HOSTUSDT").exists(), "a setting's fault: cache untouched"
