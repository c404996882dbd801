"""Bounded answers: a total deadline and a size cap on every HTTP answer, redirects counted.

requests' `timeout` bounds each socket wait, not the answer: a server trickling one byte every
few seconds keeps a request alive for ever, and `Response.content` reads whatever a server
sends. `BoundedAdapter` (mounted by `TimeoutSession`, which every adapter's requests go
through: python-binance, yfinance, alpha_vantage and the archive downloads) keeps both bounds:

- **deadline**: from the moment the first hop goes out (after the rate limiter let it) until
  the last byte of the final body, redirects included, at most `Watch.seconds`. Each socket
  wait gets only the time left, and a watchdog shuts down the socket the request is blocked on
  when the deadline passes (nothing else wakes a blocked read), so the request fails with
  `AnswerTimedOut` then, whatever the server does.
- **size**: an answer whose `Content-Length` is over the cap is refused before its body is
  read; any other body is read in chunks, counted as decoded (a gzip body counts what it
  inflates to), and refused with `AnswerTooLarge` once past the cap.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

CHUNK = 64 * 1024
MiB = 1024 * 1024


class AnswerTooLarge(requests.RequestException):
    """The answer is (or says it will be) larger than the cap: it is not read further."""


class AnswerTimedOut(requests.Timeout):
    """The whole answer did not arrive within the deadline."""


def describe_size(n: float) -> str:
    for unit, size in (("GiB", 1024 * MiB), ("MiB", MiB), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.1f} {unit}".replace(".0 ", " ")
    return f"{int(n)} bytes"


class Watch:
    """One request's deadline, and the connections it sends on (to wake them at the end)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expires: float | None = None  # monotonic; set when the first hop goes out
        self.expired = False
        self._conns: list[HTTPConnection] = []
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def start(self) -> None:
        if self.expires is not None:
            return
        self.expires = time.monotonic() + self.seconds
        self._timer = threading.Timer(self.seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def remaining(self) -> float:
        return self.seconds if self.expires is None else self.expires - time.monotonic()

    def attach(self, conn: HTTPConnection) -> None:
        with self._lock:
            self._conns.append(conn)
            if self.expired:
                _shut(conn)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for conn in self._conns:
                _shut(conn)


def _shut(conn: HTTPConnection) -> None:
    """Wake a read blocked on `conn`: a shut-down socket answers end-of-file at once."""
    sock = getattr(conn, "sock", None)
    if sock is None:
        return
    with contextlib.suppress(OSError):  # the plain socket call, for TLS too: it sees EOF
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


_current = threading.local()  # the Watch of the request this thread is sending


def current_watch() -> Watch | None:
    watch: Watch | None = getattr(_current, "watch", None)
    return watch


def set_watch(watch: Watch | None) -> Watch | None:
    """Make `watch` this thread's; returns the one it replaces."""
    previous = current_watch()
    _current.watch = watch
    return previous


class _WatchedHTTPConnection(HTTPConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override,unused-ignore]
        watch = current_watch()
        if watch is not None:
            watch.attach(self)
        super().request(*args, **kwargs)


class _WatchedHTTPSConnection(HTTPSConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override,unused-ignore]
        watch = current_watch()
        if watch is not None:
            watch.attach(self)
        super().request(*args, **kwargs)


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_POOL_CLASSES = {"http": _HTTPPool, "https": _HTTPSPool}


class BoundedAdapter(HTTPAdapter):
    """An HTTPAdapter that reads every answer whole, within the deadline and the size cap."""

    def __init__(self, max_bytes: int, **kwargs: Any) -> None:
        self.max_bytes = max_bytes
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_POOL_CLASSES)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = dict(_POOL_CLASSES)
        return manager

    def send(  # type: ignore[override,unused-ignore]
        self, request: requests.PreparedRequest, stream: bool = False, timeout: Any = None,
        verify: Any = True, cert: Any = None, proxies: Any = None,
    ) -> requests.Response:  # fmt: skip
        own = current_watch() is None  # sent without TimeoutSession.request: this hop only
        watch = Watch(total_seconds(timeout) or 30.0) if own else current_watch()
        assert watch is not None
        if own:
            set_watch(watch)
        watch.start()
        host = urlsplit(request.url or "").netloc
        try:
            left = watch.remaining()
            if left <= 0:
                raise AnswerTimedOut(_late(watch, host), request=request)
            try:
                response = super().send(
                    request, stream=True, timeout=_shorter(timeout, left), verify=verify,
                    cert=cert, proxies=proxies,
                )  # fmt: skip
                declared = response.headers.get("Content-Length", "")
                if declared.strip().isdigit() and int(declared) > self.max_bytes:
                    response.close()
                    raise AnswerTooLarge(
                        f"{host} declared an answer of {describe_size(int(declared))}, over the"
                        f" {describe_size(self.max_bytes)} cap (settings.max_answer_mb)",
                        request=request,
                    )
                if not stream:
                    self._read(response, host)
            except AnswerTooLarge:
                raise
            except requests.RequestException as exc:
                if watch.expired:
                    raise AnswerTimedOut(_late(watch, host), request=request) from None
                raise exc
            return response
        finally:
            if own:
                watch.cancel()
                set_watch(None)

    def _read(self, response: requests.Response, host: str) -> None:
        chunks: list[bytes] = []
        total = 0
        for chunk in response.iter_content(CHUNK):
            total += len(chunk)
            if total > self.max_bytes:
                response.close()
                raise AnswerTooLarge(
                    f"{host} sent an answer of more than {describe_size(self.max_bytes)}, the cap"
                    " (settings.max_answer_mb)",
                    request=response.request,
                )
            chunks.append(chunk)
        response._content = b"".join(chunks)
        response._content_consumed = True  # type: ignore[attr-defined]


def _late(watch: Watch, host: str) -> str:
    return f"{host} sent no complete answer within {watch.seconds:g} s"


def total_seconds(timeout: Any) -> float | None:
    """The total seconds a requests `timeout` (a number or a (connect, read) pair) allows."""
    if isinstance(timeout, tuple):
        parts = [t for t in timeout if t is not None]
        return float(max(parts)) if parts else None
    return float(timeout) if timeout is not None else None


def _shorter(timeout: Any, left: float) -> Any:
    """`timeout` with no socket wait longer than the time left."""
    left = max(left, 0.001)
    if isinstance(timeout, tuple):
        return tuple(left if t is None else min(float(t), left) for t in timeout)
    return left if timeout is None else min(float(timeout), left)
