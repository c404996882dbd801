"""marketcache: keep a cache of OHLCV market data complete, fresh and trustworthy."""

from marketcache.cache import PutResult, UnifiedCache
from marketcache.config import Settings, load_settings
from marketcache.errors import (
    ConfigError,
    CorruptFile,
    LockTimeout,
    MarketCacheError,
    ProviderError,
    ProviderUnavailable,
    RateLimited,
    StorageError,
    SymbolNotFound,
    UsageError,
    ValidationFailed,
)
from marketcache.validate import OHLCVValidator, ValidationResult

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "CorruptFile",
    "LockTimeout",
    "MarketCacheError",
    "OHLCVValidator",
    "ProviderError",
    "ProviderUnavailable",
    "PutResult",
    "RateLimited",
    "Settings",
    "StorageError",
    "SymbolNotFound",
    "UnifiedCache",
    "UsageError",
    "ValidationFailed",
    "ValidationResult",
    "__version__",
    "load_settings",
]
