"""What the follower knows of each series, and what it checks before following: the series
(asset class, timeframe), the symbols (Binance asked once), the last stored bar."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd

from marketcache.core.symbols import AssetClass, normalize_symbol
from marketcache.core.timeframes import parse_timeframe
from marketcache.errors import MarketCacheError, UsageError
from marketcache.live.bars import LiveBar
from marketcache.live.stream import StreamBar

if TYPE_CHECKING:
    from collections.abc import Iterable

    from marketcache.cache.facade import UnifiedCache
    from marketcache.config.schema import Settings

STREAM_TIMEFRAMES = ("1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d")


def last_stored(cache: UnifiedCache, symbol: str, timeframe: str) -> pd.Timestamp | None:
    """The open time of the series' last stored bar (its live tail included)."""
    return cache.last_stored(symbol, timeframe)


def ms_of(ts: pd.Timestamp) -> int:
    return int(ts.value // 1_000_000)


def stamp_of(ms: int) -> pd.Timestamp:
    return pd.Timestamp(ms, unit="ms")


def _utc_text(ms: int | None) -> str | None:
    return None if ms is None else stamp_of(ms).isoformat()


@dataclass
class SeriesState:
    """What the follower knows of one series."""

    symbol: str
    timeframe: str
    step_ms: int
    buffer: dict[int, StreamBar] = field(default_factory=dict)  # closed, not committed yet
    forming: StreamBar | None = None
    last_committed: int | None = None  # open ms of the last stored bar
    seam: int | None = None  # first bar of the current connection: backfill up to it
    first_seam: int | None = None  # the first connection's: subscribers hear from it on
    needs_backfill: bool = True
    backfill_failures: int = 0
    next_backfill: float = 0.0
    lag: float | None = None  # seconds from the close message to its commit, last flush
    reconnects: int = 0
    bars: int = 0  # closed bars committed by this follower (stream and backfill)

    def as_json(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol,
            "timeframe": self.timeframe,
            "last_bar": _utc_text(self.last_committed),
            "lag": None if self.lag is None else round(self.lag, 3),
            "reconnects": self.reconnects,
            "bars": self.bars,
            "backfilling": self.needs_backfill,
        }


def check_series(
    settings: Settings, series: Iterable[tuple[str, str]]
) -> list[tuple[str, str, AssetClass]]:
    """Normalised (symbol, timeframe, asset class); UsageError for what cannot be followed."""
    from marketcache.core.symbols import classify

    out: list[tuple[str, str, AssetClass]] = []
    for raw, tf_text in series:
        sym = normalize_symbol(raw)
        tf = parse_timeframe(tf_text)
        conf = settings.symbol(sym)
        asset = classify(sym, conf.type.value if conf.type else None)
        if asset is AssetClass.CRYPTO and tf.name not in STREAM_TIMEFRAMES:
            raise UsageError(
                f"{sym} -t {tf.name}: Binance streams {', '.join(STREAM_TIMEFRAMES)} only"
            )
        if asset is not AssetClass.CRYPTO and not tf.is_intraday:
            raise UsageError(
                f"{sym} -t {tf.name}: follow polls intraday bars only (use populate for daily)"
            )
        if (sym, tf.name, asset) not in out:
            out.append((sym, tf.name, asset))
    if not out:
        raise UsageError("follow needs at least one SYMBOL (or --symbols-file)")
    kinds = {a is AssetClass.CRYPTO for _, _, a in out}
    if len(kinds) > 1:
        raise UsageError(
            "cannot follow crypto and stock/FX series in one run (streams vs polling): "
            "start one `follow` for each"
        )
    return out


def probe_symbols(settings: Settings, series: list[tuple[str, str, AssetClass]]) -> None:
    """Ask Binance once per crypto symbol for its newest kline: UsageError for a symbol it
    does not list. A network failure is no verdict (the follower retries on its own)."""
    import requests

    from marketcache.pipeline.selector import native_symbol

    conf = settings.providers["binance"]
    for sym in dict.fromkeys(s for s, _, a in series if a is AssetClass.CRYPTO):
        native = native_symbol(sym, "binance", AssetClass.CRYPTO, settings)
        params: dict[str, str | int] = {"symbol": native, "interval": "1m", "limit": 1}
        try:
            answer = requests.get(
                f"{conf.base_url}/api/v3/klines",
                params=params,
                timeout=min(conf.timeout, 10.0),
            )
            body = answer.json() if answer.status_code == 400 else None
        except (requests.RequestException, ValueError):
            continue
        if isinstance(body, dict) and body.get("code") == -1121:
            raise UsageError(
                f"{sym}: Binance does not list this symbol ({conf.base_url}): check its spelling"
            )


def frame_of(bars: list[StreamBar]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "timestamp": pd.to_datetime([b.open_ms for b in bars], unit="ms").astype(
                "datetime64[ns]"
            ),
            "open": [b.open for b in bars],
            "high": [b.high for b in bars],
            "low": [b.low for b in bars],
            "close": [b.close for b in bars],
            "volume": [b.volume for b in bars],
        }
    )


def series_key(symbol: str, timeframe: str) -> tuple[str, str]:
    """(SYMBOL, timeframe) normalised; as given when it cannot be (then it is followed by none)."""
    try:
        return normalize_symbol(symbol), parse_timeframe(timeframe).name
    except MarketCacheError:
        return symbol, timeframe


def live_bar(state: SeriesState, bar: StreamBar, *, closed: bool) -> LiveBar:
    row: dict[str, Any] = {"timestamp": stamp_of(bar.open_ms), **bar.as_row()}
    return LiveBar(state.symbol, state.timeframe, row, closed)


def bars_of(frame: pd.DataFrame, state: SeriesState, received: float) -> list[StreamBar]:
    """A polled frame (`timestamp` and OHLCV) as closed StreamBars of the series."""
    stamps = pd.to_datetime(frame["timestamp"]).astype("datetime64[ns]")
    opens = (stamps.astype("int64") // 1_000_000).tolist()
    o, h, lo, c = (frame[col].astype(float).tolist() for col in ("open", "high", "low", "close"))
    volume = frame["volume"].astype(float).fillna(0.0).tolist()
    sym, tf, step = state.symbol, state.timeframe, state.step_ms
    return [
        StreamBar(sym, tf, ms, o[i], h[i], lo[i], c[i], volume[i], True, ms + step, 0, received)
        for i, ms in enumerate(opens)
    ]


BATCH = 0.25  # seconds a flush waits after the first close it commits, so closes arriving
# together (every series closes on the same minute) go in one flush


def flush_due(states: Iterable[SeriesState], last: float, every: float) -> float | None:
    """When the next flush is due (monotonic seconds), None with nothing to commit: shortly
    after the oldest waiting close, and at most once per `every` (one commit per series)."""
    waiting = [b.received for s in states if not s.needs_backfill for b in s.buffer.values()]
    if not waiting:
        return None
    return max(min(waiting) + min(BATCH, every), last + every)
