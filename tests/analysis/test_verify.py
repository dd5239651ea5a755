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
