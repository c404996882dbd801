"""providers.yaml → typed settings (`schema.py`). Every error names the file and the key.

`${ENV_VAR}` is interpolated in strings; API keys are kept as `Secret`, whose str/repr never
show the value.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import os
import re
from typing import Any

from marketcache.config.files import (
    check_size,
    default_config_text,
    load_yaml,
    merge_over,
    resolve_config_path,
)
from marketcache.config.schema import (
    DEFAULT_ARCHIVE_URL,
    DEFAULT_SELECTION,
    FORMATS,
    RATE_UNITS,
    Dataset,
    Options,
    ProviderSettings,
    RateLimit,
    Secret,
    SelectionRule,
    Settings,
    SymbolSettings,
)
from marketcache.core.models import parse_date
from marketcache.core.symbols import AssetClass, normalize_symbol
from marketcache.core.timeframes import parse_timeframe
from marketcache.errors import ConfigError, MarketCacheError
from marketcache.providers.names import BASE_URLS, FUNDAMENTALS, PROVIDERS

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
NUMBER_CEILING = 1e9  # the bound of a numeric key that names no tighter one


def default_settings() -> Settings:
    """The packaged defaults (what a library user gets without naming a config)."""
    return parse_settings(default_config_text(), source="<packaged default>", defaults=False)


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Load settings from `path` (resolved as the CLI does) or the packaged default."""
    resolved = resolve_config_path(path)
    if resolved is None:
        return default_settings()
    try:
        check_size(resolved.stat().st_size, str(resolved))  # before reading it into memory
        text = resolved.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", path=resolved) from None
    return parse_settings(text, source=str(resolved))


def parse_settings(text: str, *, source: str = "providers.yaml", defaults: bool = True) -> Settings:
    """Typed settings from a providers.yaml's text, merged over the packaged defaults key by
    key (see `files.merge_over`) unless `defaults` is False."""
    raw = load_yaml(text, source)
    if raw is None:
        raw = {}
    if defaults and isinstance(raw, dict):
        raw = merge_over(copy.deepcopy(_packaged_raw()), raw)
    return _Parser(source).settings(raw)


