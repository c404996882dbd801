"""`YEAR.parquet`: zstd Parquet with the CSV's columns, read directly by pandas, polars, DuckDB.

`timestamp` is a UTC `timestamp[us]` without zone (as the CSV's, with microseconds to
spare); prices and volume are float64. Pages carry CRCs, checked on read. Row groups of
65,536 rows let a damaged file give back the groups before the damage. Parquet cannot be
appended to: an append rewrites the year (the benchmark says what that costs).
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

ROW_GROUP = 65_536


class Parquet:
    name = "parquet"
    suffix = ".parquet"
    appendable = False

    def encode(self, df: pd.DataFrame, columns: list[str], *, mark: int = 0) -> tuple[bytes, int]:
        arrays = [pa.array(df["timestamp"].to_numpy(dtype="M8[ns]").astype("M8[us]"))]
        for col in columns[1:]:
            arrays.append(pa.array(df[col].to_numpy(dtype="float64", na_value=np.nan)))
        table = pa.Table.from_arrays(arrays, names=columns)
        sink = io.BytesIO()
        with (
            pq.ParquetWriter(  # byte-stream-split floats and delta timestamps: smaller, faster
                sink,
                table.schema,
                compression="zstd",
                use_dictionary=False,
                use_byte_stream_split=columns[1:],
                column_encoding={"timestamp": "DELTA_BINARY_PACKED"},
                write_statistics=True,
                store_schema=False,
                write_page_checksum=True,
            ) as writer
        ):
            writer.write_table(table, row_group_size=ROW_GROUP)
            if mark:  # a footer key-value that readers ignore
                writer.add_key_value_metadata({"marketcache.mark": str(mark)})
        return sink.getvalue(), int(table.nbytes)

    def encode_rows(self, df: pd.DataFrame, columns: list[str]) -> tuple[bytes, int]:
        raise NotImplementedError("parquet years are rewritten, not appended to")

    def decode(self, data: bytes) -> pd.DataFrame:
        try:
            table = pq.read_table(io.BytesIO(data), page_checksum_verification=True)
        except (pa.ArrowException, OSError) as exc:
            raise ValueError(str(exc).splitlines()[0]) from None
        return _frame(table)

    def salvage(self, data: bytes) -> tuple[pd.DataFrame | None, str]:
        """The row groups that read back before the first damaged one."""
        try:
            reader = pq.ParquetFile(io.BytesIO(data), page_checksum_verification=True)
        except (pa.ArrowException, OSError) as exc:
            return None, f"footer unreadable: {str(exc).splitlines()[0]}"
        groups = []
        note = "all row groups readable"
        for i in range(reader.num_row_groups):
            try:
                groups.append(reader.read_row_group(i))
            except (pa.ArrowException, OSError) as exc:
                note = f"stopped at damaged row group {i}: {str(exc).splitlines()[0]}"
                break
        if not groups:
            return None, note
        df = _frame(pa.concat_tables(groups))
        return (df if len(df) else None), note


def _frame(table: pa.Table) -> pd.DataFrame:
    df: pd.DataFrame = table.to_pandas()
    df["timestamp"] = df["timestamp"].astype("datetime64[ns]")
    for col in df.columns[1:]:
        df[col] = df[col].astype("float64")
    return df
