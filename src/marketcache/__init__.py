"""marketcache: keep a cache of OHLCV market data complete, fresh and trustworthy.

Names are imported on first use, so that `marketcache --version`, `list` and `info` start
without pandas, numpy or pyarrow.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "UnifiedCache": "marketcache.cache.facade",
    "DataManager": "marketcache.manager",
    "PutResult": "marketcache.cache.series",
    "Settings": "marketcache.config.schema",
    "load_settings": "marketcache.config.parser",
    "OHLCVValidator": "marketcache.core.validate",
    "ValidationResult": "marketcache.core.validate",
    **{
        name: "marketcache.errors"
        for name in (
            "ConfigError", "CorruptFile", "LockTimeout", "MarketCacheError", "ProviderError",
            "ProviderUnavailable", "RateLimited", "StorageError", "SymbolNotFound", "UsageError",
            "ValidationFailed",
            "MarketCacheWarning",
        )
    },
}  # fmt: skip

if TYPE_CHECKING:
    from marketcache.cache.facade import UnifiedCache
    from marketcache.cache.series import PutResult
    from marketcache.config.parser import load_settings
    from marketcache.config.schema import Settings
    from marketcache.core.validate import OHLCVValidator, ValidationResult
    from marketcache.errors import (
        ConfigError,
        CorruptFile,
        LockTimeout,
        MarketCacheError,
        MarketCacheWarning,
        ProviderError,
        ProviderUnavailable,
        RateLimited,
        StorageError,
        SymbolNotFound,
        UsageError,
        ValidationFailed,
    )
    from marketcache.manager import DataManager


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'marketcache' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    """The public names (imported on first use, not by listing them) and the module dunders;
    not the helpers this file imports (`Any`, `importlib`)."""
    return sorted({*__all__, *(n for n in globals() if n.startswith("__"))})


__all__ = [
    "ConfigError", "CorruptFile", "DataManager", "LockTimeout", "MarketCacheError",
    "MarketCacheWarning",
    "OHLCVValidator", "ProviderError", "ProviderUnavailable", "PutResult", "RateLimited",
    "Settings", "StorageError", "SymbolNotFound", "UnifiedCache", "UsageError", "ValidationFailed",
    "ValidationResult", "__version__", "load_settings",
]  # fmt: skip
