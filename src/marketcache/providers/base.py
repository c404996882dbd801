"""The Provider base class: capabilities, paging with retries, and the canonical frame.

Subclasses implement `_fetch_page` (one request, third-party errors mapped to ours) and
`_next_page` (where the next page starts); everything else lives here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from marketcache.config.schema import ProviderSettings
from marketcache.core.actions import Dividend, Split
from marketcache.core.columns import BASE_COLUMNS, OPTIONAL_COLUMNS
from marketcache.core.models import utcnow
from marketcache.core.symbols import AssetClass
from marketcache.core.timeframes import Timeframe
from marketcache.core.validate import sound_rows
from marketcache.errors import ProviderUnavailable, RangeUnavailable
from marketcache.providers.http import TimeoutSession, with_retries

CANONICAL = BASE_COLUMNS


@dataclass(frozen=True)
class Capabilities:
    """What a provider can serve: timeframes, how far back, for which asset classes."""

    timeframes: frozenset[str]
    asset_classes: frozenset[AssetClass]
    history_window: dict[str, timedelta] = field(default_factory=dict)
    needs_key: bool = False

    def earliest(self, timeframe: str, now: pd.Timestamp | None = None) -> pd.Timestamp | None:
        window = self.history_window.get(timeframe)
        if window is None:
            return None
        return (now if now is not None else utcnow()) - pd.Timedelta(window) + pd.Timedelta(hours=1)


@dataclass
class Page:
    """One answer: its bars (canonical frame) and whether the provider has more after it."""

    frame: pd.DataFrame
    more: bool
    next_start: pd.Timestamp | None = None  # for services that page by time window
    events: Events | None = None  # corporate actions the answer carried


@dataclass
class Events:
    """Splits and dividends (as traded) an answer reported, and the sessions it covered."""

    splits: list[Split] = field(default_factory=list)
    dividends: list[Dividend] = field(default_factory=list)
    checked_through: str | None = None  # the answer covered actions up to this day

    def add(self, other: Events) -> None:
        self.splits += [s for s in other.splits if s not in self.splits]
        self.dividends += [d for d in other.dividends if d not in self.dividends]
        if other.checked_through and other.checked_through > (self.checked_through or ""):
            self.checked_through = other.checked_through


@dataclass
class FetchResult:
    frame: pd.DataFrame
    requests: int = 0
    dropped_rows: int = 0
    notes: list[str] = field(default_factory=list)
    events: Events | None = None  # None: this provider does not report corporate actions
    incomplete: list[tuple[pd.Timestamp, pd.Timestamp]] = field(default_factory=list)
    # which source filled which part [start, end) when not all of it came from one place
    sources: list[tuple[str, pd.Timestamp, pd.Timestamp]] = field(default_factory=list)


class Provider:
    """A market-data service. Subclasses set `name`, `capabilities` and the two page hooks."""

    name = "base"
    capabilities = Capabilities(frozenset(), frozenset())
    reports_actions = False  # answers carry splits and dividends up to now (see Events)
    supports_fundamentals = False

    def __init__(
        self,
        settings: ProviderSettings,
        state_dir: Path | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.state_dir = state_dir
        self.sleep = sleep
        # said once a run, not once per range (e.g. a wrong archive_url): see take_warnings
        self.warnings: list[str] = []

    def take_warnings(self) -> list[str]:
        """The run-level warnings gathered so far (each handed out once)."""
        taken, self.warnings[:] = list(self.warnings), []
        return taken

    def available(self) -> bool:
        """False when the provider cannot be used at all (disabled, key missing)."""
        if not self.settings.enabled:
            return False
        return not (self.capabilities.needs_key and not self.settings.api_key)

    def supports(self, timeframe: str) -> bool:
        return timeframe in self.capabilities.timeframes

    def answers_to_now(self, timeframe: Timeframe) -> bool:
        """Whether one answer holds every bar from its start up to now, whatever end was
        asked: the pipeline then asks once per series and run, not once per year."""
        return False

    def fetch(
        self, symbol: str, timeframe: Timeframe, start: pd.Timestamp, end: pd.Timestamp
    ) -> FetchResult:
        """Every closed bar in [start, end), as a canonical frame, paging as needed."""
        if not self.supports(timeframe.name):
            raise RangeUnavailable(
                f"{self.name} has no {timeframe} bars", provider=self.name, symbol=symbol
            )
        earliest = self.capabilities.earliest(timeframe.name)
        if earliest is not None and end <= earliest:
            raise RangeUnavailable(
                f"{self.name} keeps {timeframe} bars only since {earliest:%Y-%m-%d}",
                provider=self.name,
                symbol=symbol,
            )
        if earliest is not None and start < earliest:
            start = timeframe.next_open(earliest)
        frames: list[pd.DataFrame] = []
        result = FetchResult(pd.DataFrame(columns=CANONICAL))
        self._begin_fetch(symbol, timeframe, start, end, result)
        cursor = start
        for _ in range(100_000):
            page_start = cursor
            page = with_retries(
                lambda s=page_start: self._fetch_page(symbol, timeframe, s, end),  # type: ignore[misc]
                budget=self.settings.retry_budget,
                sleep=self.sleep,
            )
            result.requests += 1
            if page.events is not None:
                result.events = result.events or Events()
                result.events.add(page.events)
            if len(page.frame):
                frames.append(page.frame)
            if not page.more:
                break
            nxt = self._next_page(page, timeframe, cursor, end)
            if nxt is None or nxt <= cursor or nxt >= end:
                break
            cursor = nxt
        else:  # pragma: no cover - a provider that never stops paging
            raise ProviderUnavailable(f"{self.name} paged without end", provider=self.name)
        frame = pd.concat(frames, ignore_index=True) if frames else result.frame
        result.frame, result.dropped_rows, notes = canonical_frame(
            frame, start, end, timeframe, now=self.clock()
        )
        result.notes.extend(notes)
        return result

    def fundamentals(self, symbol: str) -> dict[str, Any]:
        """The provider's fundamentals of `symbol` as flat {field: value} (with retries)."""
        if not self.supports_fundamentals:
            raise RangeUnavailable(f"{self.name} has no fundamentals", provider=self.name)
        return with_retries(
            lambda: self._fundamentals(symbol), budget=self.settings.retry_budget, sleep=self.sleep
        )

    def _fundamentals(self, symbol: str) -> dict[str, Any]:
        raise NotImplementedError

    def close(self) -> None:
        """Close the HTTP session (the next request opens a new one)."""
        http = self._http()
        if http is not None:
            http.close()

    def clock(self) -> pd.Timestamp:
        """Now, by the provider's clock where it told us (HTTP Date), else by ours.

        The earlier of the two wins: a bar is closed only when both clocks agree it is, so a
        machine running ahead of the exchange never stores a half-formed bar.
        """
        now = utcnow()
        told = self._server_time()
        return min(now, told) if told is not None else now

    # ---- hooks ---------------------------------------------------------------------------

    def sent(self) -> int:
        """HTTP requests this thread sent to this provider so far, failed ones included."""
        http = self._http()
        return http.sent if http is not None else 0

    def _server_time(self) -> pd.Timestamp | None:
        """The provider's clock at its last answer on this thread (None: not known)."""
        http = self._http()
        told = http.server_time if http is not None else None
        return pd.Timestamp(told, unit="s") if told is not None else None

    def _http(self) -> TimeoutSession | None:
        """The session this provider's requests go through, once it exists."""
        return None

    def _begin_fetch(
        self,
        symbol: str,
        timeframe: Timeframe,
        start: pd.Timestamp,
        end: pd.Timestamp,
        result: FetchResult,
    ) -> None:
        """Called once before the first page (e.g. to learn corporate actions)."""

    def _fetch_page(
        self, symbol: str, timeframe: Timeframe, start: pd.Timestamp, end: pd.Timestamp
    ) -> Page:
        raise NotImplementedError

    def _next_page(
        self, page: Page, timeframe: Timeframe, cursor: pd.Timestamp, end: pd.Timestamp
    ) -> pd.Timestamp | None:
        """Where the next page starts; default: one bar after the last one received."""
        if page.next_start is not None:
            return page.next_start
        if not len(page.frame):
            return None
        return timeframe.next_open(page.frame["timestamp"].max())


