"""How values read in a table cell or a JSON document: sizes, scores, short timestamps,
fundamentals values (789019, not 789019.0; epoch fields as dates), flattened CSV keys."""

from __future__ import annotations

import re
from dataclasses import asdict, is_dataclass
from typing import Any


def size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


def score(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def short(ts: str | None) -> str:
    if not ts:
        return "-"
    return ts[:10] if ts.endswith("T00:00:00") else ts.replace("T", " ")[:16]


def elapsed(started: str, finished: str) -> str:
    from datetime import datetime

    try:
        seconds = (
            datetime.fromisoformat(finished) - datetime.fromisoformat(started)
        ).total_seconds()
    except ValueError:
        return "-"
    minutes, secs = divmod(max(seconds, 0.0), 60)
    return f"{int(minutes)}m {secs:04.1f}s" if minutes else f"{secs:.1f}s"


def plain(obj: Any) -> Any:
    if is_dataclass(obj) and not isinstance(obj, type):
        return {k: plain(v) for k, v in asdict(obj).items()}
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    return obj


def flat(document: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys (`backend.format`), for CSV cells that hold one value."""
    out: dict[str, Any] = {}
    for key, value in document.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# Provider fields that hold a Unix time (Yahoo's exDividendDate, lastFiscalYearEnd,
# regularMarketTime, firstTradeDateEpochUtc…): shown as ISO dates, not as 1731628800.
EPOCH_FIELD = re.compile(r"(date|time|timestamp|quarter|yearend)$|epoch", re.IGNORECASE)


def field_value(name: str, value: Any) -> str:
    """A fundamentals value as a person reads it: 789019 (not 789019.0), dates as dates."""
    from datetime import UTC, datetime

    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if EPOCH_FIELD.search(name) and 1e8 <= value < 1e10 and float(value).is_integer():
        when = datetime.fromtimestamp(value, UTC)
        if (when.hour, when.minute, when.second) == (0, 0, 0):
            return when.date().isoformat()
        return when.isoformat().replace("+00:00", "Z")
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)
