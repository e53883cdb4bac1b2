"""The package's shape: modules import only downward, and no function grows past about 80 lines."""

from __future__ import annotations

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "equivariance"
MAX_LINES = 80  # a function's lines, its docstring aside


def dotted(path: pathlib.Path) -> str:
    """A module's name within the package: ``check``, ``_engine.plan``."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "__init__"


def imports() -> dict[str, set[str]]:
    """Each module of the package and the modules of the package it imports, anywhere in its body."""
    paths = sorted(PACKAGE.rglob("*.py"))
    names = {dotted(path) for path in paths}
    graph: dict[str, set[str]] = {}
    for path in paths:
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("equivariance"):
                base = node.module.removeprefix("equivariance").removeprefix(".")
                for alias in node.names:
                    child = f"{base}.{alias.name}" if base else alias.name
                    found.add(child if child in names else base)
            elif isinstance(node, ast.Import):
                found.update(
                    a.name.removeprefix("equivariance.")
                    for a in node.names
                    if a.name.startswith("equivariance.")
                )
        graph[dotted(path)] = found - {dotted(path), "", "_engine"}
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of imports, if there is one (the package's __init__ re-exports, so it is left out)."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done or module == "__init__":
            return None
        for imported in sorted(graph.get(module, ())):
            found = visit(imported, [*path, module])
            if found:
                return found
        done.add(module)
        return None

    for start in sorted(graph):
        found = visit(start, [])
        if found:
            return found
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:  # the negative control
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_modules_import_only_downward() -> None:
    graph = imports()
    assert {"_engine.plan", "_engine.runner", "_engine.sinks", "actions", "layouts"} <= set(graph)
    assert cycle(graph) is None


def long_functions() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno is not None
                size = node.end_lineno - node.lineno + 1
                first = node.body[0]
                if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                    assert first.end_lineno is not None
                    size -= first.end_lineno - first.lineno + 1
                if size > MAX_LINES:
                    found.append(f"{dotted(path)}.{node.name} ({size} lines)")
    return found


def test_no_function_is_over_about_80_lines() -> None:
    assert long_functions() == []