def canonical_frame(
    frame: pd.DataFrame,
    start: pd.Timestamp,
    end: pd.Timestamp,
    timeframe: Timeframe,
    *,
    now: pd.Timestamp | None = None,
) -> tuple[pd.DataFrame, int, list[str]]:
    """Sorted, unique, inside [start, end), only closed bars with sound values.

    Returns the frame, how many rows were dropped as unsound, and notes saying why.
    """
    notes: list[str] = []
    if frame.empty:
        return (
            pd.DataFrame({c: pd.Series(dtype="float64") for c in CANONICAL}).astype(
                {"timestamp": "datetime64[ns]"}
            ),
            0,
            notes,
        )
    cols = [c for c in (*CANONICAL, *OPTIONAL_COLUMNS) if c in frame.columns]
    df = frame[cols].copy()
    df["timestamp"] = pd.to_datetime(df["timestamp"], errors="coerce").astype("datetime64[ns]")
    for col in cols[1:]:
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    now = now if now is not None else utcnow()
    in_range = (df["timestamp"] >= start) & (df["timestamp"] < end)
    df = df[in_range.fillna(False).to_numpy()]
    closing = (
        df["timestamp"].map(timeframe.next_open)
        if timeframe.name == "1M"
        else (df["timestamp"] + pd.Timedelta(minutes=timeframe.minutes))
    )
    still_open = (closing > now).to_numpy()
    if still_open.any():
        notes.append(f"left out {int(still_open.sum())} bar(s) still open")
        df = df[~still_open]
    sound = sound_rows(df)
    dropped = int((~sound).sum())
    if dropped:
        first = df["timestamp"].to_numpy()[~sound][0]
        notes.append(f"dropped {dropped} unsound row(s) (first at {pd.Timestamp(first)})")
    df = df[sound]
    df = df.drop_duplicates("timestamp", keep="last").sort_values("timestamp", kind="stable")
    return df.reset_index(drop=True), dropped, notes
