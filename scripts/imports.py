#!/usr/bin/env python3
"""The shape of the house, measured: modules, top-level entries, import cycles, import layers,
the largest modules and the key normalisations in the facade.

Every import counts (module level, inside functions, under `if TYPE_CHECKING:`). An import of
`pkg.mod` or `from pkg import mod` is an edge to that module; `from pkg import name` is an edge
to `pkg` (its `__init__`). Standard library `ast` only, so it runs without the project's venv:

    python3 scripts/imports.py            # the figures
    python3 scripts/imports.py --json     # the same, as JSON (tests/test_architecture.py)
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "marketcache"
SOURCE = ROOT / "src" / PACKAGE
FACADE = ("cache/facade.py", "cache/__init__.py", "cache.py")
NORMALISERS = ("normalize_symbol", "parse_timeframe")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SOURCE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(SOURCE.rglob("*.py"))}


def _resolve(current: str, is_package: bool, level: int, target: str | None) -> str:
    if level == 0:
        return target or ""
    base = current.split(".")
    if not is_package:
        base = base[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, *([target] if target else [])])


def imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Every module's imports of other modules of the package."""
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        edges: set[str] = set()
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in mods:
                        edges.add(alias.name)
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, is_package, node.level, node.module)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    if sub in mods:
                        edges.add(sub)
                    elif base in mods:
                        edges.add(base)
        edges.discard(name)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work: list[tuple[str, list[str]]] = [(start, sorted(graph[start]))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, todo = work[-1]
            if todo:
                nxt = todo.pop()
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, sorted(graph.get(nxt, ()))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def layers(graph: dict[str, set[str]]) -> int:
    """The longest import chain, counted in modules (a cycle counts as one)."""
    component_of: dict[str, str] = {}
    for component in cycles(graph):
        for member in component:
            component_of[member] = component[0]
    depth: dict[str, int] = {}

    def visit(node: str, trail: frozenset[str]) -> int:
        key = component_of.get(node, node)
        if key in depth:
            return depth[key]
        members = [m for m in graph if component_of.get(m, m) == key]
        below = [
            t
            for m in members
            for t in graph[m]
            if component_of.get(t, t) != key and component_of.get(t, t) not in trail
        ]
        depth[key] = 1 + max((visit(t, trail | {key}) for t in below), default=0)
        return depth[key]

    return max((visit(m, frozenset()) for m in graph), default=0)


def top_level() -> list[str]:
    """The package's own rooms: its modules and subpackages (not `__init__`/`__main__`)."""
    return sorted(
        p.name
        for p in SOURCE.iterdir()
        if (p.is_dir() and (p / "__init__.py").exists())
        or (p.suffix == ".py" and not p.name.startswith("__"))
    )


def sizes(mods: dict[str, Path]) -> dict[str, int]:
    return {
        str(p.relative_to(SOURCE)): len(p.read_text(encoding="utf-8").splitlines())
        for p in mods.values()
    }


def normalisations() -> tuple[str, int]:
    for rel in FACADE:
        path = SOURCE / rel
        if path.exists():
            tree = ast.parse(path.read_text(encoding="utf-8"))
            calls = 0
            for node in ast.walk(tree):
                if isinstance(node, ast.Call):
                    f = node.func
                    called = f.id if isinstance(f, ast.Name) else getattr(f, "attr", None)
                    calls += called in NORMALISERS
            return rel, calls
    return "", 0


def figures() -> dict[str, object]:
    mods = modules()
    graph = imports(mods)
    facade, calls = normalisations()
    size = sizes(mods)
    return {
        "modules": len(mods),
        "top_level": top_level(),
        "cycles": cycles(graph),
        "layers": layers(graph),
        "largest": sorted(size.items(), key=lambda kv: (-kv[1], kv[0]))[:10],
        "facade": facade,
        "normalisation_calls": calls,
        "imports": {k: sorted(v) for k, v in sorted(graph.items())},
    }


def main(argv: list[str]) -> int:
    data = figures()
    if "--json" in argv:
        print(json.dumps(data, indent=1))
        return 0
    tops = data["top_level"]
    assert isinstance(tops, list)
    print(f"modules:            {data['modules']}")
    print(f"top-level entries:  {len(tops)}  ({' '.join(tops)})")
    found = data["cycles"]
    assert isinstance(found, list)
    print(f"import cycles:      {len(found)}")
    for component in found:
        print("  - " + " / ".join(m.removeprefix(PACKAGE + ".") for m in component))
    print(f"import layers:      {data['layers']}")
    print("largest modules:")
    largest = data["largest"]
    assert isinstance(largest, list)
    for rel, lines in largest:
        print(f"  {lines:5d}  {rel}")
    print(f"normalisation calls in the facade ({data['facade']}): {data['normalisation_calls']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
