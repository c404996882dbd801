"""Provider names (`names.py`) → adapter classes (imported lazily: the libraries are heavy)."""

from __future__ import annotations

import os
from importlib import import_module
from pathlib import Path

from marketcache.config.schema import ProviderSettings, Settings
from marketcache.errors import UsageError
from marketcache.providers.base import Provider
from marketcache.providers.names import ALIASES, KEY_VARIABLES, PROVIDERS


def canonical_name(name: str) -> str:
    key = name.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in PROVIDERS:
        raise UsageError(f"unknown provider '{name}': use one of {', '.join(PROVIDERS)}")
    return key


def provider_class(name: str) -> type[Provider]:
    module, _, attr = PROVIDERS[canonical_name(name)].partition(":")
    cls: type[Provider] = getattr(import_module(module), attr)
    assert issubclass(cls, Provider)
    return cls


def build_providers(settings: Settings, state_dir: Path | None) -> dict[str, Provider]:
    """One adapter per configured provider, sharing rate limits through `state_dir`."""
    return {name: provider_class(name)(settings.providers[name], state_dir) for name in PROVIDERS}


def missing_key(settings: ProviderSettings) -> str | None:
    """Why an enabled provider that needs a key cannot be used (its key resolves empty and
    its variable is unset), in one line naming the variable; None when it has its key."""
    variable = KEY_VARIABLES.get(settings.name)
    if variable is None or not settings.enabled:
        return None
    if settings.api_key or os.environ.get(variable):
        return None
    return (
        f"{settings.name} is left out: {variable} is not set (export it, or set"
        f" providers.{settings.name}.api_key; `enabled: false` there silences this)"
    )
