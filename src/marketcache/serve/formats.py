"""The encodings of a range of bars, each a generator of byte chunks: nothing is built whole.

    json     {"symbol", "interval", "bars": [{"timestamp": ISO 8601 UTC, OHLCV[, adj_close]}]}
             (floats as Python's repr, which reads back bit-identical; NaN as null)
    csv      the cache's own CSV: header, `YYYY-MM-DD HH:MM:SS` UTC, shortest round-trip floats
    arrow    an Arrow IPC stream, one record batch per chunk (`outputs.arrow_schema`)
    parquet  zstd Parquet, one row group per chunk, bytes handed on as each group is written

`get` writes files with the same encoders that the API streams.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

FORMATS = ("json", "csv", "arrow", "parquet")
MEDIA_TYPES = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "arrow": "application/vnd.apache.arrow.stream",
    "parquet": "application/vnd.apache.parquet",
}
SUFFIXES = {"json": ".json", "csv": ".csv", "arrow": ".arrow", "parquet": ".parquet"}


def encode(
    fmt: str, chunks: Iterable[pd.DataFrame], columns: list[str], head: dict[str, Any]
) -> Iterator[bytes]:
    """The bytes of `chunks` (frames with `columns`) in `fmt`; `head` are the JSON document's
    fields before `bars`."""
    if fmt == "json":
        return _json(chunks, columns, head)
    if fmt == "csv":
        return _csv(chunks, columns)
    if fmt == "arrow":
        return _arrow(chunks, columns)
    return _parquet(chunks, columns)


def bar_dicts(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON-ready dicts (ISO 8601 UTC timestamps, NaN as None)."""
    import math

    stamps = _stamps(df)
    cols = [c for c in df.columns if c != "timestamp"]
    values = [df[c].to_numpy("float64").tolist() for c in cols]
    out = []
    for t, *row in zip(stamps, *values, strict=True):
        cells = {c: (v if not math.isnan(v) else None) for c, v in zip(cols, row, strict=True)}
        out.append({"timestamp": t, **cells})
    return out


def _stamps(df: pd.DataFrame) -> list[str]:
    import numpy as np

    ts = df["timestamp"].to_numpy(dtype="datetime64[ns]")
    text = np.datetime_as_string(ts.astype("datetime64[s]"), unit="s")
    return [t + "Z" for t in text.tolist()]


def _json(
    chunks: Iterable[pd.DataFrame], columns: list[str], head: dict[str, Any]
) -> Iterator[bytes]:
    import json

    opening = json.dumps(head)[:-1] + (', "bars": [' if head else '"bars": [')
    yield opening.encode()
    first = True
    for df in chunks:
        if len(df):
            text = _json_rows(df, columns)  # each row led by ", "
            yield text[2:] if first else text
            first = False
    yield b"]}"


def _json_rows(df: pd.DataFrame, columns: list[str]) -> bytes:
    """', {"timestamp": "…Z", "open": …}' per row, formatted by Arrow in C: its float text is
    the shortest that reads back bit-identical (as repr's), a missing value is null."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    ts = df["timestamp"].to_numpy(dtype="datetime64[ns]").astype("datetime64[s]")
    parts: list[Any] = [', {"timestamp": "', pa.array(np.datetime_as_string(ts, unit="s"))]
    prefix = 'Z"'
    for col in columns[1:]:
        values = pa.array(df[col].to_numpy("float64", na_value=np.nan), from_pandas=True)
        parts += [prefix + ', "' + col + '": ', pc.fill_null(pc.cast(values, pa.string()), "null")]
        prefix = ""
    parts.append(prefix + "}")
    rows = pc.binary_join_element_wise(*parts, "")
    offsets = np.frombuffer(rows.buffers()[1], dtype=np.int32)[rows.offset :]
    start, end = int(offsets[0]), int(offsets[len(rows)])
    data: bytes = rows.buffers()[2].to_pybytes()
    return data[start:end]


def _table(df: pd.DataFrame, columns: list[str]) -> Any:
    from marketcache.core.outputs import to_arrow

    return to_arrow(df.reindex(columns=columns) if list(df.columns) != columns else df)


def _csv(chunks: Iterable[pd.DataFrame], columns: list[str]) -> Iterator[bytes]:
    import io

    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv

    yield (",".join(columns) + "\n").encode()
    options = pacsv.WriteOptions(include_header=False, quoting_style="none")
    for df in chunks:
        if not len(df):
            continue
        ts = df["timestamp"].to_numpy(dtype="datetime64[ns]").astype("datetime64[s]")
        arrays = [pa.array(ts)]
        for col in columns[1:]:
            arrays.append(pa.array(df[col].to_numpy("float64", na_value=np.nan), from_pandas=True))
        sink = io.BytesIO()
        pacsv.write_csv(pa.Table.from_arrays(arrays, names=columns), sink, options)
        yield sink.getvalue()


class _Drain:
    """A write-only file that hands its bytes on: Arrow and Parquet writers write into it, and
    the generator takes what was written after each chunk."""

    closed = False

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.position = 0

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self.parts.append(chunk)
        self.position += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self.position

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def take(self) -> bytes:
        out = b"".join(self.parts)
        self.parts.clear()
        return out


def _arrow(chunks: Iterable[pd.DataFrame], columns: list[str]) -> Iterator[bytes]:
    import pyarrow as pa

    from marketcache.core.outputs import arrow_schema

    sink = _Drain()
    with pa.ipc.new_stream(pa.PythonFile(sink, mode="w"), arrow_schema(columns)) as writer:
        yield sink.take()
        for df in chunks:
            if len(df):
                writer.write_table(_table(df, columns))
                yield sink.take()
    yield sink.take()


def _parquet(chunks: Iterable[pd.DataFrame], columns: list[str]) -> Iterator[bytes]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from marketcache.core.outputs import arrow_schema

    sink = _Drain()
    with pq.ParquetWriter(
        pa.PythonFile(sink, mode="w"), arrow_schema(columns), compression="zstd"
    ) as writer:
        for df in chunks:
            if len(df):
                writer.write_table(_table(df, columns))
                yield sink.take()
    yield sink.take()
