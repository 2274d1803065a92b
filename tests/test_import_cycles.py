"""No import cycle between the modules of vgg_flax (the layers: model, storage, formats, ...).

The graph is built statically with `ast` from every module's imports, function-level (lazy) ones
included. `from vgg_flax.x import name` is an edge to vgg_flax.x.name when that is a module, else
to vgg_flax.x; a package's lazy-export table (`_EXPORTS`, PEP 562) gives edges from the package
to the modules its names come from, and `from package import name` of such a name is an edge to
that module directly (Python imports nothing else for it).
"""

import ast
import os

import vgg_flax

ROOT = os.path.dirname(vgg_flax.__file__)


def _modules() -> dict[str, str]:
    found = {}
    for folder, _, files in os.walk(ROOT):
        for file in files:
            if file.endswith(".py"):
                path = os.path.join(folder, file)
                parts = os.path.relpath(path, os.path.dirname(ROOT))[: -len(".py")].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                found[".".join(parts)] = path
    return found


def _lazy_exports(tree: ast.Module, package: str) -> dict[str, str]:
    """name -> module of a package's `_EXPORTS` table (values absolute, or relative names)."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets
        ):
            table = ast.literal_eval(node.value)
            return {
                name: module if module.startswith("vgg_flax") else f"{package}.{module}"
                for name, module in table.items()
            }
    return {}


def import_graph() -> dict[str, set[str]]:
    """module -> the vgg_flax modules it imports (statically, lazy imports included)."""
    modules = _modules()
    trees = {name: ast.parse(open(path).read(), path) for name, path in modules.items()}
    exports = {name: _lazy_exports(tree, name) for name, tree in trees.items()}
    graph: dict[str, set[str]] = {name: set(exports[name].values()) for name in modules}
    for name, tree in trees.items():
        is_package = modules[name].endswith("__init__.py")
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's package
                    package = name if is_package else name.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        package = package.rpartition(".")[0]
                    base = f"{package}.{base}" if base else package
                targets = []
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    if full in modules:
                        targets.append(full)
                    elif alias.name in exports.get(base, {}):
                        targets.append(exports[base][alias.name])
                    else:
                        targets.append(base)
            else:
                continue
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_sees_lazy_imports():
    graph = import_graph()
    assert "vgg_flax.weights.loading" in graph["vgg_flax"]  # the lazy-export table
    assert "vgg_flax.models.vgg" in graph["vgg_flax.weights.loading"]
    # A function-level import (the old-record mean is read from a run's config lazily).
    assert "vgg_flax.data.config" in graph["vgg_flax.weights.loading"]


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_inside_vgg_flax():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_model_knows_nothing_of_weights_and_storage_nothing_of_the_module():
    graph = import_graph()
    for module, imports in graph.items():
        if module.startswith("vgg_flax.models"):
            assert not {i for i in imports if i.startswith("vgg_flax.weights")}, module
    for module in (
        "vgg_flax.weights.checkpoint",
        "vgg_flax.weights.atomic",
        "vgg_flax.formats.pth",
    ):
        assert "vgg_flax.models.vgg" not in graph[module], module
    for module, imports in graph.items():
        if module.startswith("vgg_flax.formats"):
            assert "vgg_flax.models.vgg" not in imports, module
