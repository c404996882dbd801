"""Yahoo Finance chart API through yfinance's session machinery (cookie, crumb, consent).

Every Yahoo host yfinance talks to is sent to `base_url` when it is not Yahoo's own.

Yahoo's chart OHLC and volume are split-adjusted as of the day they are asked (only `adjclose`
carries dividends too). They are converted back to as traded with the split events of the
same answer, so a split between two runs never leaves two bases in one series. Daily and
longer bars are stamped with the exchange-local session date; their requests start a day
early (markets east of UTC open on the previous UTC day) and run to now (so the answer holds
every later split). The answer's splits and dividends are returned with the bars.
"""

from __future__ import annotations

import json
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pandas as pd

from marketcache.core.actions import Dividend, Split, to_as_traded
from marketcache.core.models import utcnow
from marketcache.core.symbols import AssetClass, classify
from marketcache.core.timeframes import Timeframe
from marketcache.errors import (
    MarketCacheError,
    ProviderError,
    ProviderUnavailable,
    RangeUnavailable,
    RateLimited,
    SymbolNotFound,
)
from marketcache.providers.base import Capabilities, Events, FetchResult, Page, Provider
from marketcache.providers.http import (
    TimeoutSession,
    make_session,
    map_requests_error,
    raise_for_status,
    retry_after_seconds,
)

INTERVALS = {"1m": "1m", "5m": "5m", "15m": "15m", "30m": "30m", "1h": "60m",
             "1d": "1d", "1w": "1wk", "1M": "1mo"}  # fmt: skip
# Yahoo serves intraday history only this far back, and at most this much per request.
WINDOWS = {"1m": timedelta(days=30), "5m": timedelta(days=60), "15m": timedelta(days=60),
           "30m": timedelta(days=60), "1h": timedelta(days=730)}  # fmt: skip
CHUNKS = {"1m": timedelta(days=7), "5m": timedelta(days=59), "15m": timedelta(days=59),
          "30m": timedelta(days=59), "1h": timedelta(days=365)}  # fmt: skip
_yf_lock = threading.Lock()
_session_lock = threading.Lock()


class YahooSession(TimeoutSession):
    """Sends every *.yahoo.com request to `redirect_to` and remembers the last response."""

    def __init__(self, timeout: float, redirect_to: str | None = None, **kwargs: Any) -> None:
        super().__init__(timeout, **kwargs)
        self.redirect_to = urlsplit(redirect_to) if redirect_to else None
        self._local = threading.local()

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        target = url.decode() if isinstance(url, bytes) else url
        parts = urlsplit(target)
        if self.redirect_to is not None and (parts.hostname or "").endswith("yahoo.com"):
            base = self.redirect_to
            path = (base.path.rstrip("/") + parts.path) or "/"
            target = urlunsplit((base.scheme, base.netloc, path, parts.query, parts.fragment))
        response = super().request(method, target, *args, **kwargs)
        self._local.last = response
        return response

    @property
    def last_response(self) -> Any:
        return getattr(self._local, "last", None)


QUOTE_SUMMARY_MODULES = "assetProfile,summaryDetail,defaultKeyStatistics,financialData,price"


