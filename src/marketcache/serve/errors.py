"""The API's errors: one JSON shape, `{"error": message, "status": code}`, never a traceback.

400  a bad parameter (the message names it)          UsageError, an unknown parameter
401  no token or a wrong one (see auth.py)
404  an unknown symbol, timeframe, indicator or path  NotFound
503  a corrupt year (named) or an unreachable backend  CorruptFile, StorageError
500  anything else (logged as one line, not echoed)
"""

from __future__ import annotations

import logging
from typing import Any

from marketcache.errors import CorruptFile, LockTimeout, MarketCacheError, StorageError, UsageError

log = logging.getLogger("marketcache.serve")


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class NotFound(ApiError):
    def __init__(self, message: str) -> None:
        super().__init__(404, message)


def status_of(exc: BaseException) -> tuple[int, str]:
    """The status and message an exception answers with."""
    if isinstance(exc, ApiError):
        return exc.status, exc.message
    if isinstance(exc, UsageError):
        return 400, str(exc)
    if isinstance(exc, CorruptFile):
        return 503, f"corrupt data, not served: {exc} (run marketcache validate)"
    if isinstance(exc, LockTimeout | StorageError):
        return 503, f"the cache cannot be read now: {exc}"
    if isinstance(exc, MarketCacheError):
        return 503, str(exc)
    log.error("internal error: %s: %s", type(exc).__name__, exc)
    return 500, f"internal error ({type(exc).__name__}); the server log has details"


def body(status: int, message: str) -> dict[str, Any]:
    return {"error": message.splitlines()[0] if message else "error", "status": status}
