"""Alpha Vantage through the alpha-vantage package: TIME_SERIES_DAILY and TIME_SERIES_INTRADAY.

The package builds URLs against a fixed host and calls requests.get without a timeout; our
subclass sends its calls to `base_url` through the shared, rate-limited session (with a
timeout) and maps its answers to our errors. Intraday history is fetched a month per request
(`month=YYYY-MM`, `adjusted=false`, regular hours only).
"""

from __future__ import annotations

import os
import threading
from typing import Any

import pandas as pd

from marketcache.core.symbols import AssetClass
from marketcache.core.timeframes import Timeframe
from marketcache.errors import (
    MarketCacheError,
    ProviderError,
    ProviderUnavailable,
    QuotaExhausted,
    SymbolNotFound,
)
from marketcache.providers.base import Capabilities, Page, Provider
from marketcache.providers.http import (
    TimeoutSession,
    make_session,
    map_requests_error,
    raise_for_status,
)

INTERVALS = {"1m": "1min", "5m": "5min", "15m": "15min", "30m": "30min", "1h": "60min"}
DEFAULT_HOST = "https://www.alphavantage.co/query?"
COMPACT_DAYS = 100
EXCHANGE_TZ = "America/New_York"
_build_lock = threading.Lock()


class AlphaVantageProvider(Provider):
    name = "alpha_vantage"
    supports_fundamentals = True
    capabilities = Capabilities(
        timeframes=frozenset({*INTERVALS, "1d"}),
        asset_classes=frozenset({AssetClass.STOCK}),
        needs_key=True,
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._client: Any = None

    def api_key(self) -> str:
        return self.settings.api_key.reveal() or os.environ.get("ALPHAVANTAGE_API_KEY", "")

    def available(self) -> bool:
        return self.settings.enabled and bool(self.api_key())

    def answers_to_now(self, timeframe: Timeframe) -> bool:
        """TIME_SERIES_DAILY answers the whole history (`full`) or its last 100 sessions
        (`compact`, asked only for a start within them): either runs to now."""
        return timeframe.name == "1d"

    @property
    def client(self) -> Any:
        with _build_lock:  # workers share the provider: one client, so requests count on it
            if self._client is None:
                self._client = _client_class()(
                    key=self.api_key(),
                    output_format="json",
                    session=make_session(self.settings, self.state_dir),
                    base_url=f"{self.settings.base_url}/query?",
                )
            return self._client

    def _fetch_page(
        self, symbol: str, timeframe: Timeframe, start: pd.Timestamp, end: pd.Timestamp
    ) -> Page:
        try:
            if timeframe.name == "1d":
                recent = start >= pd.Timestamp.now() - pd.Timedelta(days=COMPACT_DAYS - 5)
                data, _ = self.client.get_daily(symbol, outputsize="compact" if recent else "full")
                return Page(_series_frame(data, symbol, None), more=False)
            # `month` is a New York calendar month; the next page starts at its end, in UTC
            local = start.tz_localize("UTC").tz_convert(EXCHANGE_TZ)
            next_local = pd.Timestamp(local.year, local.month, 1, tz=EXCHANGE_TZ) + pd.DateOffset(
                months=1
            )
            next_month = next_local.tz_convert("UTC").tz_localize(None)
            data, _ = self.client.get_intraday(
                symbol,
                interval=INTERVALS[timeframe.name],
                outputsize="full",
                month=f"{local:%Y-%m}",
                extended_hours="false",
                adjusted="false",
            )
        except Exception as exc:  # `from None`: the request URL (with the key) stays out
            raise map_alpha_vantage_error(exc, symbol) from None
        frame = _series_frame(data, symbol, timeframe)
        return Page(frame, more=next_month < end, next_start=next_month)

    def _fundamentals(self, symbol: str) -> dict[str, Any]:
        """OVERVIEW: a flat object of strings ("None" and "-" mean no value)."""
        query = f"function=OVERVIEW&symbol={symbol}&apikey={self.api_key()}"
        try:
            body = self.client._handle_api_call(DEFAULT_HOST + query)
        except ProviderUnavailable as exc:
            if "empty body" in str(exc):  # OVERVIEW answers {} for a symbol it does not know
                raise SymbolNotFound(
                    f"alpha_vantage has no overview of {symbol}", provider=self.name, symbol=symbol
                ) from None
            raise
        return {k: _number(v) for k, v in body.items() if v not in ("None", "-", "")}

    def _http(self) -> TimeoutSession | None:
        return self._client._session if self._client is not None else None


def _client_class() -> type:
    from alpha_vantage.timeseries import TimeSeries

    class RoutedTimeSeries(TimeSeries):  # type: ignore[misc]
        """TimeSeries whose calls go to our host, through our session, with a timeout."""

        def __init__(self, *, session: TimeoutSession, base_url: str, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self._session = session
            self._base_url = base_url

        def _handle_api_call(self, url: str) -> Any:
            if url.startswith(DEFAULT_HOST):
                url = self._base_url + url[len(DEFAULT_HOST) :]
            symbol = _param(url, "symbol")
            try:
                response = self._session.get(url, headers=self.headers, proxies=self.proxy)
            except Exception as exc:  # `from None`: the request URL carries the API key
                raise map_alpha_vantage_error(exc, symbol) from None
            raise_for_status(response, "alpha_vantage", symbol)
            if response.status_code >= 400:
                raise ProviderError(
                    f"alpha_vantage answered HTTP {response.status_code}",
                    provider="alpha_vantage",
                    symbol=symbol,
                )
            try:
                body = response.json()
            except ValueError:
                raise ProviderUnavailable(
                    "alpha_vantage answered a body that is not JSON (truncated or an error page)",
                    provider="alpha_vantage",
                    symbol=symbol,
                ) from None
            if not isinstance(body, dict) or not body:
                raise ProviderUnavailable(
                    "alpha_vantage answered an empty body", provider="alpha_vantage", symbol=symbol
                )
            if "Error Message" in body:
                raise SymbolNotFound(
                    f"alpha_vantage does not know {symbol}: {str(body['Error Message'])[:120]}",
                    provider="alpha_vantage",
                    symbol=symbol,
                )
            for key in ("Note", "Information"):
                if key in body:
                    raise QuotaExhausted(
                        _quota_message(str(body[key]), _param(url, "apikey")),
                        provider="alpha_vantage",
                        symbol=symbol,
                    )
            return body

    return RoutedTimeSeries


def _quota_message(said: str, api_key: str) -> str:
    """Alpha Vantage's quota answer as one line without the key it quotes back ("We have
    detected your API key as …"), and what to do: a daily quota waits for the next day, a
    per-minute one for a slower limit."""
    text = " ".join(said.split())
    if api_key:
        text = text.replace(api_key, "***")
    if len(text) > 240:
        text = text[:239] + "…"
    if "per day" in text or "daily" in text:
        advice = (
            "the daily quota is spent: what is left is asked by the next run after 00:00 UTC"
            " (set providers.alpha_vantage.rate_limit.per_day to the plan's figure so that a"
            " run stops before it)"
        )
    else:
        advice = "slow down: lower providers.alpha_vantage.rate_limit.per_minute"
    return f"alpha_vantage quota or rate limit: {text} — {advice}"


def _number(value: Any) -> Any:
    try:
        return float(value) if isinstance(value, str) and value[:1] in "-.0123456789" else value
    except ValueError:
        return value


def _param(url: str, name: str) -> str:
    from urllib.parse import parse_qs, urlsplit

    return (parse_qs(urlsplit(url).query).get(name) or [""])[0]


def _series_frame(data: Any, symbol: str, timeframe: Timeframe | None) -> pd.DataFrame:
    """{'2024-01-02 09:30:00': {'1. open': ...}} → canonical frame.

    Intraday labels are New York bar *starts* (the extended-hours 5min series ends at 19:55,
    the regular-hours 1min series of a Paris stock at 11:29 New York = 17:29 Paris, the last
    minute before the 17:30 close); they become UTC bar opens unchanged.
    """
    if not isinstance(data, dict):
        raise ProviderUnavailable(
            "alpha_vantage time series is malformed", provider="alpha_vantage", symbol=symbol
        )
    columns = ["timestamp", "open", "high", "low", "close", "volume"]
    if not data:
        return pd.DataFrame(columns=columns)
    rows = []
    for stamp, values in data.items():
        if not isinstance(values, dict):
            continue
        rows.append(
            [stamp]
            + [values.get(k) for k in ("1. open", "2. high", "3. low", "4. close", "5. volume")]
        )
    frame = pd.DataFrame(rows, columns=columns)
    stamps = pd.to_datetime(frame["timestamp"], errors="coerce")
    if timeframe is not None:  # US/Eastern bar-start labels → UTC bar opens
        local = stamps.dt.tz_localize(EXCHANGE_TZ, ambiguous="NaT", nonexistent="NaT")
        stamps = local.dt.tz_convert("UTC").dt.tz_localize(None)
    frame["timestamp"] = stamps
    for col in columns[1:]:
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    return frame


def map_alpha_vantage_error(exc: Exception, symbol: str) -> ProviderError:
    """alpha_vantage (ValueError) and requests exceptions → ours."""
    import requests

    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, MarketCacheError):  # e.g. StorageError from the rate-limit bucket
        raise exc
    if isinstance(exc, requests.RequestException):
        return map_requests_error(exc, "alpha_vantage", symbol)
    if isinstance(exc, ValueError):
        text = str(exc)
        if "Invalid API call" in text or "Error Message" in text:
            return SymbolNotFound(
                f"alpha_vantage does not know {symbol}", provider="alpha_vantage", symbol=symbol
            )
        return ProviderUnavailable(
            f"alpha_vantage answer unusable: {text[:120]}", provider="alpha_vantage", symbol=symbol
        )
    return ProviderUnavailable(
        f"alpha_vantage call failed: {type(exc).__name__}", provider="alpha_vantage", symbol=symbol
    )
