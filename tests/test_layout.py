"""The import graph of ksi runs one way: each layer imports only the layers below it, and nothing is circular.

Layers, lowest first: the foundations (errors, log, settings, yamlio), host, tools, cluster and images, admin,
launch and tasks, and the command line on top. Imports inside functions count as much as those at the top
of a module.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

from tests.ksi_helpers import REPO

SOURCE = REPO / "ksi"
# Lowest first; a unit may import only units of a lower layer (or, within the foundations, each other).
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"ksi", "ksi.errors", "ksi.log", "ksi.settings", "ksi.yamlio"}),
    frozenset({"ksi.host"}),
    frozenset({"ksi.tools"}),
    frozenset({"ksi.cluster", "ksi.images"}),
    frozenset({"ksi.admin"}),
    frozenset({"ksi.launch", "ksi.tasks"}),
    frozenset({"ksi.cli", "ksi.__main__"}),
)


def _module(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _unit(module: str) -> str:
    """Return the unit ``module`` belongs to: its subpackage (ksi.host), or itself for a top-level module."""
    return ".".join(module.split(".")[:2])


def _layer(unit: str) -> int:
    for index, members in enumerate(LAYERS):
        if unit in members:
            return index
    raise AssertionError(f"{unit} is in no layer of tests/test_layout.py: add it to LAYERS")


def _is_module(name: str) -> bool:
    path = REPO / name.replace(".", "/")
    return path.is_dir() or path.with_suffix(".py").is_file()


def imports_of(text: str, module: str, *, package: bool = False) -> list[tuple[int, str]]:
    """Return (line, imported module) for every import of a ksi module in the source ``text`` of ``module``."""
    parent = module if package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = parent.split(".")[: len(parent.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found += [(node.lineno, f"{base}.{alias.name}" if _is_module(f"{base}.{alias.name}") else base)
                      for alias in node.names]
    return [(line, name) for line, name in found if name == "ksi" or name.startswith("ksi.")]


def edges() -> list[tuple[str, str, str]]:
    """Return (importing unit, imported unit, "file:line imports module") for imports that cross units."""
    found = []
    for path in sorted(SOURCE.rglob("*.py")):
        module = _module(path)
        source = _unit(module)
        for line, name in imports_of(path.read_text(encoding="utf-8"), module, package=path.name == "__init__.py"):
            if _unit(name) != source:
                found.append((source, _unit(name), f"{path.relative_to(REPO)}:{line} imports {name}"))
    return found


def upward(found: list[tuple[str, str, str]]) -> list[str]:
    """Return the imports in ``found`` that go to a higher layer."""
    return [where for source, target, where in found if _layer(target) > _layer(source)]


def cycles(found: list[tuple[str, str, str]]) -> list[str]:
    """Return one chain of imports per unit that imports itself through others."""
    graph: dict[str, dict[str, str]] = defaultdict(dict)
    for source, target, where in found:
        graph[source].setdefault(target, where)
    chains = []
    for start in sorted(graph):
        stack: list[tuple[str, list[str]]] = [(target, [where]) for target, where in graph[start].items()]
        seen: set[str] = set()
        while stack:
            unit, chain = stack.pop()
            if unit == start:
                chains.append(" -> ".join(chain))
                break
            if unit not in seen:
                seen.add(unit)
                stack += [(nxt, [*chain, where]) for nxt, where in graph[unit].items()]
    return chains


def test_every_import_goes_down_the_layers() -> None:
    bad = upward(edges())
    assert bad == [], "imports from a higher layer (move the code down, or the import up):\n" + "\n".join(bad)


def test_no_package_imports_itself_through_another() -> None:
    bad = cycles(edges())
    assert bad == [], "import cycles between packages:\n" + "\n".join(bad)


def test_the_checks_name_an_upward_import_and_a_cycle() -> None:
    found = [("ksi.launch", "ksi.admin", "ksi/launch/run.py:12 imports ksi.admin.cleanup"),
             ("ksi.admin", "ksi.launch", "ksi/admin/doctor.py:20 imports ksi.launch.preflight"),
             ("ksi.cluster", "ksi.host", "ksi/cluster/node.py:3 imports ksi.host.ports")]
    assert upward(found) == ["ksi/admin/doctor.py:20 imports ksi.launch.preflight"]
    assert cycles(found) == [
        "ksi/admin/doctor.py:20 imports ksi.launch.preflight -> ksi/launch/run.py:12 imports ksi.admin.cleanup",
        "ksi/launch/run.py:12 imports ksi.admin.cleanup -> ksi/admin/doctor.py:20 imports ksi.launch.preflight"]


@pytest.mark.parametrize(("text", "module", "expected"), [
    ("from ksi.cluster import access\n", "ksi.launch.run", ["ksi.cluster.access"]),
    ("from ksi.cluster.node import NodeCluster\n", "ksi.launch.run", ["ksi.cluster.node"]),
    ("import ksi.errors\nimport json\n", "ksi.cli", ["ksi.errors"]),
    ("def f() -> None:\n    from ksi.launch import run\n", "ksi.cli", ["ksi.launch.run"]),
    ("from . import names\n", "ksi.cluster.rundir", ["ksi.cluster.names"]),
    ("from ..host.state import write_json\n", "ksi.cluster.rundir", ["ksi.host.state"]),
])
def test_every_kind_of_import_is_seen(text: str, module: str, expected: list[str]) -> None:
    assert [name for _, name in imports_of(text, module)] == expected
