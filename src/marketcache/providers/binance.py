"""Binance spot klines through python-binance (1,000 bars a page)."""

from __future__ import annotations

import threading
from typing import Any

import pandas as pd

from marketcache.errors import (
    MarketCacheError,
    ProviderError,
    ProviderUnavailable,
    RangeUnavailable,
    RateLimited,
    SymbolNotFound,
)
from marketcache.models import utcnow
from marketcache.providers.base import Capabilities, FetchResult, Page, Provider, canonical_frame
from marketcache.providers.binance_archive import ARCHIVE_TIMEFRAMES, SOURCE, Archive, plan_files
from marketcache.providers.http import (
    TimeoutSession,
    make_session,
    map_requests_error,
    retry_after_seconds,
)
from marketcache.symbols import AssetClass
from marketcache.timeframes import TIMEFRAMES, Timeframe

PAGE = 1000
_SYMBOL_UNKNOWN = (-1121, -1100)
_RATE_CODES = (-1003, -1015)
_build_lock = threading.Lock()  # workers share a provider: one client, so requests count on it


class BinanceProvider(Provider):
    name = "binance"
    capabilities = Capabilities(
        timeframes=frozenset(TIMEFRAMES),
        asset_classes=frozenset({AssetClass.CRYPTO}),
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._client: Any = None
        self._archive: Archive | None = None

    @property
    def client(self) -> Any:
        with _build_lock:
            if self._client is None:
                from binance.client import Client

                client = Client(ping=False, requests_params={"timeout": self.settings.timeout})
                client.API_URL = f"{self.settings.base_url}/api"
                session = make_session(self.settings, self.state_dir)
                session.headers.update(client.session.headers)
                client.session = session
                self._client = client
            return self._client

    @property
    def archive(self) -> Archive:
        if self._archive is None:
            self._archive = Archive(self.settings, self.state_dir, self.sleep)
        return self._archive

    def close(self) -> None:
        super().close()
        if self._archive is not None:
            self._archive.close()

    def fetch(
        self, symbol: str, timeframe: Timeframe, start: pd.Timestamp, end: pd.Timestamp
    ) -> FetchResult:
        """Ranges older than two days (by the local UTC clock) from the archive, the rest and
        whatever the archive lacks from REST; `sources` says which filled what."""
        cutoff = utcnow().normalize() - pd.Timedelta(days=2)
        if not self.settings.archive_url or timeframe.name not in ARCHIVE_TIMEFRAMES:
            return self._rest(symbol, timeframe, start, end)
        if start >= cutoff:
            return self._rest(symbol, timeframe, start, end)
        sym = symbol.replace("/", "").upper()
        archive_end = min(end, cutoff)
        frames: list[pd.DataFrame] = []
        result = FetchResult(pd.DataFrame())
        rest: list[tuple[pd.Timestamp, pd.Timestamp]] = []
        sent = self.archive_sent()
        for file in plan_files(
            self.settings.archive_url, sym, timeframe.name, start, archive_end, utcnow()
        ):
            lo, hi = max(file.start, start), min(file.end, archive_end)
            try:
                rows = self.archive.read(file, sym)
            except RangeUnavailable as exc:  # missing or not matching its checksum: ask REST
                result.notes.append(f"{exc}; asked REST instead")
                _extend(rest, lo, hi)
                continue
            frames.append(rows[(rows["timestamp"] >= lo) & (rows["timestamp"] < hi)])
            result.sources.append((SOURCE, lo, hi))
        result.requests += self.archive_sent() - sent
        if archive_end < end:
            _extend(rest, archive_end, end)
        for lo, hi in rest:
            part = self._rest(symbol, timeframe, lo, hi)
            frames.append(part.frame)
            result.requests += part.requests
            result.notes += part.notes
            result.sources.append((self.name, lo, hi))
        merged = pd.concat([f for f in frames if len(f)], ignore_index=True) if frames else None
        result.frame, result.dropped_rows, notes = canonical_frame(
            merged if merged is not None else pd.DataFrame(),
            start,
            end,
            timeframe,
            now=self.clock(),
        )
        result.notes += notes
        result.sources.sort(key=lambda s: s[1])
        return result

    def _rest(
        self, symbol: str, timeframe: Timeframe, start: pd.Timestamp, end: pd.Timestamp
    ) -> FetchResult:
        return super().fetch(symbol, timeframe, start, end)

    def archive_sent(self) -> int:
        return self._archive.session.sent if self._archive is not None else 0

    def sent(self) -> int:
        return super().sent() + self.archive_sent()

    def _fetch_page(
        self, symbol: str, timeframe: Timeframe, start: pd.Timestamp, end: pd.Timestamp
    ) -> Page:
        params = {
            "symbol": symbol.replace("/", ""),
            "interval": timeframe.name,
            "startTime": _ms(start),
            "endTime": _ms(end) - 1,
            "limit": PAGE,
        }
        try:
            rows = self.client.get_klines(**params)
        except Exception as exc:
            raise map_binance_error(exc, symbol) from exc
        if not isinstance(rows, list):
            raise ProviderUnavailable(
                "binance answered something that is not a kline list",
                provider=self.name,
                symbol=symbol,
            )
        return Page(_klines_frame(rows, symbol), more=len(rows) >= PAGE)

    def _http(self) -> TimeoutSession | None:
        return self._client.session if self._client is not None else None


def _extend(
    spans: list[tuple[pd.Timestamp, pd.Timestamp]], lo: pd.Timestamp, hi: pd.Timestamp
) -> None:
    """Add [lo, hi), joining it to the last span when they touch."""
    if spans and spans[-1][1] >= lo:
        spans[-1] = (spans[-1][0], max(spans[-1][1], hi))
    else:
        spans.append((lo, hi))


def _ms(ts: pd.Timestamp) -> int:
    return int(pd.Timestamp(ts).value // 1_000_000)


def _klines_frame(rows: list[Any], symbol: str) -> pd.DataFrame:
    good = [r for r in rows if isinstance(r, list | tuple) and len(r) >= 6]
    if len(good) != len(rows):
        raise ProviderUnavailable(
            f"binance klines for {symbol} are malformed", provider="binance", symbol=symbol
        )
    frame = pd.DataFrame(
        [r[:6] for r in good], columns=["t", "open", "high", "low", "close", "volume"]
    )
    frame["timestamp"] = pd.to_datetime(
        pd.to_numeric(frame["t"], errors="coerce"), unit="ms", errors="coerce"
    )
    for col in ("open", "high", "low", "close", "volume"):
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    return frame.drop(columns="t")


def map_binance_error(exc: Exception, symbol: str) -> ProviderError:
    """python-binance and requests exceptions → ours (nothing else escapes the adapter)."""
    import requests
    from binance.exceptions import BinanceAPIException, BinanceRequestException

    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, MarketCacheError):  # e.g. StorageError from the rate-limit bucket
        raise exc
    if isinstance(exc, BinanceAPIException):
        status, code = exc.status_code, exc.code
        retry = retry_after_seconds(getattr(exc.response, "headers", None))
        if code in _SYMBOL_UNKNOWN or (status == 400 and "symbol" in str(exc.message).lower()):
            return SymbolNotFound(
                f"binance does not list {symbol}", provider="binance", symbol=symbol
            )
        if status in (429, 418) or code in _RATE_CODES:
            return RateLimited(
                f"binance rate limit (HTTP {status})",
                provider="binance",
                symbol=symbol,
                retry_after=retry,
            )
        if status >= 500 or code == 0:
            return ProviderUnavailable(
                f"binance answered HTTP {status}",
                provider="binance",
                symbol=symbol,
                retry_after=retry,
            )
        return ProviderError(
            f"binance refused the request: {exc.message} (code {code})",
            provider="binance",
            symbol=symbol,
        )
    if isinstance(exc, BinanceRequestException):
        return ProviderUnavailable(
            "binance answered an unreadable body", provider="binance", symbol=symbol
        )
    if isinstance(exc, requests.RequestException):
        return map_requests_error(exc, "binance", symbol)
    if isinstance(exc, ValueError):
        return ProviderUnavailable(
            f"binance answer could not be read: {exc}", provider="binance", symbol=symbol
        )
    return ProviderUnavailable(
        f"binance call failed: {type(exc).__name__}", provider="binance", symbol=symbol
    )
