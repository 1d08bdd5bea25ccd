"""The package's import graph reads top-down: no cycle, and no module imports from a layer above its own."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "reslab"

# Bottom to top, as CONTRIBUTING.md's code map lists them. A module may import from lower layers only
# (modules of one layer do not import each other).
LAYERS = [
    ["errors", "version", "early_stopping", "tracking", "plots", "distributed"],
    ["checks", "download", "runfolder", "device", "jobs"],
    ["config", "datasets", "models", "evaluate", "step"],
    ["loader", "checkpoint", "experiments"],
    ["train", "analysis"],
    ["run"],
    ["transfer", "report"],
    ["study"],
    ["cli", "__init__"],
    ["__main__"],
]


def _imports(path: Path) -> set[str]:
    """The reslab modules a file imports (relative imports, at any depth in the file)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
    return found


def _graph() -> dict[str, set[str]]:
    return {path.stem: _imports(path) for path in PACKAGE.glob("*.py")}


def test_every_module_has_a_layer():
    layered = [name for layer in LAYERS for name in layer]
    assert sorted(layered) == sorted(_graph()) and len(layered) == len(set(layered))


def test_modules_import_only_from_lower_layers():
    level = {name: i for i, layer in enumerate(LAYERS) for name in layer}
    upward = [f"{module} -> {dep}" for module, deps in _graph().items() for dep in deps
              if level[dep] >= level[module]]
    assert upward == []


def test_the_import_graph_has_no_cycle():
    graph, state = _graph(), {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for dep in graph[module]:
            assert state.get(dep) != "open", " -> ".join(path + [module, dep])
            if dep not in state:
                visit(dep, path + [module])
        state[module] = "done"

    for module in graph:
        if module not in state:
            visit(module, [])
