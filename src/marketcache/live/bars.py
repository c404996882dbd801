"""A bar of a followed series as live consumers get it (the follower, the live Python API,
`serve`'s `LiveSource`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LiveBar:
    """A bar of a followed series: `bar` holds timestamp (UTC-naive pandas Timestamp or ISO
    text) and open/high/low/close/volume; `closed` is False for the forming bar."""

    symbol: str
    timeframe: str
    bar: dict[str, Any]
    closed: bool
