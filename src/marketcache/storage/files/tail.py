"""The live tail in a cache folder: `SYMBOL/TF/live.tail.csv`, appended line by line.

`add` cuts a partial last line (an append a crash cut short), appends the new lines, flushes
and fsyncs before it returns: a bar acknowledged is on disk. A new tail, and every `keep`
(the rows left after a fold), is written whole (temp file, fsync, rename), so readers see the
old tail or the new one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from marketcache.errors import StorageError
from marketcache.storage.atomic import fsync_dir, write_atomic
from marketcache.storage.tail import HEADER, TAIL_NAME, SeriesTail, decode_lines, encode_lines

if TYPE_CHECKING:
    import pandas as pd

    from marketcache.storage.files.backend import FileBackend


def open_tail(backend: FileBackend, symbol: str, timeframe: str) -> FileTail:
    return FileTail(backend.layout.timeframe_dir(symbol, timeframe) / TAIL_NAME)


def tail_series(backend: FileBackend, symbol: str | None = None) -> list[tuple[str, str]]:
    layout = backend.layout
    return [
        (sym, tf)
        for sym in ([symbol] if symbol else layout.symbols())
        for tf in layout.timeframes(sym)
        if (layout.timeframe_dir(sym, tf) / TAIL_NAME).is_file()
    ]


class FileTail(SeriesTail):
    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = str(path)

    def read(self) -> pd.DataFrame:
        from marketcache.core.frames import empty_frame

        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return empty_frame()
        except OSError as exc:
            raise StorageError(f"cannot read {self.path}: {exc.strerror}") from exc
        return decode_lines(data, self.where)

    def add(self, rows: pd.DataFrame) -> None:
        lines = encode_lines(rows)
        if not lines:
            return
        try:
            fh = open(self.path, "r+b")  # noqa: SIM115 - closed below, after the fsync
        except FileNotFoundError:
            write_atomic(self.path, HEADER + lines)
            return
        except OSError as exc:
            raise StorageError(f"cannot append to {self.path}: {exc.strerror}") from exc
        try:
            with fh:
                size = fh.seek(0, os.SEEK_END)
                if size:
                    fh.seek(size - 1)
                    if fh.read(1) != b"\n":  # a torn last line: cut it (the tail is small)
                        fh.seek(0)
                        size = fh.read().rfind(b"\n") + 1
                        fh.truncate(size)
                body = lines if size else HEADER + lines
                fh.seek(size)
                fh.write(body)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise StorageError(f"cannot append to {self.path}: {exc.strerror}") from exc

    def keep(self, rows: pd.DataFrame) -> None:
        if len(rows):
            write_atomic(self.path, HEADER + encode_lines(rows))
            return
        try:
            self.path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StorageError(f"cannot remove {self.path}: {exc.strerror}") from exc
        fsync_dir(self.path.parent)
