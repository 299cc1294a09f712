"""The package's import graph: layers only point down, and no module imports itself back.

Order: core <- models <- preprocessing, datasets <- training, inference, visualization <- serve, cli, demo.
A module may import its own floor or any floor below, never one above; and no chain of imports may come
back to where it started (registration happens in a package's __init__, as in timm).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "megatron_utils"
FLOORS = {"core": 0, "models": 1, "preprocessing": 2, "datasets": 2, "training": 3, "inference": 3,
          "visualization": 3, "recipes": 4, "serve": 4, "cli": 4, "demo": 4, "__main__": 5}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (at any depth of its code, lazy imports included)."""
    files = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([node.module] if node.module else [])])
                targets.add(base)
                targets.update(f"{base}.{alias.name}" for alias in node.names)
        graph[name] = {target for target in targets if target in files and target != name}
    return graph


def floor(module: str) -> int | None:
    parts = module.split(".")
    return FLOORS[parts[1]] if len(parts) > 1 else None


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while (member := stack.pop()) != node:
                component.append(member)
            if component:
                found.append(sorted([node, *component]))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_every_module_sits_on_a_known_floor():
    unknown = sorted({module.split(".")[1] for module in import_graph() if "." in module} - set(FLOORS))
    assert not unknown, f"folders without a floor in FLOORS: {unknown}"


def test_imports_only_point_down():
    graph = import_graph()
    upward = [f"{source} -> {target}" for source, targets in sorted(graph.items())
              for target in sorted(targets)
              if floor(source) is not None and floor(target) is not None and floor(target) > floor(source)]
    assert not upward, "imports that climb a floor:\n" + "\n".join(upward)


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_checker_sees_a_cycle_and_an_upward_import():
    graph = {"megatron_utils.models.a": {"megatron_utils.training.b"},
             "megatron_utils.training.b": {"megatron_utils.models.a"}}
    assert cycles(graph) == [sorted(graph)]
    assert floor("megatron_utils.training.b") > floor("megatron_utils.models.a")


@pytest.mark.parametrize("models_module", ["backbones", "heads", "baselines", "audio", "checkpoint"])
def test_models_is_a_leaf_over_core(models_module):
    imported = import_graph()[f"megatron_utils.models.{models_module}"]
    assert all(floor(target) in (0, 1) for target in imported), imported
