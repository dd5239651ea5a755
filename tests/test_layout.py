"""The folders are the pipeline: each layer imports only the layers before it."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Package folder -> dotted package, in pipeline order. A module may import its own
# layer and the layers listed before it, never one listed after it.
LAYERS = [
    ("st2chip/errors.py st2chip/io.py st2chip/traces.py st2chip/limits.py st2chip/attention.py st2chip/text.py "
     "st2chip/progress.py",
     "base"),
    ("st2chip/learn", "st2chip.learn"),
    ("st2chip/graph", "st2chip.graph"),
    ("converters", "st2chip.converters"),
    ("st2chip/chip", "st2chip.chip"),
    ("st2chip/xylo", "st2chip.xylo"),
    ("targets", "st2chip.targets"),
    ("st2chip/analysis", "st2chip.analysis"),
    ("st2chip/api.py st2chip/pipeline.py st2chip/inputs.py st2chip/defaults.py st2chip/families.py "
     "st2chip/comparison.py", "api"),
    ("st2chip/cli", "st2chip.cli"),
]
BASE_MODULES = {"st2chip.errors", "st2chip.io", "st2chip.traces", "st2chip.limits", "st2chip.attention",
                "st2chip.text", "st2chip.progress"}
# The Python API: the pipeline's stages as functions, above every stage; the CLI is a thin layer over it.
API_MODULES = {"st2chip.api", "st2chip.pipeline", "st2chip.inputs", "st2chip.defaults", "st2chip.families",
               "st2chip.comparison"}


def _rank_of_module(name: str) -> int | None:
    if name in BASE_MODULES:
        return 0
    if name in API_MODULES:
        return next(rank for rank, (_, package) in enumerate(LAYERS) if package == "api")
    for rank, (_, package) in enumerate(LAYERS):
        if name == package or name.startswith(package + "."):
            return rank
    return None


def _files(rank: int) -> list[Path]:
    spec = LAYERS[rank][0]
    out: list[Path] = []
    for part in spec.split():
        path = ROOT / part
        out += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return out


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
    return [n for n in names if n.startswith("st2chip")]


def test_imports_follow_the_pipeline():
    wrong = []
    for rank in range(len(LAYERS)):
        for path in _files(rank):
            for name in _imports(path):
                target = _rank_of_module(name)
                if target is not None and target > rank:
                    wrong.append(f"{path.relative_to(ROOT)} imports {name} (a later layer)")
    assert not wrong, "\n".join(wrong)


def test_no_relative_imports_outside_a_layer():
    """Relative imports stay inside their own folder, so a move cannot hide a layer crossing."""
    wrong = []
    for rank in range(len(LAYERS)):
        for path in _files(rank):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.level > 1:
                    wrong.append(f"{path.relative_to(ROOT)}: from {'.' * node.level}{node.module or ''}")
    assert not wrong, "\n".join(wrong)


def test_every_module_imports():
    """A move or rename cannot leave a module importing a name that is gone."""
    import importlib
    import pkgutil

    import st2chip
    import st2chip.converters
    import st2chip.targets

    names = []
    for package in (st2chip, st2chip.converters, st2chip.targets):
        names += [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")
                  if not m.name.endswith("__main__")]
    assert "st2chip.cli.demo" in names and "st2chip.targets.lava" in names
    for name in names:
        importlib.import_module(name)
