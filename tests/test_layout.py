"""The harness's shape: no import cycle in aion_conformance, frameworks imported by their kits only.

The import graph is read from the source (every ``import``, function-level ones included),
so a lazy import that hides a cycle is caught too.
"""

import ast
from pathlib import Path

import pytest

from aion_conformance import registry
from aion_conformance.frameworks.kit import MEMBERS
from frameworks import CORE_PACKAGES, FRAMEWORKS, PACKAGES

ROOT = Path(__file__).resolve().parents[1] / "conformance"
PKG = "aion_conformance"
#: What only a framework's kit (conformance/frameworks/<framework>/) may import: the
#: frameworks, their adapters, and optax (the Flax kit's optimizers, no framework of its own).
FRAMEWORK_MODULES = {*(name for fw in FRAMEWORKS for name in fw.imports), "optax",
                     *(set(PACKAGES) - set(CORE_PACKAGES))}


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join((PKG, *parts[:-1])) if parts[-1] == "__init__" else ".".join((PKG, *parts))
        out[name] = path
    return out


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """Every module name ``path`` imports (``from a import b`` gives ``a.b`` when that is a module)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names
                      if f"{node.module}.{alias.name}" in MODULES}
    return names


def _graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        # Importing a.b.c runs a/__init__ and a/b/__init__ too: edges to the package inits,
        # but not to the module's own packages (initialised before it, whatever it imports).
        own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        targets = set()
        for imported in _imports(path):
            parts = imported.split(".")
            targets |= {".".join(parts[:i]) for i in range(2, len(parts) + 1)} & set(MODULES)
        graph[name] = targets - own - {name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_harness_import_graph_has_no_cycle():
    graph = _graph()
    assert sum(len(t) for t in graph.values()) > 50  # the graph was read
    assert _cycles(graph) == []


def test_a_cycle_is_found():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _kit_folder(name: str) -> bool:
    return name.startswith(f"{PKG}.frameworks.") and name.count(".") >= 3


@pytest.mark.parametrize("module", sorted(m for m in MODULES if not _kit_folder(m)))
def test_only_a_kit_imports_a_framework(module):
    frameworks = {n.split(".")[0] for n in _imports(MODULES[module])} & FRAMEWORK_MODULES
    assert not frameworks, f"{module} imports {frameworks}: that belongs in a kit, frameworks/<framework>/"


@pytest.mark.parametrize("backend", [b for b in registry.BACKENDS.values() if b.kit], ids=lambda b: b.name)
def test_every_kit_offers_the_protocol(backend):
    module = backend.kit
    path = MODULES[module]
    exported = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in node.targets):
            exported = set(ast.literal_eval(node.value))
    wanted = set(MEMBERS)
    assert wanted <= exported, f"{module} lacks {sorted(wanted - exported)} in __all__"
