"""Which bars a market is expected to print: exchange sessions, 24/7 crypto, 24/5 FX.

`expected_bars` is the single source of truth for gaps, completeness and the fetch plan.
Exchange calendars come from `exchange_calendars` (holidays and early closes included).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd

from marketcache.core.symbols import AssetClass
from marketcache.core.timeframes import Timeframe

ALWAYS_OPEN = "24/7"
FX_WEEK = "24/5"
_FX_CLOSE_HOUR = 22  # FX trades from Sunday 22:00 UTC to Friday 22:00 UTC (a fixed approximation)

# Yahoo-style suffixes → exchange calendar; plain tickers default to NYSE.
_SUFFIX_CALENDARS = {
    "L": "XLON", "DE": "XETR", "F": "XFRA", "PA": "XPAR", "AS": "XAMS", "MI": "XMIL",
    "MC": "XMAD", "SW": "XSWX", "TO": "XTSE", "V": "XTSE", "HK": "XHKG", "T": "XTKS",
    "AX": "XASX", "NS": "XBOM", "BO": "XBOM", "SI": "XSES", "KS": "XKRX", "ST": "XSTO",
    "CO": "XCSE", "HE": "XHEL", "OL": "XOSL", "BR": "XBRU", "LS": "XLIS", "VI": "XWBO",
    "SA": "BVMF", "MX": "XMEX", "JO": "XJSE", "NZ": "XNZE", "IR": "XDUB",
}  # fmt: skip


def calendar_for(symbol: str, asset_class: AssetClass, override: str | None = None) -> str:
    """The calendar name a symbol trades on."""
    if override:
        return override
    if asset_class is AssetClass.CRYPTO:
        return ALWAYS_OPEN
    if asset_class is AssetClass.FX:
        return FX_WEEK
    if "." in symbol:
        suffix = symbol.rsplit(".", 1)[1]
        if suffix in _SUFFIX_CALENDARS:
            return _SUFFIX_CALENDARS[suffix]
    return "XNYS"


@lru_cache(maxsize=16)
def _exchange(name: str) -> Any:
    import exchange_calendars as xcals

    return xcals.get_calendar(name, start="1990-01-01")


def is_known_calendar(name: str) -> bool:
    if name in (ALWAYS_OPEN, FX_WEEK):
        return True
    import exchange_calendars as xcals

    return name in xcals.get_calendar_names()


def expected_bars(
    calendar: str, tf: Timeframe, start: pd.Timestamp, end: pd.Timestamp
) -> pd.DatetimeIndex:
    """Open times (UTC-naive) of every bar the market should print in [start, end).

    Daily and longer bars are stamped with the session date at 00:00, as stored.
    """
    start, end = pd.Timestamp(start), pd.Timestamp(end)
    if start >= end:
        return pd.DatetimeIndex([], dtype="datetime64[ns]")
    if calendar in (ALWAYS_OPEN, FX_WEEK):
        idx = _regular_grid(tf, start, end)
        if calendar == FX_WEEK:
            idx = idx[_fx_open_mask(idx, tf)]
        return idx
    return _exchange_bars(calendar, tf, start, end)


def _regular_grid(tf: Timeframe, start: pd.Timestamp, end: pd.Timestamp) -> pd.DatetimeIndex:
    first = tf.floor(start)
    if first < start:
        first = tf.next_open(start)
    if tf.name == "1M":
        idx = pd.date_range(first, end, freq="MS", inclusive="left")
    elif tf.name == "1w":
        idx = pd.date_range(first, end, freq="7D", inclusive="left")
    else:
        idx = pd.date_range(first, end, freq=f"{tf.minutes}min", inclusive="left")
    return pd.DatetimeIndex(idx.astype("datetime64[ns]"))


def _fx_open_mask(idx: pd.DatetimeIndex, tf: Timeframe) -> np.ndarray:
    dow = np.asarray(idx.day_of_week)
    if not tf.is_intraday:
        return dow < 5 if tf.name == "1d" else np.ones(len(idx), dtype=bool)
    hour = np.asarray(idx.hour)
    closed = (dow == 5) | ((dow == 6) & (hour < _FX_CLOSE_HOUR)) | ((dow == 4) & (hour >= 22))
    return np.asarray(~closed)


def _exchange_bars(
    name: str, tf: Timeframe, start: pd.Timestamp, end: pd.Timestamp
) -> pd.DatetimeIndex:
    cal = _exchange(name)
    lo = max(start.normalize() - pd.Timedelta(days=1), cal.first_session)
    hi = min(end.normalize() + pd.Timedelta(days=1), cal.last_session)
    if lo > hi:  # outside what the calendar knows: fall back to weekdays
        grid = _regular_grid(tf, start, end)
        return grid[np.asarray(grid.day_of_week) < 5] if tf.name == "1d" else grid
    schedule = cal.schedule.loc[lo:hi]
    sessions = pd.DatetimeIndex(
        pd.DatetimeIndex(schedule.index).tz_localize(None).astype("datetime64[ns]")
    )
    if tf.name == "1d":
        idx = sessions
    elif tf.name == "1w":
        monday = sessions - pd.to_timedelta(np.asarray(sessions.day_of_week), unit="D")
        idx = pd.DatetimeIndex(monday).unique()
    elif tf.name == "1M":
        idx = pd.DatetimeIndex(sessions.to_period("M").to_timestamp()).unique()
    else:
        opens = schedule["open"].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy("M8[ns]")
        closes = schedule["close"].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy("M8[ns]")
        step = np.timedelta64(tf.minutes, "m").astype("m8[ns]")
        counts = -((opens - closes) // step)  # ceil((close - open) / step)
        offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        idx = pd.DatetimeIndex(np.repeat(opens, counts) + offsets * step)
    idx = idx[(idx >= start) & (idx < end)]
    return pd.DatetimeIndex(idx.astype("datetime64[ns]"))


def session_opens(
    calendar: str, start: pd.Timestamp, end: pd.Timestamp, *, edge: str = "open"
) -> tuple[np.ndarray, pd.DatetimeIndex]:
    """Opens (or with edge="close", closes) as UTC-naive int64 ns, ascending, and the session
    dates of an exchange's sessions around [start, end]."""
    cal = _exchange(calendar)
    lo = max(pd.Timestamp(start).normalize() - pd.Timedelta(days=1), cal.first_session)
    hi = min(pd.Timestamp(end).normalize() + pd.Timedelta(days=1), cal.last_session)
    schedule = cal.schedule.loc[lo:hi]
    opens = schedule[edge].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy("M8[ns]")
    sessions = pd.DatetimeIndex(pd.DatetimeIndex(schedule.index).tz_localize(None))
    return opens.astype(np.int64), pd.DatetimeIndex(sessions.as_unit("ns"))


def session_zone(calendar: str) -> str:
    """The time zone an exchange's sessions are dated in (UTC for 24/7 and FX)."""
    if calendar in (ALWAYS_OPEN, FX_WEEK):
        return "UTC"
    return str(_exchange(calendar).tz)
