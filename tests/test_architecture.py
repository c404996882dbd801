"""The house keeps its shape: no import cycle (every import counted, function-level and
TYPE_CHECKING ones too), a top level a newcomer can read, small modules, and layers that only
import downwards. Measured by `scripts/imports.py` (stdlib `ast`), the tool that prints the same
figures for people."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 450
MAX_TOP_LEVEL = 14
LIBRARY_BELOW_CORE = ("storage", "cache", "pipeline", "providers", "config", "cli", "serve", "live")
FRONT_DOORS = ("cli", "serve")

# Modules still over MAX_LINES, each with the length it may not exceed: the list only shrinks
# (split a module by responsibility, then drop its line here).
OVERSIZE: dict[str, int] = {}


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("house_imports", ROOT / "scripts" / "imports.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def house() -> ModuleType:
    return _tool()


@pytest.fixture(scope="module")
def graph(house: ModuleType) -> dict[str, set[str]]:
    found: dict[str, set[str]] = house.imports(house.modules())
    return found


def _room(module: str) -> str:
    """`marketcache.core.frames` → `core`; `marketcache.errors` → `errors`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_the_tool_sees_every_kind_of_import(house: ModuleType, tmp_path: Path) -> None:
    """A cycle hidden in a function body or under TYPE_CHECKING is still a cycle."""
    pkg = tmp_path / "marketcache"
    (pkg / "a").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("")
    (pkg / "a" / "one.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from marketcache.a.two import X\n"
    )
    (pkg / "a" / "two.py").write_text("def f():\n    from marketcache.a import one\n")
    (pkg / "three.py").write_text("import marketcache.a.two\n")
    old = house.SOURCE
    house.SOURCE = pkg
    try:
        graph = house.imports(house.modules())
    finally:
        house.SOURCE = old
    assert graph["marketcache.a.one"] == {"marketcache.a.two"}
    assert graph["marketcache.a.two"] == {"marketcache.a.one"}
    assert graph["marketcache.three"] == {"marketcache.a.two"}
    assert house.cycles(graph) == [["marketcache.a.one", "marketcache.a.two"]]
    assert house.layers(graph) == 2


def test_no_import_cycle(house: ModuleType, graph: dict[str, set[str]]) -> None:
    assert house.cycles(graph) == []


def test_the_top_level_is_a_few_rooms(house: ModuleType) -> None:
    rooms = house.top_level()
    assert len(rooms) <= MAX_TOP_LEVEL, rooms
    for room in ("core", "storage", "cache", "pipeline", "providers", "config", "cli", "serve"):
        assert room in rooms


def test_no_module_over_the_limit(house: ModuleType) -> None:
    sizes: dict[str, int] = house.sizes(house.modules())
    over = {
        rel: n for rel, n in sizes.items() if n > MAX_LINES and n > OVERSIZE.get(rel, MAX_LINES)
    }
    assert over == {}, f"split these by responsibility (at most {MAX_LINES} lines): {over}"
    stale = {rel for rel in OVERSIZE if sizes.get(rel, 0) <= MAX_LINES}
    assert stale == set(), f"no longer oversize: drop them from OVERSIZE: {stale}"


def test_core_is_pure(graph: dict[str, set[str]]) -> None:
    """The domain imports nothing above it: not storage, the cache, the pipeline, providers,
    config or the front doors."""
    bad = {
        (mod, dep)
        for mod, deps in graph.items()
        if _room(mod) == "core"
        for dep in deps
        if _room(dep) in LIBRARY_BELOW_CORE
    }
    assert bad == set()


def test_front_doors_are_not_imported_by_the_library(graph: dict[str, set[str]]) -> None:
    """cli/ and serve/ sit on top: no library module imports them (serve's HTTP handlers may
    not be reached from the cache, the pipeline or the manager)."""
    bad = {
        (mod, dep)
        for mod, deps in graph.items()
        if _room(mod) not in (*FRONT_DOORS, "__main__")
        for dep in deps
        if _room(dep) in FRONT_DOORS
    }
    assert bad == set()
