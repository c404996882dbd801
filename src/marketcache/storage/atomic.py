"""Crash-safe file writes: temp file in the same folder, fsync, rename, fsync the folder."""

from __future__ import annotations

import contextlib
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

    `durable=False` skips the fsyncs, for derived files that are rebuilt when unreadable.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from exc
    if durable:
        fsync_dir(path.parent)


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
