"""What `serve --follow` will plug in: a source of forming bars and of closed-bar events.

The live follower (issue 23, `marketcache follow`) implements `LiveSource`; `create_app(...,
live=source)` then adds the forming bar to quotes of the series it follows and pushes its
closed bars to WebSocket subscribers the moment they close, before the commit watcher would
see them in the records (a bar is sent once, whichever finds it first). Without a source the
API serves what is committed, which is everything any other writer stores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class LiveBar:
    """A bar of a followed series: `bar` holds timestamp (UTC-naive pandas Timestamp or ISO
    text) and open/high/low/close/volume; `closed` is False for the forming bar."""

    symbol: str
    timeframe: str
    bar: dict[str, Any]
    closed: bool


class LiveSource(Protocol):
    def follows(self, symbol: str, timeframe: str) -> bool:
        """Whether this process follows the series."""
        ...

    def forming_bar(self, symbol: str, timeframe: str) -> LiveBar | None:
        """The bar still forming now (never stored), or None."""
        ...

    def on_closed(self, callback: Callable[[LiveBar], None]) -> Callable[[], None]:
        """Call `callback` (from any thread) with each bar that closes; returns the
        function that stops the calls."""
        ...
