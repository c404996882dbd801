"""`marketcache follow`: stream (crypto) or poll (stocks/FX) closed bars into the cache until
SIGINT/SIGTERM, then flush what is closed, release everything and exit 0. Thin: the work is
`live/follower.py`."""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from marketcache.cli.options import CacheDir, ConfigPath, JsonOut, Quiet, Verbose, common, context
from marketcache.errors import MarketCacheError, Terminated, UsageError

if TYPE_CHECKING:
    from marketcache.live.follower import Follower

DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0, None: 1.0}


def seconds(text: str, option: str, *, low: float = 0.0) -> float:
    """'2s', '500ms', '1m', '3' (seconds) → seconds; UsageError naming `option`."""
    found = DURATION.match(text)
    value = float(found.group(1)) * _UNIT[found.group(2)] if found else None
    if value is None or value <= low or value > 366 * 86_400:
        raise UsageError(f"{option} {text!r}: give a duration such as 2s, 500ms or 1m")
    return value


def follow(
    invocation: typer.Context,
    symbols: Annotated[list[str] | None, typer.Argument(help="Symbols to follow.")] = None,
    timeframes: Annotated[str, typer.Option("--timeframes", "-t", help="e.g. 1m or 1m,5m.")] = "1m",
    symbols_file: Annotated[
        Path | None,
        typer.Option("--symbols-file", help="One symbol a line, # comments; - reads stdin."),
    ] = None,
    flush_every: Annotated[
        str, typer.Option("--flush-every", help="Commit closed bars this often (e.g. 2s).")
    ] = "2s",
    stale_after: Annotated[
        str, typer.Option("--stale-after", help="A stream silent this long is reconnected.")
    ] = "60s",
    heartbeat_every: Annotated[str, typer.Option("--heartbeat-every", hidden=True)] = "5s",
    backfill: Annotated[
        str,
        typer.Option("--backfill", help="With nothing stored yet, backfill this far (e.g. 1d)."),
    ] = "1d",
    cache_dir: CacheDir = None,
    config: ConfigPath = None,
    as_json: JsonOut = False,
    quiet: Quiet = False,
    verbose: Verbose = False,
) -> int:
    """Follow live bars into the cache until stopped (see README, Following live bars)."""
    import pandas as pd

    from marketcache.core.timeframes import parse_timeframes
    from marketcache.live.follower import Follower
    from marketcache.live.series import check_series, probe_symbols
    from marketcache.pipeline.jobs import read_symbols_file

    options = common(invocation, cache_dir, config, as_json, quiet, verbose)
    flush = seconds(flush_every, "--flush-every")
    stale = seconds(stale_after, "--stale-after", low=0.05)
    beat = seconds(heartbeat_every, "--heartbeat-every", low=0.05)
    lookback = seconds(backfill, "--backfill")
    ctx = context(replace(options, as_json=False))
    names = [*(symbols or [])]
    if symbols_file is not None:
        names += read_symbols_file(symbols_file)
    if not names:
        raise UsageError("follow needs at least one SYMBOL (or --symbols-file)")
    tfs = [t.name for t in parse_timeframes(timeframes)]
    wanted = [(s, tf) for s in names for tf in tfs]
    checked = check_series(ctx.settings, wanted)
    probe_symbols(ctx.settings, checked)
    view = _View(options.as_json, options.quiet)
    follower = Follower(
        ctx.cache,
        ctx.settings,
        [(s, tf) for s, tf, _ in checked],
        flush_every=flush,
        on_event=view.event,
        stale_after=stale,
        heartbeat_every=beat,
        backfill_lookback=pd.Timedelta(seconds=lookback),
    )
    view.follower = follower
    follower.start()
    view.start()
    try:
        while not follower.wait(0.25):
            view.draw()
    except (KeyboardInterrupt, Terminated):
        pass
    finally:
        follower.stop()
        view.stop()
    if follower.failed is not None:
        raise MarketCacheError(f"follow stopped: {follower.failed} (committed bars are kept)")
    return 0


class _View:
    """What a follow run shows: NDJSON events (--json), a live line per series at a
    terminal, else one line per notable event on stderr."""

    def __init__(self, as_json: bool, quiet: bool) -> None:
        self.as_json, self.quiet = as_json, quiet
        self.tty = sys.stderr.isatty() and not as_json and not quiet
        self.follower: Follower | None = None
        self._lock = threading.Lock()
        self._live: Any = None
        self._last = 0.0

    def event(self, event: dict[str, Any]) -> None:
        with self._lock:
            if self.as_json:
                sys.stdout.write(json.dumps(event, default=str) + "\n")
                sys.stdout.flush()
            elif not self.quiet and not self.tty and event["event"] != "bar":
                sys.stderr.write(_line(event) + "\n")
                sys.stderr.flush()

    def start(self) -> None:
        if not self.tty:
            return
        try:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(self._table(), console=Console(stderr=True), auto_refresh=False)
            self._live.start()
        except Exception:  # drawing is cosmetic: never stop following for it
            self._live = None

    def draw(self) -> None:
        now = time.monotonic()
        if self._live is None or now - self._last < 0.5:
            return
        self._last = now
        try:
            self._live.update(self._table(), refresh=True)
        except Exception:
            self._live = None

    def stop(self) -> None:
        if self._live is not None:
            try:
                self._live.update(self._table(), refresh=True)
                self._live.stop()
            except Exception:
                pass
            self._live = None

    def _table(self) -> Any:
        from rich.text import Text

        lines = []
        for s in self.follower.status() if self.follower else []:
            lag = "-" if s["lag"] is None else f"{s['lag']:.2f}s"
            state = " backfilling" if s["backfilling"] else ""
            lines.append(
                f"{s['symbol']} {s['timeframe']}  last bar {s['last_bar'] or '-'}  "
                f"lag {lag}  reconnects {s['reconnects']}{state}"
            )
        return Text("\n".join(lines) or "starting…")


def _line(event: dict[str, Any]) -> str:
    kind = event["event"]
    what = f"{event.get('symbol', '')} {event.get('timeframe', '')}".strip()
    if kind == "backfill":
        return f"backfill {what}: {event['rows']} bars in [{event['start']}, {event['end']})"
    if kind == "reconnect":
        return f"reconnect: {event.get('reason', '')} (retry in {event.get('wait', 0)}s)"
    if kind == "stale":
        return f"stale: {', '.join(event.get('streams', []))} silent {event.get('silent')}s"
    if kind == "error":
        return f"error: {what + ': ' if what else ''}{event.get('error', '')}"
    return f"{kind}: {what}"


def register(app: typer.Typer) -> None:
    """Add `follow` to the CLI (called once by `cli/app.py`)."""
    app.command()(follow)
