"""Plain coercion of our command-line values, so that start-up does not import pydantic.

Typer (0.29) coerces every option through a pydantic `TypeAdapter`: importing pydantic and
building the adapters is ~80 ms of every `list`, `info` and shell-completion Tab. Our options
are only `str`, `Path`, `int`/`float` with bounds, `bool` and lists of `str`, so each gets a
converter here that reports bad values the way Typer does ("Invalid value for '--workers':
Input should be …", exit 2). Anything else — or a Typer without this hook — keeps Typer's own.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    from typer._click import Context as ClickContext
    from typer._click.exceptions import BadParameter
    from typer._coercion import RuntimeParam
except ImportError:  # another Typer: it coerces on its own, at its own cost
    RuntimeParam = None  # type: ignore[assignment,misc]

_TRUE = {"1", "true", "t", "yes", "y", "on"}
_FALSE = {"0", "false", "f", "no", "n", "off", ""}


def plain_coercion(command: Any) -> int:
    """Give every parameter of `command` (a click group or command) and of its subcommands a
    plain converter where one fits; returns how many parameters got one."""
    if RuntimeParam is None:
        return 0
    done = 0
    for cmd in [command, *getattr(command, "commands", {}).values()]:
        for param in cmd.get_params(ClickContext(cmd)):
            if not hasattr(param, "get_runtime_param") or param._runtime_param is not None:
                continue
            convert = _converter(param.type_descriptor.annotation, param.type_descriptor)
            if convert is not None:
                info = param.type_descriptor.parameter_info
                param._runtime_param = _Plain(info, param.type_descriptor.annotation, convert)
                done += 1
    return done


def _converter(annotation: Any, descriptor: Any) -> Callable[[Any], Any] | None:
    info = descriptor.parameter_info
    if getattr(info, "parser", None) is not None or getattr(info, "clamp", False):
        return None
    origin = getattr(annotation, "__origin__", None)
    if origin is list and getattr(annotation, "__args__", ()) == (str,):
        return str
    if annotation is str:
        return str
    if annotation is bool:
        return _bool
    if annotation is Path:
        checks = ("exists", "resolve_path", "allow_dash", "writable")
        if any(getattr(info, name, False) for name in checks) or not (
            getattr(info, "file_okay", True) and getattr(info, "dir_okay", True)
        ):
            return None
        return Path
    if annotation in (int, float):
        return _number(annotation, getattr(info, "min", None), getattr(info, "max", None))
    return None


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ValueError("Input should be a valid boolean, unable to interpret input")


def _number(kind: type, low: float | None, high: float | None) -> Callable[[Any], Any]:
    what = "integer" if kind is int else "number"

    def convert(value: Any) -> Any:
        try:
            number = kind(value)
        except (TypeError, ValueError):
            raise ValueError(
                f"Input should be a valid {what}, unable to parse string as an {what}"
                if kind is int
                else f"Input should be a valid {what}, unable to parse string as a {what}"
            ) from None
        if kind is float and not math.isfinite(number):
            raise ValueError(f"Input should be a finite number, not {value!r}")
        if low is not None and number < low:
            raise ValueError(f"Input should be greater than or equal to {low:g}")
        if high is not None and number > high:
            raise ValueError(f"Input should be less than or equal to {high:g}")
        return number

    return convert


if RuntimeParam is not None:

    @dataclass(frozen=True)
    class _Plain(RuntimeParam):
        convert: Callable[[Any], Any]

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            try:
                if isinstance(value, list | tuple):
                    return [self.convert(item) for item in value]
                return self.convert(value)
            except ValueError as exc:
                raise BadParameter(str(exc), ctx=ctx, param=param) from None
