"""What `serve --follow` plugs in: a source of forming bars and of closed-bar events.

The live follower (`live/follower.py`, as `marketcache follow` runs it) implements
`LiveSource`; `create_app(..., live=source)` then adds the forming bar to quotes of the series
it follows and pushes its closed bars to WebSocket subscribers as soon as they are committed,
before the commit watcher would see them in the records (a bar is sent once, whichever finds
it first). Without a source the
API serves what is committed, which is everything any other writer stores.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from marketcache.live.bars import LiveBar

__all__ = ["LiveBar", "LiveSource"]


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
