"""The layering of the engines: neither the simulator nor the Flower engine imports the
other, directly or through any other fedbcs_fl module.

Read from the source with ``ast``, so an import inside a function counts too, and no
engine (nor Flower) is imported to check it.
"""

import ast
from collections import deque
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "fedbcs_fl"
SIMULATOR = "fedbcs_fl.simulation"
FLOWER = "fedbcs_fl.flower"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(path: Path, modules: set[str]) -> set[str]:
    """The fedbcs_fl modules ``path`` imports, with the packages whose ``__init__`` runs."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = base[: len(base) - node.level + 1] if node.level else []
            origin = ".".join([*base, *([node.module] if node.module else [])])
            found.add(origin)
            found |= {f"{origin}.{alias.name}" for alias in node.names}  # submodules
    with_packages = set()
    for module in found:
        parts = module.split(".")
        with_packages |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return with_packages & modules


def import_graph() -> dict[str, set[str]]:
    """fedbcs_fl module → the fedbcs_fl modules it imports."""
    paths = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: _imported(path, set(paths)) for name, path in paths.items()}


def import_chain(graph: dict[str, set[str]], start: str, banned) -> list[str] | None:
    """The shortest chain of imports from ``start`` to a module ``banned`` accepts."""
    came_from = {start: None}
    queue = deque([start])
    while queue:
        module = queue.popleft()
        if banned(module):
            chain = [module]
            while came_from[chain[-1]] is not None:
                chain.append(came_from[chain[-1]])
            return chain[::-1]
        for imported in sorted(graph[module] - set(came_from)):
            came_from[imported] = module
            queue.append(imported)
    return None


def _in_flower(module: str) -> bool:
    return module == FLOWER or module.startswith(FLOWER + ".")


def test_the_import_graph_sees_relative_absolute_and_function_level_imports():
    graph = import_graph()
    assert "fedbcs_fl.round" in graph["fedbcs_fl.simulation"]
    server_app = graph["fedbcs_fl.flower.server_app"]
    assert {"fedbcs_fl.flower.strategy", "fedbcs_fl.run_folder"} <= server_app
    assert "fedbcs_fl.simulation" in graph["fedbcs_fl.cli"]  # imported inside cmd_train
    assert {"fedbcs_fl.data", "fedbcs_fl.data.base"} <= graph["fedbcs_fl.calibrate"]


def test_neither_engine_imports_the_other():
    graph = import_graph()
    for module in sorted(filter(_in_flower, graph)):
        chain = import_chain(graph, module, lambda m: m == SIMULATOR)
        assert chain is None, "the Flower engine imports the simulator: " + " → ".join(chain)
    chain = import_chain(graph, SIMULATOR, _in_flower)
    assert chain is None, "the simulator imports the Flower engine: " + " → ".join(chain)
