"""Fundamentals: snapshots per provider, reused while young, combined by priority.

Each fetch is kept as a document `SYMBOL/fundamentals/PROVIDER_YYYYMMDDTHHMMSSZ.json` (written
atomically, on every backend); a snapshot younger than the maximum age is reused instead of
asking again. The combined view takes each field from the highest-priority provider that has
it, naming the provider; fields match by name ignoring case and punctuation (`beta` = `Beta`),
names that differ stay apart. After a successful fetch only the newest `fundamentals_keep`
snapshots of that provider are kept.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from marketcache.core.freshness import parse_age
from marketcache.errors import ProviderError, SymbolNotFound, UsageError

if TYPE_CHECKING:
    from marketcache.cache.facade import UnifiedCache
    from marketcache.providers.base import Provider

FOLDER = "fundamentals/"
_NAME = re.compile(r"^fundamentals/(?P<provider>[a-z_]+)_(?P<stamp>\d{8}T\d{6}Z)(?:-\d+)?\.json$")


def field_key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def snapshots(cache: UnifiedCache, symbol: str, provider: str) -> list[tuple[datetime, str]]:
    """(fetched_at, document name) of one provider's snapshots, newest first."""
    out = []
    for name in cache.backend.list_documents(symbol, FOLDER):
        m = _NAME.match(name)
        if m and m["provider"] == provider:
            when = datetime.strptime(m["stamp"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
            out.append((when, name))
    return sorted(out, reverse=True)


def get_fundamentals(
    cache: UnifiedCache,
    providers: dict[str, Provider],
    symbol: str,
    *,
    max_age: str | None = None,
    only: str | None = None,
) -> dict[str, Any]:
    settings = cache.settings
    order = list(settings.fundamentals)
    if only is not None:
        from marketcache.providers.registry import canonical_name

        only = canonical_name(only)
        if only not in order:
            raise UsageError(f"--provider {only}: not in fundamentals.providers of the config")
        order = [only]
    age = parse_age(max_age or settings.options.fundamentals_max_age)
    now = datetime.now(UTC)
    taken: list[tuple[str, dict[str, Any]]] = []
    report: dict[str, Any] = {"symbol": symbol, "fields": {}, "snapshots": [], "errors": []}
    refused = 0
    for name in order:
        provider = providers[name]
        known = snapshots(cache, symbol, name)
        if known and age > now - known[0][0] and age.total_seconds() > 0:
            taken.append(_reuse(cache, symbol, name, known[0][1], report, stale=False))
            continue
        if not provider.available():
            from marketcache.providers.registry import missing_key

            why = missing_key(settings.providers[name]) if name in settings.providers else None
            report["errors"].append(why or f"{name}: not usable (disabled or no API key)")
            if why:  # a configured provider silently absent would look like "it has nothing"
                report.setdefault("warnings", []).append(why)
            continue
        try:
            fields = provider.fundamentals(symbol)
        except SymbolNotFound as exc:
            refused += 1
            report["errors"].append(str(exc))
            continue
        except ProviderError as exc:
            report["errors"].append(str(exc))
            if known:  # an older snapshot is better than none: used, and said so
                taken.append(_reuse(cache, symbol, name, known[0][1], report, stale=True))
            continue
        path, stamp = _write(cache, symbol, name, fields, now)
        _prune(cache, symbol, name, settings.options.fundamentals_keep)
        taken.append((name, fields))
        report["snapshots"].append(
            {"provider": name, "path": path, "fetched_at": stamp, "reused": False}
        )
    if not taken:
        if refused:
            raise SymbolNotFound(f"no provider has fundamentals of {symbol}", symbol=symbol)
        from marketcache.errors import ProviderUnavailable

        raise ProviderUnavailable(
            f"no fundamentals of {symbol}: " + "; ".join(report["errors"]), symbol=symbol
        )
    seen: dict[str, str] = {}
    for name, fields in taken:  # priority order: the first provider with a field wins it
        for field, value in fields.items():
            key = field_key(field)
            if key and key not in seen and value is not None:
                seen[key] = field
                report["fields"][field] = {"value": value, "provider": name}
    return report


def _reuse(
    cache: UnifiedCache,
    symbol: str,
    provider: str,
    path: str,
    report: dict[str, Any],
    *,
    stale: bool,
) -> tuple[str, dict[str, Any]]:
    """Take a stored snapshot's fields (noted in the report as reused, and stale when a fetch
    failed)."""
    doc = json.loads(cache.backend.read_document(symbol, path) or b"{}")
    entry = {
        "provider": provider,
        "path": path,
        "fetched_at": doc.get("fetched_at"),
        "reused": True,
    }
    report["snapshots"].append({**entry, "stale": True} if stale else entry)
    return provider, doc.get("fields", {})


def _write(
    cache: UnifiedCache, symbol: str, provider: str, fields: dict[str, Any], now: datetime
) -> tuple[str, str]:
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    existing = set(cache.backend.list_documents(symbol, FOLDER))
    path, n = f"{FOLDER}{provider}_{stamp}.json", 1
    while path in existing:  # two snapshots in one second never overwrite each other
        n += 1
        path = f"{FOLDER}{provider}_{stamp}-{n}.json"
    doc = {"provider": provider, "symbol": symbol, "fetched_at": now.isoformat(), "fields": fields}
    cache.backend.write_document(symbol, path, (json.dumps(doc, indent=2) + "\n").encode())
    return path, now.isoformat()


def _prune(cache: UnifiedCache, symbol: str, provider: str, keep: int) -> None:
    for _, name in snapshots(cache, symbol, provider)[keep:]:
        cache.backend.delete_document(symbol, name)
