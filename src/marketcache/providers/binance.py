"""Binance spot klines through python-binance (1,000 bars a page)."""

from __future__ import annotations

import threading
from typing import Any

import pandas as pd

from marketcache.core.models import utcnow
from marketcache.core.symbols import AssetClass
from marketcache.core.timeframes import TIMEFRAMES, Timeframe
from marketcache.errors import (
    MarketCacheError,
    ProviderError,
    ProviderUnavailable,
    RangeUnavailable,
    RateLimited,
    SymbolNotFound,
)
from marketcache.providers.base import Capabilities, FetchResult, Page, Provider, canonical_frame
from marketcache.providers.binance_archive import (
    ARCHIVE_TIMEFRAMES,
    REST_PAGE,
    SOURCE,
    Archive,
    archive_pays,
    bare_stretches,
    page_clusters,
    plan_files,
)
from marketcache.providers.http import (
    TimeoutSession,
    make_session,
    map_requests_error,
    retry_after_seconds,
)

PAGE = REST_PAGE
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
        self._lock = threading.Lock()
        self._archive_off = False  # archive_url proved wrong this run: REST only
        self._archive_worked = False  # some archive file was read this run

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
        """Ranges older than two days (by the local UTC clock) from the archive where it saves
        requests (`archive_pays`); the rest, every file the archive lacks and every bar-less
        stretch inside a file from REST; `sources` says which filled what.

        Binance writes a kline for every interval it was open, trades or not, so a stretch
        with no bars inside a zip is an outage or a hole in the file, not proof of no trades:
        REST is asked about it before anything can be recorded as verified empty.
        """
        cutoff = utcnow().normalize() - pd.Timedelta(days=2)
        archive_on = bool(self.settings.archive_url) and not self._archive_off
        if not archive_on or timeframe.name not in ARCHIVE_TIMEFRAMES or start >= cutoff:
            return self._rest(symbol, timeframe, start, end)
        sym = symbol.replace("/", "").upper()
        archive_end = min(end, cutoff)
        planned = plan_files(
            self.settings.archive_url, sym, timeframe.name, start, archive_end, utcnow()
        )
        files = archive_pays(planned, start, archive_end, timeframe, self.archive.cached)
        if not files:
            return self._rest(symbol, timeframe, start, end)
        frames: list[pd.DataFrame] = []
        result = FetchResult(pd.DataFrame())
        rest: list[tuple[pd.Timestamp, pd.Timestamp]] = []
        absent: list[tuple[pd.Timestamp, pd.Timestamp]] = []  # files answered 404
        bare: list[tuple[pd.Timestamp, pd.Timestamp]] = []  # stretches without bars in a file
        sent = self.archive_sent()
        covered = start
        for file in files:
            lo, hi = max(file.start, start), min(file.end, archive_end)
            if covered < lo:  # files that would cost more than REST
                _extend(rest, covered, lo)
            covered = hi
            try:
                rows = self.archive.read(file, sym)
            except RangeUnavailable as exc:  # missing or not matching its checksum: ask REST
                result.notes.append(f"{exc}; asked REST instead")
                _extend(rest, lo, hi)
                if "archive has no" in str(exc):
                    absent.append((lo, hi))
                continue
            part = rows[(rows["timestamp"] >= lo) & (rows["timestamp"] < hi)]
            frames.append(part)
            result.sources.append((SOURCE, lo, hi))
            bare += bare_stretches(part["timestamp"], lo, hi, timeframe)
            with self._lock:
                self._archive_worked = True
        result.requests += self.archive_sent() - sent
        if covered < end:
            _extend(rest, covered, end)
        rest_rows: list[pd.DataFrame] = []
        for lo, hi in rest:
            answer = self._rest(symbol, timeframe, lo, hi)
            rest_rows.append(answer.frame)
            result.requests += answer.requests
            result.notes += answer.notes
            result.sources.append((self.name, lo, hi))
        for lo, hi in page_clusters(bare, timeframe):
            answer = self._rest(symbol, timeframe, lo, hi)
            result.requests += answer.requests
            result.notes += answer.notes
            if len(answer.frame):  # REST had bars the file lacks: they win there
                rest_rows.append(answer.frame)
                result.sources.append((self.name, lo, hi))
        if absent and len(absent) == len(files):
            self._check_archive_url(absent, rest_rows, result)
        frames += rest_rows
        filled = [f for f in frames if len(f)]  # every piece may be empty: a normal answer
        result.frame, result.dropped_rows, notes = canonical_frame(
            pd.concat(filled, ignore_index=True) if filled else pd.DataFrame(),
            start,
            end,
            timeframe,
            now=self.clock(),
        )
        result.notes += notes
        result.sources.sort(key=lambda s: s[1])
        return result

    def _check_archive_url(
        self,
        absent: list[tuple[pd.Timestamp, pd.Timestamp]],
        rest_rows: list[pd.DataFrame],
        result: FetchResult,
    ) -> None:
        """Every file asked was missing although REST has bars there: `archive_url` points
        at the wrong place. Said once a run (not once per file), and the archive is left
        alone for the rest of the run."""
        stamps = [f["timestamp"] for f in rest_rows if len(f)]
        if not stamps:
            return  # e.g. a range before the symbol listed: nothing to find anywhere
        ts = pd.concat(stamps)
        if not any(((ts >= lo) & (ts < hi)).any() for lo, hi in absent):
            return
        with self._lock:
            if self._archive_worked or self._archive_off:
                return
            self._archive_off = True
            self.warnings.append(
                f"binance: archive_url {self.settings.archive_url} has none of the"
                f" {len(absent)} archive file(s) asked (HTTP 404) although REST has those bars"
                ' — check providers.binance.archive_url ("" turns the archive off);'
                " REST serves this run"
            )
        result.notes[:] = [n for n in result.notes if "archive has no" not in n]
        result.notes.append(
            f"archive_url answered 404 for all {len(absent)} file(s): REST served them"
        )

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
