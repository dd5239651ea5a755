"""Convolutions stored as kernels: chosen per group, reported, and run by lava-nc's Conv equal to the engine."""

import nir
import numpy as np
import pytest

from st2chip.chip.conv_storage import conv_kernel
from st2chip.chip.lower import lower
from st2chip.graph import linear
from st2chip.graph.normalize import normalize
from st2chip.targets import engine, lava

DT = 1e-3


def _if(shape, thresholds) -> nir.IF:
    """IF neurons with one threshold per channel (shared by a channel's positions)."""
    c = shape[0]
    theta = np.broadcast_to(np.asarray(thresholds, float).reshape(c, *([1] * (len(shape) - 1))), shape).copy()
    return nir.IF(r=np.full(shape, 1.0 / DT), v_threshold=theta, v_reset=np.zeros(shape))


@pytest.fixture
def cnn(strided_cnn):
    """A fresh normalized copy, each call, of the strided CNN with IF neurons of per-channel thresholds."""
    return lambda: normalize(strided_cnn(_if((4, 5, 5), [1.0, 0.8, 1.2, 1.5]),
                                         _if((6, 3, 3), [1.0, 1.3, 0.9, 1.1, 1.2, 0.8]), conv_mean=0.1))


def test_convolutions_run_as_lava_conv_equal_to_the_engine(cnn):
    chip = lower(cnn())
    convs = {s.name: s.conv for s in chip.synapses}
    assert convs["input->l1"] is not None and convs["l1->l2"] is not None and convs["l2->out_neuron"] is None
    assert chip.report["layers"]["l1"]["storage"] == {"input->l1": "convolution"}
    k = convs["l1->l2"]
    assert (k.kernel.shape, k.stride, k.padding, k.dilation, k.groups) == ((6, 2, 2, 2), (1, 1), (0, 0), (2, 2), 2)
    x = (np.random.default_rng(1).random((3, 20, 162)) < 0.3).astype(np.uint8)
    eng, lav = engine.run(chip, {"input": x}), lava.run(chip, {"input": x})
    assert eng.spikes["l1"].sum() > 0 and eng.spikes["l2"].sum() > 0
    for layer in eng.spikes:
        np.testing.assert_array_equal(eng.spikes[layer], lav.spikes[layer], err_msg=layer)
        np.testing.assert_array_equal(eng.voltages[layer], lav.voltages[layer], err_msg=layer)


def test_kernel_rebuilds_the_groups_matrix_exactly(cnn):
    chip = lower(cnn())
    syn = next(s for s in chip.synapses if s.name == "l1->l2")
    graph = cnn()
    node = graph.nodes["c2"]
    again, _ = linear.as_matrix("c2", nir.Conv2d(input_shape=None, weight=syn.conv.kernel.astype(float),
                                                 stride=node.stride, padding=node.padding, dilation=node.dilation,
                                                 groups=node.groups, bias=np.zeros(6)), (4, 5, 5))
    np.testing.assert_array_equal(again.toarray(), syn.dense())


def test_per_neuron_thresholds_keep_a_matrix_and_say_why(cnn):
    graph = cnn()
    graph.nodes["l2"].v_threshold[4] *= 1.5  # position (1, 1) of channel 0 (normalize keeps flat vectors)
    chip = lower(graph)
    assert next(s for s in chip.synapses if s.name == "l1->l2").conv is None
    assert "per-neuron thresholds" in chip.report["layers"]["l2"]["storage"]["l1->l2"]


def test_decay_groups_and_uneven_padding_keep_a_matrix(cnn):
    rng = np.random.default_rng(2)
    node = nir.Conv2d(input_shape=None, weight=rng.normal(size=(2, 1, 2, 2)), stride=1, padding="same",
                      dilation=1, groups=1, bias=np.zeros(2))
    matrix, _ = linear.as_matrix("c", node, (1, 4, 4))
    assert "unevenly" in conv_kernel("c", node, (1, 4, 4), matrix)
    rng = np.random.default_rng(3)
    beta = rng.choice([0.7, 0.9], (4, 5, 5))
    graph = cnn()
    graph.nodes["l1"] = nir.LIF(tau=DT / (1 - beta), r=1 / (1 - beta), v_leak=np.zeros((4, 5, 5)),
                                v_threshold=np.ones((4, 5, 5)), v_reset=np.zeros((4, 5, 5)))
    chip = lower(normalize(graph), decay_groups=2)
    storage = chip.report["layers"]["l1"]["storage"]
    assert set(storage) == {"input->l1/g0", "input->l1/g1"}
    assert all("several populations" in why for why in storage.values())
