"""The bars of the fake market: a pure function of (seed, symbol, interval, open time, as of).

Every minute of a symbol has its own path, derived by hashing (seed, symbol, minute): it opens
at an anchor price A(m) and closes at A(m + 1) (so each close is the next open), reaching its
high and its low at hashed instants in between, with volume and trades accruing linearly. A
bar of any interval aggregates its minutes; a bar asked "as of" an instant inside it is the
prefix of that path (the forming bar), so the bar a stream sends at its close equals the REST
kline for that open time, and every partial bar is consistent with the final one.

Prices are integer cents (a 0.01 tick), volumes integer units of 1e-8, so that sums are exact
and both faces print the same strings ("100.23000000", as Binance does).
"""

from __future__ import annotations

import itertools
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

MINUTE = 60_000
INTERVAL_MS = {"1m": MINUTE, "3m": 3 * MINUTE, "5m": 5 * MINUTE, "15m": 15 * MINUTE,
               "30m": 30 * MINUTE, "1h": 60 * MINUTE, "2h": 120 * MINUTE, "4h": 240 * MINUTE,
               "6h": 360 * MINUTE, "8h": 480 * MINUTE, "12h": 720 * MINUTE,
               "1d": 1440 * MINUTE}  # fmt: skip

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 over a uint64 array: a deterministic hash, the same in every process."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _px(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}000000"


def _qty(units: int) -> str:
    return f"{units // 100_000_000}.{units % 100_000_000:08d}"


@dataclass(frozen=True)
class Kline:
    """One kline as Binance knows it; prices in cents, volumes in 1e-8 units."""

    symbol: str
    interval: str
    t: int  # open time, ms
    T: int  # close time, ms (t + step - 1, also for the forming bar)
    o: int
    h: int
    l: int  # noqa: E741 - Binance's own field name
    c: int
    v: int  # base volume
    q: int  # quote volume
    V: int  # taker buy base volume
    Q: int  # taker buy quote volume
    n: int  # trades
    f: int  # first trade id (-1 without trades)
    L: int  # last trade id (-1 without trades)
    closed: bool

    def rest_row(self) -> list[Any]:
        """The row of GET /api/v3/klines."""
        return [self.t, _px(self.o), _px(self.h), _px(self.l), _px(self.c), _qty(self.v),
                self.T, _qty(self.q), self.n, _qty(self.V), _qty(self.Q), "0"]  # fmt: skip

    def stream_k(self) -> dict[str, Any]:
        """The `k` object of a kline stream event."""
        return {"t": self.t, "T": self.T, "s": self.symbol, "i": self.interval, "f": self.f,
                "L": self.L, "o": _px(self.o), "c": _px(self.c), "h": _px(self.h),
                "l": _px(self.l), "v": _qty(self.v), "n": self.n, "x": self.closed,
                "q": _qty(self.q), "V": _qty(self.V), "Q": _qty(self.Q), "B": "0"}  # fmt: skip

    def event(self, event_time: int) -> dict[str, Any]:
        """The raw stream payload (`data` of a combined stream message)."""
        return {"e": "kline", "E": event_time, "s": self.symbol, "k": self.stream_k()}

    @property
    def timestamp(self) -> pd.Timestamp:
        return pd.Timestamp(self.t, unit="ms")


