"""The one exception tree of marketcache.

Library code raises only these; the CLI maps them to messages and exit codes in one place.

    MarketCacheError                 root; exit 1 unless a subclass says otherwise
    ├── UsageError                   bad symbol, timeframe, date or option        (exit 2)
    ├── ConfigError                  invalid providers.yaml: names file and key   (exit 2)
    ├── ProviderError                a provider could not deliver a range
    │   ├── SymbolNotFound           the provider does not know the symbol
    │   ├── RangeUnavailable         beyond the provider's history window
    │   ├── RateLimited              429/418 answers (retryable, carries retry_after)
    │   │   └── QuotaExhausted       the quota is used up (not retried)
    │   └── ProviderUnavailable      network failure, 5xx, timeout, garbled body
    │       └── ProviderUnreachable  DNS failure or connection refused (not retried; the
    │                                provider is marked down for the rest of the run)
    ├── StorageError                 the cache could not be read or written
    │   ├── CorruptFile              a data or metadata file fails its checks     (exit 3)
    │   ├── LockTimeout              another run holds the lock past the wait     (exit 4)
    │   └── Conflict                 object storage: a conditional write was refused (another
    │                                writer committed first, or this run's lease expired)
    └── ValidationFailed             data scored below --min-score                (exit 3)

    MarketCacheWarning (a UserWarning, not an error): the library went on with less than was
    asked (`DataManager.get_ohlcv(strict=False)` returning what is cached).
"""

from __future__ import annotations

from pathlib import Path


class MarketCacheError(Exception):
    """Root of every error marketcache raises on purpose."""

    exit_code = 1


class UsageError(MarketCacheError):
    """A symbol, timeframe, date or option that cannot be used."""

    exit_code = 2


class ConfigError(MarketCacheError):
    """providers.yaml (or another config source) is invalid."""

    exit_code = 2

    def __init__(self, message: str, *, path: Path | str | None = None, key: str | None = None):
        where = ""
        if path is not None:
            where = f"{path}: "
        if key:
            where += f"key '{key}': "
        super().__init__(where + message)
        self.path = path
        self.key = key


class ProviderError(MarketCacheError):
    """A provider could not deliver the requested range.

    `retryable` says whether asking again (after `retry_after` seconds, if given) may help.
    """

    default_retryable = False

    def __init__(
        self,
        message: str,
        *,
        provider: str = "",
        symbol: str = "",
        retry_after: float | None = None,
        retryable: bool | None = None,
    ):
        super().__init__(message)
        self.provider = provider
        self.symbol = symbol
        self.retry_after = retry_after
        self.retryable = self.default_retryable if retryable is None else retryable


class SymbolNotFound(ProviderError):
    """The provider does not list this symbol."""


class RangeUnavailable(ProviderError):
    """The provider cannot serve this range (beyond its history window, wrong timeframe)."""


class RateLimited(ProviderError):
    """The provider asked us to slow down (429/418)."""

    default_retryable = True


class QuotaExhausted(RateLimited):
    """The provider's quota is used up; asking again now will not help."""

    default_retryable = False


class ProviderUnavailable(ProviderError):
    """Network failure, server error, timeout or an unreadable answer."""

    default_retryable = True


class ProviderUnreachable(ProviderUnavailable):
    """The provider's host cannot be resolved or refuses connections: asking again within
    this run will not help, so the run marks the provider down and fails over."""

    default_retryable = False


class StorageError(MarketCacheError):
    """The cache could not be read or written."""


class CorruptFile(StorageError):
    """A data or metadata file fails its integrity checks."""

    exit_code = 3

    def __init__(self, path: Path | str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path  # a file, or a backend location and key ("postgresql://… SYM TF YEAR")
        self.reason = reason


class LockTimeout(StorageError):
    """Another run holds the symbol/timeframe lock past the wait limit."""

    exit_code = 4


class Conflict(StorageError):
    """A conditional write was refused: the object is not in the state the writer read (a
    newer commit, or a lease this run lost). The writer re-plans from the new state."""


class ValidationFailed(MarketCacheError):
    """Cached data scored below the required quality."""

    exit_code = 3


class MarketCacheWarning(UserWarning):
    """The library went on with less than was asked, and says what is missing and why."""


class Terminated(BaseException):
    """SIGTERM arrived (raised in the main thread by the CLI's signal handler)."""


def one_line(message: object) -> str:
    """A message of several lines (a driver's DETAIL, a provider's body) as one line: the
    rule that every error is one line never drops what its later lines say."""
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())
