"""The read side of the CLI: `serve` (the HTTP/WebSocket API) and `get` (print or export a
range). Thin like the rest; fastapi, uvicorn, TA-Lib and pyarrow are imported inside them, so
the metadata commands start without them."""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer

from marketcache.cli.options import (
    CacheDir,
    ConfigPath,
    JsonOut,
    Quiet,
    Verbose,
    common,
    context,
    not_cached,
    require_cache,
)
from marketcache.core.symbols import normalize_symbol
from marketcache.core.timeframes import parse_timeframe
from marketcache.errors import Terminated, UsageError

TABLE_ROWS = 20  # bars a table shows without --tail
GET_FORMATS = ("table", "csv", "json", "parquet", "arrow")
BY_SUFFIX = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".json": "json",
             ".arrow": "arrow"}  # fmt: skip


def serve(
    invocation: typer.Context,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: any free one).")] = 8000,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="MARKETCACHE_TOKEN",
            help="Require this bearer token of every request but /health [env MARKETCACHE_TOKEN].",
            show_default=False,
        ),
    ] = None,
    follow: Annotated[
        list[str] | None,
        typer.Option("--follow", help="Also follow these symbols live (with -t)."),
    ] = None,
    timeframes: Annotated[
        str | None, typer.Option("--timeframes", "-t", help="With --follow: e.g. 1m.")
    ] = None,
    cache_dir: CacheDir = None,
    config: ConfigPath = None,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> int:
    """Serve the cache read-only over HTTP and WebSocket (see README, Serving the cache)."""
    if timeframes and not follow:
        raise UsageError("-t/--timeframes goes with --follow SYMBOL: name what to follow")
    options = common(invocation, cache_dir, config, False, quiet, verbose)
    quiet = options.quiet
    ctx = context(replace(options, as_json=False))
    follower = _follower(ctx, follow or [], timeframes) if follow else None
    if follower is None:
        require_cache(ctx)
    sock = _bind(host, port)
    from marketcache.serve.app import create_app
    from marketcache.serve.server import Server
    from marketcache.serve.server import config as server_config

    if follower is not None:
        follower.start()
    api = create_app(ctx.cache, token=token or None, live=follower)
    where = f"{ctx.cache.backend.name} {ctx.cache.backend.location}"

    def ready(url: str) -> None:
        guard = "a bearer token is required" if token else "no token: anyone who can connect reads"
        sys.stderr.write(f"marketcache serve: listening on {url} ({where}; {guard})\n")
        sys.stderr.flush()

    server = Server(server_config(api, host, port, access_log=not quiet), on_ready=ready)
    try:
        server.run(sockets=[sock])
    except (KeyboardInterrupt, Terminated):
        pass  # uvicorn shut down gracefully, then re-raised the signal it caught
    finally:
        sock.close()
        if follower is not None:
            follower.stop()  # flushes what closed, removes its heartbeat
    return 0


def _follower(ctx: Any, symbols: list[str], timeframes: str | None) -> Any:
    """An in-process follower of `--follow` × `-t` (checked before the port is taken)."""
    from marketcache.core.timeframes import parse_timeframes
    from marketcache.live.follower import Follower
    from marketcache.live.series import check_series, probe_symbols

    names = [s.strip() for item in symbols for s in item.split(",") if s.strip()]
    tfs = [t.name for t in parse_timeframes(timeframes or "1m")]
    checked = check_series(ctx.settings, [(s, tf) for s in names for tf in tfs])
    probe_symbols(ctx.settings, checked)
    return Follower(ctx.cache, ctx.settings, [(s, tf) for s, tf, _ in checked])


