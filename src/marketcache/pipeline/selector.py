"""ProviderSelector: rules of providers.yaml → an ordered failover chain. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from marketcache.config.schema import SelectionRule, Settings
from marketcache.core.symbols import CRYPTO_QUOTES, FIAT_QUOTES, AssetClass, classify
from marketcache.errors import UsageError
from marketcache.providers.base import Capabilities


@dataclass(frozen=True)
class Choice:
    """Ask `provider` for `symbol` (the provider's own spelling)."""

    provider: str
    symbol: str


def native_symbol(symbol: str, provider: str, asset: AssetClass, settings: Settings) -> str:
    """The provider's spelling: a configured alias, else a conventional translation."""
    alias = settings.symbol(symbol).aliases.get(provider)
    if alias:
        return alias
    if asset is AssetClass.CRYPTO:
        base, quote = split_pair(symbol)
        if provider == "binance":
            return base + quote
        if provider == "yahoo":
            fiat = "USD" if quote in ("USDT", "USDC", "BUSD", "FDUSD", "TUSD", "USD") else quote
            return f"{base}-{fiat}"
    return symbol


def split_pair(symbol: str) -> tuple[str, str]:
    for sep in ("/", "-"):
        if sep in symbol:
            base, _, quote = symbol.partition(sep)
            return base, quote
    for quote in (*CRYPTO_QUOTES, *FIAT_QUOTES):  # BTC/EUR arrives as BTCEUR
        if symbol.endswith(quote) and len(symbol) > len(quote):
            return symbol[: -len(quote)], quote
    return symbol, ""


def _matches(rule: SelectionRule, symbol: str, asset: AssetClass, timeframe: str) -> bool:
    if rule.symbols and symbol not in rule.symbols:
        return False
    if rule.symbol_type is not None and rule.symbol_type is not asset:
        return False
    return not (rule.timeframes and timeframe not in rule.timeframes)


def select(
    symbol: str,
    timeframe: str,
    settings: Settings,
    capabilities: Mapping[str, Capabilities],
    usable: Mapping[str, bool],
    forced: str | None = None,
) -> list[Choice]:
    """The failover chain for symbol × timeframe: first matching rule, filtered by what
    each provider can do (timeframe, asset class, key present). `forced` overrides rules."""
    asset = classify(symbol, (t.value if (t := settings.symbol(symbol).type) else None))
    if forced is not None:
        caps = capabilities[forced]
        if timeframe not in caps.timeframes:
            raise UsageError(f"--provider {forced} has no {timeframe} bars")
        if not usable.get(forced, False):
            raise UsageError(f"--provider {forced} is not usable: set its api_key or enable it")
        return [Choice(forced, native_symbol(symbol, forced, asset, settings))]
    names: tuple[str, ...] = ()
    for rule in settings.selection:
        if _matches(rule, symbol, asset, timeframe):
            names = rule.providers
            break
    chain = []
    for name in names:
        found = capabilities.get(name)
        if found is None or not usable.get(name, False):
            continue
        if timeframe in found.timeframes and asset in found.asset_classes:
            chain.append(Choice(name, native_symbol(symbol, name, asset, settings)))
    return chain


def rule_providers(symbol: str, timeframe: str, settings: Settings) -> tuple[str, ...]:
    """The providers the first selection rule matching symbol × timeframe names, in order."""
    asset = classify(symbol, (t.value if (t := settings.symbol(symbol).type) else None))
    for rule in settings.selection:
        if _matches(rule, symbol, asset, timeframe):
            return tuple(rule.providers)
    return ()


def left_out(
    symbol: str,
    timeframe: str,
    settings: Settings,
    capabilities: Mapping[str, Capabilities],
    usable: Mapping[str, bool],
) -> list[str]:
    """Providers the matching rule names, able to serve this series, that `select` dropped
    because they are not usable (no key, disabled): what a run should say it went without."""
    asset = classify(symbol, (t.value if (t := settings.symbol(symbol).type) else None))
    rule = next((r for r in settings.selection if _matches(r, symbol, asset, timeframe)), None)
    return [
        name
        for name in (rule.providers if rule else ())
        if (found := capabilities.get(name)) is not None
        and not usable.get(name, False)
        and timeframe in found.timeframes
        and asset in found.asset_classes
    ]
