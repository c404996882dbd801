"""Locks: one re-entrant hold per lock name within a process, around the lock that other
processes see — an flock here, a PostgreSQL advisory lock (`postgres.py`), an object-store lease
(`objects/lease.py`). The outer lock is taken when the first holder of this process enters and
released when the last one leaves; threads of this process queue on an RLock first. One
timeout message for every kind of lock.

flock locks die with their holder, so a killed run never leaves the cache locked.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar, cast

from marketcache.errors import LockTimeout, StorageError

DEFAULT_WAIT = 600.0
T = TypeVar("T")


def timeout_message(what: str, wait: float, holder: str = "") -> str:
    by = f" ({holder})" if holder else ""
    return (
        f"{what} is locked by another marketcache run{by} (waited {wait:g}s): "
        "let it finish or raise lock_wait"
    )


@dataclass
class _Hold(Generic[T]):
    rlock: threading.RLock = field(default_factory=threading.RLock)
    depth: int = 0
    state: T | None = None


class Reentrant(Generic[T]):
    """The holds of one kind of lock, by name; `release(state)` lets an outer lock go."""

    def __init__(self, release: Callable[[T], None]) -> None:
        self._release = release
        self._holds: dict[Hashable, _Hold[T]] = {}
        self._guard = threading.Lock()

    @contextmanager
    def hold(
        self, name: Hashable, take: Callable[[float], T], *, wait: float, what: str
    ) -> Iterator[T]:
        """Hold `name`; `take(deadline)` acquires the outer lock when this process does not
        hold it yet (or raises LockTimeout by `deadline`, a `time.monotonic()`) and returns its
        state — a file descriptor, a connection, a lease."""
        with self._guard:
            hold = self._holds.setdefault(name, _Hold())
        deadline = time.monotonic() + wait
        if not hold.rlock.acquire(timeout=max(wait, 0.0)):
            raise LockTimeout(timeout_message(what, wait))
        try:
            if hold.depth == 0:
                hold.state = take(deadline)
            hold.depth += 1
            state = cast(T, hold.state)
            try:
                yield state
            finally:
                hold.depth -= 1
                if hold.depth == 0:
                    hold.state = None
                    self._release(state)
        finally:
            hold.rlock.release()

    def held(self, name: Hashable) -> T | None:
        """The state of `name` while this process holds it, else None."""
        hold = self._holds.get(name)
        return hold.state if hold is not None and hold.depth else None


def _unlock(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


_FLOCKS: Reentrant[int] = Reentrant(_unlock)


@contextmanager
def hold(path: Path, *, wait: float = DEFAULT_WAIT, what: str = "") -> Iterator[None]:
    """Hold the lock at `path`; after `wait` seconds raise LockTimeout naming `what`."""
    what = what or str(path)
    with _FLOCKS.hold(
        str(path), lambda deadline: _flock(path, deadline, what, wait), wait=wait, what=what
    ):
        yield


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
                raise LockTimeout(timeout_message(what, wait)) from None
            time.sleep(delay)
            delay = min(delay * 2, 0.25)
