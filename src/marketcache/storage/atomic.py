"""Crash-safe file writes: temp file in the same folder, fsync, rename, fsync the folder."""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from pathlib import Path

from marketcache.errors import StorageError
from marketcache.storage.layout import TEMP_MARK


def temp_path_for(path: Path) -> Path:
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomic(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Replace `path` by `data` so that a crash leaves either the old or the new file.

    The temp file is flock-ed while it is written, so that `cleanup` can tell a live writer's
    temp file from one a killed writer left (`held_by_a_writer`); should a racing cleanup still
    take it (or the empty folder it was in) the write starts over, a bounded number of times.
    `durable=False` skips the fsyncs, for derived files that are rebuilt when unreadable.
    """
    for attempt in range(1, WRITE_ATTEMPTS + 1):
        try:
            _write_once(path, data, durable=durable)
            return
        except FileNotFoundError as exc:
            if attempt == WRITE_ATTEMPTS:
                raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from exc
        except OSError as exc:
            raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from exc


WRITE_ATTEMPTS = 3


def _write_once(path: Path, data: bytes, *, durable: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    try:
        with open(tmp, "wb") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)  # still holding the flock: the temp file is never stale
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if durable:
        fsync_dir(path.parent)


def held_by_a_writer(path: Path) -> bool:
    """Whether a live `write_atomic` holds this temp file (flock dies with its holder)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # closing releases the probe's own flock
    return False


def append_durable(path: Path, data: bytes, committed_size: int) -> int:
    """Append `data` after the first `committed_size` bytes (cutting any torn tail); new size."""
    try:
        with open(path, "r+b") as fh:
            fh.truncate(committed_size)
            fh.seek(committed_size)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        with contextlib.suppress(OSError), open(path, "r+b") as fh:
            fh.truncate(committed_size)
        raise StorageError(f"cannot append to {path}: {exc.strerror or exc}") from exc
    return committed_size + len(data)
