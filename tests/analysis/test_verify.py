import nir
import numpy as np
import pytest

import st2chip
from st2chip.traces import Traces
from st2chip.analysis.verify import OutputLayers, compare, output_layers, verify


def _traces(backend, spikes, scores):
    return Traces(backend, {"in": np.zeros((2, 3, 1), np.uint8)}, {"l": spikes},
                  {"l": spikes.astype(np.int64)}, scores)


def test_first_divergence_is_earliest_step():
    base = np.zeros((2, 3, 4), np.uint8)
    other = base.copy()
    other[1, 2, 0] = 1
    other[0, 1, 3] = 1
    scores = np.eye(2)
    report = verify([_traces("reference", base, scores), _traces("lava", other, scores)], np.array([0, 1]))
    assert not report.chip_exact
    d = report.comparisons[0].first_divergence
    assert (d.layer, d.step, d.sample, d.neuron) == ("l", 1, 0, 3)
    assert report.comparisons[0].spike_agreement["l"] == 1 - 2 / base.size


def test_identical_is_exact():
    s = np.ones((2, 3, 4), np.uint8)
    c = compare(_traces("reference", s, np.eye(2)), _traces("lava", s.copy(), np.eye(2)), voltages=True)
    assert c.exact and c.first_divergence is None


def test_agreement_check_takes_the_worst_layer_layer_by_layer_when_given():
    """End to end the chip differs in 25 % of the spikes, but fed the chip's spikes the float layer makes all of
    them but one: the check passes on the layer-by-layer figure and reports both."""
    chip = np.zeros((2, 3, 4), np.uint8)
    chip[:, :, :3] = 1
    flt = np.zeros_like(chip)
    local = chip.copy()
    local[0, 0, 0] = 0
    traces = [_traces("float", flt, np.eye(2)), _traces("reference", chip, np.eye(2))]
    end_to_end = verify(traces, min_agreement=90)
    assert not end_to_end.passed and "25.000 %" in end_to_end.checks[-1].detail
    report = verify(traces, min_agreement=90, layer_by_layer=_traces("float (layer by layer)", local, np.eye(2)))
    check = report.checks[-1]
    assert report.passed and check.name == "spike agreement float vs reference, layer by layer"
    assert "worst layer 'l' 95.833 %" in check.detail and "end to end 25.000 %" in check.detail
    assert report.comparisons[0].layer_by_layer == {"l": 23 / 24}
    assert verify(traces, min_agreement=96, layer_by_layer=_traces("float (layer by layer)", local, np.eye(2))
                  ).checks[-1].passed is False


# --- outputs that never spike, or spike at every step, do not pass ---------------------------------------------

DT = 1e-3


def _lif(n: int, threshold: float = 1.0) -> nir.LIF:
    return nir.LIF(tau=np.full(n, 0.01), r=np.full(n, 10.0), v_leak=np.zeros(n), v_threshold=np.full(n, threshold),
                   v_reset=np.zeros(n))


def _graph(out_threshold: float = 1.0, out_bias: float = 0.0, hidden_threshold: float = 1.0,
           readout: bool = False) -> nir.NIRGraph:
    """Input (8) -> Affine -> LIF 'hidden' (12) -> Affine -> 'out' (5) -> Output; 'out' a LIF, or an LI readout."""
    rng = np.random.default_rng(0)
    out = nir.LI(tau=np.full(5, 0.005), r=np.ones(5), v_leak=np.zeros(5)) if readout else _lif(5, out_threshold)
    nodes = {"input": nir.Input(input_type={"input": np.array([8])}),
             "fc1": nir.Affine(weight=rng.normal(0.3, 0.5, (12, 8)), bias=np.zeros(12)),
             "hidden": _lif(12, hidden_threshold),
             "fc2": nir.Affine(weight=rng.normal(0.3, 0.5, (5, 12)), bias=np.full(5, out_bias)), "out": out,
             "output": nir.Output(output_type={"output": np.array([5])})}
    edges = [("input", "fc1"), ("fc1", "hidden"), ("hidden", "fc2"), ("fc2", "out"), ("out", "output")]
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata={"dt": DT}, type_check=False)


X = (np.random.default_rng(1).random((6, 10, 8)) < 0.4).astype(np.uint8)


def _verify(graph: nir.NIRGraph, **options):
    return st2chip.verify(graph, X, backends=("float", "reference"), lava_samples=0, **options)


