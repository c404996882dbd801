"""Freshness: is a series' newest bar as recent as the calendar says it should be?

A series is stale when more than one bar the calendar expects after its newest stored bar has
already closed (one bar of lag is a refresh that has not run yet); with a maximum age, when
the first such bar closed longer ago than that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from marketcache.core.calendars import ALWAYS_OPEN, FX_WEEK, expected_bars, session_opens
from marketcache.core.models import utcnow
from marketcache.core.timeframes import Timeframe


@dataclass
class Freshness:
    symbol: str
    timeframe: str
    last: str | None
    behind: int  # closed bars the calendar expects after the newest stored bar
    due_since: str | None  # when the first of those closed
    stale: bool

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def freshness(
    symbol: str,
    timeframe: str,
    calendar: str,
    last: str | None,
    *,
    now: pd.Timestamp | None = None,
    max_age: pd.Timedelta | None = None,
) -> Freshness:
    tf = Timeframe(timeframe)
    now = now if now is not None else utcnow()
    if last is None:
        return Freshness(symbol, timeframe, None, 0, None, True)
    newest = pd.Timestamp(last)
    if tf.name == "1d" and calendar not in (ALWAYS_OPEN, FX_WEEK):  # sessions close at the bell
        closes, sessions = session_opens(calendar, newest, now, edge="close")
        after = (sessions > newest) & (closes <= now.value)
        closed = pd.DatetimeIndex(sessions[after])
        due = pd.Timestamp(closes[after][0]) if after.any() else None
    else:
        open_bar = tf.floor(now)  # the bar at floor(now) is still open
        closed = expected_bars(calendar, tf, newest + pd.Timedelta(1, "ns"), open_bar)
        due = _close_of(tf, closed[0]) if len(closed) else None
    behind = len(closed)
    stale = behind > 1 if max_age is None else (due is not None and now - due > max_age)
    return Freshness(
        symbol, timeframe, last, behind, due.isoformat() if due is not None else None, stale
    )


def stale_exit_code(found: list[Freshness]) -> int:
    """`validate --max-age`'s verdict: 3 when a series is stale, else 0."""
    return 3 if any(f.stale for f in found) else 0


def _close_of(tf: Timeframe, bar: pd.Timestamp) -> pd.Timestamp:
    return tf.next_open(bar) if not tf.is_intraday else bar + pd.Timedelta(minutes=tf.minutes)


def parse_age(text: str, option: str = "--max-age") -> pd.Timedelta:
    """'36h', '2d', '90m', '1w' → a Timedelta; UsageError naming the option otherwise."""
    from marketcache.errors import UsageError

    minutes = {"m": 1, "h": 60, "d": 1440, "w": 10080}
    raw = text.strip().lower()
    if raw == "0":
        return pd.Timedelta(0)
    if len(raw) < 2 or raw[-1] not in minutes or not raw[:-1].isdigit():
        raise UsageError(f"{option} '{text}': use a number and a unit, e.g. 36h, 2d, 90m, 1w")
    return pd.Timedelta(minutes=int(raw[:-1]) * minutes[raw[-1]])
