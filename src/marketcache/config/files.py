"""Where the providers.yaml is (--config, $MARKETCACHE_CONFIG, ./providers.yaml, the packaged
default), reading it safely, and merging it over the packaged defaults.

A config file is input like any other: it is capped in size, and YAML aliases may not expand
it much beyond what the file spells out (an "alias bomb" of a few hundred bytes otherwise
expands to a billion values and takes every command down with it). Then the user's keys are
merged over the packaged `default_providers.yaml`, so a file that sets one key keeps every
other packaged setting — the rate limits above all.

Merge rule (`merge_over`): mappings merge key by key, recursively; a key set to null counts as
not set; lists (`selection`, `datasets`, `timeframes`, `fundamentals.providers`) and the
mappings in `REPLACED_WHOLE` (a rate limit is one setting, fsspec options are one set) replace
the packaged value whole.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from marketcache.errors import ConfigError

MAX_CONFIG_BYTES = 1 << 20  # 1 MiB: a providers.yaml is a page or two
ALIAS_BUDGET = 10_000  # values aliases may add beyond those the file spells out
MAX_DEPTH = 64  # nesting levels (the packaged file uses 4)
SCALAR_WEIGHT = 100  # characters of a scalar that count as one value (a long aliased string)

# (path pattern) → the user's mapping replaces the packaged one instead of merging into it;
# "*" matches any key at that level
REPLACED_WHOLE = (
    ("providers", "*", "rate_limit"),
    ("providers", "*", "archive_rate_limit"),
    ("settings", "storage_options"),
)


def default_config_text() -> str:
    return resources.files("marketcache").joinpath("default_providers.yaml").read_text("utf-8")


def resolve_config_path(explicit: str | os.PathLike[str] | None) -> Path | None:
    """--config, else $MARKETCACHE_CONFIG, else ./providers.yaml; None = packaged default."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError("file not found: pass an existing providers.yaml", path=path)
        return path
    env = os.environ.get("MARKETCACHE_CONFIG")
    if env:
        path = Path(env)
        if not path.is_file():
            raise ConfigError("file named by MARKETCACHE_CONFIG not found", path=path)
        return path
    local = Path("providers.yaml")
    return local if local.is_file() else None


def check_size(size: int, source: str) -> None:
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"the file is {size:,} bytes: a providers.yaml may be at most {MAX_CONFIG_BYTES:,}",
            path=source,
        )


def load_yaml(text: str, source: str) -> Any:
    """`yaml.safe_load`, bounded: size, nesting depth and alias expansion are checked on the
    composed node graph before any Python object is built. ConfigError names file and key."""
    check_size(len(text.encode("utf-8", "surrogatepass")), source)
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node, source)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"invalid YAML{where}: {problem}", path=source) from None
    except RecursionError:
        raise ConfigError(
            f"invalid YAML: nested deeper than {MAX_DEPTH} levels", path=source
        ) from None
    except ValueError as exc:  # e.g. a date-looking scalar such as 2020-13-01
        raise ConfigError(f"invalid value: {exc}", path=source) from None
    finally:
        loader.dispose()


def _check_expansion(root: yaml.Node, source: str) -> None:
    """Refuse recursive aliases, nesting past MAX_DEPTH, and aliases that would add more than
    ALIAS_BUDGET values: each node is sized once (memoised), so a bomb costs its own size."""
    expanded: dict[int, int] = {}  # node → values it stands for, aliases expanded
    own = [0]  # values the file spells out (each distinct node once)
    open_nodes: set[int] = set()

    def size(node: yaml.Node, path: tuple[str, ...]) -> int:
        ident = id(node)
        if ident in expanded:
            return expanded[ident]
        if ident in open_nodes:
            raise ConfigError("a YAML alias refers to itself", path=source, key=_dotted(path))
        if len(path) > MAX_DEPTH:
            raise ConfigError(  # named by where the nesting starts, not by 64 keys
                f"nested deeper than {MAX_DEPTH} levels", path=source, key=_dotted(path[:2])
            )
        open_nodes.add(ident)
        weight = 1
        if isinstance(node, yaml.ScalarNode):
            weight += len(str(node.value)) // SCALAR_WEIGHT
        own[0] += weight
        total = weight
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                name = str(key.value) if isinstance(key, yaml.ScalarNode) else "?"
                total += size(key, path) + size(value, (*path, name))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                total += size(item, (*path, f"[{i}]"))
        open_nodes.discard(ident)
        expanded[ident] = total
        if total > own[0] + ALIAS_BUDGET:  # the first node that blows the budget
            raise ConfigError(
                f"YAML aliases expand this to more than {ALIAS_BUDGET:,} values beyond the"
                " file's own: write the values out (or use fewer aliases)",
                path=source,
                key=_dotted(path) or "<top level>",
            )
        return total

    size(root, ())


def _dotted(path: tuple[str, ...]) -> str:
    return ".".join(path).replace(".[", "[")


def merge_over(base: Any, override: Any, path: tuple[str, ...] = ()) -> Any:
    """`override` merged over `base` by the module's rule (neither is modified)."""
    if not isinstance(base, dict) or not isinstance(override, dict) or _replaced(path):
        return override
    out = dict(base)
    for key, value in override.items():
        if value is None and key in base:
            continue  # `key:` with nothing after it: not set here, the packaged value stays
        out[key] = merge_over(base[key], value, (*path, str(key))) if key in base else value
    return out


def _replaced(path: tuple[str, ...]) -> bool:
    return any(
        len(p) == len(path) and all(a in ("*", b) for a, b in zip(p, path, strict=True))
        for p in REPLACED_WHOLE
    )