class YahooProvider(Provider):
    name = "yahoo"
    reports_actions = True
    supports_fundamentals = True
    capabilities = Capabilities(
        timeframes=frozenset(INTERVALS),
        asset_classes=frozenset({AssetClass.STOCK, AssetClass.CRYPTO, AssetClass.FX}),
        history_window=dict(WINDOWS),
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._session: YahooSession | None = None
        self._splits: list[Split] = []

    def answers_to_now(self, timeframe: Timeframe) -> bool:
        """Daily and longer answers run to now (see `_fetch_page`); intraday ones are chunked."""
        return not timeframe.is_intraday

    @property
    def session(self) -> YahooSession:
        with _session_lock:  # workers share the provider: one session, so requests count on it
            if self._session is None:
                host = urlsplit(self.settings.base_url).hostname or ""
                redirect = None if host.endswith("yahoo.com") else self.settings.base_url
                session = make_session(
                    self.settings, self.state_dir, YahooSession, redirect_to=redirect
                )
                assert isinstance(session, YahooSession)
                self._session = session
            return self._session

    def _data(self) -> Any:
        import yfinance as yf
        from yfinance.data import YfData

        with _yf_lock:
            if self.state_dir is not None:  # yfinance's caches live in the cache folder
                where = Path(self.state_dir) / "yfinance"
                where.mkdir(parents=True, exist_ok=True)
                yf.set_tz_cache_location(str(where))
            yf.config.network.retries = 0  # our retry budget is the only one
            return YfData(session=self.session)

    def _fetch_page(
        self, symbol: str, timeframe: Timeframe, start: pd.Timestamp, end: pd.Timestamp
    ) -> Page:
        if timeframe.is_intraday:
            chunk = CHUNKS.get(timeframe.name)
            page_end = min(end, start + pd.Timedelta(chunk)) if chunk else end
            body = self._chart(symbol, timeframe, start, page_end)
            frame = to_as_traded(chart_frame(body, timeframe), self._splits)
            return Page(frame, more=page_end < end, next_start=page_end)
        # Daily and longer, in one answer: from a day before `start` (a session of a market
        # east of UTC opens on the previous UTC day) up to now, so that the answer carries
        # every split after its bars; bars outside [start, end) are cut by the base class.
        body = self._chart(symbol, timeframe, start - pd.Timedelta(days=1), max(end, utcnow()))
        events = chart_events(body)
        frame = to_as_traded(chart_frame(body, timeframe), events.splits)
        return Page(frame, more=False, events=events)

    def _begin_fetch(
        self,
        symbol: str,
        timeframe: Timeframe,
        start: pd.Timestamp,
        end: pd.Timestamp,
        result: FetchResult,
    ) -> None:
        """Intraday answers are split-adjusted too, but cover days: learn the splits up to
        now from one daily answer first."""
        self._splits = []
        if not timeframe.is_intraday or classify(symbol) is not AssetClass.STOCK:
            return  # daily answers carry their own events; crypto and FX do not split
        body = self._chart(symbol, Timeframe("1d"), start - pd.Timedelta(days=1), utcnow())
        result.requests += 1
        events = chart_events(body)
        self._splits = events.splits
        result.events = events

    def _http(self) -> TimeoutSession | None:
        return self._session

    def _fundamentals(self, symbol: str) -> dict[str, Any]:
        """quoteSummary modules through yfinance's session (cookie and crumb)."""
        url = f"https://query2.finance.yahoo.com/v10/finance/quoteSummary/{symbol}"
        params = {"modules": QUOTE_SUMMARY_MODULES, "corsDomain": "finance.yahoo.com"}
        try:
            response = self._data().get(url=url, params=params, timeout=self.settings.timeout)
        except Exception as exc:
            raise map_yahoo_error(exc, symbol, self.session.last_response) from exc
        return quote_summary_fields(response, symbol)

    def _chart(
        self, symbol: str, timeframe: Timeframe, start: pd.Timestamp, end: pd.Timestamp
    ) -> dict[str, Any]:
        params = {
            "period1": int(start.tz_localize("UTC").timestamp()),
            "period2": int(end.tz_localize("UTC").timestamp()),
            "interval": INTERVALS[timeframe.name],
            "includePrePost": "false",
            "events": "div,splits",
        }
        url = f"https://query2.finance.yahoo.com/v8/finance/chart/{symbol}"
        try:
            response = self._data().get(url=url, params=params, timeout=self.settings.timeout)
        except Exception as exc:
            raise map_yahoo_error(exc, symbol, self.session.last_response) from exc
        body = _chart_body(response, symbol)
        answered_for = _meta(body).get("symbol")
        if answered_for and str(answered_for).upper() != symbol.upper():
            raise ProviderUnavailable(
                f"yahoo answered with {answered_for}'s data when asked for {symbol}",
                provider="yahoo",
                symbol=symbol,
            )
        return body


def _chart_body(response: Any, symbol: str) -> dict[str, Any]:
    status = response.status_code
    try:
        body = json.loads(response.text)
    except ValueError:
        body = None
    chart = body.get("chart") if isinstance(body, dict) else None
    error = chart.get("error") if isinstance(chart, dict) else None
    if not isinstance(error, dict):
        error = None
    description = (error or {}).get("description") or (error or {}).get("code") or ""
    if status == 404 or (error and error.get("code") == "Not Found"):
        raise SymbolNotFound(
            f"yahoo does not list {symbol}: {description or 'not found'}",
            provider="yahoo",
            symbol=symbol,
        )
    if status in (400, 422) or (
        error and error.get("code") in ("Unprocessable Entity", "Bad Request")
    ):
        raise RangeUnavailable(
            f"yahoo cannot serve that range: {description or f'HTTP {status}'}",
            provider="yahoo",
            symbol=symbol,
        )
    raise_for_status(response, "yahoo", symbol)
    if status >= 400:
        raise ProviderError(f"yahoo answered HTTP {status}", provider="yahoo", symbol=symbol)
    if not isinstance(body, dict) or not isinstance(chart, dict):
        raise ProviderUnavailable(
            "yahoo answered a body that is not chart JSON (truncated or an error page)",
            provider="yahoo",
            symbol=symbol,
        )
    return body


def _first_result(body: dict[str, Any]) -> dict[str, Any] | None:
    results = body["chart"].get("result")
    first = results[0] if isinstance(results, list) and results else None
    return first if isinstance(first, dict) else None


def _meta(body: dict[str, Any]) -> dict[str, Any]:
    meta = (_first_result(body) or {}).get("meta")
    return meta if isinstance(meta, dict) else {}


def chart_frame(body: dict[str, Any], timeframe: Timeframe) -> pd.DataFrame:
    """The canonical frame of one chart answer (empty when Yahoo has no bars there)."""
    result = _first_result(body)
    columns = ["timestamp", "open", "high", "low", "close", "volume", "adj_close"]
    if not result or not result.get("timestamp"):
        return pd.DataFrame(columns=columns)
    try:
        meta = _meta(body)
        stamps = np.asarray(result["timestamp"], dtype="int64")
        quote = (result.get("indicators", {}).get("quote") or [{}])[0]
        adj = ((result.get("indicators", {}).get("adjclose") or [{}])[0] or {}).get("adjclose")
        data = {
            col: pd.to_numeric(pd.Series(quote.get(col) or [None] * len(stamps)), errors="coerce")
            for col in ("open", "high", "low", "close", "volume")
        }
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise ProviderUnavailable(
            f"yahoo chart JSON is malformed: {exc}", provider="yahoo"
        ) from None
    frame = pd.DataFrame(data)
    if len(frame) != len(stamps):
        raise ProviderUnavailable("yahoo chart arrays differ in length", provider="yahoo")
    utc = pd.to_datetime(stamps, unit="s", utc=True)
    if timeframe.is_intraday:
        frame.insert(0, "timestamp", utc.tz_localize(None))
    else:
        tz = meta.get("exchangeTimezoneName") or "UTC"
        frame.insert(0, "timestamp", utc.tz_convert(tz).normalize().tz_localize(None))
    if adj is not None and len(adj) == len(stamps):
        frame["adj_close"] = pd.to_numeric(pd.Series(adj), errors="coerce")
    empty = frame[["open", "high", "low", "close"]].isna().all(axis=1).to_numpy()
    return frame[~empty].reset_index(drop=True)


def quote_summary_fields(response: Any, symbol: str) -> dict[str, Any]:
    """{module: {field: {"raw": v, "fmt": "..."} | v}} → {field: v}; errors mapped."""
    status = response.status_code
    try:
        body = json.loads(response.text)
    except ValueError:
        body = None
    summary = body.get("quoteSummary") if isinstance(body, dict) else None
    error = summary.get("error") if isinstance(summary, dict) else None
    if status == 404 or (isinstance(error, dict) and error.get("code") == "Not Found"):
        raise SymbolNotFound(f"yahoo has no fundamentals for {symbol}", provider="yahoo",
                             symbol=symbol)  # fmt: skip
    raise_for_status(response, "yahoo", symbol)
    results = summary.get("result") if isinstance(summary, dict) else None
    if status >= 400 or not isinstance(results, list) or not results:
        raise ProviderUnavailable(
            "yahoo answered a body that is not quoteSummary JSON", provider="yahoo", symbol=symbol
        )
    fields: dict[str, Any] = {}
    for module in results[0].values() if isinstance(results[0], dict) else []:
        for name, value in module.items() if isinstance(module, dict) else []:
            if isinstance(value, dict):
                value = value.get("raw", None) if value else None
            if isinstance(value, str | int | float | bool) and name != "maxAge":
                fields.setdefault(name, value)
    return fields


def chart_events(body: dict[str, Any]) -> Events:
    """The splits and dividends of one chart answer, as traded, dated by exchange session.

    Yahoo states dividends in the split-adjusted basis of the day it answers; they are scaled
    back with the splits of the same answer. `checked_through` is the last session answered.
    """
    result = _first_result(body) or {}
    tz = _meta(body).get("exchangeTimezoneName") or "UTC"
    raw = result.get("events") if isinstance(result.get("events"), dict) else {}
    assert isinstance(raw, dict)

    def items(kind: str) -> list[dict[str, Any]]:
        block = raw.get(kind)
        return [v for v in block.values() if isinstance(v, dict)] if isinstance(block, dict) else []

    def session(epoch: Any) -> str:
        return f"{pd.Timestamp(int(epoch), unit='s', tz='UTC').tz_convert(tz):%Y-%m-%d}"

    events = Events()
    try:
        for item in items("splits"):
            num, den = float(item.get("numerator") or 0), float(item.get("denominator") or 0)
            if num > 0 and den > 0 and num != den:
                events.splits.append(Split(session(item["date"]), num / den, "yahoo"))
        events.splits.sort(key=lambda sp: sp.date)
        for item in items("dividends"):
            amount = float(item.get("amount") or 0)
            if amount > 0:
                ex = session(item["date"])
                later = np.prod([sp.ratio for sp in events.splits if sp.date > ex])
                events.dividends.append(Dividend(ex, amount * float(later), "yahoo"))
        events.dividends.sort(key=lambda d: d.ex_date)
        stamps = result.get("timestamp") or []
        if stamps:
            events.checked_through = session(max(int(t) for t in stamps))
    except (TypeError, ValueError, KeyError, OverflowError) as exc:
        raise ProviderUnavailable(
            f"yahoo chart events are malformed: {exc}", provider="yahoo"
        ) from None
    return events


def map_yahoo_error(exc: Exception, symbol: str, last_response: Any = None) -> ProviderError:
    """yfinance and requests exceptions → ours (nothing else escapes the adapter)."""
    import requests
    from yfinance import exceptions as yfe

    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, MarketCacheError):  # e.g. StorageError from the rate-limit bucket
        raise exc
    retry = retry_after_seconds(getattr(last_response, "headers", None))
    if isinstance(exc, yfe.YFRateLimitError):
        return RateLimited(
            "yahoo rate limit (HTTP 429)", provider="yahoo", symbol=symbol, retry_after=retry
        )
    if isinstance(exc, yfe.YFTickerMissingError):  # also YFPricesMissingError, YFTzMissingError
        return SymbolNotFound(f"yahoo has no prices for {symbol}", provider="yahoo", symbol=symbol)
    if isinstance(exc, yfe.YFInvalidPeriodError):
        return RangeUnavailable(
            f"yahoo cannot serve that range for {symbol}", provider="yahoo", symbol=symbol
        )
    if isinstance(exc, yfe.YFException):
        return ProviderUnavailable(f"yahoo failed: {exc}", provider="yahoo", symbol=symbol)
    if isinstance(exc, requests.RequestException):
        return map_requests_error(exc, "yahoo", symbol)
    return ProviderUnavailable(
        f"yahoo call failed: {type(exc).__name__}", provider="yahoo", symbol=symbol
    )