def _bind(host: str, port: int) -> Any:
    """The listening socket, so that a port in use is one clear line, not uvicorn's exit."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UsageError(f"--host {host}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise UsageError(
            f"--port {port}: cannot listen on {host}:{port}: {exc.strerror}"
            " (another server there? pick another --port)"
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def get(
    invocation: typer.Context,
    symbol: Annotated[str, typer.Argument(help="Symbol, e.g. AAPL or BTC/USDT.")],
    timeframe: Annotated[str, typer.Argument(help="Timeframe, e.g. 1d.")],
    start: Annotated[str | None, typer.Option(help="From this date (inclusive).")] = None,
    end: Annotated[str | None, typer.Option(help="To this date (exclusive).")] = None,
    adjust: Annotated[str, typer.Option(help="none, splits or all.")] = "none",
    output_format: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="table, csv, json, parquet or arrow [default: table at a terminal, csv off one;"
            " with -o from the file's suffix, else parquet].",
            show_default=False,
        ),
    ] = None,
    tail: Annotated[
        int | None, typer.Option(min=1, help="Only the last N bars of the range.")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file (atomically).")
    ] = None,
    cache_dir: CacheDir = None,
    config: ConfigPath = None,
    as_json: JsonOut = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> int:
    """Print or export the bars of [start, end): a table at a terminal, CSV off one."""
    from marketcache.core.models import parse_date
    from marketcache.serve.reader import RangeReader
    from marketcache.serve.results import ResultCache

    options = common(invocation, cache_dir, config, as_json, quiet, verbose)
    quiet = options.quiet
    fmt = _get_format(output_format, output, options.as_json)
    ctx = context(replace(options, as_json=False))
    sym, tf = normalize_symbol(symbol), parse_timeframe(timeframe).name
    lo = parse_date(start, option="--start") if start else None
    hi = parse_date(end, option="--end") if end else None
    if lo is not None and hi is not None and lo >= hi:
        raise UsageError(f"--start {lo} is not before --end {hi}")
    if tf not in ctx.cache.list_timeframes(sym):
        raise not_cached(ctx, sym, tf)
    mb = ctx.settings.options.serve_cache_mb
    reader = RangeReader(ctx.cache, ResultCache(int(mb * 1024 * 1024)))
    rows = tail if tail is not None else (TABLE_ROWS if fmt == "table" else None)
    if rows is not None:  # the last rows: read back from the end, a year at a time
        last = reader.tail(sym, tf, hi, rows)
        if len(last):
            first = last["timestamp"].iloc[0]
            lo = first if lo is None else max(lo, first)
    plan = reader.plan(sym, tf, lo, hi, adjust)
    reader.check(plan)  # a corrupt year: exit 3 before anything is written
    if fmt == "table":
        _table(ctx, reader, plan, sym, tf, tail is None)
        return 0
    from marketcache.serve.formats import encode

    chunks = encode(fmt, reader.chunks(plan), plan.columns, {"symbol": sym, "interval": tf})
    if output is None:
        out = sys.stdout.buffer
        for chunk in chunks:
            out.write(chunk)
        if fmt == "json":
            out.write(b"\n")
        out.flush()
        return 0
    _write_file(output, chunks)
    if not quiet:
        sys.stderr.write(f"wrote {output} ({fmt})\n")
    return 0


def _get_format(given: str | None, output: Path | None, as_json: bool) -> str:
    fmt = given
    if fmt is None:
        if as_json:
            fmt = "json"
        elif output is not None:
            fmt = BY_SUFFIX.get(output.suffix.lower(), "parquet")
        else:
            fmt = "table" if sys.stdout.isatty() else "csv"
    if fmt not in GET_FORMATS:
        raise UsageError(f"--format {fmt}: use one of {', '.join(GET_FORMATS)}")
    if fmt == "table" and output is not None:
        raise UsageError("--format table prints to the terminal: drop -o, or pick csv/parquet")
    if fmt in ("parquet", "arrow") and output is None and sys.stdout.isatty():
        raise UsageError(f"--format {fmt} is binary: give -o FILE (or redirect stdout)")
    return fmt


def _table(ctx: Any, reader: Any, plan: Any, sym: str, tf: str, default_rows: bool) -> None:
    from marketcache.serve.formats import bar_dicts

    frame = reader.frame(plan)
    rows = [
        {k: (_cell(v) if k != "timestamp" else v.replace("T", " ").removesuffix("Z"))
         for k, v in bar.items()}
        for bar in bar_dicts(frame)
    ]  # fmt: skip
    title = f"{sym} {tf}: the last {len(rows)} bars"
    if default_rows:
        title += " (--tail N for more, --format csv for all)"
    ctx.out.listing(title, rows)


def _cell(value: Any) -> str:
    return "-" if value is None else repr(value)


def _write_file(path: Path, chunks: Any) -> None:
    """Write beside the target and rename: a failed export never leaves half a file."""
    import tempfile

    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise UsageError(f"-o {path}: the folder {folder} does not exist")
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            for chunk in chunks:
                fh.write(chunk)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def register(app: typer.Typer) -> None:
    """Add `serve` and `get` to the CLI (called once by `cli/app.py`)."""
    app.command()(serve)
    app.command()(get)
