"""`st2chip compare`: the table on stdout, the report folder with --out, exit 0 when a target does not fit, 2 on
bad input (one line on stderr naming the flag)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from st2chip.cli.main import main
from st2chip.converters.mlp import mlp_to_nir
from st2chip.graph.nirfile import write_nir
from st2chip.learn.mlp import MLPConfig, SpikingMLP


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def files(tmp_path):
    """A 16-12-4 MLP resetting by subtraction (fits every Xylo) and 5 labelled samples of seeded spikes."""
    torch.manual_seed(0)
    model = SpikingMLP(MLPConfig(sizes=[16, 12, 4], steps=8, reset="subtract"))
    path = write_nir(mlp_to_nir(model), tmp_path / "m.nir")
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "x.npz", input=(rng.random((5, 8, 16)) < 0.4).astype(np.uint8),
             labels=rng.integers(0, 4, 5))
    return path, tmp_path / "x.npz"


def test_compare_prints_the_table_and_writes_the_folder(files, tmp_path, capsys):
    model, x = files
    code, out, err = _run(capsys, "compare", model, "--inputs", x, "--targets", "loihi2,xylo-audio3,xylo-imu",
                          "--out", tmp_path / "cmp")
    assert code == 0, err
    assert "| loihi2 " in out and "| xylo-audio3 " in out and "| xylo-imu " in out
    assert sorted(p.name for p in (tmp_path / "cmp").iterdir()) == ["compare.json", "compare.md", "compare.png"]
    rows = json.loads((tmp_path / "cmp" / "compare.json").read_text())["targets"]
    assert [r["target"] for r in rows] == ["loihi2", "xylo-audio3", "xylo-imu"]
    assert rows[2]["energy_pj"] is None and "no published energy figure" in " ".join(rows[2]["notes"])


def test_a_model_that_fits_no_xylo_still_exits_0(random_mlp, tmp_path, capsys):
    model = write_nir(mlp_to_nir(random_mlp(sizes=(64, 24, 10), steps=8)), tmp_path / "big.nir")
    code, out, err = _run(capsys, "compare", model, "--samples", 3, "--targets", "xylo-audio2")
    assert code == 0, err
    assert re.search(r"^\| xylo-audio2 \|\s+no \|", out, re.MULTILINE) and "Why not:" in out


@pytest.mark.parametrize("argv, needle", [
    (["--targets", "loihi2,truenorth"], "--targets: unknown target 'truenorth'"),
    (["--targets", ","], "--targets: no target named"),
])
def test_bad_targets_exit_2_with_one_line(files, capsys, argv, needle):
    model, x = files
    code, out, err = _run(capsys, "compare", model, "--inputs", x, *argv)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1


def test_a_missing_model_and_an_out_that_is_a_file_exit_2(files, tmp_path, capsys):
    model, x = files
    code, _, err = _run(capsys, "compare", tmp_path / "absent.nir")
    assert code == 2 and "absent.nir" in err
    (tmp_path / "file").write_text("x")
    code, _, err = _run(capsys, "compare", model, "--inputs", x, "--out", tmp_path / "file")
    assert code == 2 and "--out" in err
