"""HTTP discipline shared by every adapter.

- A requests session whose rate limit lives in a SQLite bucket inside the cache folder, so
  every marketcache process on one cache shares one provider limit.
- A timeout on every request that bounds the whole answer (redirects and body included), a
  size cap on every answer and at most MAX_REDIRECTS redirects (see `bounded`).
- `with_retries`: 429/418/5xx/timeouts/garbled bodies retried with capped, jittered
  exponential backoff that honours Retry-After, within a retry budget (seconds) after which
  the error is raised so the selector can fail over.
"""

from __future__ import annotations

import random
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests
from requests_ratelimiter import LimiterSession

from marketcache.config.schema import ProviderSettings
from marketcache.errors import (
    MarketCacheError,
    ProviderError,
    ProviderUnavailable,
    ProviderUnreachable,
    RateLimited,
    StorageError,
)
from marketcache.providers.bounded import (
    AnswerTimedOut,
    AnswerTooLarge,
    BoundedAdapter,
    MiB,
    Watch,
    set_watch,
    total_seconds,
)

T = TypeVar("T")
DEFAULT_MAX_ANSWER = 64 * MiB
MAX_BACKOFF = 30.0
BASE_BACKOFF = 0.5
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) marketcache/0.1"
MAX_REDIRECTS = 10  # requests allows 30, each a full request: a loop is cut short


class TimeoutSession(LimiterSession):
    """A rate-limited session that never sends a request without a timeout.

    The timeout covers the whole answer (a total deadline, not one per socket read), answers
    larger than `max_bytes` are refused, and redirects stop after MAX_REDIRECTS. It also
    remembers, per thread, the server's clock from the last answer's `Date` header,
    so that adapters can judge a bar closed by the provider's clock rather than ours.
    """

    def __init__(self, timeout: float, max_bytes: int = DEFAULT_MAX_ANSWER, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.default_timeout = timeout
        self.max_bytes = max_bytes
        self.max_redirects = MAX_REDIRECTS
        self.headers["User-Agent"] = USER_AGENT
        self._clock = threading.local()
        for scheme in ("http://", "https://"):
            self.mount(scheme, BoundedAdapter(max_bytes))

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        asked = kwargs.get("timeout")
        if asked is None or (isinstance(asked, int | float) and asked > self.default_timeout):
            kwargs["timeout"] = self.default_timeout  # e.g. yfinance's own 30 s: ours rules
        self._clock.sent = self.sent + 1  # counted before sending: failed requests count too
        watch = Watch(total_seconds(kwargs["timeout"]) or self.default_timeout)
        previous = set_watch(watch)
        try:
            response = super().request(method, url, *args, **kwargs)
        except sqlite3.Error as exc:  # the shared rate-limit bucket, e.g. on a full disk
            raise StorageError(f"cannot use the shared rate limit bucket: {exc}") from None
        finally:
            watch.cancel()
            set_watch(previous)
        self._clock.told = _http_date(getattr(response, "headers", {}).get("Date"))
        return response

    @property
    def sent(self) -> int:
        """Requests this thread sent through this session (failed ones included)."""
        return int(getattr(self._clock, "sent", 0))

    @property
    def server_time(self) -> float | None:
        """Epoch seconds the server reported in its last answer on this thread."""
        return getattr(self._clock, "told", None)


def _http_date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def make_session(
    settings: ProviderSettings,
    state_dir: Path | None,
    session_class: type[TimeoutSession] = TimeoutSession,
    **extra: Any,
) -> TimeoutSession:
    """A session limited as `settings` says; the bucket is shared through `state_dir`."""
    rate = settings.rate_limit
    limited = any(v is not None for v in vars(rate).values())
    kwargs: dict[str, Any] = {
        "per_second": rate.per_second or 0,
        "per_minute": rate.per_minute or 0,
        "per_hour": rate.per_hour or 0,
        "per_day": rate.per_day or 0,
        "per_host": False,
        "bucket_name": settings.name,
        "max_delay": settings.retry_budget or None,
        "limit_statuses": (429, 418),
    }
    if not limited:  # no limit configured: an in-memory bucket that never fills
        kwargs["per_second"] = 1_000_000
    elif settings.rate_limit_store:  # one bucket in PostgreSQL: every machine shares the limit
        from pyrate_limiter import PostgresBucket

        kwargs["bucket_class"] = PostgresBucket
        kwargs["bucket_kwargs"] = {
            "pool": _pool(settings.rate_limit_store),
            "table": "marketcache_" + re.sub(r"[^a-z0-9_]", "_", settings.name.lower()),
        }
    elif state_dir is not None:
        from pyrate_limiter import SQLiteBucket

        state_dir.mkdir(parents=True, exist_ok=True)
        kwargs["bucket_class"] = SQLiteBucket
        kwargs["bucket_kwargs"] = {
            "path": str(state_dir / "ratelimit.sqlite"),
            "use_file_lock": True,
        }
    return session_class(settings.timeout, max_bytes=settings.max_answer_bytes, **kwargs, **extra)


_POOLS: dict[str, Any] = {}  # a pool, or the StorageError of a store that could not be reached
STORE_WAIT = 5.0  # seconds a shared rate-limit store has to answer
_POOLS_LOCK = threading.Lock()


def _pool(url: str) -> Any:
    """One small connection pool per store URL in this process."""
    from psycopg_pool import ConnectionPool

    with _POOLS_LOCK:
        if url not in _POOLS:
            pool = None
            try:
                pool = ConnectionPool(url, min_size=1, max_size=4, open=True, timeout=10)
                pool.wait(timeout=STORE_WAIT)  # reachable now, or said now: not a hang later
                _POOLS[url] = pool
            except Exception as exc:
                from marketcache.storage.urls import redact

                if pool is not None:
                    pool.close(timeout=0)
                why = "no connection" if type(exc).__name__ == "PoolTimeout" else exc
                _POOLS[url] = StorageError(
                    f"settings.rate_limit_store {redact(url)}: cannot be reached ({why} within"
                    f" {STORE_WAIT:g}s): check that server, or leave the setting out to limit"
                    " per machine"
                )  # every provider of the run fails at once with this, not after a timeout
        found = _POOLS[url]
        if isinstance(found, StorageError):
            raise found
        return found


def retry_after_seconds(headers: Any) -> float | None:
    """Parse a Retry-After header (seconds or an HTTP date)."""
    value = headers.get("Retry-After") if headers is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def raise_for_status(resp: requests.Response, provider: str, symbol: str) -> None:
    """Map an HTTP error status to our errors (404/400-class are left to the adapter)."""
    code = resp.status_code
    if code in (429, 418):
        raise RateLimited(
            f"{provider} answered HTTP {code} (rate limited)",
            provider=provider,
            symbol=symbol,
            retry_after=retry_after_seconds(resp.headers),
        )
    if code >= 500:
        raise ProviderUnavailable(
            f"{provider} answered HTTP {code}",
            provider=provider,
            symbol=symbol,
            retry_after=retry_after_seconds(resp.headers),
        )


def map_requests_error(exc: Exception, provider: str, symbol: str) -> ProviderError:
    """A requests exception (or one of `bounded`'s) → ours, naming the provider and the cause."""
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, MarketCacheError):  # e.g. StorageError from the rate-limit bucket
        raise exc
    if isinstance(exc, AnswerTooLarge):  # the same answer will be as large: not retried
        return ProviderUnavailable(
            f"{provider} answer refused: {exc}", provider=provider, symbol=symbol, retryable=False
        )
    if isinstance(exc, AnswerTimedOut):
        return ProviderUnavailable(
            f"{provider} timed out: {exc} (providers.{provider}.timeout bounds the whole answer)",
            provider=provider,
            symbol=symbol,
        )
    if isinstance(exc, requests.TooManyRedirects):
        url = getattr(getattr(exc, "request", None), "url", "") or ""
        where = urlsplit(str(url)).netloc or "its host"
        return ProviderUnavailable(
            f"{provider} redirected more than {MAX_REDIRECTS} times (a redirect loop at {where})"
            f" — check providers.{provider}.base_url",
            provider=provider,
            symbol=symbol,
            retryable=False,
        )
    if isinstance(exc, requests.Timeout):
        return ProviderUnavailable(f"{provider} timed out", provider=provider, symbol=symbol)
    unreachable = _unreachable(exc)
    if unreachable:
        return ProviderUnreachable(
            f"{provider} unreachable: {unreachable} — check the network or base_url",
            provider=provider,
            symbol=symbol,
        )
    if isinstance(exc, requests.ConnectionError):
        return ProviderUnavailable(
            f"cannot reach {provider}: connection failed", provider=provider, symbol=symbol
        )
    return ProviderUnavailable(
        f"{provider} request failed: {type(exc).__name__}", provider=provider, symbol=symbol
    )


