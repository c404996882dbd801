"""One lock per symbol/timeframe: flock across processes, re-entrant within one.

flock locks die with their holder, so a killed run never leaves the cache locked.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from marketcache.errors import LockTimeout, StorageError

DEFAULT_WAIT = 600.0


@dataclass
class _Held:
    rlock: threading.RLock = field(default_factory=threading.RLock)
    depth: int = 0
    fd: int | None = None


_registry: dict[str, _Held] = {}
_guard = threading.Lock()


@contextmanager
def hold(path: Path, *, wait: float = DEFAULT_WAIT, what: str = "") -> Iterator[None]:
    """Hold the lock at `path`; after `wait` seconds raise LockTimeout naming `what`."""
    key = str(path)
    with _guard:
        held = _registry.setdefault(key, _Held())
    deadline = time.monotonic() + wait
    if not held.rlock.acquire(timeout=max(wait, 0.0)):
        raise LockTimeout(_timeout_message(what or key, wait))
    try:
        if held.depth == 0:
            held.fd = _flock(path, deadline, what or key, wait)
        held.depth += 1
        try:
            yield
        finally:
            held.depth -= 1
            if held.depth == 0 and held.fd is not None:
                fcntl.flock(held.fd, fcntl.LOCK_UN)
                os.close(held.fd)
                held.fd = None
    finally:
        held.rlock.release()


def _flock(path: Path, deadline: float, what: str, wait: float) -> int:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StorageError(f"cannot create lock {path}: {exc.strerror}") from exc
    delay = 0.01
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise LockTimeout(_timeout_message(what, wait)) from None
            time.sleep(delay)
            delay = min(delay * 2, 0.25)


def _timeout_message(what: str, wait: float) -> str:
    return (
        f"{what} is locked by another marketcache run (waited {wait:g}s): "
        "let it finish or raise lock_wait"
    )
