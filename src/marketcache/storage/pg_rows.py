"""The PostgreSQL backend's row encodings: COPY CSV in, binary COPY out, and the canonical
digest a year's record holds. Pure (numpy, pyarrow, pandas imported where used)."""

from __future__ import annotations

import hashlib
import io
from typing import TYPE_CHECKING

from marketcache.errors import UsageError

if TYPE_CHECKING:
    import pandas as pd

    from marketcache.storage.backend import Key


def to_csv(frame: pd.DataFrame, columns: list[str], key: Key) -> bytes:
    """The rows as COPY CSV (symbol, timeframe, UTC stamp, floats that read back exact)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv

    n = len(frame)
    arrays = [
        pa.array(np.full(n, key.symbol, dtype=object), pa.string()),
        pa.array(np.full(n, key.timeframe, dtype=object), pa.string()),
        pa.array(frame["timestamp"].to_numpy("datetime64[ns]").astype("datetime64[us]")),
    ]
    arrays += [
        pa.array(frame[c].to_numpy("float64", na_value=np.nan), from_pandas=True)
        for c in columns[1:]
    ]
    table = pa.Table.from_arrays(arrays, names=["symbol", "timeframe", *columns])
    sink = io.BytesIO()
    pacsv.write_csv(table, sink, pacsv.WriteOptions(include_header=False))
    return sink.getvalue()


def to_microseconds(frame: pd.DataFrame, key: Key) -> pd.DataFrame:
    """Stamps floored to the microseconds `timestamptz` holds, before anything is hashed: the
    checksum is over what the table keeps, so every later read verifies. UsageError when two
    rows fall in one microsecond (flooring would merge them)."""
    import numpy as np

    ns = frame["timestamp"].to_numpy("datetime64[ns]").astype(np.int64)
    if not (ns % 1000).any():
        return frame
    us = ns - ns % 1000  # floor, also before 1970
    if len(us) > 1 and not (np.diff(us) > 0).all():
        raise UsageError(
            f"{key}: two bars fall within one microsecond; PostgreSQL keeps microseconds:"
            " round the timestamps first"
        )
    return frame.assign(timestamp=us.astype("datetime64[ns]"))


PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in Unix microseconds


def parse_binary(raw: bytes, columns: list[str]) -> pd.DataFrame:
    """COPY binary out (timestamptz, float8 × n, no NULLs) → a frame, parsed by numpy: every
    row has the same width, so the body is one structured array."""
    import numpy as np
    import pandas as pd

    extension = int.from_bytes(raw[15:19], "big") if len(raw) >= 19 else 0
    body = raw[19 + extension :]  # signature (11), flags (4), header extension length (4)
    fields = [("count", ">i2")]
    for i in range(len(columns)):
        fields += [(f"len{i}", ">i4"), (f"v{i}", ">i8" if i == 0 else ">f8")]
    row = np.dtype(fields)
    count = max(len(body) - 2, 0) // row.itemsize  # the trailer is a -1 field count
    data = np.frombuffer(body, dtype=row, count=count)
    if len(data) > 1 and not (np.diff(data["v0"]) > 0).all():
        data = data[np.argsort(data["v0"], kind="stable")]
    stamps = (data["v0"].astype(np.int64) + PG_EPOCH_US) * 1000
    frame = pd.DataFrame({"timestamp": stamps.astype("datetime64[ns]")})
    for i, col in enumerate(columns[1:], start=1):
        frame[col] = data[f"v{i}"].astype(np.float64)
    return frame


def digest(frame: pd.DataFrame, columns: list[str]) -> str:
    """sha256 over the rows' canonical bytes (int64 ns stamps, float64 values, NaN as one)."""
    import numpy as np

    h = hashlib.sha256()
    h.update(frame["timestamp"].to_numpy("datetime64[ns]").astype(np.int64).tobytes())
    for col in columns[1:]:
        values = frame[col].to_numpy("float64", na_value=np.nan).copy()
        values[np.isnan(values)] = np.nan
        h.update(values.tobytes())
    return h.hexdigest()
