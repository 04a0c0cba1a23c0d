"""The layering of docs/architecture.md, checked on the source: which part of qcheck may import
which, no import cycle between modules, and no pytest below the pytest wing (qcheck/suite/).

Imports are read with `ast` from every module (module level and inside functions); imports under
`if TYPE_CHECKING:` are annotations only and do not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "qcheck"

# part -> the parts it may import (docs/architecture.md, "Parts and allowed imports").
ALLOWED = {
    "files": set(),
    "memory": set(),
    "verdict": set(),
    "metrics": set(),
    "models": {"files"},
    "data": {"models", "memory"},
    "capture": set(),
    "sae": {"data", "models", "quantize", "files"},
    "analyses": {"capture", "metrics", "verdict", "data", "sae"},
    "thresholds": {"analyses"},
    "drift": {"analyses"},
    "quantize": {"files", "data", "models", "memory"},
    "pair": {"analyses", "capture", "data", "models", "memory"},
    "noise_floor": {"analyses", "capture"},
    "report": {"analyses", "files", "data", "sae", "thresholds", "drift", "metrics", "verdict", "noise_floor"},
    "suite": {"files", "memory", "verdict", "metrics", "models", "data", "capture", "sae", "analyses",
              "thresholds", "drift", "quantize", "pair", "report", "noise_floor"},
}
TEST_FRAMEWORKS = ("pytest", "_pytest", "syrupy", "xdist", "hypothesis")


def module_name(path: Path) -> str:
    parts = ["qcheck", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def part_of(module: str) -> str:
    bits = module.split(".")
    return bits[1] if len(bits) > 1 else "qcheck"


def _type_checking_blocks(tree: ast.AST) -> set[int]:
    """ids of import nodes inside `if TYPE_CHECKING:`."""
    hidden = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            hidden |= {id(n) for child in node.body for n in ast.walk(child)}
    return hidden


def imports(path: Path) -> set[str]:
    """Every module `path` imports at run time (absolute names)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    hidden, found = _type_checking_blocks(tree), set()
    for node in ast.walk(tree):
        if id(node) in hidden:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {name: {m for m in imports(path) if m in MODULES and m != name} for name, path in MODULES.items()}


@pytest.mark.parametrize("module", [m for m in MODULES if part_of(m) != "suite"])
def test_the_library_imports_no_test_framework(module):
    frameworks = sorted(m for m in imports(MODULES[module]) if m.split(".")[0] in TEST_FRAMEWORKS)
    assert frameworks == [], f"{module} imports {frameworks}: only qcheck.suite may"


def test_every_part_imports_only_what_the_architecture_allows():
    wrong = sorted(f"{a} -> {b}" for a, targets in GRAPH.items() for b in targets
                   if part_of(a) != part_of(b) and part_of(b) not in ALLOWED.get(part_of(a), set())
                   and part_of(b) != "qcheck")
    assert wrong == []


def test_every_part_is_in_the_architecture():
    assert {part_of(m) for m in MODULES} - {"qcheck"} <= set(ALLOWED)


def find_cycles(graph: dict[str, set[str]]) -> list[str]:
    """Every back edge of a depth-first walk, as "a -> b -> a"."""
    state: dict[str, int] = {}
    cycles: list[str] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return cycles


def test_no_import_cycle_between_modules():
    # a package and its own submodules import each other by construction: count other edges only
    graph = {a: {b for b in targets if not (a.startswith(b + ".") or b.startswith(a + "."))}
             for a, targets in GRAPH.items()}
    assert find_cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a -> b -> c -> a"]


def test_the_checker_sees_imports_inside_functions_and_ignores_type_checking(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pytest\n"
                      "def f():\n    from qcheck.drift import compare\n")
    assert imports(source) == {"typing", "typing.TYPE_CHECKING", "qcheck.drift", "qcheck.drift.compare"}
