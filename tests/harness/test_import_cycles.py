"""No import cycles among the project's modules (harness/, methods/, tasks/, reports/).

Import statements count at module level, inside functions and under ``if TYPE_CHECKING:``: only
module-level ones can make a load-time cycle, but an import moved into a function or under
TYPE_CHECKING to dodge one keeps the two modules depending on each other (at run time, or in their
types), the tangle this test prevents. Imports by name
at run time (``importlib``, registry lookups) are not statements and do not count either: that is
how plugins are found (harness/plugin/discovery.py names no plugin in its imports).
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("harness", "methods", "tasks", "reports")


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {_module_name(path): path for package in PACKAGES for path in sorted((REPO / package).rglob("*.py"))}


def _imported(node: ast.AST, module: str, is_package: bool, modules: dict[str, Path]) -> list[str]:
    """The project modules one import statement loads: ``from a import b`` is ``a.b`` where that is a module."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name in modules]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:  # relative: from the module's package, one level up per extra dot
        base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    found = [f"{source}.{alias.name}" for alias in node.names if f"{source}.{alias.name}" in modules]
    return found or ([source] if source in modules else [])


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules its import statements name."""
    modules = project_modules()
    graph = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        graph[module] = {target for node in ast.walk(tree) for target in _imported(node, module, is_package, modules)
                         if target != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan), as a closed path."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(set(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_closed_path(graph, component) for component in components]


def _closed_path(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest path from the component's first module back to itself, inside the component."""
    start = min(component)
    paths, seen = [[start]], {start}
    while paths:
        path = paths.pop(0)
        for target in sorted(graph[path[-1]] & component):
            if target == start:
                return path + [start]
            if target not in seen:
                seen.add(target)
                paths.append(path + [target])
    raise AssertionError(f"no cycle through {start}")


def test_the_graph_sees_the_imports_that_matter():
    graph = import_graph()
    assert "harness.plugin.method" in graph["harness.plugin.calibrators"]  # from X import Y, Y not a module
    assert "harness.priors.loop" in graph["harness.api.synthesis"]  # from X.Y import Z, X.Y a module
    assert "methods.psaq_v2.generator" in graph["methods.psaq_v2"]  # an __init__ importing its modules
    assert "harness.run.gridfile" in graph["harness.entry.cli"]  # inside a function
    assert "harness.run.grid" in graph["harness.plugin.support"]  # under TYPE_CHECKING


def test_cycles_are_found_and_printed_as_paths():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c", "a"]]


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in found)
