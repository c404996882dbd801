"""The failover chain of a populate run: ask each provider of a chain in turn for one range.

Failover moves to the next provider on an error, an empty answer where data is expected, or
an answer whose rows mostly fail validation. A provider whose host cannot be resolved or
refuses connections is down for the rest of the run (a circuit breaker: the first failure
says why, later ranges skip it with the same words). The outcome says what the chain found:
bars from one provider, a definitive empty answer, a symbol nobody knows, or a failure.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pandas as pd

from marketcache.core.gaps import Span
from marketcache.core.timeframes import Timeframe
from marketcache.errors import ProviderError, ProviderUnreachable, RangeUnavailable, SymbolNotFound
from marketcache.pipeline.answers import Answers, Outcome
from marketcache.pipeline.jobs import JobResult
from marketcache.pipeline.selector import Choice
from marketcache.providers.base import Provider


class Failover:
    """The run's providers (by name) and which of them are down."""

    def __init__(self, providers: dict[str, Provider]) -> None:
        self.providers = providers
        self.down: dict[str, str] = {}
        self.lock = threading.Lock()

    def fetch(
        self,
        chain: list[Choice],
        tf: Timeframe,
        span: Span,
        answers: Answers,
        result: JobResult,
        start_for: Callable[[str], pd.Timestamp],
    ) -> Outcome:
        """Ask the chain for `span` (each provider from `start_for(name)`), through the
        job's `answers`; every request sent is counted in `result`."""
        reasons: list[str] = []
        empty_from: list[str] = []
        definitive = True  # every failure says "no data here" rather than "try later"
        refused = 0  # providers that do not know the symbol at all
        out_of_reach = 0  # providers that cannot serve this range (history window, timeframe)
        for choice in chain:
            provider = self.providers[choice.provider]
            if choice.provider in self.down:  # the same words as when it went down
                definitive = False
                reasons.append(f"{choice.provider}: {self.down[choice.provider]}")
                continue
            start = start_for(choice.provider)
            sent = provider.sent()
            try:
                fetched = answers.fetch(
                    choice.provider, provider, choice.symbol, tf, start, span.end
                )
            except SymbolNotFound as exc:
                refused += 1
                reasons.append(f"{choice.provider}: {exc}")
                continue
            except RangeUnavailable as exc:
                out_of_reach += 1
                reasons.append(f"{choice.provider}: {exc}")
                continue
            except ProviderUnreachable as exc:
                definitive = False
                with self.lock:
                    self.down.setdefault(choice.provider, str(exc))
                reasons.append(f"{choice.provider}: {exc}")
                continue
            except ProviderError as exc:
                definitive = False
                reasons.append(f"{choice.provider}: {exc}")
                continue
            finally:
                result.count(choice.provider, provider.sent() - sent)
            result.notes.extend(f"{choice.provider}: {n}" for n in fetched.notes)
            if fetched.frame.empty and not fetched.incomplete:
                empty_from.append(choice.provider)
                continue
            if fetched.dropped_rows > len(fetched.frame):
                definitive = False
                reasons.append(
                    f"{choice.provider}: most rows failed validation "
                    f"({fetched.dropped_rows} dropped)"
                )
                continue
            return Outcome(
                fetched.frame, choice.provider, choice=choice, events=fetched.events,
                incomplete=[Span(a, b) for a, b in fetched.incomplete],
                sources=fetched.sources,
            )  # fmt: skip
        if refused and refused + out_of_reach == len(chain):  # nobody that could answer knew it
            return Outcome(None, "", refused=True, reason="; ".join(reasons))
        if empty_from and definitive:
            return Outcome(None, ",".join(empty_from), verified_empty=True, reason="no bars")
        if empty_from:
            reasons.append(f"{','.join(empty_from)}: no bars")
        return Outcome(None, "", reason="; ".join(reasons) or "no provider answered")
