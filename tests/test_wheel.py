"""The package as users install it: a wheel built from a clean copy of the tree, and ``python -m st2chip``."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Repository folder -> where its files land in the wheel (converters/ and targets/ install inside st2chip).
INSTALLED_AS = {"st2chip": "st2chip", "converters": "st2chip/converters", "targets": "st2chip/targets"}


def _tree_files() -> list[str]:
    """The files a clean clone of the working tree holds: tracked plus untracked-but-not-ignored ones."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            check=True, capture_output=True).stdout.decode().split("\0")
    return sorted({name for name in listed if name and (ROOT / name).is_file()})


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    src, dist = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("dist")
    for name in _tree_files():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(dist), str(src)], check=True, capture_output=True, cwd=src)
    (path,) = dist.glob("st2chip-*.whl")
    with zipfile.ZipFile(path) as archive:
        yield archive


def test_wheel_holds_every_module_and_data_file_of_the_tree(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    expected = []
    for name in _tree_files():
        folder, _, rest = name.partition("/")
        if folder in INSTALLED_AS and rest:
            expected.append(f"{INSTALLED_AS[folder]}/{rest}")
    assert "st2chip/targets/lava_host/__init__.py" in expected  # the package a hand-kept list once left out
    assert any(n.startswith("st2chip/analysis/profiles/") for n in expected)
    missing = [n for n in expected if n not in names]
    assert not missing, f"not in the wheel: {missing}"


def test_wheel_installs_nothing_outside_st2chip(wheel: zipfile.ZipFile) -> None:
    others = {name.split("/")[0] for name in wheel.namelist()} - {"st2chip"}
    assert len(others) == 1 and others.pop().endswith(".dist-info")  # no top-level converters/ or targets/
    assert not [n for n in wheel.namelist() if "__pycache__" in n or n.endswith(".pyc")]


def test_wheel_declares_the_console_script_and_the_core_dependencies(wheel: zipfile.ZipFile) -> None:
    info = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")).rsplit("/", 1)[0]
    assert "st2chip = st2chip.cli.main:main" in wheel.read(f"{info}/entry_points.txt").decode()
    requires = [line.split(":", 1)[1].strip() for line in wheel.read(f"{info}/METADATA").decode().splitlines()
                if line.startswith("Requires-Dist:")]
    core = {r.split(";")[0].split("<")[0].split(">")[0].split("=")[0].strip() for r in requires if "extra ==" not in r}
    assert {"torch", "numpy", "scipy", "nir", "h5py", "matplotlib", "tqdm", "scikit-learn"} <= core
    assert any("extra == \"lava\"" in r for r in requires)


def test_python_dash_m_st2chip_is_the_cli(tmp_path: Path) -> None:
    """``python -m st2chip`` from outside the checkout runs the same CLI as the console script."""
    done = subprocess.run([sys.executable, "-m", "st2chip", "--help"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "usage: st2chip" in done.stdout and "demo" in done.stdout