class Tape:
    """The paths of one market (one seed): klines of any listed symbol, interval, instant."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._cache: dict[tuple[str, int], dict[str, int]] = {}

    def _key(self, symbol: str) -> int:
        return (zlib.crc32(symbol.encode()) << 20) ^ (self.seed * 0x2545F491)

    def minutes(self, symbol: str, m: np.ndarray) -> dict[str, np.ndarray]:
        """Each minute's path parameters for minute indexes `m` (open ms // 60,000)."""
        key = np.uint64(self._key(symbol))
        mu = m.astype(np.uint64)

        def h(j: int, at: np.ndarray = mu) -> np.ndarray:
            with np.errstate(over="ignore"):
                return _mix(_mix(key ^ (at * _GOLDEN)) + np.uint64(j)).astype(np.uint64)

        base = 1000 + zlib.crc32(symbol.encode()) % 5_000_000  # $10 – $50,010
        jit = max(1, base // 2000)
        phase = (self._key(symbol) % 1000) / 1000 * 2 * np.pi

        def anchor(at: np.ndarray) -> np.ndarray:
            x = at.astype(np.float64)
            wave = 0.02 * np.sin(2 * np.pi * x / 1440 + phase) + 0.01 * np.sin(x / 9.7 + phase)
            noise = (h(0, at.astype(np.uint64)) % np.uint64(2 * jit + 1)).astype(np.int64) - jit
            return np.rint(base * (1 + wave)).astype(np.int64) + noise

        o, c = anchor(m), anchor(m + 1)
        spread = np.uint64(2 * jit + 1)
        hi = np.maximum(o, c) + (h(1) % spread).astype(np.int64)
        lo = np.maximum(1, np.minimum(o, c) - (h(2) % spread).astype(np.int64))
        high_first = (h(3) & np.uint64(1)).astype(bool)
        vol = 1_000_000 + (h(6) % np.uint64(5_000_000_000)).astype(np.int64)
        return {
            "m": m, "o": o, "c": c, "hi": hi, "lo": lo,
            "s1": 5_000 + (h(4) % np.uint64(25_000)).astype(np.int64),
            "s2": 31_000 + (h(5) % np.uint64(24_000)).astype(np.int64),
            "x1": np.where(high_first, hi, lo), "x2": np.where(high_first, lo, hi),
            "vol": vol, "n": 1 + (h(7) % np.uint64(500)).astype(np.int64),
            "share": (h(8) % np.uint64(1001)).astype(np.int64),
        }  # fmt: skip

    def closed(self, symbol: str, interval: str, opens: np.ndarray) -> list[Kline]:
        """The final klines of the bars opening at `opens` (ms, aligned), vectorised."""
        if len(opens) == 0:
            return []
        step = INTERVAL_MS[interval]
        k = step // MINUTE
        m = ((opens // MINUTE)[:, None] + np.arange(k)[None, :]).ravel()
        p = self.minutes(symbol, m)
        mid = (p["o"] + p["c"]) // 2
        taker = p["vol"] * p["share"] // 1000
        shape = (len(opens), k)

        def agg(a: np.ndarray, how: str) -> np.ndarray:
            return np.asarray(getattr(a.reshape(shape), how)(axis=1))

        cols = {
            "o": p["o"].reshape(shape)[:, 0], "c": p["c"].reshape(shape)[:, -1],
            "h": agg(p["hi"], "max"), "l": agg(p["lo"], "min"), "v": agg(p["vol"], "sum"),
            "q": agg(p["vol"] * mid // 100, "sum"), "V": agg(taker, "sum"),
            "Q": agg(taker * mid // 100, "sum"), "n": agg(p["n"], "sum"),
        }  # fmt: skip
        last = m.reshape(shape)[:, -1] * 1000 + p["n"].reshape(shape)[:, -1] - 1
        rows = zip(*(cols[c].tolist() for c in "ochlvqVQn"), last.tolist(), strict=True)
        bars = []
        for t, (o, c, h, lo, v, q, V, Q, n, L) in zip(opens.tolist(), rows, strict=True):
            first = (t // MINUTE) * 1000
            bars.append(Kline(symbol, interval, t, t + step - 1, o, h, lo, c, v, q, V, Q, n, first, L, True))  # fmt: skip
        return bars

    def kline(self, symbol: str, interval: str, t: int, as_of: int) -> Kline:
        """The bar opening at `t` as it stands at `as_of` (final once as_of >= t + step).

        Minute by minute, from cached minute parameters: a stream asks this every few market
        seconds for every stream it serves, so it must be cheap (REST pages use `closed`)."""
        step = INTERVAL_MS[interval]
        if as_of < t:
            raise ValueError(f"{symbol} {interval} bar {t} has not opened at {as_of}")
        end = min(as_of, t + step)
        current = end // MINUTE
        whole = range(t // MINUTE, current)
        if len(whole) > 32:  # a long bar: its whole minutes in one vectorised piece
            ks = self.closed(symbol, "1m", np.arange(t, current * MINUTE, MINUTE))
            parts = [{"o": ks[0].o, "c": ks[-1].c, "h": max(k.h for k in ks),
                      "l": min(k.l for k in ks), "v": sum(k.v for k in ks),
                      "q": sum(k.q for k in ks), "V": sum(k.V for k in ks),
                      "Q": sum(k.Q for k in ks), "n": sum(k.n for k in ks),
                      "f": ks[0].f, "L": ks[-1].L}]  # fmt: skip
        else:
            parts = [self._partial(symbol, m, MINUTE) for m in whole]
        if end > current * MINUTE or not parts:
            parts.append(self._partial(symbol, current, end - current * MINUTE))
        ops = {"h": max, "l": min}
        merged = {
            f: ops.get(f, sum)(part[f] for part in parts)
            for f in ("h", "l", "v", "q", "V", "Q", "n")
        }
        traded = [part for part in parts if part["n"]]
        return Kline(symbol, interval, t, t + step - 1, parts[0]["o"], merged["h"], merged["l"],
                     parts[-1]["c"], merged["v"], merged["q"], merged["V"], merged["Q"],
                     merged["n"], traded[0]["f"] if traded else -1,
                     traded[-1]["L"] if traded else -1, as_of >= t + step)  # fmt: skip

    def _minute(self, symbol: str, m: int) -> dict[str, int]:
        """Minute `m`'s parameters as ints, cached (bounded)."""
        key = (symbol, m)
        found = self._cache.get(key)
        if found is None:
            if len(self._cache) > 100_000:
                self._cache.clear()
            arrays = self.minutes(symbol, np.array([m], dtype=np.int64))
            found = self._cache[key] = {k: int(v[0]) for k, v in arrays.items()}
        return found

    def _partial(self, symbol: str, m: int, u: int) -> dict[str, int]:
        """Minute `m` as of `u` ms after its open (u = 60,000: the whole minute, the same
        values as `closed` gives)."""
        p = self._minute(symbol, m)
        points = [(0, p["o"]), (p["s1"], p["x1"]), (p["s2"], p["x2"]), (MINUTE, p["c"])]
        price = p["o"]
        for (sa, a), (sb, b) in itertools.pairwise(points):
            if sa <= u <= sb:
                price = a + (2 * (b - a) * (u - sa) + (sb - sa)) // (2 * (sb - sa))
                break
        seen = [x for s, x in points if s <= u] + [price]
        vol = p["vol"] * u // MINUTE
        trades = (p["n"] * u + MINUTE - 1) // MINUTE  # 0 only at the very open
        mid = (p["o"] + price) // 2
        taker = vol * p["share"] // 1000
        return {"o": p["o"], "c": price, "h": max(seen), "l": min(seen), "v": vol,
                "q": vol * mid // 100, "V": taker, "Q": taker * mid // 100, "n": trades,
                "f": m * 1000, "L": m * 1000 + trades - 1}  # fmt: skip


def frame(klines: list[Kline]) -> pd.DataFrame:
    """Klines as the cache stores them: timestamp, open, high, low, close, volume (floats)."""
    return pd.DataFrame(
        {
            "timestamp": pd.to_datetime([k.t for k in klines], unit="ms").astype("datetime64[ns]"),
            **{name: [float(getattr(k, f)) / 100 for k in klines]
               for name, f in (("open", "o"), ("high", "h"), ("low", "l"), ("close", "c"))},
            "volume": [float(_qty(k.v)) for k in klines],
        }
    )  # fmt: skip
