"""OHLCV frames: the one column list, normalising, cleaning and merging. Pure, no I/O.

A canonical frame has a `timestamp` column (UTC, timezone-naive, datetime64[ns]), the float64
columns open/high/low/close/volume and optionally adj_close; rows sorted and unique.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from marketcache.core.columns import BASE_COLUMNS, OPTIONAL_COLUMNS
from marketcache.core.validate import sound_rows
from marketcache.errors import UsageError

__all__ = ["BASE_COLUMNS", "OPTIONAL_COLUMNS"]
SAME = 1e-9  # relative difference below which a re-fetched value is the stored one


def columns_for(df: pd.DataFrame) -> list[str]:
    """The stored columns for `df`: the base ones plus the optional ones it has."""
    return BASE_COLUMNS + [c for c in OPTIONAL_COLUMNS if c in df.columns]


def empty_frame(columns: list[str] | None = None) -> pd.DataFrame:
    cols = columns or BASE_COLUMNS
    data: dict[str, pd.Series] = {"timestamp": pd.Series([], dtype="datetime64[ns]")}
    for col in cols[1:]:
        data[col] = pd.Series([], dtype="float64")
    return pd.DataFrame(data)


def normalize_frame(df: pd.DataFrame, *, sessions: bool = False) -> pd.DataFrame:
    """Canonical columns and dtypes, UTC-naive timestamps, unique (last wins) and sorted.

    With `sessions` (daily and longer bars) a tz-aware timestamp keeps its local date: a
    yfinance frame stamped 2024-01-02 00:00 New York is the 2024-01-02 session, not 05:00 UTC.
    """
    if not isinstance(df, pd.DataFrame):
        raise UsageError("put() takes a pandas DataFrame")
    frame = df
    if "timestamp" not in frame.columns:
        if isinstance(frame.index, pd.DatetimeIndex):
            frame = frame.rename_axis("timestamp").reset_index()
        else:
            raise UsageError("frame has no 'timestamp' column or DatetimeIndex")
    missing = [c for c in BASE_COLUMNS if c not in frame.columns]
    if missing:
        raise UsageError(f"frame lacks columns: {', '.join(missing)}")
    columns = columns_for(frame)
    raw = frame["timestamp"]
    if sessions and isinstance(raw.dtype, pd.DatetimeTZDtype):
        ts = raw.dt.tz_localize(None).dt.normalize()
    else:
        ts = pd.to_datetime(raw, errors="coerce", utc=True).dt.tz_localize(None)
    out = pd.DataFrame({"timestamp": ts.astype("datetime64[ns]")})
    for col in columns[1:]:
        out[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64").to_numpy()
    out = out[out["timestamp"].notna().to_numpy()]
    ts_values = out["timestamp"].to_numpy()
    if len(ts_values) > 1 and not (np.diff(ts_values.astype("int64")) > 0).all():
        out = out.drop_duplicates("timestamp", keep="last").sort_values("timestamp", kind="stable")
    return out.reset_index(drop=True)


def clean_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Drop rows with bad values, dedupe (last wins) and sort — what `validate --fix` keeps."""
    frame = normalize_frame(df)
    cleaned: pd.DataFrame = frame[sound_rows(frame)].reset_index(drop=True)
    return cleaned


def merge_frames(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """Rows of both, new values winning at equal timestamps — except where the new value is
    missing (NaN, or a column the new frame lacks): there the stored value stays."""
    columns = columns_for(old if len(old.columns) >= len(new.columns) else new)
    fresh = new.set_index("timestamp").reindex(columns=columns[1:])
    stored = old.set_index("timestamp").reindex(columns=columns[1:])
    merged = fresh.combine_first(stored).reindex(columns=columns[1:])
    merged.index.name = "timestamp"
    return merged.reset_index()


def count_changed(old: pd.DataFrame, new: pd.DataFrame) -> int:
    """Rows of `new` at stored timestamps whose values differ (a missing new value does not)."""
    joined = new.merge(old, on="timestamp", how="inner", suffixes=("", "_old"))
    if joined.empty:
        return 0
    changed = np.zeros(len(joined), dtype=bool)
    for col in BASE_COLUMNS[1:] + OPTIONAL_COLUMNS:
        if col in new.columns and f"{col}_old" in joined.columns:
            a = joined[col].to_numpy("float64")
            b = joined[f"{col}_old"].to_numpy("float64")
            changed |= ~(np.isclose(a, b, rtol=SAME, atol=0.0, equal_nan=True) | np.isnan(a))
        elif col in new.columns and col not in old.columns:
            changed |= ~np.isnan(joined[col].to_numpy())
    return int(changed.sum())


def iso(ts: Any) -> str:
    return pd.Timestamp(ts).strftime("%Y-%m-%dT%H:%M:%S")


def last_row(df: pd.DataFrame) -> dict[str, Any] | None:
    """The last stored bar, kept in the record so a re-fetched copy can be recognised."""
    if df.empty:
        return None
    row = df.iloc[-1]
    out: dict[str, Any] = {"timestamp": iso(row["timestamp"])}
    for col in df.columns[1:]:
        value = float(row[col])
        out[col] = None if np.isnan(value) else value
    return out


def drop_unchanged_last_row(last: dict[str, Any] | None, part: pd.DataFrame) -> pd.DataFrame:
    """Drop the first row of `part` when it repeats the stored last bar.

    A refresh re-asks for the last stored bar (it may have been revised); when it was not,
    the new bars can still be appended instead of rewriting the year.
    """
    if not last or part.empty or pd.Timestamp(last["timestamp"]) != part["timestamp"].iloc[0]:
        return part
    first = part.iloc[0]
    for col in part.columns[1:]:
        stored = last.get(col)
        value = float(first[col])
        same = (stored is None and np.isnan(value)) or (
            stored is not None and bool(np.isclose(value, stored, rtol=SAME, atol=0.0))
        )
        if not same:
            return part
    return part.iloc[1:].reset_index(drop=True)
