"""The follower: closed bars from a live source into the cache, none lost, doubled or partial.

Two threads: the source's (Binance streams for crypto, a poller for stocks/FX) and a worker
that, every `flush_every` seconds, (1) backfills over REST through the populate runner each
series whose source (re)connected, from `cache.last_stored(...)` up to the first bar the new
connection sent (Binance replays nothing); (2) commits each series' closed bars with one call
(`_store`, the series lock taken for that call only, so a cron `populate` interleaves) — a
series awaiting its backfill keeps its bars buffered, so no bar is stored after a hole; (3)
folds the live tail when due; (4) writes the heartbeat `info` lists. The forming bar is kept
in memory only. It implements `serve.live.LiveSource`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import pandas as pd

from marketcache.core.symbols import AssetClass
from marketcache.core.timeframes import parse_timeframe
from marketcache.errors import MarketCacheError
from marketcache.live.bars import LiveBar
from marketcache.live.series import (
    SeriesState,
    bars_of,
    check_series,
    flush_due,
    frame_of,
    last_stored,
    live_bar,
    ms_of,
    series_key,
    stamp_of,
)
from marketcache.live.stream import StreamBar, StreamClient, StreamEvent

if TYPE_CHECKING:
    from marketcache.cache.facade import UnifiedCache
    from marketcache.config.schema import Settings
    from marketcache.providers.base import Provider

log = logging.getLogger(__name__)

FOLD_CHECK = 30.0  # seconds between asking the cache whether a tail fold is due
FLUSH_THREADS = 16  # series committed at once by one flush
Event = dict[str, Any]


def _store(cache: UnifiedCache, symbol: str, timeframe: str, bars: pd.DataFrame) -> int:
    """Commit closed bars durably (the series' live tail), the series lock held for this call
    only; rows added."""
    return cache.append_live(symbol, timeframe, bars)


class Follower:
    """Follow `series` [(symbol, timeframe)] into `cache` until `stop()` (see the module)."""

    def __init__(
        self,
        cache: UnifiedCache,
        config: Settings | None = None,
        series: Iterable[tuple[str, str]] = (),
        *,
        flush_every: float = 2.0,
        on_event: Callable[[Event], None] | None = None,
        stale_after: float = 60.0,
        max_age: float = 23.5 * 3600,
        heartbeat_every: float = 5.0,
        backfill_lookback: pd.Timedelta | str = "1D",
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        ping_interval: float | None = 20.0,
        providers: dict[str, Provider] | None = None,
        clock: Callable[[], pd.Timestamp] | None = None,
    ) -> None:
        self.cache = cache
        self.settings = config if config is not None else cache.settings
        checked = check_series(self.settings, series)
        self.crypto = checked[0][2] is AssetClass.CRYPTO
        self.series: dict[tuple[str, str], SeriesState] = {
            (s, tf): SeriesState(s, tf, parse_timeframe(tf).minutes * 60_000)
            for s, tf, _ in checked
        }
        self.flush_every = max(0.01, float(flush_every))
        self.on_event = on_event or (lambda event: None)
        self.stale_after, self.max_age = stale_after, max_age
        self.heartbeat_every = heartbeat_every
        self.lookback = pd.Timedelta(backfill_lookback)
        self.backoff_base, self.backoff_cap = backoff_base, backoff_cap
        self.ping_interval = ping_interval
        self.id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.started_at = pd.Timestamp.now("UTC").tz_localize(None)
        self.reconnects = 0
        self._providers = providers
        self.clock = clock  # the poller's UTC clock (stocks/FX); None: the system's
        self._lock = threading.RLock()
        self._flush_lock = threading.Lock()
        self._pool: Any = None
        self._callbacks: list[Callable[[LiveBar], None]] = []
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._worker: threading.Thread | None = None
        self._source: Any = None
        self._last_fold = 0.0
        self._last_beat = 0.0
        self.heartbeat: Any = None
        self.failed: str | None = None  # why the worker stopped on its own (a bug)

    # ---- life ----------------------------------------------------------------------------

    def start(self) -> Follower:
        from marketcache.live.heartbeat import Heartbeat

        for state in self.series.values():
            found = last_stored(self.cache, state.symbol, state.timeframe)
            state.last_committed = None if found is None else ms_of(found)
        self.heartbeat = Heartbeat(self.cache.backend, self.id)
        self._source = self._make_source()
        self._worker = threading.Thread(target=self._work, name="marketcache-follow", daemon=True)
        self._worker.start()
        self._source.start()
        return self

    def _make_source(self) -> Any:
        if self.crypto:
            from marketcache.live.stream import STREAM_URL

            url = self.settings.providers["binance"].stream_url or STREAM_URL
            return StreamClient(
                url,
                list(self.series),
                self._on_bar,
                on_connect=self._on_connect,
                on_event=self._on_stream_event,
                stale_after=self.stale_after,
                max_age=self.max_age,
                backoff_base=self.backoff_base,
                backoff_cap=self.backoff_cap,
                ping_interval=self.ping_interval,
            )
        from marketcache.live.poll import Poller

        if self.clock is not None:
            return Poller(self, list(self.series), clock=self.clock)
        return Poller(self, list(self.series))

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the source, flush what is closed, remove the heartbeat. Idempotent."""
        if self._source is not None:
            self._source.stop()
        self._stop.set()
        self._wake.set()
        if self._worker is not None:
            self._worker.join(timeout)
            self._worker = None

    def __enter__(self) -> Follower:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until stopped (or `timeout`); whether it stopped."""
        return self._stop.wait(timeout)

    # ---- LiveSource ------------------------------------------------------------------------

    def follows(self, symbol: str, timeframe: str) -> bool:
        return series_key(symbol, timeframe) in self.series

    def forming_bar(self, symbol: str, timeframe: str) -> LiveBar | None:
        state = self.series.get(series_key(symbol, timeframe))
        if state is None:
            return None
        with self._lock:
            bar = state.forming
            done = max([state.last_committed or -1, *state.buffer])
        if bar is None or bar.open_ms <= done:
            return None
        return live_bar(state, bar, closed=False)

    def on_closed(self, callback: Callable[[LiveBar], None]) -> Callable[[], None]:
        with self._lock:
            self._callbacks.append(callback)

        def cancel() -> None:
            with self._lock:
                if callback in self._callbacks:
                    self._callbacks.remove(callback)

        return cancel

    def status(self) -> list[dict[str, Any]]:
        with self._lock:
            return [s.as_json() for s in self.series.values()]

    # ---- from the source (its thread) ------------------------------------------------------

    def _on_connect(self, conn: int, series: list[tuple[str, str]]) -> None:
        with self._lock:
            for key in series:
                state = self.series[key]
                state.needs_backfill, state.seam, state.next_backfill = True, None, 0.0

    def _on_bar(self, bar: StreamBar) -> None:
        state = self.series.get((bar.symbol, bar.timeframe))
        if state is None:
            return
        with self._lock:
            if state.needs_backfill and state.seam is None:
                state.seam = bar.open_ms
                if state.first_seam is None:
                    state.first_seam = bar.open_ms
                self._wake.set()
            if not bar.closed:
                state.forming = bar
                return
            if state.last_committed is None or bar.open_ms > state.last_committed:
                state.buffer.setdefault(bar.open_ms, bar)
                self._wake.set()
            if state.forming is not None and state.forming.open_ms <= bar.open_ms:
                state.forming = None

    def _on_stream_event(self, event: StreamEvent) -> None:
        if event.kind == "reconnect":
            with self._lock:
                self.reconnects += 1
                for key in set(event.series) & set(self.series):  # that connection's only
                    self.series[key].reconnects += 1
        self._emit(event.kind, conn=event.conn, **event.detail)

    def take_polled(self, symbol: str, timeframe: str, frame: pd.DataFrame) -> None:
        """The poller's closed bars (a `timestamp` column and OHLCV), through the same path."""
        state = self.series[(symbol, timeframe)]
        now = time.monotonic()
        with self._lock:
            for bar in bars_of(frame, state, now):
                if state.last_committed is None or bar.open_ms > state.last_committed:
                    state.buffer.setdefault(bar.open_ms, bar)
            state.needs_backfill = False
        self._wake.set()

    # ---- the worker ------------------------------------------------------------------------

    def _work(self) -> None:
        last = float("-inf")  # when the last flush began
        try:
            while not self._stop.is_set():
                self._backfills()
                with self._lock:
                    due = flush_due(self.series.values(), last, self.flush_every)
                if due is not None and time.monotonic() >= due:
                    last = time.monotonic()
                    self._flush()
                self._housekeeping()
                wait = 1.0 if due is None else due - time.monotonic()
                self._wake.wait(max(0.0, min(wait, 1.0)))
                self._wake.clear()
            self._backfills(final=True)
            self._flush()
            self._fold(force=False)
        except Exception as exc:  # a bug must be told, not leave a silent follower
            log.exception("follower worker failed")
            self.failed = f"internal error {type(exc).__name__}: {exc}"
            self._emit("error", error=self.failed)
            self._stop.set()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
            if self.heartbeat is not None:
                self.heartbeat.remove()

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if now - self._last_fold >= FOLD_CHECK:
            self._last_fold = now
            self._fold(force=False)
        if now - self._last_beat >= self.heartbeat_every:
            self._last_beat = now
            self.beat()

    def beat(self) -> None:
        try:
            self.heartbeat.write(self._heartbeat_body())
        except Exception as exc:  # a heartbeat is advice: never stop following for it
            log.warning("heartbeat not written: %s", exc)

    def _heartbeat_body(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": self.started_at.isoformat(),
            "updated_at": pd.Timestamp.now("UTC").tz_localize(None).isoformat(),
            "every": self.heartbeat_every,
            "reconnects": self.reconnects,
            "series": self.status(),
        }

    def _backfills(self, *, final: bool = False) -> None:
        now = time.monotonic()
        for state in list(self.series.values()):
            with self._lock:
                due = state.needs_backfill and state.seam is not None
                due = due and (final or now >= state.next_backfill)
                seam = state.seam
            if due and seam is not None and not (self._stop.is_set() and not final):
                self._backfill(state, seam)

    def _backfill(self, state: SeriesState, seam: int) -> None:
        """Fill [last stored + 1 bar, seam) over REST with the populate runner."""
        from marketcache.live.stream import backoff
        from marketcache.pipeline.jobs import Job, PopulateRequest
        from marketcache.pipeline.populate import run_populate
        from marketcache.providers.registry import build_providers

        found = last_stored(self.cache, state.symbol, state.timeframe)
        start = (
            found + pd.Timedelta(milliseconds=state.step_ms)
            if found is not None
            else stamp_of(seam) - self.lookback
        )
        end = stamp_of(seam)
        rows = 0
        if start < end:
            if self._providers is None:
                self._providers = build_providers(self.settings, self.cache.state_dir)
            request = PopulateRequest(symbols=[state.symbol], timeframes=state.timeframe)
            job = Job(state.symbol, state.timeframe, start, end)
            report = run_populate(self.cache, [job], request, providers=self._providers)
            result = report.results[0] if report.results else None
            if result is None or result.status in ("failed", "locked"):
                why = "; ".join(result.errors) if result is not None else "no result"
                with self._lock:
                    state.backfill_failures += 1
                    state.next_backfill = time.monotonic() + backoff(
                        state.backfill_failures, base=self.backoff_base, cap=self.backoff_cap
                    )
                self._emit("error", symbol=state.symbol, timeframe=state.timeframe,
                           error=f"backfill failed: {why}")  # fmt: skip
                return
            rows = result.rows_added
        stored = last_stored(self.cache, state.symbol, state.timeframe)
        with self._lock:
            if state.seam == seam:  # no reconnect meanwhile
                state.needs_backfill = False
            state.backfill_failures = 0
            if stored is not None:
                state.last_committed = max(state.last_committed or -1, ms_of(stored))
                for ms in [m for m in state.buffer if m <= state.last_committed]:
                    del state.buffer[ms]
            state.bars += rows
        self._emit("backfill", symbol=state.symbol, timeframe=state.timeframe, rows=rows,
                   start=start.isoformat(), end=end.isoformat())  # fmt: skip
        if rows:
            self._tell_backfilled(state, start, end)

    def _tell_backfilled(self, state: SeriesState, start: pd.Timestamp, end: pd.Timestamp) -> None:
        """Subscribers hear of the bars a reconnect backfilled (not of the history before
        the first connection: that is what `get` is for)."""
        if not self._callbacks or state.first_seam is None:
            return
        start = max(start, stamp_of(state.first_seam))
        if start >= end:
            return
        frame = self.cache.get(state.symbol, state.timeframe, start, end)
        for row in frame.to_dict("records"):
            self._tell(LiveBar(state.symbol, state.timeframe, row, True))

    def flush_now(self) -> None:
        """Commit what is closed now, from the caller's thread (get_ohlcv(live=True))."""
        self._flush()

    def _flush(self) -> None:
        with self._flush_lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        """One `_store` per series with closed bars, up to FLUSH_THREADS at once (each series
        under its own lock: on object storage an append is a few round trips)."""
        due = []
        with self._lock:
            for state in self.series.values():
                if not state.needs_backfill and state.buffer:
                    due.append((state, [state.buffer[ms] for ms in sorted(state.buffer)]))
        if len(due) > 1:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                size = min(FLUSH_THREADS, len(self.series))
                self._pool = ThreadPoolExecutor(size, thread_name_prefix="marketcache-flush")
            list(self._pool.map(lambda job: self._commit(*job), due))
        elif due:
            self._commit(*due[0])

    def _commit(self, state: SeriesState, bars: list[StreamBar]) -> None:
        try:
            added = _store(self.cache, state.symbol, state.timeframe, frame_of(bars))
        except MarketCacheError as exc:
            self._emit("error", symbol=state.symbol, timeframe=state.timeframe,
                       error=f"commit failed (kept, retried next flush): {exc}")  # fmt: skip
            return
        done = time.monotonic()
        with self._lock:
            for bar in bars:
                state.buffer.pop(bar.open_ms, None)
            state.last_committed = max(state.last_committed or -1, bars[-1].open_ms)
            state.lag = done - bars[-1].received if bars[-1].received else None
            state.bars += added
        for bar in bars:
            lag = round(done - bar.received, 3) if bar.received else None
            self._emit("bar", symbol=state.symbol, timeframe=state.timeframe,
                       timestamp=stamp_of(bar.open_ms).isoformat(), open=bar.open,
                       high=bar.high, low=bar.low, close=bar.close, volume=bar.volume,
                       lag=lag)  # fmt: skip
            self._tell(live_bar(state, bar, closed=True))

    def _fold(self, *, force: bool) -> None:
        for state in self.series.values():
            try:
                self.cache.fold_live(state.symbol, state.timeframe, force=force)
            except MarketCacheError as exc:
                self._emit("error", symbol=state.symbol, timeframe=state.timeframe,
                           error=f"fold failed (the tail is kept): {exc}")  # fmt: skip

    def _tell(self, bar: LiveBar) -> None:
        with self._lock:
            callbacks = list(self._callbacks)
        for callback in callbacks:
            try:
                callback(bar)
            except Exception:  # a subscriber's bug must not stop the follower
                log.exception("on_closed callback failed")

    def _emit(self, kind: str, **detail: Any) -> None:
        event = {"event": kind, "at": pd.Timestamp.now("UTC").tz_localize(None).isoformat()}
        event.update(detail)
        try:
            self.on_event(event)
        except Exception:
            log.exception("on_event callback failed")
