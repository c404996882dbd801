"""The commands that move or enrich a cache: `copy` and `fundamentals` (thin, like the rest)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from marketcache.cli.options import (
    CacheDir,
    ConfigPath,
    JsonOut,
    Quiet,
    Verbose,
    common,
    configure_logging,
    context,
    scope,
)
from marketcache.cli.render import Renderer
from marketcache.core.symbols import normalize_symbol
from marketcache.errors import UsageError


def copy(
    invocation: typer.Context,
    source: Annotated[str, typer.Argument(help="The cache to copy from (path or URL).")],
    destination: Annotated[str, typer.Argument(help="The cache to copy to (path or URL).")],
    output_format: Annotated[
        str | None,
        typer.Option("--format", help="Format of a new file cache: csv.gz or parquet."),
    ] = None,
    symbol: Annotated[str | None, typer.Option(help="Only this symbol.")] = None,
    timeframe: Annotated[str | None, typer.Option(help="Only this timeframe.")] = None,
    config: ConfigPath = None,
    as_json: JsonOut = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> int:
    """Copy a cache (or part of it) to another format or backend, verifying every year;
    a re-run copies only what changed."""
    from dataclasses import replace

    from marketcache.cache.copy import copy_cache
    from marketcache.cache.facade import UnifiedCache
    from marketcache.config.parser import load_settings

    options = common(invocation, None, config, as_json, quiet, verbose)
    configure_logging(quiet=options.quiet, verbose=options.verbose, log_file=None)
    out = Renderer(as_json=options.as_json, quiet=options.quiet)
    settings = load_settings(options.config)
    sym, tf = scope(symbol, timeframe)
    src = UnifiedCache(source, settings=settings)
    if not src.backend.exists():
        raise UsageError(f"copy: the source cache {src.backend.location} does not exist")
    if output_format is not None:
        from marketcache.config.schema import FORMATS

        if output_format not in FORMATS:
            raise UsageError(f"--format {output_format}: use one of {', '.join(FORMATS)}")
        settings = replace(settings, options=replace(settings.options, format=output_format))
    dest = UnifiedCache(destination, settings=settings)
    if output_format is not None and dest.backend.format != output_format:
        raise UsageError(
            f"--format {output_format}: {dest.backend.location} already holds a"
            f" {dest.backend.format} cache"
        )
    report = copy_cache(src, dest, symbol=sym, timeframe=tf)
    out.copy_report(report)
    return report.exit_code


def fundamentals(
    invocation: typer.Context,
    symbols: Annotated[list[str], typer.Argument(help="Symbols.")],
    max_age: Annotated[
        str | None,
        typer.Option(
            "--max-age", help="Reuse younger snapshots [settings.fundamentals_max_age]; 0 fetches."
        ),
    ] = None,
    provider: Annotated[str | None, typer.Option(help="Ask only this provider.")] = None,
    cache_dir: CacheDir = None,
    config: ConfigPath = None,
    as_json: JsonOut = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> int:
    """Fundamentals per symbol: cached snapshots, refreshed when older than --max-age."""
    from marketcache.errors import MarketCacheError
    from marketcache.manager import DataManager

    ctx = context(common(invocation, cache_dir, config, as_json, quiet, verbose))
    reports: list[dict[str, Any]] = []
    failed = 0
    with DataManager(ctx.cache) as dm:
        for raw in symbols:
            sym = normalize_symbol(raw)
            try:
                reports.append(dm.get_fundamentals(sym, max_age, provider=provider))
            except MarketCacheError as exc:
                if isinstance(exc, UsageError):
                    raise
                failed += 1
                ctx.out.error(f"{sym}: {exc}")
                reports.append({"symbol": sym, "fields": {}, "snapshots": [], "errors": [str(exc)]})
    for warning in dict.fromkeys(w for r in reports for w in r.get("warnings", [])):
        ctx.out.warn(warning)  # once a run, not once per symbol
    code = 1 if failed else 0
    ctx.out.fundamentals(reports, code)
    return code


def register(app: typer.Typer) -> None:
    """Add `copy` and `fundamentals` to the CLI (called once by `cli/app.py`)."""
    app.command()(copy)
    app.command()(fundamentals)
