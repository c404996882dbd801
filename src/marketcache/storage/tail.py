"""A series' live tail: the closed bars a follower stored since the last fold into the years.

Every backend keeps one per series, named so that no year listing ever takes it for a year
(`SYMBOL/TF/live.tail.csv` in a folder or a bucket — `year_file` parses only `YEAR.*` names;
the `live_tail` table in PostgreSQL). The tail is small (about a fold interval of bars) and
durable: a bar is in it once `add` returns, whatever instant the process dies at after.

The CSV form is the year files' (`timestamp,open,high,low,close,volume`, floats that read back
bit-identical), one line per bar. A partial last line — an append a crash cut short — is not a
bar: readers ignore it and the next `add` cuts it off before it writes.

The caller holds the series lock for `add` and `keep`; `read` takes none. Each backend's tails
live in a module of their own (`TAILS`: files/tail.py, objects/tail.py, pg_tail.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from marketcache.core.columns import BASE_COLUMNS
from marketcache.errors import CorruptFile

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd


TAIL_NAME = "live.tail.csv"
HEADER = (",".join(BASE_COLUMNS) + "\n").encode("ascii")
# backend name → the module that keeps its tails (`open_tail`, `tail_series`), imported lazily
TAILS = {
    "files": "marketcache.storage.files.tail",
    "object": "marketcache.storage.objects.tail",
    "postgresql": "marketcache.storage.pg_tail",
}


class StorageBackend(Protocol):
    """What this module needs of a backend (`storage.backend.StorageBackend`, which asks
    this module for its tails, so it is not imported here)."""

    @property
    def name(self) -> str: ...

    @property
    def location(self) -> str: ...


def _kept_by(backend: StorageBackend) -> Any:
    import importlib

    from marketcache.errors import UsageError

    if backend.name not in TAILS:
        raise UsageError(f"{backend.location}: this backend keeps no live tail")
    return importlib.import_module(TAILS[backend.name])


def open_tail(backend: StorageBackend, symbol: str, timeframe: str) -> SeriesTail:
    """The live tail of one series (symbol and timeframe normalised) on `backend`."""
    tail: SeriesTail = _kept_by(backend).open_tail(backend, symbol, timeframe)
    return tail


def tail_series(backend: StorageBackend, symbol: str | None = None) -> list[tuple[str, str]]:
    """Every (symbol, timeframe) that has a live tail on `backend` (only `symbol`'s, normalised,
    when given), sorted."""
    found: list[tuple[str, str]] = _kept_by(backend).tail_series(backend, symbol)
    return found


class SeriesTail:
    """One series' tail on one backend."""

    where = ""  # shown in messages

    def read(self) -> pd.DataFrame:
        """The bars stored, sorted by time, unique (a canonical frame, base columns)."""
        raise NotImplementedError

    def add(self, rows: pd.DataFrame) -> None:
        """Store `rows` (bars not in the tail yet) durably before returning."""
        raise NotImplementedError

    def keep(self, rows: pd.DataFrame) -> None:
        """Make `rows` the whole tail (empty: the tail is removed), atomically."""
        raise NotImplementedError


def encode_lines(rows: pd.DataFrame) -> bytes:
    """CSV lines of `rows` (no header): `repr` floats read back bit-identical."""
    import numpy as np

    stamps = np.datetime_as_string(rows["timestamp"].to_numpy("datetime64[s]"), unit="s")
    values = rows[BASE_COLUMNS[1:]].to_numpy(dtype="float64").tolist()
    lines = [
        ",".join([ts.replace("T", " "), *map(repr, vals)])
        for ts, vals in zip(stamps.tolist(), values, strict=True)
    ]
    return ("\n".join(lines) + "\n").encode("ascii") if lines else b""


def complete(data: bytes) -> bytes:
    """`data` up to its last newline: a partial last line is not a stored bar."""
    return data[: data.rfind(b"\n") + 1]


def decode_lines(data: bytes, where: str) -> pd.DataFrame:
    """The bars of a tail's bytes (header first); a partial last line is ignored.
    CorruptFile naming `where` when a complete line is not a bar."""
    import numpy as np

    from marketcache.core.frames import empty_frame

    body = complete(data)
    if not body:
        return empty_frame()
    if not body.startswith(HEADER):
        raise CorruptFile(where, "live tail does not start with the header line")
    lines = body[len(HEADER) :].decode("ascii", "replace").splitlines()
    stamps: list[str] = []
    values: list[list[float]] = []
    for n, line in enumerate(lines, start=2):
        parts = line.split(",")
        try:
            if len(parts) != len(BASE_COLUMNS) or len(parts[0]) != 19:
                raise ValueError(f"{len(parts)} fields")
            values.append([float(v) for v in parts[1:]])
            stamps.append(parts[0])
        except ValueError as exc:
            raise CorruptFile(where, f"live tail line {n} is not a bar ({exc})") from None
    try:
        ts = np.array(stamps, dtype="datetime64[s]")
    except ValueError as exc:
        raise CorruptFile(where, f"live tail holds a bad timestamp ({exc})") from None
    block = np.asarray(values, dtype="float64").reshape(len(values), len(BASE_COLUMNS) - 1)
    return frame_of(ts, block)


def frame_of(stamps: np.ndarray, block: np.ndarray) -> pd.DataFrame:
    """A canonical frame from bar times and a (rows × open/high/low/close/volume) block:
    sorted and unique by time (the first copy of a bar wins: it was stored first)."""
    import numpy as np
    import pandas as pd

    ts = stamps.astype("datetime64[ns]")
    if len(ts) > 1 and not (np.diff(ts.astype(np.int64)) > 0).all():
        _, first = np.unique(ts, return_index=True)  # sorted times, each one's first row
        ts, block = ts[first], block[first]
    data: dict[str, np.ndarray] = {"timestamp": ts}
    for i, col in enumerate(BASE_COLUMNS[1:]):
        data[col] = np.ascontiguousarray(block[:, i])
    return pd.DataFrame(data)
