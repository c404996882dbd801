"""What every command shares: the common options (after the command or before it), the
logging they set up, and the context a command runs in (settings, cache, renderer).

Light to import: the cache and the config (YAML) are imported when a context is built.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from marketcache.cli.render import Renderer
from marketcache.core.symbols import normalize_symbol
from marketcache.core.timeframes import parse_timeframe
from marketcache.errors import UsageError

if TYPE_CHECKING:
    from marketcache.cache.facade import UnifiedCache
    from marketcache.config.schema import Settings

# Every command takes these, after the command or before it (`marketcache --cache-dir X info`);
# given in both places, the one after the command wins. MARKETCACHE_CACHE_DIR is read in
# `context`, below both, so that an option before the command beats the environment.
CacheDir = Annotated[
    str | None,
    typer.Option(
        "--cache-dir",
        help="Cache: a folder, s3://… or postgresql://… [env MARKETCACHE_CACHE_DIR; "
        "default ./data-cache].",
        show_default=False,
    ),
]
ConfigPath = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="providers.yaml [env MARKETCACHE_CONFIG; default ./providers.yaml, else packaged].",
        show_default=False,
    ),
]
JsonOut = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing but errors.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Show tracebacks and details.")]


@dataclass
class Context:
    settings: Settings
    cache: UnifiedCache
    out: Renderer


@dataclass(frozen=True)
class GlobalOptions:
    """The common options as given before the command (kept on the root Typer context)."""

    cache_dir: str | None = None
    config: Path | None = None
    as_json: bool = False
    quiet: bool = False
    verbose: bool = False

    def under(
        self,
        cache_dir: str | None,
        config: Path | None,
        as_json: bool,
        quiet: bool,
        verbose: bool,
    ) -> GlobalOptions:
        """The command's own options, falling back to these."""
        return GlobalOptions(
            cache_dir if cache_dir is not None else self.cache_dir,
            config if config is not None else self.config,
            as_json or self.as_json,
            quiet or self.quiet,
            verbose or self.verbose,
        )


def common(
    invocation: typer.Context,
    cache_dir: str | None,
    config: Path | None,
    as_json: bool,
    quiet: bool,
    verbose: bool,
) -> GlobalOptions:
    before = invocation.obj if isinstance(invocation.obj, GlobalOptions) else GlobalOptions()
    return before.under(cache_dir, config, as_json, quiet, verbose)


LogFile = Annotated[
    Path | None,
    typer.Option(
        "--log-file", help="Also write progress and warnings to this file.", show_default=False
    ),
]
Format = Annotated[
    str, typer.Option("--format", help="table, json or csv [default: table; json with --json].")
]
THIRD_PARTY_LOGGERS = ("yfinance", "urllib3", "binance", "peewee", "alpha_vantage", "requests")


def configure_logging(*, quiet: bool, verbose: bool, log_file: Path | None) -> None:
    """-v: progress as log lines on stderr; --log-file: the same in a file; -q: third-party
    loggers (yfinance prints its own errors) are silenced."""
    import logging

    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(logging.INFO if (verbose or log_file) else logging.WARNING)
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    if verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(fmt)
        root.addHandler(handler)
    if log_file is not None:
        try:
            file_handler = logging.FileHandler(log_file, encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--log-file {log_file}: {exc.strerror or exc}") from None
        file_handler.setFormatter(fmt)
        root.addHandler(file_handler)
    if not verbose and not log_file:
        root.addHandler(logging.NullHandler())
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL if quiet else logging.WARNING)


def context(
    options: GlobalOptions, *, log_file: Path | None = None, output_format: str = "table"
) -> Context:
    cache_dir, config, as_json, quiet = (
        options.cache_dir, options.config, options.as_json, options.quiet
    )  # fmt: skip
    configure_logging(quiet=quiet, verbose=options.verbose, log_file=log_file)
    if output_format not in ("table", "json", "csv"):
        raise UsageError(f"--format {output_format}: use table, json or csv")
    as_json = as_json or output_format == "json"
    from marketcache.cache.facade import UnifiedCache
    from marketcache.config.parser import load_settings

    out = Renderer(
        as_json=as_json,
        quiet=quiet,
        csv_out=output_format == "csv" and not as_json,
        verbose=options.verbose,
    )
    settings = load_settings(config)
    for warning in settings.warnings:
        out.warn(warning)
    root = cache_dir or os.environ.get("MARKETCACHE_CACHE_DIR") or "data-cache"
    if "://" not in root and Path(root).exists() and not Path(root).is_dir():
        raise UsageError(f"--cache-dir {root} is not a folder")
    return Context(settings, UnifiedCache(root, settings=settings), out)


def not_cached(ctx: Context, sym: str, tf: str | None) -> UsageError:
    what = f"{sym} {tf}" if tf else sym
    return UsageError(f"{what} is not in the cache at {ctx.cache.root}: populate it first")


def require_cache(ctx: Context) -> None:
    """A cache that does not exist is a usage error (a typo in CI must not pass as an empty
    cache). `info` and `list` ask only once they found nothing, so a cache with data costs
    no extra request on object storage."""
    if not ctx.cache.backend.exists():
        raise UsageError(f"--cache-dir {ctx.cache.root} does not exist: check the path")


def cached_detail(ctx: Context, sym: str, tf: str | None) -> dict[str, Any]:
    detail = ctx.cache.get_data_info(sym, tf)
    if not detail["timeframes"]:
        require_cache(ctx)
        raise not_cached(ctx, sym, tf)
    return detail


def scope(symbol: str | None, timeframe: str | None) -> tuple[str | None, str | None]:
    sym = normalize_symbol(symbol) if symbol else None
    tf = parse_timeframe(timeframe).name if timeframe else None
    return sym, tf
