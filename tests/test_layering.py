"""The package's import graph, read from its source: no cycle between modules, no upward import.

Every ``import`` / ``from ... import`` anywhere in a file counts (at module level, inside functions,
under ``try`` or ``if TYPE_CHECKING``), relative ones included, and so does
``importlib.import_module("ideal_monai....")`` with a literal name: a lazy import hides a cycle, it
does not remove it. ``from pkg import name`` is an edge to the submodule ``pkg.name`` when there is
one, else to ``pkg`` (its ``__init__``).

How ``__init__`` files count: their imports are ordinary edges, none is left out. A subpackage's
``__init__`` re-exporting its own modules stays inside its unit. The package root
(``ideal_monai/__init__.py``) imports every library subpackage so bundle configs can write
``$ideal_monai.data....`` after ``$import ideal_monai``; it sits above everything in the layer table,
and since no module imports it (that would be a cycle through it, and the test would report it),
its edges cannot close a cycle. Python's initialisation of a module's parent packages before the
module (``import ideal_monai.data.io`` runs ``ideal_monai/__init__.py`` first) is loading order, not a
dependency the module's code has, and is not an edge.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import pytest

PACKAGE = "ideal_monai"
PACKAGE_DIR = Path(__file__).resolve().parents[1] / PACKAGE

#: Units (subpackages and top-level modules of ``ideal_monai``), lowest layer first. A module may
#: import modules of its own unit and of units in strictly lower layers: not upward, not sideways.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors",),  # the one error type and its reporting: needs nothing of the package
    ("utils",),  # atomic files, precision, weights and checkpoints, config checks, the class table
    ("data", "networks", "losses", "transforms", "cohort", "release"),  # building blocks, independent of each other
    ("engines", "handlers", "evaluation", "inference", "distributed"),  # training, validation, scoring
    ("bundle_runner",),  # runs the bundle's configs
    ("function", "label", "demo", "bundle_export"),  # applications that run the bundle
    ("cli",),  # the ``ideal-monai`` command
    ("",),  # the package root ``ideal_monai/__init__.py``: imports the library subpackages eagerly
)


class Edge(NamedTuple):
    source: str  # importing module, dotted
    target: str  # imported module, dotted
    where: str  # "path:line" of the import statement


def module_files(package_dir: Path, package: str) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is_package) for every ``.py`` file under ``package_dir``."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = [package, *path.relative_to(package_dir).with_suffix("").parts]
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


def _existing(name: str, modules: dict) -> str | None:
    """``name`` or its longest prefix that is a module of the package (None when outside it)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _imported_names(node: ast.AST, current: str, is_package: bool) -> Iterable[tuple[str, tuple[str, ...]]]:
    """(absolute module, names taken from it) for one import-like node; nothing for other nodes."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name, ()
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            base = current.split(".") if is_package else current.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            module = ".".join(base + ([node.module] if node.module else []))
        else:
            module = node.module or ""
        yield module, tuple(alias.name for alias in node.names)
    elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
          and isinstance(node.args[0].value, str)):
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name in ("import_module", "__import__"):
            yield node.args[0].value, ()


def import_graph(package_dir: Path, package: str) -> tuple[dict[str, tuple[Path, bool]], list[Edge]]:
    """The package's modules and every import edge between two of them (self-imports left out)."""
    modules = module_files(package_dir, package)
    edges = []
    for name, (path, is_package) in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            for module, names in _imported_names(node, name, is_package):
                targets = [f"{module}.{n}" if f"{module}.{n}" in modules else module for n in names] or [module]
                for target in dict.fromkeys(_existing(t, modules) for t in targets):
                    if target is not None and target != name:
                        where = f"{path.relative_to(package_dir.parent)}:{node.lineno}"
                        edges.append(Edge(name, target, where))
    return modules, edges


def find_cycles(edges: list[Edge]) -> list[list[Edge]]:
    """One cycle (as its edges, in order) per group of modules that import each other (strongly
    connected component): the shortest one through the group's first module. Breaking it may leave
    another cycle in the group; the test then reports that one."""
    graph: dict[str, dict[str, Edge]] = {}
    for e in edges:
        graph.setdefault(e.source, {}).setdefault(e.target, e)
        graph.setdefault(e.target, {})

    # Tarjan's strongly connected components, iteratively (no recursion limit on deep graphs).
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(component)

    cycles = []
    for component in sorted(components, key=min):
        # Shortest path from the component's first module back to itself (breadth first).
        start = min(component)
        previous: dict[str, Edge] = {}
        queue = [start]
        while queue and start not in previous:
            node = queue.pop(0)
            for target, e in sorted(graph[node].items()):
                if target in component and target not in previous:
                    previous[target] = e
                    queue.append(target)
        path, node = [], start
        while True:
            e = previous[node]
            path.append(e)
            node = e.source
            if node == start:
                break
        cycles.append(path[::-1])
    return cycles


