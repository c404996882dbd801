"""Technical indicators over cached closes, computed by TA-Lib, warmed up before the range.

A value at the first bar in range must not depend on where the read began, so each indicator
is computed over `warmup` bars before `from` plus the range, and only the range is answered:

    sma, wma, bbands   TA-Lib's lookback (period - 1): exact, the window is all there is
    ema, macd, rsi     lookback + the bars after which the seed's weight (1 - a)^n is below
                       1e-12 (a = 2/(period+1) for EMAs, 1/period for RSI's Wilder smoothing):
                       about 14 x period for an EMA and 28 x period for RSI, so the answer
                       equals TA-Lib run over the whole history to 1e-9 relative

A bar without enough history before it (the start of the series) has a null value.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from marketcache.errors import UsageError

if TYPE_CHECKING:
    import pandas as pd

SEED_WEIGHT = 1e-12
MAX_PERIOD = 1000  # a bigger period asks a long warm-up read for a curve no one plots


@dataclass(frozen=True)
class Param:
    name: str
    default: float
    low: float
    high: float
    integer: bool = True


PARAMS: dict[str, tuple[Param, ...]] = {
    "sma": (Param("period", 20, 2, MAX_PERIOD),),
    "ema": (Param("period", 20, 2, MAX_PERIOD),),
    "wma": (Param("period", 20, 2, MAX_PERIOD),),
    "rsi": (Param("period", 14, 2, MAX_PERIOD),),
    "macd": (
        Param("fast", 12, 2, MAX_PERIOD),
        Param("slow", 26, 2, MAX_PERIOD),
        Param("signal", 9, 1, MAX_PERIOD),
    ),
    "bbands": (Param("period", 20, 2, MAX_PERIOD), Param("stddev", 2.0, 0.1, 10, False)),
}
OUTPUTS = {"macd": ("macd", "signal", "hist"), "bbands": ("upper", "middle", "lower")}
INDICATORS = tuple(PARAMS)


def parse_params(indicator: str, raw: dict[str, str]) -> dict[str, float]:
    """The indicator's parameters from query text; UsageError naming the one that is bad."""
    out: dict[str, float] = {}
    for p in PARAMS[indicator]:
        text = raw.get(p.name)
        if text is None:
            out[p.name] = p.default
            continue
        try:
            value = float(text) if not p.integer else int(text)
        except ValueError:
            kind = "a whole number" if p.integer else "a number"
            raise UsageError(f"{p.name}={text!r}: give {kind}") from None
        if not (p.low <= value <= p.high) or not math.isfinite(value):
            raise UsageError(f"{p.name}={text}: use {p.low:g} to {p.high:g}")
        out[p.name] = value
    if indicator == "macd" and out["fast"] >= out["slow"]:
        raise UsageError(f"fast={out['fast']:g} must be below slow={out['slow']:g}")
    return out


def _settle(alpha: float) -> int:
    """Bars after which a seed's weight (1 - alpha)^n is below SEED_WEIGHT."""
    return math.ceil(math.log(SEED_WEIGHT) / math.log(1.0 - alpha))


def lookback(indicator: str, params: dict[str, float]) -> int:
    """TA-Lib's own lookback: bars before the first value it defines."""
    from talib import abstract

    fn = abstract.Function(indicator.upper())  # type: ignore[attr-defined]
    fn.parameters = _talib_params(indicator, params)
    return int(fn.lookback)


def warmup(indicator: str, params: dict[str, float]) -> int:
    """Bars read before `from` so that the first value in range is settled (module doc)."""
    base = lookback(indicator, params)
    if indicator == "ema":
        return base + _settle(2.0 / (params["period"] + 1))
    if indicator == "rsi":
        return base + _settle(1.0 / params["period"])
    if indicator == "macd":
        return base + _settle(2.0 / (params["slow"] + 1)) + _settle(2.0 / (params["signal"] + 1))
    return base


def _talib_params(indicator: str, params: dict[str, float]) -> dict[str, Any]:
    if indicator == "macd":
        return {
            "fastperiod": int(params["fast"]),
            "slowperiod": int(params["slow"]),
            "signalperiod": int(params["signal"]),
        }
    if indicator == "bbands":
        sd = float(params["stddev"])
        return {"timeperiod": int(params["period"]), "nbdevup": sd, "nbdevdn": sd, "matype": 0}
    return {"timeperiod": int(params["period"])}


def compute(indicator: str, close: Any, params: dict[str, float]) -> dict[str, Any]:
    """{output name: float64 array} over `close` (a float64 array), TA-Lib's values."""
    import numpy as np
    import talib

    fn: Callable[..., Any] = getattr(talib, indicator.upper())
    result = fn(np.ascontiguousarray(close, dtype="float64"), **_talib_params(indicator, params))
    names = OUTPUTS.get(indicator, ("value",))
    arrays = result if isinstance(result, tuple) else (result,)
    return dict(zip(names, arrays, strict=True))


def as_json(
    frame: pd.DataFrame,
    name: str,
    params: dict[str, float],
    sym: str,
    tf: str,
    lo: pd.Timestamp | None,
    warm: int,
) -> bytes:
    """The answer of GET /indicators/{name}/{symbol}: the values from `lo` on (the warm-up bars
    before it computed, not answered), NaN as null."""
    import json

    import numpy as np

    from marketcache.serve.formats import _stamps

    values = compute(name, frame["close"].to_numpy("float64"), params)
    first = 0
    if lo is not None:
        ts = frame["timestamp"].to_numpy(dtype="datetime64[ns]")
        first = int(np.searchsorted(ts, np.datetime64(lo.value, "ns")))
    stamps = _stamps(frame.iloc[first:])
    columns = {k: v[first:].tolist() for k, v in values.items()}
    rows = [
        {"timestamp": t, **{k: (c[i] if c[i] == c[i] else None) for k, c in columns.items()}}
        for i, t in enumerate(stamps)
    ]
    return json.dumps(
        {
            "symbol": sym,
            "interval": tf,
            "indicator": name,
            "params": params,
            "warmup": min(first, warm),
            "values": rows,
        }
    ).encode()
