"""The layout's rules (docs/architecture.md), checked on the import graph that grimp builds from the source:

- no import cycle among the package's modules (function-level and TYPE_CHECKING imports count);
- the layers: ``orchestrator`` above ``simulators | drivers | twins`` (three that never import each other) above
  ``encoding`` above ``common`` (also ``lint-imports``, with the contracts in pyproject.toml);
- no module of the orchestrator outside the registry (``orchestrator/kits``) names a setup or checks a setup's class;
- no module under ``simulators/`` reaches 600 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "encoding", "drivers", "twins", "simulators", "orchestrator")
LAYERS = [("orchestrator",), ("simulators", "drivers", "twins"), ("encoding",), ("common",)]


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(*PACKAGES)


def import_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm): each holds a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return cycles


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = grimp.ImportGraph()
    for a, b in (("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.c", "p.d")):
        graph.add_import(importer=a, imported=b)
    assert import_cycles(graph) == [["p.a", "p.b", "p.c"]]


def test_no_import_cycle(graph) -> None:
    assert import_cycles(graph) == []


def test_each_layer_imports_only_the_layers_below(graph) -> None:
    problems = []
    for level, packages in enumerate(LAYERS):
        above = [p for higher in LAYERS[:level] for p in higher]
        siblings = [(a, b) for a in packages for b in packages if a != b]
        for package in packages:
            for other in above:
                if graph.chain_exists(importer=package, imported=other, as_packages=True):
                    problems.append(f"{package} imports {other}, a layer above it")
        for a, b in siblings:
            if graph.chain_exists(importer=a, imported=b, as_packages=True):
                problems.append(f"{a} imports {b}: they must stay independent")
    assert problems == []


def _setup_names() -> set[str]:
    return {"electronic", "mechanical", "optical"}


def _setup_classes() -> set[str]:
    """The setup classes of drivers/setups (not the contract in base.py, which everyone may use)."""
    names = set()
    for path in (ROOT / "drivers" / "setups").glob("*.py"):
        if path.name == "base.py":
            continue
        names |= {node.name for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ClassDef)
                  and node.name.endswith("Setup")}
    return names


def test_only_the_registry_knows_the_setups() -> None:
    """Outside orchestrator/kits, no module of the orchestrator compares with a setup's name or imports or checks a
    setup's class: it asks the kit."""
    names, classes = _setup_names(), _setup_classes()
    assert {"ElectronicSetup", "OpticalSetup", "AwgScopeSetup"} <= classes
    problems = []
    for path in sorted((ROOT / "orchestrator").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Constant) and node.value in names:
                problems.append(f"{where}: names the setup {node.value!r}")
            if isinstance(node, ast.Name) and node.id in classes:
                problems.append(f"{where}: uses the setup class {node.id}")
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("drivers.setups.") \
                    and node.module != "drivers.setups.base":
                problems.append(f"{where}: imports {node.module}")
    assert problems == []


def test_no_simulator_module_reaches_600_lines() -> None:
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in (ROOT / "simulators").rglob("*.py")}
    assert max(sizes.values()) < 600, {path: n for path, n in sizes.items() if n >= 600}
