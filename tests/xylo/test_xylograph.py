"""The Xylo IR holds only what the chip can: each refused value names its field."""

import numpy as np
import pytest

from st2chip.errors import ChipRangeError
from st2chip.xylo.spec import XYLO_TARGETS, load_spec
from st2chip.xylo.xylograph import XyloGraph, XyloLayer, XyloNeurons, XyloRun


def _neurons(n: int, **over) -> XyloNeurons:
    fields = {"dash_syn": [1] * n, "dash_mem": [2] * n, "threshold": [10] * n, "bias": [0] * n}
    fields.update(over)
    return XyloNeurons(**fields)


def _graph(**over) -> XyloGraph:
    fields = {"w_in": np.zeros((3, 4), int), "w_rec": np.zeros((4, 4), int), "w_out": np.zeros((4, 2), int),
              "shift_in": 0, "shift_rec": 0, "shift_out": 0, "hidden": _neurons(4), "outputs": _neurons(2),
              "layers": [XyloLayer("h1", 0, 2, 0), XyloLayer("h2", 2, 4, 1), XyloLayer("out", 0, 2, 2, output=True)]}
    fields.update(over)
    return XyloGraph(**fields)


def test_a_valid_graph_reports_its_sizes_and_latency() -> None:
    g = _graph()
    assert (g.n_inputs, g.n_hidden, g.n_outputs, g.latency) == (3, 4, 2, 2)


@pytest.mark.parametrize("over, field", [
    ({"w_in": np.full((3, 4), 128)}, "w_in"),
    ({"w_rec": np.zeros((4, 3), int)}, "w_rec"),
    ({"w_out": np.full((4, 2), 0.5)}, "w_out"),
    ({"shift_rec": 8}, "shift_rec"),
])
def test_graph_fields_out_of_range_are_refused_by_name(over: dict, field: str) -> None:
    with pytest.raises(ChipRangeError, match=f"'{field}'"):
        _graph(**over)


@pytest.mark.parametrize("over, field", [
    ({"dash_mem": [16] * 4}, "dash_mem"),
    ({"threshold": [0] * 4}, "threshold"),
    ({"bias": [2**15] * 4}, "bias"),
    ({"dash_syn": [1] * 3}, "dash_syn"),
])
def test_neuron_fields_out_of_range_are_refused_by_name(over: dict, field: str) -> None:
    with pytest.raises(ChipRangeError, match=f"'{field}'"):
        _neurons(4, **over)


def test_aligned_cuts_the_samples_own_steps() -> None:
    spikes = np.arange(2 * 7 * 3).reshape(2, 7, 3)
    run = XyloRun(hidden_spikes=spikes, output_spikes=spikes[..., :1])
    cut = run.aligned(latency=2, steps=5)
    assert np.array_equal(cut.hidden_spikes, spikes[:, 2:7]) and cut.hidden_v is None


def test_every_xylo_target_has_a_resource_file() -> None:
    specs = [load_spec(name) for name in XYLO_TARGETS]
    assert [(s.inputs, s.hidden, s.outputs) for s in specs] == [(16, 1000, 8), (16, 992, 32), (16, 496, 16)]
