"""Fast gzip CSV: pyarrow's CSV codec and ISA-L gzip.

A file is one or more gzip members; every reader (zcat, pandas, pyarrow) sees them as one
stream. The first member starts with the header; appended members hold rows only.
"""

from __future__ import annotations

import io
import re
import zlib
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
from isal import igzip, igzip_threaded

from marketcache.core.columns import BASE_COLUMNS
from marketcache.core.validate import sound_rows

COMPRESS_LEVEL = 2


class CsvGz:
    """`YEAR.csv.gz`: appendable (a gzip member per append), read by zcat/pandas/pyarrow."""

    name = "csv.gz"
    suffix = ".csv.gz"
    appendable = True

    def encode(self, df: pd.DataFrame, columns: list[str], *, mark: int = 0) -> tuple[bytes, int]:
        return encode(df, columns, header=True, mark=mark)

    def encode_rows(self, df: pd.DataFrame, columns: list[str]) -> tuple[bytes, int]:
        """A member holding rows only, to append after the committed bytes."""
        return encode(df, columns, header=False)

    def decode(self, data: bytes) -> pd.DataFrame:
        return decode(data)

    def salvage(self, data: bytes) -> tuple[pd.DataFrame | None, str]:
        return salvage(data)


def encode(
    df: pd.DataFrame, columns: list[str], *, header: bool, mark: int = 0
) -> tuple[bytes, int]:
    """One gzip member holding `df`'s rows as CSV, and the CSV's uncompressed length. `mark`
    goes in the gzip header's mtime field, which no reader uses."""
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
    # mtime = mark (0 by default): the same rows give the same bytes (a copy keeps the sha256)
    body = igzip.compress(raw, compresslevel=COMPRESS_LEVEL, mtime=mark & 0xFFFFFFFF)
    return bytes(body), len(raw)


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


SALVAGE_CHUNK = 4096  # compressed bytes fed at a time: output before a damaged block is kept


def salvage(raw: bytes) -> tuple[pd.DataFrame | None, str]:
    """Decode the rows before the damage of a damaged csv.gz, streaming (every row, when the
    bytes decode whole: a file changed after its commit, not damaged).

    Each gzip member is decompressed a few KB at a time, so everything produced before the
    block where decoding fails is kept (a one-shot decompress loses it all). The output of the
    failing chunk and anything after the damage in that member are not trusted; the last,
    cut line is dropped and the remaining lines must parse, be sound and rise in time.
    """
    text = bytearray()
    pos = 0
    note = "all members readable"
    damaged = False
    while pos < len(raw) and not damaged:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        cursor = pos
        while cursor < len(raw) and not d.eof:
            chunk = raw[cursor : cursor + SALVAGE_CHUNK]
            try:
                text += d.decompress(chunk)
            except zlib.error as exc:
                note = f"stopped at a damaged block near byte {cursor:,}: {exc}"
                damaged = True
                break
            cursor += len(chunk)
        if damaged:
            break
        if not d.eof:
            note = "last member truncated"
            break
        pos = cursor - len(d.unused_data)
    lines = bytes(text).split(b"\n")
    if not lines or not lines[0].startswith(b"timestamp,"):
        return None, "header unreadable"
    header = lines[0]
    body = lines[1:] if text.endswith(b"\n") and not damaged else lines[1:-1]
    shape = re.compile(
        rb"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d" + rb",[-+0-9.eEnaif]*" * header.count(b",")
    )
    if note == "all members readable":  # every member's CRC held: the text is as written
        rows = [line for line in body if shape.fullmatch(line)]
        strays = sum(1 for line in body if line) - len(rows)
        if strays:
            note += f"; {strays:,} lines are not rows"
        try:  # no cut at the first odd row: the validator drops the unsound ones
            whole = parse_csv(b"\n".join([header, *rows]) + b"\n")
        except ValueError as exc:
            return None, f"unparsable: {exc}"
        return (whole if len(whole) else None), note
    # the damage is where the first line stops looking like a row: nothing after it is trusted
    good = 0
    while good < len(body) and shape.fullmatch(body[good]):
        good += 1
    if good < len(body):
        note += f"; rows from line {good + 2:,} on are not trusted"
    try:
        df = parse_csv(b"\n".join([header, *body[:good]]) + b"\n")
    except ValueError as exc:
        return None, f"unparsable: {exc}"
    if len(df):  # and up to the first row that is unsound or does not rise in time
        stamps = df["timestamp"].to_numpy("datetime64[ns]").astype("int64")
        ok = np.r_[True, np.diff(stamps) > 0] & sound_rows(df) & df["timestamp"].notna().to_numpy()
        cut = int(np.argmin(ok)) if not ok.all() else len(df)
        df = df.iloc[:cut].reset_index(drop=True)
    return (df if len(df) else None), note
