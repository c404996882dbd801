"""One request per answer: a job's memo of the answers that cover more than one range.

Some providers answer with every bar from the asked start up to now, whatever end was asked
(Yahoo daily, Alpha Vantage `TIME_SERIES_DAILY`: `Provider.answers_to_now`). Asked range by
range — the plan cuts a series at year ends, so that each year is committed as it arrives —
they would send the same answer once per year. The memo asks such a provider once per job,
from the first range it is asked for to the end of the job's last planned range, and serves
every later range its slice. A failure is remembered as well: within a run the same request
fails the same way (its retry budget is spent), so the chain fails over without asking again.

Providers that page (Binance, intraday) pass straight through. A memo lives for one job of one
run: a later run (or a later `DataManager` call) asks again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from marketcache.core.gaps import Span
from marketcache.core.timeframes import Timeframe
from marketcache.errors import ProviderError
from marketcache.pipeline.selector import Choice
from marketcache.providers.base import Events, FetchResult, Provider


@dataclass
class Outcome:
    """What the provider chain answered for one range (see `failover`)."""

    frame: pd.DataFrame | None
    provider: str
    verified_empty: bool = False
    reason: str = ""
    choice: Choice | None = None
    events: Events | None = None
    refused: bool = False  # every provider said it does not know the symbol
    incomplete: list[Span] = field(default_factory=list)  # derived buckets lacking base bars
    sources: list[tuple[str, pd.Timestamp, pd.Timestamp]] = field(default_factory=list)


@dataclass
class _Held:
    start: pd.Timestamp  # what was asked: [start, end)
    end: pd.Timestamp
    result: FetchResult | None = None
    error: ProviderError | None = None


class Answers:
    """The answers one job got, by provider name; `until` ends the job's last planned range."""

    def __init__(self, until: pd.Timestamp) -> None:
        self.until = until
        self._held: dict[str, _Held] = {}

    def holds(self, name: str, start: pd.Timestamp) -> bool:
        """Whether `name` already answered this job from `start` or earlier (so the corporate
        actions up to now are known from that answer)."""
        held = self._held.get(name)
        return held is not None and held.result is not None and held.start <= start

    def fetch(
        self,
        name: str,
        provider: Provider,
        symbol: str,
        timeframe: Timeframe,
        start: pd.Timestamp,
        end: pd.Timestamp,
    ) -> FetchResult:
        """`provider.fetch(symbol, timeframe, start, end)`, answered from the memo when an
        earlier answer of this job covers [start, end)."""
        if not provider.answers_to_now(timeframe):
            return provider.fetch(symbol, timeframe, start, end)
        held = self._held.get(name)
        if held is not None and held.start <= start and end <= held.end:
            if held.error is not None:
                raise held.error
            assert held.result is not None
            return _slice(held.result, start, end)
        wide = max(end, self.until)
        try:
            result = provider.fetch(symbol, timeframe, start, wide)
        except ProviderError as exc:
            self._held[name] = _Held(start, wide, error=exc)
            raise
        self._held[name] = _Held(start, wide, result=result)
        first = _slice(result, start, end)
        first.requests, first.notes = result.requests, list(result.notes)  # said once
        return first


def _slice(whole: FetchResult, start: pd.Timestamp, end: pd.Timestamp) -> FetchResult:
    """The part of one answer inside [start, end); the answer is judged whole (a mostly
    unsound answer is unsound in every slice), its notes and requests counted once."""
    stamps = whole.frame["timestamp"]
    frame = whole.frame[((stamps >= start) & (stamps < end)).to_numpy()].reset_index(drop=True)
    unsound = whole.dropped_rows > len(whole.frame)
    inside = [(a, b) for a, b in whole.incomplete if a < end and start < b]
    sources = [(n, a, b) for n, a, b in whole.sources if a < end and start < b]
    return FetchResult(
        frame,
        dropped_rows=whole.dropped_rows if unsound else 0,
        events=whole.events,
        incomplete=[(max(a, start), min(b, end)) for a, b in inside],
        sources=[(n, max(a, start), min(b, end)) for n, a, b in sources],
    )
