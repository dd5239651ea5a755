"""``--lava-target loihi2-hw``: the Lava run on a Loihi 2 chip (``Loihi2HwCfg``) needs Intel's lava-loihi; where it
is absent (as in this environment) every command that would run Lava stops at once with one clear line and
exit code 2, pointing at ``--lava-target lava-sim``."""

from __future__ import annotations

import subprocess
import sys
import types

import numpy as np
import pytest

from st2chip import pipeline
from st2chip.cli.main import main
from st2chip.converters.mlp import mlp_to_nir
from st2chip.errors import InputError
from st2chip.graph.nirfile import write_nir


def _lava_loihi_installed() -> bool:
    from st2chip.targets.lava_compat import ensure_lava
    ensure_lava()
    try:
        pipeline.loihi2_hw_run_cfg()
    except InputError:
        return False
    return True


pytestmark = pytest.mark.skipif(_lava_loihi_installed(), reason="lava-loihi is installed here")


@pytest.fixture
def good_nir(random_mlp, tmp_path):
    return write_nir(mlp_to_nir(random_mlp()), tmp_path / "good.nir")


def _run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("argv", [
    ["simulate", "--backend", "lava"],
    ["verify"],  # the default --backends include lava
    ["verify", "--backends", "reference,lava", "--lava-samples", "2"],
    ["energy", "--backend", "lava"],
], ids=["simulate", "verify", "verify-backends", "energy"])
def test_hw_target_without_lava_loihi_exits_2(argv, good_nir, tmp_path, capsys):
    out = tmp_path / "traces.npz"
    extra = ["-o", str(out)] if argv[0] == "simulate" else []
    code, stdout, stderr = _run(capsys, *argv, str(good_nir), "--lava-target", "loihi2-hw", *extra)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("st2chip: error: --lava-target loihi2-hw")
    assert "lava-loihi" in stderr and "INRC" in stderr and "--lava-target lava-sim" in stderr
    assert "lava.magma.compiler.subcompilers.nc" in stderr  # what exactly is missing
    assert "Traceback" not in stderr and stdout == ""  # refused before anything ran
    assert not out.exists()


def test_hw_target_needs_the_lava_backend(good_nir, capsys):
    code, _, stderr = _run(capsys, "simulate", str(good_nir), "--backend", "reference", "--lava-target", "loihi2-hw")
    assert code == 2 and "choose the lava backend" in stderr
    code, _, stderr = _run(capsys, "verify", str(good_nir), "--backends", "float,reference",
                           "--lava-target", "loihi2-hw")
    assert code == 2 and "choose the lava backend" in stderr


def test_run_backend_refuses_the_hw_target(random_mlp):
    from st2chip.chip.lower import lower
    graph = mlp_to_nir(random_mlp())
    chip = lower(graph)
    x = {"input": np.zeros((1, 2, 64), np.uint8)}
    with pytest.raises(InputError, match="lava-loihi"):
        pipeline.run_backend("lava", graph, chip, x, target="loihi2-hw")
    with pytest.raises(InputError, match="unknown Lava target"):
        pipeline.run_backend("reference", graph, chip, x, target="loihi3")


def test_the_check_looks_for_lava_loihi_precisely(monkeypatch):
    """With the modules lava-loihi provides present, the guard passes and builds a Loihi2HwCfg."""
    for name in pipeline.LAVA_LOIHI_MODULES:
        parts = name.split(".")
        for i in range(len(parts) - 2, len(parts) + 1):  # the missing packages and the module itself
            monkeypatch.setitem(sys.modules, ".".join(parts[:i]), sys.modules.get(".".join(parts[:i]))
                                or types.ModuleType(".".join(parts[:i])))
    from lava.magma.core.run_configs import Loihi2HwCfg
    assert isinstance(pipeline.loihi2_hw_run_cfg(), Loihi2HwCfg)


def test_console_exit_code_is_2(good_nir):
    """The real process: exit status 2 and one line on stderr."""
    proc = subprocess.run([sys.executable, "-m", "st2chip.cli", "simulate", str(good_nir), "--backend", "lava",
                           "--lava-target", "loihi2-hw"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("st2chip: error: --lava-target loihi2-hw")