def _unreachable(exc: BaseException) -> str:
    """'cannot resolve HOST' or 'connection refused by HOST:PORT' when that is the cause."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    host = ""
    request = getattr(exc, "request", None)
    if request is not None and getattr(request, "url", None):
        parts = urlsplit(str(request.url))
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
    while todo:
        cur = todo.pop()
        if cur is None or id(cur) in seen:
            continue
        seen.add(id(cur))
        name = type(cur).__name__
        text = str(cur)
        if name in ("NameResolutionError", "gaierror") or "Failed to resolve" in text:
            return f"cannot resolve {host or 'its host'}"
        if isinstance(cur, ConnectionRefusedError) or "Connection refused" in text:
            return f"connection refused by {host or 'its host'}"
        todo += [
            cur.__cause__,
            cur.__context__,
            *[a for a in cur.args if isinstance(a, BaseException)],
        ]
        reason = getattr(cur, "reason", None)
        if isinstance(reason, BaseException):
            todo.append(reason)
    return ""


def with_retries(
    call: Callable[[], T],
    *,
    budget: float,
    sleep: Callable[[float], None] = time.sleep,
    max_attempts: int = 8,
) -> T:
    """Run `call`, retrying retryable ProviderErrors until the budget (seconds) is spent.

    The budget counts time spent in calls plus time slept, so a dead provider fails over in
    bounded time.
    """
    spent = 0.0
    attempt = 0
    while True:
        began = time.monotonic()
        try:
            return call()
        except ProviderError as exc:
            spent += time.monotonic() - began
            if not exc.retryable:
                raise
            attempt += 1
            backoff = min(MAX_BACKOFF, BASE_BACKOFF * 2 ** (attempt - 1))
            hinted = exc.retry_after
            delay = (
                min(hinted, MAX_BACKOFF * 4)
                if hinted is not None
                else backoff * random.uniform(0.5, 1.0)
            )
            if attempt >= max_attempts or spent + delay > budget:
                raise
            sleep(delay)
            spent += delay
