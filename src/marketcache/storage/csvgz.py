"""Fast gzip CSV: pyarrow's CSV codec and ISA-L gzip.

A file is one or more gzip members; every reader (zcat, pandas, pyarrow) sees them as one
stream. The first member starts with the header; appended members hold rows only.
"""

from __future__ import annotations

import io
import zlib
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
from isal import igzip, igzip_threaded

BASE_COLUMNS = ["timestamp", "open", "high", "low", "close", "volume"]
OPTIONAL_COLUMNS = ["adj_close"]
COMPRESS_LEVEL = 2


def columns_for(df: pd.DataFrame) -> list[str]:
    return BASE_COLUMNS + [c for c in OPTIONAL_COLUMNS if c in df.columns]


def encode(df: pd.DataFrame, columns: list[str], *, header: bool) -> tuple[bytes, int]:
    """One gzip member holding `df`'s rows as CSV, and the CSV's uncompressed length."""
    arrays = [pa.array(df["timestamp"].to_numpy(dtype="M8[ns]").astype("M8[s]"))]
    for col in columns[1:]:
        values = df[col].to_numpy(dtype="float64", na_value=np.nan)
        arrays.append(pa.array(values, from_pandas=True))
    table = pa.Table.from_arrays(arrays, names=columns)
    sink = io.BytesIO()
    if header:
        sink.write((",".join(columns) + "\n").encode())
    if len(df):
        pacsv.write_csv(table, sink, pacsv.WriteOptions(include_header=False))
    raw = sink.getbuffer()
    return bytes(igzip.compress(raw, compresslevel=COMPRESS_LEVEL)), len(raw)


THREADED_ABOVE = 1 << 20  # decompress in a helper thread, overlapped with parsing, above 1 MB


def decode(data: bytes) -> pd.DataFrame:
    """Parse every member of a csv.gz byte string into a frame (timestamp as datetime64[ns]).

    Large files are decompressed by ISA-L in a helper thread while pyarrow parses what has
    arrived, so the two costs overlap instead of adding up.
    """
    if len(data) < THREADED_ABOVE:
        return parse_csv(bytes(igzip.decompress(data)))  # type: ignore[no-untyped-call]
    head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data[:65536], 1024)
    stream = igzip_threaded.open(  # type: ignore[no-untyped-call]
        io.BytesIO(data), "rb", threads=1, block_size=1 << 20
    )
    try:
        return parse_csv(head, stream)
    finally:
        stream.close()


def parse_csv(raw: bytes, stream: Any = None) -> pd.DataFrame:
    """Parse CSV with our header: `raw` holds the text (or, with `stream`, at least its header)."""
    first_line = raw[: raw.find(b"\n")].decode("ascii", "replace").strip()
    columns = first_line.split(",")
    if columns[:6] != BASE_COLUMNS:
        raise ValueError(f"unexpected header '{first_line[:80]}'")
    types = {c: pa.float64() for c in columns[1:]}
    types["timestamp"] = pa.timestamp("s")
    try:
        table = pacsv.read_csv(
            stream if stream is not None else io.BytesIO(raw),
            read_options=pacsv.ReadOptions(block_size=8 << 20),
            convert_options=pacsv.ConvertOptions(column_types=types, strings_can_be_null=True),
        )
    except pa.ArrowInvalid as exc:
        raise ValueError(str(exc).splitlines()[0]) from None
    df: pd.DataFrame = table.to_pandas()
    df["timestamp"] = df["timestamp"].astype("datetime64[ns]")
    return df


def empty_frame(columns: list[str] | None = None) -> pd.DataFrame:
    cols = columns or BASE_COLUMNS
    data: dict[str, pd.Series] = {"timestamp": pd.Series([], dtype="datetime64[ns]")}
    for col in cols[1:]:
        data[col] = pd.Series([], dtype="float64")
    return pd.DataFrame(data)