@functools.cache
def _packaged_raw() -> Any:
    return load_yaml(default_config_text(), "<packaged default>")


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.warnings: list[str] = []

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(message, path=self.source, key=key)

    def mapping(self, value: Any, key: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, f"must be a mapping, got {type(value).__name__}")
        for k in value:
            if not isinstance(k, str):
                raise self.fail(key, f"keys must be text, got {k!r}")
        return value

    def seq(self, value: Any, key: str) -> list[Any]:
        if not isinstance(value, list):
            raise self.fail(key, f"must be a list, got {type(value).__name__}")
        return value

    def text(self, value: Any, key: str) -> str:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise self.fail(key, f"must be text, got {type(value).__name__}")
        return _ENV.sub(lambda m: os.environ.get(m.group(1), ""), str(value))

    def options_tree(self, value: Any, key: str) -> dict[str, Any]:
        """fsspec storage options: a mapping of text, numbers, booleans and nested mappings,
        `${ENV}` interpolated (secrets stay in the environment)."""
        out: dict[str, Any] = {}
        for k, v in self.mapping(value, key).items():
            if isinstance(v, dict):
                out[k] = self.options_tree(v, f"{key}.{k}")
            elif isinstance(v, bool) or v is None:
                out[k] = v
            else:
                out[k] = self.text(v, f"{key}.{k}")
        return out

    def number(
        self,
        value: Any,
        key: str,
        *,
        low: float = 0.0,
        high: float = NUMBER_CEILING,
        integer: bool = False,
    ) -> float:
        """A finite number in [low, high]: every numeric key is bounded both ways, since `.nan`
        compares false with everything and `.inf` (or 1e400) overflows timers and buckets."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(key, f"must be a number, got {type(value).__name__}")
        bound = f"between {low:g} and {high:g}"
        try:
            number = float(value)
        except OverflowError:
            digits = len(str(value))
            raise self.fail(key, f"must be a number {bound}, got a {digits}-digit one") from None
        if not math.isfinite(number):
            raise self.fail(key, f"must be a finite number {bound}, got {value}")
        if not low <= number <= high:
            raise self.fail(key, f"must be {bound}, got {value}")
        if integer and not number.is_integer():
            raise self.fail(key, f"must be a whole number {bound}, got {value}")
        return number

    def unknown(self, data: dict[str, Any], allowed: tuple[str, ...], key: str) -> None:
        for k in data:
            if k not in allowed:
                where = f"{key}.{k}" if key else k
                self.warnings.append(f"{self.source}: unknown key '{where}' ignored")

    def settings(self, raw: Any) -> Settings:
        top = self.mapping(raw, "<top level>")
        self.unknown(
            top, ("providers", "selection", "symbols", "datasets", "settings", "fundamentals"), ""
        )
        providers = self.providers(top.get("providers") or {})
        selection = tuple(
            self.rule(r, f"selection[{i}]", providers)
            for i, r in enumerate(self.seq(top.get("selection") or [], "selection"))
        )
        if "selection" not in top:
            selection = DEFAULT_SELECTION
        symbols = self.symbols(top.get("symbols") or {})
        datasets = tuple(
            self.dataset(d, f"datasets[{i}]")
            for i, d in enumerate(self.seq(top.get("datasets") or [], "datasets"))
        )
        options = self.options(top.get("settings") or {})
        from dataclasses import replace

        providers = {
            n: replace(
                p,
                rate_limit_store=options.rate_limit_store,
                max_answer_bytes=int(options.max_answer_mb * 2**20),
                max_member_bytes=int(options.max_archive_member_mb * 2**20),
            )
            for n, p in providers.items()
        }
        fundamentals = self.fundamentals(top.get("fundamentals") or {}, providers)
        for name, prov in providers.items():
            if prov.enabled and prov.rate_limit.describe() == "unlimited":
                self.warnings.append(
                    f"{self.source}: providers.{name} has no rate_limit, so its requests are not"
                    f" throttled: set one, e.g. providers.{name}.rate_limit: {{per_minute: 60}}"
                )
        return Settings(
            self.source, providers, selection, symbols, datasets, options, tuple(self.warnings),
            fundamentals,
        )  # fmt: skip

    def fundamentals(self, raw: Any, providers: dict[str, ProviderSettings]) -> tuple[str, ...]:
        body = self.mapping(raw, "fundamentals")
        self.unknown(body, ("providers",), "fundamentals")
        names = self.seq(body.get("providers", list(FUNDAMENTALS)), "fundamentals.providers")
        for name in names:
            if name not in FUNDAMENTALS:
                use = ", ".join(FUNDAMENTALS)
                raise self.fail("fundamentals.providers", f"'{name}': use {use}")
        return tuple(str(n) for n in names)

    def providers(self, raw: Any) -> dict[str, ProviderSettings]:
        out: dict[str, ProviderSettings] = {}
        for name, body in self.mapping(raw, "providers").items():
            key = f"providers.{name}"
            if name not in PROVIDERS:
                raise self.fail(key, f"unknown provider: use one of {', '.join(PROVIDERS)}")
            body = self.mapping(body or {}, key)
            allowed = ("base_url", "rate_limit", "reliability", "api_key", "timeout")
            extra = ("archive_url", "archive_rate_limit", "stream_url") if name == "binance" else ()
            self.unknown(body, (*allowed, "retry_budget", "enabled", *extra), key)
            base_url = self.text(body.get("base_url", BASE_URLS[name]), f"{key}.base_url")
            if not re.match(r"^https?://[^\s/]+", base_url):
                raise self.fail(f"{key}.base_url", f"'{base_url}' is not an http(s) URL")
            rate = self.rate(body.get("rate_limit"), f"{key}.rate_limit")
            archive_url, stream_url = "", ""
            if name == "binance":
                stream_url = self.text(body.get("stream_url", ""), f"{key}.stream_url").rstrip("/")
                if stream_url and not re.match(r"^wss?://[^\s/]+$", stream_url):
                    raise self.fail(
                        f"{key}.stream_url", f"'{stream_url}' is not a ws(s)://host:port URL"
                    )
                archive_url = self.text(body.get("archive_url", DEFAULT_ARCHIVE_URL),
                                        f"{key}.archive_url").rstrip("/")  # fmt: skip
                if archive_url and not re.match(r"^https?://[^\s/]+", archive_url):
                    raise self.fail(f"{key}.archive_url", f"'{archive_url}' is not an http(s) URL")
            api_key = Secret(self.text(body.get("api_key", ""), f"{key}.api_key"))
            enabled = body.get("enabled", True)
            if not isinstance(enabled, bool):
                raise self.fail(f"{key}.enabled", "must be true or false")
            out[name] = ProviderSettings(
                name=name,
                base_url=base_url.rstrip("/"),
                rate_limit=rate,
                reliability=self.number(
                    body.get("reliability", 0.9), f"{key}.reliability", high=1.0
                ),
                api_key=api_key,
                timeout=self.number(
                    body.get("timeout", 15.0), f"{key}.timeout", low=0.1, high=3600
                ),
                retry_budget=self.number(
                    body.get("retry_budget", 60.0), f"{key}.retry_budget", high=86_400
                ),
                enabled=enabled,
                archive_url=archive_url,
                stream_url=stream_url,
                archive_rate_limit=self.rate(
                    body.get("archive_rate_limit") or {"per_second": 10},
                    f"{key}.archive_rate_limit",
                ),
            )
        for name in PROVIDERS:
            archive = DEFAULT_ARCHIVE_URL if name == "binance" else ""
            out.setdefault(
                name,
                ProviderSettings(name=name, base_url=BASE_URLS[name], archive_url=archive),
            )
        return out

    def rate(self, raw: Any, key: str) -> RateLimit:
        body = self.mapping(raw or {}, key)
        self.unknown(body, tuple(RATE_UNITS), key)
        return RateLimit(
            **{
                k: self.number(v, f"{key}.{k}", low=1e-9, high=1e6)
                for k, v in body.items()
                if k in RATE_UNITS
            }
        )

    def rule(self, raw: Any, key: str, providers: dict[str, ProviderSettings]) -> SelectionRule:
        body = self.mapping(raw, key)
        self.unknown(body, ("symbol_type", "timeframes", "symbols", "providers"), key)
        names = tuple(
            self.text(p, f"{key}.providers") for p in self.seq(body.get("providers"), key)
        )
        for name in names:
            if name not in providers:
                raise self.fail(f"{key}.providers", f"unknown provider '{name}'")
        symbol_type = None
        if "symbol_type" in body:
            symbol_type = self.asset_class(body["symbol_type"], f"{key}.symbol_type")
        timeframes = tuple(
            self.timeframe(t, f"{key}.timeframes")
            for t in self.seq(body.get("timeframes", []), f"{key}.timeframes")
        )
        symbols = tuple(
            self.symbol(s, f"{key}.symbols")
            for s in self.seq(body.get("symbols", []), f"{key}.symbols")
        )
        return SelectionRule(names, symbol_type, timeframes, symbols)

    def symbols(self, raw: Any) -> dict[str, SymbolSettings]:
        out: dict[str, SymbolSettings] = {}
        for sym, body in self.mapping(raw, "symbols").items():
            key = f"symbols.{sym}"
            body = self.mapping(body or {}, key)
            aliases: dict[str, str] = {}
            kind = None
            calendar = None
            for k, v in body.items():
                if k in PROVIDERS:
                    aliases[k] = self.text(v, f"{key}.{k}")
                elif k == "type":
                    kind = self.asset_class(v, f"{key}.type")
                elif k == "calendar":
                    from marketcache.core.calendars import is_known_calendar

                    calendar = self.text(v, f"{key}.calendar")
                    if not is_known_calendar(calendar):
                        raise self.fail(f"{key}.calendar", f"unknown calendar '{calendar}'")
                else:
                    self.warnings.append(f"{self.source}: unknown key '{key}.{k}' ignored")
            out[self.symbol(sym, key)] = SymbolSettings(aliases, kind, calendar)
        return out

    def dataset(self, raw: Any, key: str) -> Dataset:
        body = self.mapping(raw, key)
        self.unknown(body, ("symbols", "timeframes", "start", "end", "derive_from"), key)
        symbols = tuple(
            self.symbol(s, f"{key}.symbols")
            for s in self.seq(body.get("symbols"), f"{key}.symbols")
        )
        timeframes = tuple(
            self.timeframe(t, f"{key}.timeframes")
            for t in self.seq(body.get("timeframes", ["1d"]), f"{key}.timeframes")
        )
        if "start" not in body:
            raise self.fail(f"{key}.start", "is required (e.g. start: 2020-01-01)")
        start = self.date(body["start"], f"{key}.start")
        end = self.date(body["end"], f"{key}.end") if body.get("end") is not None else None
        base = body.get("derive_from")
        derive_from = self.timeframe(base, f"{key}.derive_from") if base is not None else None
        return Dataset(symbols, timeframes, start, end, derive_from)

    def options(self, raw: Any) -> Options:
        body = self.mapping(raw, "settings")
        self.unknown(
            body,
            ("min_score", "lock_wait", "verified_empty_recheck_days", "format",
             "fundamentals_max_age", "fundamentals_keep", "rate_limit_store",
             "lease_seconds", "storage_options", "max_answer_mb", "max_archive_member_mb",
             "quarantine_days", "serve_cache_mb", "live_fold_every", "poll_delay"),
            "settings",
        )  # fmt: skip
        defaults = Options()

        def number(name: str, **limits: Any) -> float:
            return self.number(body.get(name, getattr(defaults, name)), f"settings.{name}",
                               **limits)  # fmt: skip

        def age(name: str, form: str) -> str:
            text = self.text(body.get(name, getattr(defaults, name)), f"settings.{name}")
            if not re.fullmatch(form, text.strip().lower()):
                raise self.fail(f"settings.{name}", f"'{text}': use e.g. 7d, 36h, 30m")
            return text.strip().lower()

        fmt = self.text(body.get("format", defaults.format), "settings.format")
        if fmt not in FORMATS:
            raise self.fail("settings.format", f"'{fmt}': use one of {', '.join(FORMATS)}")
        store = self.text(body.get("rate_limit_store", ""), "settings.rate_limit_store")
        if store and not store.startswith(("postgresql://", "postgres://")):
            raise self.fail(
                "settings.rate_limit_store", "use a postgresql:// URL (or leave it out)"
            )
        storage = body.get("storage_options", {})
        return Options(
            poll_delay=number("poll_delay", high=3600),
            max_answer_mb=number("max_answer_mb", low=0.001),
            max_archive_member_mb=number("max_archive_member_mb", low=0.001),
            rate_limit_store=store,
            lease_seconds=number("lease_seconds", low=1, high=86_400),
            quarantine_days=number("quarantine_days", high=36_500),
            storage_options=Secret(
                json.dumps(self.options_tree(storage, "settings.storage_options"))
            ),
            format=fmt,
            serve_cache_mb=number("serve_cache_mb", high=1_048_576),
            fundamentals_max_age=age("fundamentals_max_age", r"0|\d+[mhdw]"),
            fundamentals_keep=int(number("fundamentals_keep", low=1, high=10_000, integer=True)),
            min_score=number("min_score", high=1.0),
            lock_wait=number("lock_wait", high=604_800),  # a week: longer is a hang, not a wait
            verified_empty_recheck_days=number("verified_empty_recheck_days", high=36_500),
            live_fold_every=age("live_fold_every", r"0*[1-9]\d*[mhdw]"),
        )

    def asset_class(self, value: Any, key: str) -> AssetClass:
        try:
            return AssetClass(self.text(value, key))
        except ValueError:
            raise self.fail(key, f"must be one of crypto, stock, fx; got {value!r}") from None

    def timeframe(self, value: Any, key: str) -> str:
        try:
            return parse_timeframe(self.text(value, key)).name
        except MarketCacheError as exc:
            raise self.fail(key, str(exc)) from None

    def symbol(self, value: Any, key: str) -> str:
        try:
            return normalize_symbol(self.text(value, key))
        except MarketCacheError as exc:
            raise self.fail(key, str(exc)) from None

    def date(self, value: Any, key: str) -> str:
        """A dataset date: YYYY-MM-DD kept as is (checked without pandas, so that loading the
        config stays light), a relative age ('5y') resolved to a date as of now."""
        import datetime as dt

        text = str(value).strip()
        try:
            day = dt.date.fromisoformat(text[:10]) if re.match(r"^\d{4}-\d\d-\d\d$", text) else None
        except ValueError:
            day = None
        if day is not None:
            if not dt.date(1970, 1, 1) <= day < dt.date(2200, 1, 1):
                raise self.fail(key, f"'{text}' is out of range (1970-01-01 .. 2199-12-31)")
            return day.isoformat()
        try:
            return str(parse_date(text, option=key).date())
        except MarketCacheError as exc:
            raise self.fail(key, str(exc)) from None
