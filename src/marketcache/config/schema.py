"""The settings, typed: what a providers.yaml says once parsed (`parser.py`) — providers, the
selection rules, symbols, datasets and the options. Frozen dataclasses, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from marketcache.core.symbols import AssetClass
from marketcache.providers.names import FUNDAMENTALS
from marketcache.storage.codecs import CODECS

DEFAULT_ARCHIVE_URL = "https://data.binance.vision"
RATE_UNITS = {"per_second": 1.0, "per_minute": 60.0, "per_hour": 3600.0, "per_day": 86400.0}


class Secret:
    """A credential: usable through `reveal()`, shown everywhere else as '***'."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    __str__ = __repr__


@dataclass(frozen=True)
class RateLimit:
    per_second: float | None = None
    per_minute: float | None = None
    per_hour: float | None = None
    per_day: float | None = None

    def describe(self) -> str:
        parts = [
            f"{v:g}/{k.removeprefix('per_')}"
            for k in RATE_UNITS
            if (v := getattr(self, k)) is not None
        ]
        return ", ".join(parts) or "unlimited"


@dataclass(frozen=True)
class ProviderSettings:
    name: str
    base_url: str
    rate_limit: RateLimit = field(default_factory=RateLimit)
    reliability: float = 0.9
    api_key: Secret = field(default_factory=lambda: Secret(""))
    timeout: float = 15.0
    retry_budget: float = 60.0
    enabled: bool = True
    archive_url: str = ""  # binance: the public klines archive ("" = none)
    stream_url: str = ""  # binance: `follow`'s kline streams ("": live.stream.STREAM_URL)
    rate_limit_store: str = ""  # a postgresql:// URL: the limit is shared by every machine
    archive_rate_limit: RateLimit = field(default_factory=lambda: RateLimit(per_second=10))
    max_answer_bytes: int = 64 * 2**20  # settings.max_answer_mb: a larger answer is refused
    max_member_bytes: int = 64 * 2**20  # settings.max_archive_member_mb: per zip member


@dataclass(frozen=True)
class SelectionRule:
    providers: tuple[str, ...]
    symbol_type: AssetClass | None = None
    timeframes: tuple[str, ...] = ()
    symbols: tuple[str, ...] = ()


@dataclass(frozen=True)
class SymbolSettings:
    aliases: dict[str, str] = field(default_factory=dict)
    type: AssetClass | None = None
    calendar: str | None = None


@dataclass(frozen=True)
class Dataset:
    symbols: tuple[str, ...]
    timeframes: tuple[str, ...]
    start: str
    end: str | None = None
    derive_from: str | None = None  # build these timeframes from this cached base timeframe


FORMATS = tuple(CODECS)  # the file formats: the codec registry's names


@dataclass(frozen=True)
class Options:
    min_score: float = 0.8
    lock_wait: float = 600.0
    verified_empty_recheck_days: float = 7.0
    format: str = "csv.gz"  # of a new file cache (an existing one keeps its own)
    fundamentals_max_age: str = "7d"  # a younger snapshot is reused, not fetched
    fundamentals_keep: int = 3  # snapshots kept per provider
    rate_limit_store: str = ""  # "" = a SQLite bucket in the cache folder (per machine)
    lease_seconds: float = 60.0  # object storage: a dead writer's lease expires after this
    quarantine_days: float = 30.0  # `cleanup` removes copies set aside longer ago than this
    serve_cache_mb: float = 256.0  # `serve`: the in-memory result cache's bound
    # object storage: the fsspec options as JSON, kept secret (keys may be in it)
    storage_options: Secret = field(default_factory=lambda: Secret(""))
    max_answer_mb: float = 64.0  # an HTTP answer larger than this is refused, unread
    max_archive_member_mb: float = 64.0  # a Binance archive zip member larger than this too
    live_fold_every: str = "1h"  # a series' live tail is folded into its year this often
    poll_delay: float = 20.0  # `follow` of stocks/FX: seconds after a bar closes to poll it


@dataclass(frozen=True)
class Settings:
    source: str
    providers: dict[str, ProviderSettings]
    selection: tuple[SelectionRule, ...]
    symbols: dict[str, SymbolSettings]
    datasets: tuple[Dataset, ...]
    options: Options = field(default_factory=Options)
    warnings: tuple[str, ...] = ()
    fundamentals: tuple[str, ...] = FUNDAMENTALS  # priority order

    def symbol(self, symbol: str) -> SymbolSettings:
        return self.symbols.get(symbol.upper(), SymbolSettings())


DEFAULT_SELECTION = (
    SelectionRule(("binance", "yahoo"), AssetClass.CRYPTO),
    SelectionRule(("yahoo", "alpha_vantage"), AssetClass.STOCK, ("1d", "1w", "1M")),
    SelectionRule(("alpha_vantage", "yahoo"), AssetClass.STOCK),
    SelectionRule(("yahoo",), AssetClass.FX),
)
