"""The OHLCV columns, named once. Light: metadata-only paths import it too."""

from __future__ import annotations

PRICE_COLUMNS = ("open", "high", "low", "close")
BASE_COLUMNS = ["timestamp", *PRICE_COLUMNS, "volume"]  # every stored year has these
OPTIONAL_COLUMNS = ["adj_close"]  # daily and longer stock and FX series
VALUE_COLUMNS = [*BASE_COLUMNS[1:], *OPTIONAL_COLUMNS]  # everything but the timestamp
