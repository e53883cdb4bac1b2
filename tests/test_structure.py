"""The package's shape: modules import only downward, and no function grows past about 80 lines."""

from __future__ import annotations

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "equivariance"
MAX_LINES = 80  # a function's lines, its docstring aside


def imports() -> dict[str, set[str]]:
    """Each module of the package and the modules of the package it imports, anywhere in its body."""
    names = {path.stem for path in PACKAGE.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.glob("*.py"):
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "equivariance":
                found.update(alias.name for alias in node.names if alias.name in names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("equivariance."):
                found.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("equivariance."))
        graph[path.stem] = found - {path.stem}
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
    assert {"_plan", "_runner", "_sinks", "actions", "layouts"} <= set(graph)
    assert cycle(graph) is None


def long_functions() -> list[str]:
    found = []
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno is not None
                size = node.end_lineno - node.lineno + 1
                first = node.body[0]
                if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                    assert first.end_lineno is not None
                    size -= first.end_lineno - first.lineno + 1
                if size > MAX_LINES:
                    found.append(f"{path.stem}.{node.name} ({size} lines)")
    return found


def test_no_function_is_over_about_80_lines() -> None:
    assert long_functions() == []