def unit_of(module: str, package: str) -> str:
    """The subpackage or top-level module ``module`` belongs to (``""`` for the package root)."""
    rest = module[len(package) + 1 :] if module != package else ""
    return rest.split(".")[0]


def layering_violations(edges: list[Edge], layers: tuple[tuple[str, ...], ...], package: str) -> list[str]:
    """Each edge from one unit to another that is not in a strictly lower layer."""
    layer = {unit: i for i, units in enumerate(layers) for unit in units}
    out = []
    for e in edges:
        a, b = unit_of(e.source, package), unit_of(e.target, package)
        if a != b and not layer[b] < layer[a]:
            kind = "sideways" if layer[a] == layer[b] else "upward"
            out.append(f"{e.where}: {e.source} -> {e.target} ({kind}: {a or 'package root'} is in layer "
                       f"{layer[a]}, {b or 'package root'} in layer {layer[b]})")
    return out


def _format_cycle(cycle: list[Edge]) -> str:
    return " -> ".join([cycle[0].source] + [e.target for e in cycle]) + "\n    " + "\n    ".join(
        f"{e.source} -> {e.target} at {e.where}" for e in cycle)


# ---------------------------------------------------------------------------------------------
# the package


@pytest.fixture(scope="module")
def graph():
    return import_graph(PACKAGE_DIR, PACKAGE)


def test_the_graph_sees_the_package(graph):
    modules, edges = graph
    # Spot checks that the reader finds what it must: relative, lazy and package-root imports.
    found = {(e.source, e.target) for e in edges}
    assert ("ideal_monai.data.io", "ideal_monai.errors") in found  # from ..errors import (relative)
    assert ("ideal_monai.cli", "ideal_monai.bundle_runner") in found  # inside a function
    assert ("ideal_monai", "ideal_monai.evaluation") in found  # from . import data, engines, ...
    assert len(modules) > 50


def test_layer_table_names_every_unit(graph):
    modules, _ = graph
    units = {unit_of(m, PACKAGE) for m in modules}
    listed = [u for layer in LAYERS for u in layer]
    assert len(listed) == len(set(listed)), "a unit is listed twice in LAYERS"
    assert units == set(listed), (f"not in LAYERS (place them): {sorted(units - set(listed))}; "
                                  f"in LAYERS but gone: {sorted(set(listed) - units)}")


def test_no_import_cycle(graph):
    _, edges = graph
    cycles = find_cycles(edges)
    if cycles:
        pytest.fail("import cycles:\n" + "\n".join(_format_cycle(c) for c in cycles), pytrace=False)


def test_no_upward_or_sideways_import(graph):
    _, edges = graph
    bad = layering_violations(edges, LAYERS, PACKAGE)
    if bad:
        pytest.fail("imports against the layer table (LAYERS in tests/test_layering.py):\n" + "\n".join(bad), pytrace=False)


# ---------------------------------------------------------------------------------------------
# the checker itself, on a small package written for the purpose


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_a_cycle_through_a_lazy_relative_import_is_found_with_its_path(tmp_path):
    pkg = _write(tmp_path, {
        "__init__.py": "from . import low\n",
        "low/__init__.py": "",
        "low/a.py": "def f():\n    from ..high import b  # lazy: still an edge\n    return b\n",
        "high/__init__.py": "",
        "high/b.py": "import importlib\nfrom pkg.high.c import g\nmod = importlib.import_module('pkg.errors')\n",
        "high/c.py": "from ..low.a import f\ndef g():\n    pass\n",
        "errors.py": "",
    })
    _, edges = import_graph(pkg, "pkg")
    assert ("pkg.high.b", "pkg.errors") in {(e.source, e.target) for e in edges}  # importlib literal
    cycles = find_cycles(edges)
    assert len(cycles) == 1
    assert _format_cycle(cycles[0]).splitlines()[0] == "pkg.high.b -> pkg.high.c -> pkg.low.a -> pkg.high.b"
    assert cycles[0][-1].where == "pkg/low/a.py:2"

    layers = (("errors",), ("low",), ("high",), ("",))
    bad = layering_violations(edges, layers, "pkg")
    assert bad == ["pkg/low/a.py:2: pkg.low.a -> pkg.high.b (upward: low is in layer 1, high in layer 2)"]
    sideways = layering_violations(edges, (("errors",), ("low", "high"), ("",)), "pkg")
    assert sideways == ["pkg/high/c.py:1: pkg.high.c -> pkg.low.a (sideways: high is in layer 1, low in layer 1)",
                        "pkg/low/a.py:2: pkg.low.a -> pkg.high.b (sideways: low is in layer 1, high in layer 1)"]


def test_importing_the_package_root_from_inside_is_a_cycle(tmp_path):
    pkg = _write(tmp_path, {"__init__.py": "from . import a\n", "a.py": "import pkg\n"})
    _, edges = import_graph(pkg, "pkg")
    assert [_format_cycle(c).splitlines()[0] for c in find_cycles(edges)] == ["pkg -> pkg.a -> pkg"]
