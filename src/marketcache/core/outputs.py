"""What `get` returns: a pandas DataFrame (the default), a pyarrow Table or a polars DataFrame.

The Arrow form is the one the HTTP API streams and `marketcache get -o x.parquet` writes:
`timestamp` a `timestamp[ns, tz=UTC]` (the same instants as pandas' UTC-naive column, with the
zone said out loud for readers in other languages), the price and volume columns float64, a
missing value (NaN in pandas) a null. polars is built from that table without a copy of the
columns. pyarrow and polars are imported only when asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from marketcache.errors import UsageError

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

OUTPUT_FORMATS = ("pandas", "polars", "arrow")


def check_output_format(output_format: str) -> str:
    """`output_format` itself, or UsageError naming it."""
    if output_format not in OUTPUT_FORMATS:
        raise UsageError(f"output_format={output_format!r}: use one of {', '.join(OUTPUT_FORMATS)}")
    return output_format


def arrow_schema(columns: list[str]) -> pa.Schema:
    """The columns in order: timestamp (UTC), float64 values, text for `symbol` (get_many)."""
    import pyarrow as pa

    fields = []
    for c in columns:
        if c == "timestamp":
            fields.append(pa.field(c, pa.timestamp("ns", tz="UTC"), nullable=False))
        else:
            fields.append(pa.field(c, pa.string() if c == "symbol" else pa.float64()))
    return pa.schema(fields)


def to_arrow(df: pd.DataFrame) -> pa.Table:
    """A canonical frame as an Arrow table (the float buffers are shared, not copied, where
    they hold no NaN)."""
    import numpy as np
    import pyarrow as pa

    schema = arrow_schema(list(df.columns))
    ts = df["timestamp"].to_numpy(dtype="datetime64[ns]")
    stamp = pa.timestamp("ns", tz="UTC")
    arrays = {"timestamp": pa.array(ts.view("int64"), type=pa.int64()).view(stamp)}
    for col in df.columns:
        if col == "symbol":
            arrays[col] = pa.array(df[col].astype(str).tolist(), type=pa.string())
        elif col != "timestamp":
            values = df[col].to_numpy(dtype="float64")
            arrays[col] = pa.array(values, from_pandas=bool(np.isnan(values).any()))
    return pa.Table.from_arrays([arrays[f.name] for f in schema], schema=schema)


def convert(df: pd.DataFrame, output_format: str) -> Any:
    """`df` in the form `output_format` names (already checked)."""
    if output_format == "pandas":
        return df
    table = to_arrow(df)
    if output_format == "arrow":
        return table
    import polars as pl

    return pl.from_arrow(table, rechunk=False)
