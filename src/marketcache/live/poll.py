"""Stocks and FX: poll the series' intraday provider shortly after each bar closes.

`settings.poll_delay` seconds (default 20) after a bar's close, and only for bars the calendar
says the market prints (a closed market costs no request), the series' provider chain is asked
for the bars since the last stored one; what comes back goes through the follower's flush
path (`Follower.take_polled`). Requests go through the provider's own session, so its rate
limit (shared by every marketcache process on the machine) holds.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import pandas as pd

from marketcache.core.timeframes import Timeframe
from marketcache.errors import MarketCacheError

log = logging.getLogger(__name__)


def _delta(tf: Timeframe) -> pd.Timedelta:
    return pd.Timedelta(minutes=tf.minutes)


def utcnow() -> pd.Timestamp:
    from marketcache.core.models import utcnow as now

    return now()


def due_bars(
    calendar: str,
    tf: Timeframe,
    after: pd.Timestamp | None,
    now: pd.Timestamp,
    delay: float,
    lookback: pd.Timedelta,
) -> pd.DatetimeIndex:
    """Open times of the bars after `after` that the market printed and that closed at least
    `delay` seconds before `now` (empty while the market is closed)."""
    from marketcache.core.calendars import expected_bars

    settled = now - pd.Timedelta(seconds=delay) - _delta(tf)
    begin = after + _delta(tf) if after is not None else now - lookback
    if begin > settled:
        return pd.DatetimeIndex([], dtype="datetime64[ns]")
    return expected_bars(calendar, tf, begin, settled + pd.Timedelta(microseconds=1))


class Poller:
    """The follower's source for stock/FX series (a thread polling on the calendar)."""

    def __init__(
        self,
        follower: Any,  # the Follower (live/follower.py) that owns it and takes the bars
        series: list[tuple[str, str]],
        *,
        clock: Callable[[], pd.Timestamp] = utcnow,
        tick: float = 1.0,
    ) -> None:
        self.follower = follower
        self.series = series
        self.clock = clock
        self.tick = tick
        self.delay = follower.settings.options.poll_delay
        self.requests = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._providers: dict[str, Any] | None = None
        self._retry: dict[tuple[str, str], pd.Timestamp] = {}

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="marketcache-poll", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            for sym, tf in self.series:
                if self._stop.is_set():
                    break
                try:
                    self.poll(sym, tf)
                except Exception as exc:  # one series' failure never stops the others
                    self.follower._emit(
                        "error", symbol=sym, timeframe=tf, error=f"poll failed: {exc}"
                    )
                    self._retry[(sym, tf)] = self.clock() + pd.Timedelta(seconds=30)
            self._stop.wait(self.tick)

    def poll(self, symbol: str, timeframe: str) -> int:
        """Ask for the due bars of one series; how many came back."""
        from marketcache.pipeline.selector import select
        from marketcache.providers.registry import build_providers

        now = self.clock()
        retry = self._retry.get((symbol, timeframe))
        if retry is not None and now < retry:
            return 0
        cache, tf = self.follower.cache, Timeframe(timeframe)
        state = self.follower.series[(symbol, timeframe)]
        after = (
            None if state.last_committed is None else pd.Timestamp(state.last_committed, unit="ms")
        )
        pending = [pd.Timestamp(ms, unit="ms") for ms in state.buffer]
        if pending:
            after = max([after, *pending]) if after is not None else max(pending)
        due = due_bars(cache.profile(symbol).calendar, tf, after, now, self.delay,
                       self.follower.lookback)  # fmt: skip
        if due.empty:
            return 0
        if self._providers is None:
            self._providers = build_providers(self.follower.settings, cache.state_dir)
        providers = self._providers
        chain = select(symbol, timeframe, self.follower.settings,
                       {n: p.capabilities for n, p in providers.items()},
                       {n: p.available() for n, p in providers.items()})  # fmt: skip
        errors = []
        for choice in chain:
            try:
                found = providers[choice.provider].fetch(
                    choice.symbol, tf, due[0], due[-1] + _delta(tf)
                )
            except MarketCacheError as exc:
                errors.append(f"{choice.provider}: {exc}")
                continue
            self.requests += found.requests
            frame = found.frame
            if len(frame):
                self.follower.take_polled(symbol, timeframe, frame)
                self._retry.pop((symbol, timeframe), None)
            else:  # not there yet: ask again a bar later, not every tick
                self._retry[(symbol, timeframe)] = now + max(_delta(tf), pd.Timedelta(seconds=30))
            return len(frame)
        raise MarketCacheError("; ".join(errors) or "no provider can serve it")
