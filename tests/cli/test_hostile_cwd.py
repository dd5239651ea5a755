"""No command runs code from the working directory.

Run from a folder that holds a ``st2chip/`` and a ``multiprocessing/`` package (an
unpacked archive, a colleague's project), the installed ``st2chip`` console script
must import neither: not in the child that test-reads a ``.nir`` (``python -m`` puts
the working directory first on its path) nor in the interpreters started on its
behalf (multiprocessing's resource tracker runs ``python -c``, which does the same).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from st2chip.converters.mlp import mlp_to_nir
from st2chip.graph.nirfile import write_nir

ST2CHIP = Path(sys.executable).with_name("st2chip")  # the console script installed beside this interpreter


@pytest.fixture
def hostile(tmp_path, random_mlp):
    """A working directory whose ``st2chip`` and ``multiprocessing`` packages append to a marker file on import."""
    folder = tmp_path / "unpacked"
    marker = tmp_path / "ran.txt"
    for package in ("st2chip", "multiprocessing"):
        (folder / package).mkdir(parents=True)
        (folder / package / "__init__.py").write_text(f"open({str(marker)!r}, 'a').write('{package}\\n')\n")
    write_nir(mlp_to_nir(random_mlp()), folder / "m.nir")
    return folder, marker


COMMANDS = [
    ["map", "m.nir"],
    ["simulate", "m.nir", "--samples", "2"],
    pytest.param(["simulate", "m.nir", "--samples", "1", "--backend", "lava"], id="simulate-lava",
                 marks=pytest.mark.skipif(importlib.util.find_spec("lava") is None, reason="lava-nc not installed")),
]


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: "-".join(a[:1] + a[-1:]) if isinstance(a, list) else None)
def test_no_command_imports_from_the_working_directory(hostile, argv):
    folder, marker = hostile
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
    result = subprocess.run([str(ST2CHIP), *argv], cwd=folder, env=env, capture_output=True, text=True,
                            timeout=180)
    assert result.returncode == 0, result.stderr
    assert not marker.exists(), f"imported from the working directory: {marker.read_text().split()}"
    assert "Traceback" not in result.stderr
