"""The package's import structure (docs/ARCHITECTURE.md): imports flow one way, with no cycle, and the layers
below never reach the ones above. Every import counts, module-level or inside a function."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

import pytest

ROOT = Path(__file__).resolve().parents[1] / "src" / "res2net"

# what each part may import (besides itself); parts not named here may import nothing of the package
ALLOWED: Dict[str, Set[str]] = {
    "errors": set(),
    "extras": {"errors"},
    "files": set(),
    "jsonio": {"files"},
    "reporting": {"files"},
    "profiling": set(),
    "allocator": set(),
    "hardware": {"errors"},
    "data": {"files", "errors", "extras"},
    "layers": set(),
    "models": {"layers", "errors"},
    "weights": {"files", "models", "data", "errors"},  # io, layouts, sources, load, hub, convert (WEIGHTS_ORDER)
    "engine": {"files", "weights", "models", "data", "errors", "jsonio", "hardware"},
    "tasks": {"files", "engine", "weights", "models", "layers", "data", "errors", "jsonio", "reporting", "profiling",
              "hardware"},
    "analysis": {"files", "weights", "models", "layers", "data", "errors", "jsonio", "reporting", "profiling", "hardware"},
    "inference": {"files", "layers", "models", "data", "errors", "extras", "hardware"},
    "export": {"files", "inference", "weights", "models", "data", "errors", "extras"},
    "bench": {"files", "inference", "weights", "models", "data", "errors", "extras", "profiling", "jsonio", "hardware"},
    "predict": {"files", "inference", "weights", "data", "errors", "hardware"},
    "timm_compat": {"weights", "models", "errors"},
}
# inside the weights package, each module imports only the ones before it (the package's __init__ imports all)
WEIGHTS_ORDER = ["io", "layouts", "sources", "load", "hub", "convert"]
TOP = {"commands", "cli", "res2net"}  # the command layer and the package root may import anything below


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: Set[str]) -> Set[str]:
    """The package modules ``path`` imports, anywhere in the file."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                found.add(candidate if candidate in modules else target)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m in modules and m != name}


def graph() -> Dict[str, Set[str]]:
    files = {module_name(p): p for p in ROOT.rglob("*.py")}
    return {m: imports_of(p, set(files)) for m, p in files.items()}


def part(module: str) -> str:
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else pieces[0]


def test_every_part_imports_only_the_layers_below() -> None:
    wrong: List[str] = []
    for module, deps in graph().items():
        here = part(module)
        if here in TOP:
            continue
        assert here in ALLOWED, f"{module}: a new part of the package; place it in ALLOWED (docs/ARCHITECTURE.md)"
        wrong += [f"{module} -> {d}" for d in sorted(deps) if part(d) != here and part(d) not in ALLOWED[here]]
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_weights_package_layers() -> None:
    edges = graph()
    prefix = "res2net.weights."
    modules = {m for m in edges if m.startswith(prefix)}
    assert modules == {prefix + m for m in WEIGHTS_ORDER}, "a new module of weights/: place it in WEIGHTS_ORDER"
    wrong = [f"{m} -> {d}" for m in sorted(modules) for d in sorted(edges[m])
             if part(d) == "weights" and (d not in modules or
                                          WEIGHTS_ORDER.index(d[len(prefix):]) >= WEIGHTS_ORDER.index(m[len(prefix):]))]
    assert not wrong, "imports against the weights package's order:\n" + "\n".join(wrong)


def test_no_import_cycle() -> None:
    edges = graph()
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(edges[m]):
            if state.get(d) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module)


def test_analysis_and_export_use_no_task_and_no_class_is_swapped() -> None:
    edges = graph()
    for module, deps in edges.items():
        if part(module) in ("analysis", "export", "bench"):
            assert not [d for d in deps if part(d) == "tasks"], module
    for path in ROOT.rglob("*.py"):
        assert "__class__ =" not in path.read_text(), path
