"""The package's layers (declared in src/raftune/__init__.py) hold: no module imports from a layer above its own, and
no chain of imports leads back to where it started. Imports inside functions count the same as those at the top."""

import ast
from pathlib import Path

import raftune

PACKAGE = Path(raftune.__file__).parent


def module_name(path: Path) -> str:
    return ".".join(("raftune", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")


def imports() -> dict[str, set[str]]:
    """Module -> the raftune modules it imports (`from raftune.x import y` counts as raftune.x, or raftune.x.y when
    that is a module)."""
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                          for a in node.names}
        graph[module_name(path)] = {m for m in found if m in modules} - {module_name(path)}
    return graph


def layer(module: str) -> int:
    best = None
    for index, (_, members) in enumerate(raftune.LAYERS):
        for prefix in members:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (index, len(prefix))
    assert best is not None, f"{module} is in no layer of raftune.LAYERS"
    return best[0]


def test_every_module_is_in_a_layer_and_imports_only_its_own_or_lower_layers():
    upward = [f"{source} ({raftune.LAYERS[layer(source)][0]}) imports {target} ({raftune.LAYERS[layer(target)][0]})"
              for source, targets in sorted(imports().items()) for target in sorted(targets)
              if target != "raftune" and layer(target) > layer(source)]
    assert upward == []


def test_the_import_graph_has_no_circle():
    graph, state, circles = imports(), {}, []

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                circles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert circles == []
