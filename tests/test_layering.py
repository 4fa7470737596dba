"""The package's layers import only downward, and nothing hides an upward import in a function.

Data flows one way (ANN -> traced graph -> normalised graph -> calibrated graph -> SNN ->
validation -> report / export); the layers below follow it. A module may import modules of its own
layer or of layers listed before it, never after. Function-local imports are allowed only for
optional or heavy third-party packages, never for spikecast's own modules (that is how cycles used
to be dodged). Module-level imports must also form no cycle inside a layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "spikecast"

#: Lowest first. A module's layer is that of the longest prefix listed here.
LAYERS: list[tuple[str, ...]] = [
    ("spikecast.errors", "spikecast.paths", "spikecast.progress", "spikecast.devices"),
    ("spikecast.zoo", "spikecast.data", "spikecast.datasets", "spikecast.models"),  # ANNs and data sources
    ("spikecast.graph",),        # trace, op vocabulary, normalisation: pure graph passes
    ("spikecast.nn",),           # stateful spiking modules (one protocol), encodings, simulation settings
    ("spikecast.calibrate",),    # calibration set, statistics, thresholds
    ("spikecast.convert",),      # calibrated graph -> spiking graph, layer-wise correction
    ("spikecast.runtime",),      # SpikingNetwork: simulation, save / load
    ("spikecast.quant", "spikecast.distributed", "spikecast.validate", "spikecast.inspection", "spikecast.targets",
     "spikecast.export"),
    ("spikecast.recipe", "spikecast.pipeline"),  # one recipe, convert()
    ("spikecast.train",),
    ("spikecast.reporting",),
    ("spikecast.jobs",),         # the one convert -> validate -> save -> report job runner
    ("spikecast.batch", "spikecast.cli", "spikecast.__main__", "spikecast"),  # apps and the public API
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int:
    best, best_len = None, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    assert best is not None, f"{module} is in no layer: add it to LAYERS in {__file__}"
    return best


def _is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (PACKAGE.parent / rel).with_suffix(".py").is_file() or (PACKAGE.parent / rel / "__init__.py").is_file()


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """``(imported spikecast module, line, at module level)`` for every import in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    top_level = {id(node) for node in tree.body}
    # imports under `if TYPE_CHECKING:` / try at module level count as module level
    for node in tree.body:
        if isinstance(node, (ast.If, ast.Try)):
            top_level.update(id(n) for n in ast.walk(node))
    found = []
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                names.append(full if _is_module(full) else base)
        for name in names:
            if name == "spikecast" or name.startswith("spikecast."):
                found.append((name, node.lineno, id(node) in top_level))
    return found


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_has_a_layer():
    for name in all_modules():
        layer_of(name)


def test_imports_only_go_down_the_layers():
    wrong = []
    for name, path in all_modules().items():
        here = layer_of(name)
        for target, line, _ in imports(path):
            if target == "spikecast" and name != "spikecast":
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports the top-level package 'spikecast'")
            elif layer_of(target) > here:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({LAYERS[here][0]}) imports {target} "
                             f"({LAYERS[layer_of(target)][0]}), a higher layer")
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_no_function_local_imports_of_spikecast_modules():
    local = [f"{path.relative_to(PACKAGE.parent)}:{line} imports {target} inside a function"
             for name, path in all_modules().items() for target, line, top in imports(path) if not top]
    assert not local, "function-local imports of spikecast modules (dodging a cycle?):\n" + "\n".join(local)


def test_module_imports_form_no_cycle():
    modules = all_modules()
    edges = {name: sorted({t for t, _, top in imports(path) if top and t in modules and t != name})
             for name, path in modules.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in edges[node]:
            if nxt.startswith(node + ".") or node.startswith(nxt + ".") and nxt == "spikecast":
                continue  # a package's __init__ re-exporting its own modules is not a cycle
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]) if nxt in stack else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for name in modules:
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checker_sees_an_upward_import(tmp_path):
    # the test above must be able to fail: a graph module importing the runtime is caught
    fake = tmp_path / "spikecast" / "graph" / "bad.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("import torch\n\ndef f():\n    from spikecast.runtime.network import SpikingNetwork\n")
    global PACKAGE
    saved = PACKAGE
    try:
        PACKAGE = tmp_path / "spikecast"
        (PACKAGE / "runtime").mkdir()
        (PACKAGE / "runtime" / "network.py").write_text("")
        found = imports(fake)
    finally:
        PACKAGE = saved
    assert found == [("spikecast.runtime.network", 4, False)]
    assert layer_of("spikecast.runtime.network") > layer_of("spikecast.graph.bad")