def test_output_layers_are_the_spiking_layers_feeding_outputs_through_readouts():
    assert output_layers(_graph()) == OutputLayers(spiking=("out",), readouts=())
    assert output_layers(_graph(readout=True)) == OutputLayers(spiking=("hidden",), readouts=("out",))


def test_healthy_graph_passes_with_its_spike_rates_reported():
    report = _verify(_graph())
    assert report.passed
    text = report.to_text()
    assert "spike rates: spikes per neuron per step, and % of neurons that never | always spike" in text
    assert "check ok     output layer 'out' neither silent nor saturated: float " in text
    assert "never spikes on" not in text and "prediction agreement 100.00 %" in text
    rates = {(r["layer"], r["backend"]): r for r in report.to_dict()["spike_rates"]}
    assert set(rates) == {(layer, b) for layer in ("hidden", "out") for b in ("float", "reference")}
    assert 0 < rates["out", "float"]["rate"] < 1 and not rates["out", "reference"]["silent"]
    assert report.to_dict()["outputs"] == {"spiking": ["out"], "readouts": []}


@pytest.mark.parametrize("case, options, what", [
    ("silent", {"out_threshold": 1e4}, "never spikes on float and reference"),
    ("saturated", {"out_bias": 1e3}, "spikes at every step on float and reference"),
])
def test_silent_or_saturated_output_fails_unless_allowed(case, options, what):
    """Float and chip agree perfectly on an output layer that does nothing: that fails, naming the layer, and no
    prediction agreement is reported; --allow-silent lets it pass, still named."""
    report = _verify(_graph(**options))
    check = report.checks[-1]
    assert not report.passed and not check.passed
    assert check.name == "output layer 'out' neither silent nor saturated"
    assert check.detail == f"{what}, over all 6 samples (if that is expected: --allow-silent)"
    assert report.comparisons[0].prediction_agreement is None
    text = report.to_text()
    assert "float vs reference: spike agreement 100.000 %, prediction agreement n/a (outputs silent)" in text
    assert f"  layer 'out' {what} (" in text
    data = report.to_dict()
    assert data["comparisons"][0]["prediction_agreement"] is None
    rate = next(r for r in data["spike_rates"] if r["layer"] == "out" and r["backend"] == "reference")
    assert rate[case] and rate["rate"] == (0.0 if case == "silent" else 1.0)
    allowed = _verify(_graph(**options), allow_silent=True)
    assert allowed.passed and allowed.checks[-1].detail.endswith("(allowed by --allow-silent)")


def test_silent_layers_into_a_readout_fail_and_so_do_its_constant_scores():
    """With an LI readout (its voltage the score), the spiking layer feeding it is the output layer; silent,
    the readout's scores are the same for every sample: both checks fail."""
    healthy = _verify(_graph(readout=True))
    assert healthy.passed and [c.name for c in healthy.checks[-2:]] == [
        "output layer 'hidden' neither silent nor saturated", "readout 'out' scores differ between samples"]
    report = _verify(_graph(readout=True, hidden_threshold=1e4))
    failed = [c for c in report.checks if not c.passed]
    assert [c.name for c in failed] == ["output layer 'hidden' neither silent nor saturated",
                                        "readout 'out' scores differ between samples"]
    assert failed[1].detail == ("the same for all 6 samples on float and reference "
                                "(if that is expected: --allow-silent)")
    assert report.comparisons[0].prediction_agreement is None
    assert _verify(_graph(readout=True, hidden_threshold=1e4), allow_silent=True).passed


def test_a_silent_layer_that_is_no_output_is_named_but_does_not_fail():
    spikes = np.zeros((2, 3, 4), np.uint8)
    spikes[0, 1, 2] = 1
    traces = [Traces(b, {"in": np.zeros((2, 3, 1), np.uint8)}, {"quiet": np.zeros((2, 3, 4), np.uint8),
                                                                "l": spikes}, {}, np.eye(2))
              for b in ("float", "reference")]
    report = verify(traces, outputs=OutputLayers(spiking=("l",)))
    assert report.passed
    text = report.to_text()
    assert "  layer 'quiet' never spikes on float and reference (over all 2 samples)" in text
    row = next(line for line in text.splitlines() if line.startswith("  quiet "))
    assert row.split() == ["quiet"] + ["0.0000", "100.0", "%", "|", "0.0", "%"] * 2
    assert "prediction agreement 100.00 %" in text
