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


def _conv(rng, c_out, c_in, k, **kw) -> nir.Conv2d:
    groups = kw.pop("groups", 1)
    return nir.Conv2d(input_shape=None, weight=rng.normal(0.1, 0.4, (c_out, c_in // groups, k, k)),
                      stride=kw.pop("stride", 1), padding=kw.pop("padding", 0), dilation=kw.pop("dilation", 1),
                      groups=groups, bias=rng.normal(0, 0.02, c_out))


def _cnn(thresholds2=(1.0, 1.3, 0.9, 1.1, 1.2, 0.8)) -> nir.NIRGraph:
    rng = np.random.default_rng(0)
    nodes = {"input": nir.Input(input_type={"input": np.array([2, 9, 9])}),
             "c1": _conv(rng, 4, 2, 3, stride=2, padding=1), "l1": _if((4, 5, 5), [1.0, 0.8, 1.2, 1.5]),
             "c2": _conv(rng, 6, 4, 2, groups=2, dilation=2), "l2": _if((6, 3, 3), thresholds2),
             "flat": nir.Flatten(input_type={"input": np.array([6, 3, 3])}),
             "fc": nir.Affine(weight=rng.normal(0, 0.3, (5, 54)), bias=np.zeros(5)),
             "out_neuron": nir.LI(tau=np.full(5, 0.005), r=np.ones(5), v_leak=np.zeros(5)),
             "output": nir.Output(output_type={"output": np.array([5])})}
    edges = [("input", "c1"), ("c1", "l1"), ("l1", "c2"), ("c2", "l2"), ("l2", "flat"), ("flat", "fc"),
             ("fc", "out_neuron"), ("out_neuron", "output")]
    return normalize(nir.NIRGraph(nodes=nodes, edges=edges, metadata={"dt": DT}, type_check=False))


def test_convolutions_run_as_lava_conv_equal_to_the_engine():
    chip = lower(_cnn())
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


def test_kernel_rebuilds_the_groups_matrix_exactly():
    chip = lower(_cnn())
    syn = next(s for s in chip.synapses if s.name == "l1->l2")
    graph = _cnn()
    node = graph.nodes["c2"]
    again, _ = linear.as_matrix("c2", nir.Conv2d(input_shape=None, weight=syn.conv.kernel.astype(float),
                                                 stride=node.stride, padding=node.padding, dilation=node.dilation,
                                                 groups=node.groups, bias=np.zeros(6)), (4, 5, 5))
    np.testing.assert_array_equal(again.toarray(), syn.dense())


def test_per_neuron_thresholds_keep_a_matrix_and_say_why():
    graph = _cnn()
    graph.nodes["l2"].v_threshold[4] *= 1.5  # position (1, 1) of channel 0 (normalize keeps flat vectors)
    chip = lower(graph)
    assert next(s for s in chip.synapses if s.name == "l1->l2").conv is None
    assert "per-neuron thresholds" in chip.report["layers"]["l2"]["storage"]["l1->l2"]


def test_decay_groups_and_uneven_padding_keep_a_matrix():
    rng = np.random.default_rng(2)
    node = nir.Conv2d(input_shape=None, weight=rng.normal(size=(2, 1, 2, 2)), stride=1, padding="same",
                      dilation=1, groups=1, bias=np.zeros(2))
    matrix, _ = linear.as_matrix("c", node, (1, 4, 4))
    assert "unevenly" in conv_kernel("c", node, (1, 4, 4), matrix)
    rng = np.random.default_rng(3)
    beta = rng.choice([0.7, 0.9], (4, 5, 5))
    graph = _cnn()
    graph.nodes["l1"] = nir.LIF(tau=DT / (1 - beta), r=1 / (1 - beta), v_leak=np.zeros((4, 5, 5)),
                                v_threshold=np.ones((4, 5, 5)), v_reset=np.zeros((4, 5, 5)))
    chip = lower(normalize(graph), decay_groups=2)
    storage = chip.report["layers"]["l1"]["storage"]
    assert set(storage) == {"input->l1/g0", "input->l1/g1"}
    assert all("several populations" in why for why in storage.values())
