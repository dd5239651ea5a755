import numpy as np

from st2chip.traces import Traces
from st2chip.analysis.verify import compare, verify


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
