"""Entry point and the one error boundary: domain errors → one line on stderr + exit code."""

from __future__ import annotations

import functools
import json
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Sequence
from typing import Any

from marketcache.errors import MarketCacheError, Terminated, one_line

EXIT_OK, EXIT_USAGE = 0, 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit code (0 ok, 1 failure, 2 usage, 3 validation, 4 lock)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args in (["--version"], ["-V"]):  # answered before the CLI machinery is imported
        from marketcache import __version__

        sys.stdout.write(f"marketcache {__version__}\n")
        return EXIT_OK
    import typer

    from marketcache.cli.params import plain_coercion

    verbose = "-v" in args or "--verbose" in args
    as_json = "--json" in args
    if not verbose:  # a library's background thread must not print a traceback either
        threading.excepthook = _thread_error
    command = typer.main.get_command(_app())
    plain_coercion(command)  # no pydantic at start-up (see cli/params.py)
    if not args:  # a bare `marketcache` shows the help, not a usage error
        args = ["--help"]
    quiet = "-q" in args or "--quiet" in args
    previous = signal.signal(signal.SIGTERM, _terminate) if _main_thread() else None
    form = warnings.formatwarning
    try:
        with warnings.catch_warnings():  # filters restored after the run (main runs in-process
            if quiet:  # in the tests, and pytest records warnings without formatting them)
                warnings.simplefilter("ignore")
            elif not verbose:  # -v keeps Python's own form, with the source line
                warnings.formatwarning = _warning_line
            return _run(command, args, verbose, as_json)
    finally:
        warnings.formatwarning = form
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


@functools.cache
def _app() -> Any:
    """The Typer app with every command: the core ones (`commands.py`), then those that move or
    enrich a cache (`data_commands.py`), then following the market (`follow_commands.py`) and
    serving (`serve_commands.py`) — in help order."""
    from marketcache.cli import data_commands, follow_commands, serve_commands
    from marketcache.cli.commands import app

    data_commands.register(app)
    follow_commands.register(app)
    serve_commands.register(app)
    return app


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated


def _run(command: Any, args: list[str], verbose: bool, as_json: bool) -> int:
    import typer

    try:
        result = command.main(args=args, prog_name="marketcache", standalone_mode=False)
    except typer.Exit as exc:
        return int(exc.exit_code)
    except typer.Abort:
        return _fail("interrupted", 130, as_json)
    except typer.TyperException as exc:  # click's UsageError and friends
        ctx = getattr(exc, "ctx", None)
        name = ctx.command_path if ctx is not None else "marketcache"
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        return _fail(f"{message} (see '{name} --help')", EXIT_USAGE, as_json)
    except KeyboardInterrupt:
        return _fail("interrupted; committed data is kept, re-run to continue", 130, as_json)
    except Terminated:
        return _fail("terminated; committed data is kept, re-run to continue", 143, as_json)
    except MarketCacheError as exc:
        if verbose:
            traceback.print_exc()
        return _fail(str(exc), exc.exit_code, as_json)
    except PermissionError as exc:
        if verbose:
            traceback.print_exc()
        where = exc.filename or "a cache file"
        message = f"permission denied on {where}: check the owner and mode of the cache folder"
        return _fail(message, 1, as_json)
    except Exception as exc:
        if verbose:
            traceback.print_exc()
        message = f"unexpected {type(exc).__name__}: {exc}"
        return _fail(message + ("" if verbose else " (run with -v for details)"), 1, as_json)
    return int(result) if isinstance(result, int) else EXIT_OK


def _warning_line(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    line: str | None = None,
) -> str:
    """A Python warning (a library's DeprecationWarning under PYTHONWARNINGS) as one line."""
    text = " ".join(str(message).split())
    return f"warning: {category.__name__}: {text} ({filename}:{lineno})\n"


def _thread_error(args: threading.ExceptHookArgs) -> None:
    name = args.thread.name if args.thread is not None else "a helper thread"
    sys.stderr.write(f"warning: {name} stopped: {args.exc_type.__name__}: {args.exc_value}\n")


def _fail(message: str, code: int, as_json: bool) -> int:
    first = one_line(message) or "failed"  # the whole message, its lines joined: none lost
    sys.stderr.write(f"error: {first}\n")
    if as_json:
        sys.stdout.write(json.dumps({"ok": False, "exit_code": code, "error": first}) + "\n")
    return code
