"""st2chip verify: an output layer that never spikes, or spikes at every step, exits 1 naming it (0 with
--allow-silent); a healthy network still exits 0, with its spike rates in the text and the JSON."""

import json

import nir
import numpy as np
import pytest

from st2chip.cli.main import main
from st2chip.graph.nirfile import write_nir


def _lif(n: int, threshold: float = 1.0) -> nir.LIF:
    return nir.LIF(tau=np.full(n, 0.01), r=np.full(n, 10.0), v_leak=np.zeros(n), v_threshold=np.full(n, threshold),
                   v_reset=np.zeros(n))


def _model(tmp_path, out_threshold: float = 1.0, out_bias: float = 0.0):
    """Input (8) -> Affine -> LIF 'hidden' (12) -> Affine -> LIF 'out' (5) -> Output, dt = 1 ms; and inputs."""
    rng = np.random.default_rng(0)
    nodes = {"input": nir.Input(input_type={"input": np.array([8])}),
             "fc1": nir.Affine(weight=rng.normal(0.3, 0.5, (12, 8)), bias=np.zeros(12)), "hidden": _lif(12),
             "fc2": nir.Affine(weight=rng.normal(0.3, 0.5, (5, 12)), bias=np.full(5, out_bias)),
             "out": _lif(5, out_threshold), "output": nir.Output(output_type={"output": np.array([5])})}
    edges = [("input", "fc1"), ("fc1", "hidden"), ("hidden", "fc2"), ("fc2", "out"), ("out", "output")]
    path = write_nir(nir.NIRGraph(nodes=nodes, edges=edges, metadata={"dt": 1e-3}, type_check=False),
                     tmp_path / "model.nir")
    x = tmp_path / "x.npy"
    np.save(x, (np.random.default_rng(1).random((6, 10, 8)) < 0.4).astype(np.uint8))
    return str(path), str(x)


def _verify(capsys, model, x, *extra):
    code = main(["verify", model, "--inputs", x, "--backends", "float,reference", *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_healthy_network_exits_0_with_its_spike_rates(tmp_path, capsys):
    model, x = _model(tmp_path)
    report = tmp_path / "v.json"
    code, out, err = _verify(capsys, model, x, "--json", str(report))
    assert code == 0, out + err
    assert "spike rates: spikes per neuron per step" in out and "prediction agreement 100.00 %" in out
    assert "check ok     output layer 'out' neither silent nor saturated" in out
    rates = json.loads(report.read_text())["spike_rates"]
    assert {(r["layer"], r["backend"]) for r in rates} == {(layer, b) for layer in ("hidden", "out")
                                                           for b in ("float", "reference")}
    assert all(0 < r["rate"] < 1 and not r["silent"] and not r["saturated"] for r in rates)


@pytest.mark.parametrize("options, what", [({"out_threshold": 1e4}, "never spikes"),
                                           ({"out_bias": 1e3}, "spikes at every step")])
def test_silent_or_saturated_output_exits_1_naming_it_and_0_when_allowed(tmp_path, capsys, options, what):
    model, x = _model(tmp_path, **options)
    report = tmp_path / "v.json"
    code, out, err = _verify(capsys, model, x, "--json", str(report))
    assert code == 1
    assert err.strip() == "st2chip: verification failed: output layer 'out' neither silent nor saturated"
    assert (f"check FAILED output layer 'out' neither silent nor saturated: {what} on float and reference, over "
            f"all 6 samples (if that is expected: --allow-silent)") in out
    assert "prediction agreement n/a (outputs silent)" in out and "prediction agreement 1" not in out
    data = json.loads(report.read_text())
    assert data["passed"] is False and data["comparisons"][0]["prediction_agreement"] is None
    code, out, err = _verify(capsys, model, x, "--allow-silent")
    assert code == 0, out + err
    assert f"check ok     output layer 'out' neither silent nor saturated: {what}" in out
    assert "(allowed by --allow-silent)" in out
