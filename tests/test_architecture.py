"""Architecture rules for the `mamlrun` package, checked on its source with `ast` (nothing is imported).

Why: a cycle hidden in a function-level import or an `if TYPE_CHECKING:` block works today and breaks the
day someone moves that import to the top of the file; and the layers (the MAML core below the domains,
the domains below the trainers, the CLI above `mamlrun.run`) keep the core reusable and the CLI cheap to
start. So the import graph is built from EVERY `import` statement in the package, wherever it sits.

Graph model:
- A node is a module: `mamlrun/x/y.py` is `mamlrun.x.y`, `mamlrun/x/__init__.py` is the package
  `mamlrun.x`. `mamlrun/conf` (a symlink to the YAML configs) is skipped.
- `from P import n` points at the module `P.n` when that file exists, else at `P` itself (n is then an
  attribute of P); `import P.Q` points at `P.Q`. Relative imports are resolved against the importing
  module's package (an `__init__.py` is its own package).
- The package `__init__` files that Python runs implicitly before a submodule (importing `mamlrun.a.b`
  first runs `mamlrun/a/__init__.py`) are not edges: every package whose `__init__` re-exports its
  submodules would otherwise be a "cycle". A module importing itself is dropped too.
- Edges to the root package `mamlrun` are KEPT. Checked: `mamlrun/__init__.py` imports nothing from
  the package (only `importlib.metadata`), so such an edge cannot close a cycle today and ignoring it
  would change nothing; keeping it means that if `__init__` ever starts re-exporting submodules, the
  cycles that creates (`mamlrun.x -> mamlrun -> mamlrun.x`) are real and get reported.

The checker functions take the directory holding the package and the package's name, so the planted
package in `test_the_checker_reports_planted_cycles_and_layer_breaks` goes through the same code path
as the real one.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]  # the directory holding mamlrun/
PACKAGE = "mamlrun"
SKIPPED_DIRS = frozenset({"conf", "__pycache__"})  # conf: a symlink to the YAML config tree

# (importer, forbidden): modules in `importer` (a subpackage/module, relative to the package, and all
# its submodules) may import nothing from any of `forbidden` (or their submodules).
LAYER_RULES: dict[str, tuple[str, tuple[str, ...]]] = {
    "maml_is_the_bottom_layer": ("maml", ("domains", "trainers", "models", "cli", "run")),
    "domains_do_not_know_trainers": ("domains", ("trainers", "cli", "run")),
    "cli_goes_through_run": ("cli", ("trainers",)),
    "trainers_do_not_know_the_entry_points": ("trainers", ("cli", "run")),
    "runtime_knows_no_maml": (
        "runtime",
        (
            "maml",
            "domains",
            "trainers",
            "models",
            "evaluation",
            "plots",
            "build",
            "config_checks",
            "cli",
            "run",
        ),
    ),
}


@dataclass(frozen=True)
class Import:
    """One resolved import of a package module: who imports what, and the statement that does it."""

    importer: str
    target: str
    path: str  # the importer's file, relative to the root directory
    lineno: int
    statement: str

    def __str__(self) -> str:
        return f"{self.path}:{self.lineno}: {self.statement}"


def module_files(root: Path, package: str) -> dict[str, Path]:
    """Every module of `package` (under `root/package`) by dotted name; `__init__.py` names its package."""
    modules: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root / package):  # does not follow symlinks
        dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED_DIRS)
        parts = Path(dirpath).relative_to(root).parts
        for filename in sorted(f for f in filenames if f.endswith(".py")):
            stem = filename.removesuffix(".py")
            modules[".".join(parts if stem == "__init__" else (*parts, stem))] = Path(dirpath) / filename
    return modules


def nearest_module(name: str, modules: Iterable[str]) -> str:
    """`name` if it is a module, else its longest dotted prefix that is one (an attribute's module)."""
    known = set(modules)
    parts = name.split(".")
    while len(parts) > 1 and ".".join(parts) not in known:
        parts.pop()
    return ".".join(parts)


def import_base(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    """The absolute module a `from ... import` reads from, resolving `level` dots against the importer."""
    if node.level == 0:
        return node.module or ""
    package_parts = importer.split(".") if is_package else importer.split(".")[:-1]
    anchor = package_parts[: len(package_parts) - (node.level - 1)]
    return ".".join([*anchor, node.module] if node.module else anchor)


def in_package(name: str, package: str) -> bool:
    """Whether the dotted `name` is `package` or one of its submodules."""
    return name == package or name.startswith(package + ".")


def targets(node: ast.Import | ast.ImportFrom, importer: str, is_package: bool) -> list[str]:
    """The dotted names one import statement asks for, before matching them to module files."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = import_base(node, importer, is_package)
    return [base if alias.name == "*" else f"{base}.{alias.name}" for alias in node.names]


def collect_imports(root: Path, package: str) -> list[Import]:
    """Every import of a `package` module by a `package` module, at any depth (functions, TYPE_CHECKING...)."""
    modules = module_files(root, package)
    found: list[Import] = []
    for importer, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            names = [n for n in targets(node, importer, is_package) if in_package(n, package)]
            for target in dict.fromkeys(
                nearest_module(name, modules) for name in names
            ):  # once per statement
                if target != importer:
                    rel = path.relative_to(root).as_posix()
                    found.append(Import(importer, target, rel, node.lineno, ast.unparse(node)))
    return found


def import_graph(imports: Iterable[Import]) -> dict[str, dict[str, list[Import]]]:
    """importer -> target -> the import statements that make that edge."""
    graph: dict[str, dict[str, list[Import]]] = {}
    for imp in imports:
        graph.setdefault(imp.importer, {}).setdefault(imp.target, []).append(imp)
    return graph


def strongly_connected(graph: dict[str, dict[str, list[Import]]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module (each a set of mutual imports)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, {})):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(components)


def cycle_in(component: Sequence[str], graph: dict[str, dict[str, list[Import]]]) -> list[str]:
    """One shortest cycle through the component's first module, as `[a, b, ..., a]` (breadth-first)."""
    start, members = component[0], set(component)
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        next_frontier = []
        for node in frontier:
            for succ in sorted(graph.get(node, {})):
                if succ == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [*reversed(path), start]
                if succ in members and succ not in came_from:
                    came_from[succ] = node
                    next_frontier.append(succ)
        frontier = next_frontier
    raise AssertionError(f"{component} is not strongly connected")  # cannot happen for a Tarjan SCC


def find_cycles(root: Path, package: str) -> list[str]:
    """One cycle per group of mutually importing modules, each with the import lines that close it."""
    graph = import_graph(collect_imports(root, package))
    reports = []
    for component in strongly_connected(graph):
        cycle = cycle_in(component, graph)
        lines = [str(imp) for a, b in pairwise(cycle) for imp in graph[a][b]]
        reports.append(" -> ".join(cycle) + "\n" + "\n".join(f"    {line}" for line in lines))
    return reports


def forbidden_imports(root: Path, package: str, importer: str, forbidden: Sequence[str]) -> list[Import]:
    """Imports by `package.importer` (and its submodules) of anything in `package.<one of forbidden>`."""
    layer = f"{package}.{importer}"
    banned = [f"{package}.{name}" for name in forbidden]
    return [
        imp
        for imp in collect_imports(root, package)
        if in_package(imp.importer, layer) and any(in_package(imp.target, b) for b in banned)
    ]


def describe(violations: Sequence[Import]) -> str:
    """One line per forbidden import: the edge, then where it is written."""
    return "\n".join(f"  {imp.importer} -> {imp.target}   ({imp})" for imp in violations)


# --- the real package ---------------------------------------------------------------------------------


def test_the_package_is_found_and_has_internal_imports():
    """Guards the other tests against passing vacuously (wrong root, everything skipped)."""
    modules = module_files(ROOT, PACKAGE)
    assert f"{PACKAGE}.maml" in modules and f"{PACKAGE}.cli" in modules, sorted(modules)
    assert not any(in_package(name, f"{PACKAGE}.conf") for name in modules), sorted(modules)
    assert len(collect_imports(ROOT, PACKAGE)) > 20


def test_no_import_cycles():
    cycles = find_cycles(ROOT, PACKAGE)
    header = f"import cycles among {PACKAGE} modules (function-level and TYPE_CHECKING imports count):"
    assert not cycles, "\n".join([header, *cycles])


@pytest.mark.parametrize("rule", sorted(LAYER_RULES))
def test_layering(rule: str):
    importer, forbidden = LAYER_RULES[rule]
    violations = forbidden_imports(ROOT, PACKAGE, importer, forbidden)
    assert not violations, (
        f"{rule}: {PACKAGE}.{importer} must not import {', '.join(forbidden)}:\n{describe(violations)}"
    )


# --- the checker itself ---------------------------------------------------------------------------------


def write_package(root: Path, files: dict[str, str]) -> None:
    """Write `files` (path relative to `root` -> source) under `root`."""
    for rel, source in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source, encoding="utf-8")


PLANTED = {
    "pkg/__init__.py": '"""Imports nothing."""\n',
    # a <-> b: module level one way, inside a function the other
    "pkg/a.py": "import pkg.b\n",
    "pkg/b.py": "def late():\n    from pkg import a\n    return a\n",
    # c <-> d: relative imports, one of them under TYPE_CHECKING
    "pkg/c.py": "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from .d import D\n",
    "pkg/d.py": "from . import c\n\nD = c\n",
    # a layer break (no cycle), and a relative import two levels up
    "pkg/maml/__init__.py": "from .core import step\n",
    "pkg/maml/core.py": "import pkg.trainers.x\n\n\ndef step():\n    return pkg.trainers.x\n",
    "pkg/trainers/__init__.py": "",
    "pkg/trainers/x.py": "from ..c import D\nfrom pkg import __doc__ as doc\n",
}


def test_the_checker_resolves_imports_to_the_most_specific_module(tmp_path: Path):
    write_package(tmp_path, PLANTED)
    edges = {(imp.importer, imp.target) for imp in collect_imports(tmp_path, "pkg")}
    assert edges == {
        ("pkg.a", "pkg.b"),
        ("pkg.b", "pkg.a"),  # `from pkg import a`: a is a module
        ("pkg.c", "pkg.d"),  # `from .d import D`: D is an attribute of pkg.d
        ("pkg.d", "pkg.c"),
        ("pkg.maml", "pkg.maml.core"),  # relative import inside a package's __init__
        ("pkg.maml.core", "pkg.trainers.x"),
        ("pkg.trainers.x", "pkg.c"),  # `from ..c import D`, two levels up from pkg/trainers/x.py
        ("pkg.trainers.x", "pkg"),  # `from pkg import __doc__`: the root package itself
    }, sorted(edges)


def test_the_checker_reports_planted_cycles_and_layer_breaks(tmp_path: Path):
    write_package(tmp_path, PLANTED)
    cycles = find_cycles(tmp_path, "pkg")
    assert [c.splitlines()[0] for c in cycles] == [
        "pkg.a -> pkg.b -> pkg.a",
        "pkg.c -> pkg.d -> pkg.c",
    ], "\n".join(cycles)
    assert "pkg/b.py:2: from pkg import a" in cycles[0]
    assert "pkg/c.py:4: from .d import D" in cycles[1]

    importer, forbidden = LAYER_RULES["maml_is_the_bottom_layer"]
    violations = forbidden_imports(tmp_path, "pkg", importer, forbidden)
    assert [str(v) for v in violations] == ["pkg/maml/core.py:1: import pkg.trainers.x"]
    assert not forbidden_imports(tmp_path, "pkg", *LAYER_RULES["domains_do_not_know_trainers"])


# ---------------------------------------------------------------------------- capability checks
# The code that consumes domains and models asks their protocols (TaskDistribution's attributes,
# models.base.MetaModel), never `hasattr(x, "...")` or `getattr(x, "...", default)`: a capability
# found by name is invisible to the protocol, to type checkers and to the next reader.
CONSUMERS = ("trainers", "maml", "build.py", "inner_params.py", "evaluation.py", "run.py", "report")


def capability_checks(root: Path, package: str, consumers: Sequence[str] = CONSUMERS) -> list[str]:
    """`path:line: call` for every hasattr(...) and every getattr(obj, "name", default) in the consumers."""
    found = []
    for _, path in sorted(module_files(root, package).items()):
        relative = path.relative_to(root / package).as_posix()
        if not any(relative == c or relative.startswith(f"{c}/") for c in consumers):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
                continue
            named = (
                len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant)
                and isinstance(node.args[1].value, str)
            )
            if (node.func.id == "hasattr") or (node.func.id == "getattr" and named and len(node.args) == 3):
                found.append(f"{path.relative_to(root).as_posix()}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_capability_checks_by_name_on_domains_and_models():
    found = capability_checks(ROOT, PACKAGE)
    assert not found, "ask the protocol instead:\n" + "\n".join(found)


def test_the_capability_checker_finds_planted_checks(tmp_path: Path):
    write_package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/trainers/__init__.py": "",
            "pkg/trainers/parts.py": 'def f(tasks, model):\n    if hasattr(tasks, "restrict_support"):\n'
            '        return getattr(model, "not_meta_trained", ())\n    return getattr(model, "name")\n',
            "pkg/runtime.py": 'def g(exc):\n    return getattr(exc, "reason", exc)\n',  # not a consumer
        },
    )
    assert capability_checks(tmp_path, "pkg") == [
        "pkg/trainers/parts.py:2: hasattr(tasks, 'restrict_support')",
        "pkg/trainers/parts.py:3: getattr(model, 'not_meta_trained', ())",
    ]
