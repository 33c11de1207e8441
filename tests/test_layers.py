"""Dependencies run one way: every import in mmtune/ and data_builders/ (lazy ones inside functions included) points
to the module's own layer or one below it. A cycle between packages would make a change in one ripple back."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = [
    ["mmtune.errors", "mmtune.config"],
    ["mmtune.data"],
    ["data_builders"],
    ["mmtune.encoders", "mmtune.bridges", "mmtune.models"],
    ["mmtune.infer", "mmtune.eval"],
    ["mmtune.train"],
    ["mmtune.recipe", "mmtune.demo", "mmtune.edit_demo", "mmtune.cli", "mmtune"],
]


def layer_of(module: str) -> int:
    """The layer of the longest package prefix that names `module` (bare `mmtune` is only its __init__)."""
    best = max((p for layer in LAYERS for p in layer
                if module == p or (p != "mmtune" and module.startswith(p + "."))), key=len)
    return next(i for i, layer in enumerate(LAYERS) if best in layer)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return [(line, name) for line, name in found if name.split(".")[0] in ("mmtune", "data_builders")]


SOURCES = sorted([*ROOT.glob("mmtune/**/*.py"), *ROOT.glob("data_builders/**/*.py")])


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down(path):
    own = layer_of(module_name(path))
    upward = [f"line {line}: {name} (layer {layer_of(name)} > {own})" for line, name in imports(path)
              if layer_of(name) > own]
    assert not upward, f"{module_name(path)} imports upward: {upward}"


def test_every_package_has_a_layer():
    assert {module_name(p).split(".")[0] for p in SOURCES} == {"mmtune", "data_builders"}
    unplaced = []
    for path in SOURCES:
        try:
            layer_of(module_name(path))
        except ValueError:  # max() of no prefix: a new top-level module that LAYERS does not place
            unplaced.append(module_name(path))
    assert not unplaced, f"add these modules to LAYERS: {unplaced}"
