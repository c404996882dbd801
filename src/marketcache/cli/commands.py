"""The commands. Each builds its context, calls one library function and renders.

Only Typer and light modules are imported here: the cache, the config (YAML) and Rich are
imported when a command runs, so `--help` and shell completion start in a blink.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from marketcache import __version__
from marketcache.cli.options import (
    CacheDir,
    ConfigPath,
    Format,
    GlobalOptions,
    JsonOut,
    LogFile,
    Quiet,
    Verbose,
    cached_detail,
    common,
    context,
    not_cached,
    require_cache,
    scope,
)
from marketcache.core.models import parse_date
from marketcache.errors import LockTimeout, Terminated, UsageError

if TYPE_CHECKING:
    from marketcache.cache.repair import YearCheck

app = typer.Typer(
    name="marketcache",
    help="Keep a cache of OHLCV market data complete, fresh and trustworthy.",
    add_completion=True,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"marketcache {__version__}")
        raise typer.Exit(0)


@app.callback()
def root(
    invocation: typer.Context,
    version: Annotated[
        bool,
        typer.Option("--version", "-V", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
    cache_dir: CacheDir = None,
    config: ConfigPath = None,
    as_json: JsonOut = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> None:
    """Keep a cache of OHLCV market data complete, fresh and trustworthy."""
    invocation.obj = GlobalOptions(cache_dir, config, as_json, quiet, verbose)


@app.command()
def populate(
    invocation: typer.Context,
    symbols: Annotated[
        list[str] | None, typer.Argument(help="Symbols (default: datasets).")
    ] = None,
    timeframes: Annotated[
        str | None, typer.Option("--timeframes", "-t", help="e.g. 1h,1d [default: 1d].")
    ] = None,
    start: Annotated[str | None, typer.Option(help="YYYY-MM-DD or relative (30d, 2y).")] = None,
    end: Annotated[str | None, typer.Option(help="Exclusive end [default: now].")] = None,
    symbols_file: Annotated[
        Path | None,
        typer.Option("--symbols-file", help="One symbol a line, # comments; - reads stdin."),
    ] = None,
    provider: Annotated[str | None, typer.Option(help="Use only this provider.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the fetch plan only.")] = False,
    full_refresh: Annotated[
        bool, typer.Option("--full-refresh", help="Re-download the range (never shrinks).")
    ] = False,
    workers: Annotated[int, typer.Option(min=1, max=32, help="Symbols fetched at once.")] = 1,
    derive_from: Annotated[
        str | None,
        typer.Option("--derive-from", help="Build the timeframes from this cached base timeframe."),
    ] = None,
    cache_dir: CacheDir = None,
    config: ConfigPath = None,
    as_json: JsonOut = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
    log_file: LogFile = None,
) -> int:
    """Fill the cache for each symbol x timeframe over [start, end)."""
    from marketcache.pipeline.jobs import PopulateReport, PopulateRequest, build_jobs
    from marketcache.pipeline.populate import run_populate

    options = common(invocation, cache_dir, config, as_json, quiet, verbose)
    ctx = context(options, log_file=log_file)
    request = PopulateRequest(
        symbols=list(symbols or []),
        symbols_file=symbols_file,
        timeframes=timeframes,
        start=start,
        end=end,
        provider=provider,
        dry_run=dry_run,
        full_refresh=full_refresh,
        workers=workers,
        derive_from=derive_from,
    )
    jobs = build_jobs(request, ctx.settings)
    report = PopulateReport([])
    try:
        shape = ("planning", "jobs") if dry_run else ("populating", "bars")
        with ctx.out.progress(len(jobs), *shape) as progress:
            run_populate(ctx.cache, jobs, request, progress=progress, report=report)
    except (KeyboardInterrupt, Terminated) as exc:
        report.interrupted = 143 if isinstance(exc, Terminated) else 130
        ctx.out.interrupted(report, len(jobs))
        return report.interrupted
    ctx.out.populate_report(report)
    return report.exit_code


@app.command()
def info(
    invocation: typer.Context,
    symbol: Annotated[str | None, typer.Argument(help="Symbol to describe.")] = None,
    timeframe: Annotated[str | None, typer.Argument(help="Timeframe to describe.")] = None,
    cache_dir: CacheDir = None,
    config: ConfigPath = None,
    as_json: JsonOut = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
    output_format: Format = "table",
    stale: Annotated[
        bool, typer.Option("--stale", help="List the series whose newest bar is behind.")
    ] = False,
) -> int:
    """Cache-wide stats, or per symbol / timeframe / year detail (metadata only)."""
    ctx = context(
        common(invocation, cache_dir, config, as_json, quiet, verbose), output_format=output_format
    )
    sym, tf = scope(symbol, timeframe)
    if stale:
        found = ctx.cache.freshness(sym, tf)
        if not found:
            require_cache(ctx)
        ctx.out.stale([f for f in found if f.stale], len(found))
        return 0
    if sym is None:
        from marketcache.live.heartbeat import followers

        stats = ctx.cache.get_stats()
        if not stats["files"]:
            require_cache(ctx)
        stats["followers"] = followers(ctx.cache.backend)
        ctx.out.stats(stats)
        return 0
    detail = cached_detail(ctx, sym, tf)
    ctx.out.symbol_info(detail)
    return 0


@app.command("list")
def list_(
    invocation: typer.Context,
    symbol: Annotated[str | None, typer.Argument(help="List this symbol's timeframes.")] = None,
    timeframe: Annotated[str | None, typer.Argument(help="List this timeframe's years.")] = None,
    cache_dir: CacheDir = None,
    config: ConfigPath = None,
    as_json: JsonOut = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
    output_format: Format = "table",
) -> int:
    """Symbols; a symbol's timeframes; a timeframe's years (metadata only)."""
    ctx = context(
        common(invocation, cache_dir, config, as_json, quiet, verbose), output_format=output_format
    )
    sym, tf = scope(symbol, timeframe)
    rows: list[dict[str, Any]] = []
    if sym is None:
        for s in ctx.cache.list_symbols():
            tfs = ctx.cache.list_timeframes(s)
            rows.append({"symbol": s, "timeframes": tfs})
        if not rows:
            require_cache(ctx)
        ctx.out.listing("symbols", rows)
        return 0
    detail = cached_detail(ctx, sym, tf)
    if tf is None:
        for name, entry in detail["timeframes"].items():
            rows.append(
                {
                    "timeframe": name,
                    "years": [y["year"] for y in entry["years"]],
                    "rows": entry["rows"],
                    "start": entry["start"],
                    "end": entry["end"],
                }
            )
        ctx.out.listing(f"{sym} timeframes", rows)
    else:
        entry = detail["timeframes"][tf]
        for y in entry["years"]:
            rows.append({k: y.get(k) for k in ("year", "rows", "start", "end", "quality", "error")})
        if live := entry.get("live"):  # the follower's bars not folded into a year yet
            rows.append({"year": "live", **live, "quality": None, "error": None})
        ctx.out.listing(f"{sym} {tf} years", rows)
    return 0


@app.command()
def cleanup(
    invocation: typer.Context,
    before: Annotated[str | None, typer.Option(help="Drop rows before this date.")] = None,
    older_than: Annotated[
        str | None, typer.Option("--older-than", help="Drop rows older than e.g. 400d, 2y.")
    ] = None,
    keep_years: Annotated[
        int | None, typer.Option("--keep-years", min=1, help="Keep only the last N years.")
    ] = None,
    symbol: Annotated[str | None, typer.Option(help="Only this symbol.")] = None,
    timeframe: Annotated[str | None, typer.Option(help="Only this timeframe.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would go.")] = False,
    cache_dir: CacheDir = None,
    config: ConfigPath = None,
    as_json: JsonOut = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> int:
    """Remove leftovers, or (with criteria) old rows and whole years."""
    ctx = context(common(invocation, cache_dir, config, as_json, quiet, verbose))
    sym, tf = scope(symbol, timeframe)
    criteria = bool(before or older_than or keep_years)
    if (sym or tf) and not criteria:
        raise UsageError("--symbol/--timeframe need --before, --older-than or --keep-years")
    if criteria:
        actions = ctx.cache.cleanup_old_data(
            before=before or None,
            older_than=older_than,
            keep_years=keep_years,
            symbol=sym,
            timeframe=tf,
            dry_run=dry_run,
        )
    else:
        actions = ctx.cache.cleanup_leftovers(dry_run=dry_run)
    ctx.out.cleanup(actions, dry_run=dry_run)
    from marketcache.cache.retention import cleanup_exit_code

    return cleanup_exit_code(actions)


@app.command()
def validate(
    invocation: typer.Context,
    symbol: Annotated[str | None, typer.Argument(help="Only this symbol.")] = None,
    timeframe: Annotated[str | None, typer.Argument(help="Only this timeframe.")] = None,
    min_score: Annotated[
        float | None,
        typer.Option("--min-score", min=0.0, max=1.0, help="Fail below this score [config]."),
    ] = None,
    fix: Annotated[bool, typer.Option("--fix", help="Repair what can be repaired.")] = False,
    against_source: Annotated[
        bool,
        typer.Option(
            "--against-source",
            help="Re-fetch stored ranges from their provider and report restated bars "
            "(with --fix: replace them).",
        ),
    ] = False,
    since: Annotated[
        str | None, typer.Option(help="With --against-source: only bars from this date.")
    ] = None,
    sample: Annotated[
        int | None, typer.Option(help="With --against-source: N stored years at random.")
    ] = None,
    max_age: Annotated[
        str | None,
        typer.Option("--max-age", help="Exit 3 when a series' newest bar is older, e.g. 36h."),
    ] = None,
    cache_dir: CacheDir = None,
    config: ConfigPath = None,
    as_json: JsonOut = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> int:
    """Re-read every file, verify checksums, re-score; exit 3 on corruption or low scores."""
    ctx = context(common(invocation, cache_dir, config, as_json, quiet, verbose))
    sym, tf = scope(symbol, timeframe)
    threshold = ctx.settings.options.min_score if min_score is None else min_score
    require_cache(ctx)
    targets = ctx.cache.years_on_disk(sym, tf)
    if sym and not targets:
        raise not_cached(ctx, sym, tf)
    if (since or sample is not None) and not against_source:
        raise UsageError("--since and --sample go with --against-source")
    if against_source:
        from marketcache.pipeline.restate import check_against_source, pick_years

        start = parse_date(since, option="--since") if since else None
        chosen = pick_years(targets, since=start, sample=sample)
        report = check_against_source(ctx.cache, chosen, since=start, fix=fix)
        ctx.out.restatements(report)
        return report.exit_code
    if max_age is not None:
        from marketcache.core.freshness import stale_exit_code

        found = ctx.cache.freshness(sym, tf, max_age=max_age)
        ctx.out.stale([f for f in found if f.stale], len(found), max_age=max_age)
        return stale_exit_code(found)
    from marketcache.cache.repair import YearCheck, validation_exit_code

    checks: list[YearCheck] = []
    busy: dict[tuple[str, str], str] = {}  # a series held past the wait: its other years too
    with ctx.out.progress(len(targets), label="validating", unit="years") as progress:
        for s, t, year in targets:
            if (s, t) not in busy:
                try:
                    checks.append(ctx.cache.check_year(s, t, year, min_score=threshold, fix=fix))
                except LockTimeout as exc:  # one busy series does not stop the others
                    busy[(s, t)] = str(exc)
            if (s, t) in busy:
                where, why = f"{s} {t} {year}", busy[(s, t)]
                checks.append(YearCheck(s, t, year, where, "locked", problems=[why]))
            progress.advance(f"{s} {t} {year}")
    ctx.out.validation(checks, threshold)
    return validation_exit_code(checks, threshold)
