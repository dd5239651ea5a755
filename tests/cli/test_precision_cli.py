"""`--precision auto|8|16` on the commands that lower a graph: 8 is the plain lowering, 16 adds residual groups."""

from __future__ import annotations

import json

import nir
import numpy as np
import pytest

from st2chip.chip.lower import lower
from st2chip.chip.table import layer_rows
from st2chip.cli.main import main
from st2chip.graph.nirfile import write_nir
from st2chip.graph.normalize import normalize


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def peaked_graph() -> nir.NIRGraph:
    """input (6) -> LIF (8) whose weights have one peak of 8 folded thresholds (exponent 3) -> LI (4)."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(0.6, 2.5, (8, 6))
    w1[0, 0] = 40.0
    nodes = {"input": nir.Input(input_type={"input": np.array([6])}),
             "fc1": nir.Affine(weight=w1, bias=np.zeros(8)),
             "n1": nir.LIF(tau=np.full(8, 5e-3), r=np.ones(8), v_leak=np.zeros(8), v_threshold=np.ones(8),
                           v_reset=np.zeros(8)),
             "fc2": nir.Affine(weight=rng.normal(0, 0.3, (4, 8)), bias=np.zeros(4)),
             "n2": nir.LI(tau=np.full(4, 1e-2), r=np.ones(4), v_leak=np.zeros(4)),
             "output": nir.Output(output_type={"output": np.array([4])})}
    edges = [("input", "fc1"), ("fc1", "n1"), ("n1", "fc2"), ("fc2", "n2"), ("n2", "output")]
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata={"dt": 1e-3}, type_check=False)


@pytest.fixture
def model(tmp_path):
    return write_nir(peaked_graph(), tmp_path / "peaked.nir")


def _map_json(capsys, model, tmp_path, *flags) -> dict:
    out = tmp_path / f"map{len(flags)}{'_'.join(flags)}.json"
    code, _, err = _run(capsys, "map", model, "--resources", "none", "--json", out, *flags)
    assert code == 0, err
    return json.loads(out.read_text())


def test_precision_8_maps_the_plain_8_bit_lowering(model, tmp_path, capsys):
    data = _map_json(capsys, model, tmp_path, "--precision", "8")
    plain = lower(normalize(peaked_graph()), decay_groups=4)
    assert data["layers"] == json.loads(json.dumps(layer_rows(plain)))
    assert data["report"] == json.loads(json.dumps(plain.report))


def test_precision_16_and_auto_add_the_residual_weights(model, tmp_path, capsys):
    rows = {flag: {r["layer"]: r for r in _map_json(capsys, model, tmp_path, "--precision", flag)["layers"]}
            for flag in ("8", "16", "auto")}
    assert rows["16"]["n1"]["nonzero"] > rows["8"]["n1"]["nonzero"]
    assert rows["16"]["n2"]["nonzero"] > rows["8"]["n2"]["nonzero"]
    assert rows["auto"]["n1"]["nonzero"] == rows["16"]["n1"]["nonzero"]  # 8-bit error over the bound: 16
    assert rows["auto"]["n2"]["nonzero"] == rows["8"]["n2"]["nonzero"]   # within it: 8
    assert rows["16"]["n1"]["weight_error"] * 8 < rows["8"]["n1"]["weight_error"]


def test_an_unknown_precision_is_exit_2_naming_the_flag(model, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["map", str(model), "--precision", "32"])
    assert exc.value.code == 2
    assert "--precision" in capsys.readouterr().err
