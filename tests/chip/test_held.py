"""Reading back what the chip holds: weights within half a quantization step, decays on the chip's grid,
and lowering the held weights gives the same mantissas back (the fixed point chip-in-the-loop training needs)."""

import copy

import nir

import numpy as np
import pytest
import torch

from st2chip.chip.held import held_parameters
from st2chip.chip.lower import lower, read_neuron
from st2chip.converters.rnn import rnn_to_nir
from st2chip.errors import GraphError
from st2chip.graph.normalize import normalize
from st2chip.learn.rnn import RNNConfig, SpikingRNN


def _rnn_graph(hidden: int = 12, seed: int = 0):
    """An untrained RNN with spread thresholds and decays, as its canonical NIR graph."""
    torch.manual_seed(seed)
    model = SpikingRNN(RNNConfig.digits(hidden=hidden, hold=1))
    with torch.no_grad():
        model.threshold.uniform_(0.3, 1.7)
        model.leak_logit.uniform_(0.0, 4.0)
        model.syn_leak_logit.uniform_(-1.0, 2.0)
        model.rec.weight.mul_(3.0)
    return normalize(rnn_to_nir(model))


def test_held_weights_are_the_chip_mantissas_in_float_units():
    graph = _rnn_graph()
    chip = lower(graph, decay_groups=3)
    held = held_parameters(graph, chip)
    assert set(held.weights) == {"fc_in", "rec", "fc_out"}
    lif, readout = graph.nodes["lif"], chip.report["layers"]
    units = readout["lif"]["voltage_unit"]
    for group in (g for g in chip.synapses if g.target.startswith("lif")):
        pop = chip.population(group.target)
        node = "rec" if group.feedback else "fc_in"
        cols = chip.population(group.source).index if group.feedback else np.arange(group.shape[1])
        step = 2.0 * 2.0**group.exp / (units[pop.name] / 64.0) * lif.v_threshold[pop.index][:, None]
        diff = np.abs(held.weights[node][np.ix_(pop.index, cols)] - graph.nodes[node].weight[np.ix_(pop.index, cols)])
        assert np.all(diff <= step / 2 + 1e-9)  # rounding to the nearest mantissa (none saturates here)
    for pop in chip.layer_populations("lif"):
        np.testing.assert_array_equal(held.decays["lif"][pop.index], 1 - pop.dv / 4096)
        np.testing.assert_array_equal(held.current_decays["lif"][pop.index], (4095 - pop.du) / 4096)
    # the digits RNN's leaky readout (LI, decay 0.7) on the 12-bit grid
    assert "readout" not in held.current_decays
    np.testing.assert_array_equal(held.decays["readout"], 1 - round(4096 * 0.3) / 4096)


def test_lowering_the_held_weights_gives_them_back():
    graph = _rnn_graph(seed=1)
    chip = lower(graph, decay_groups=2)
    assert chip.report["layers"]["lif"]["weight_error"] > 1e-3  # float weights: something to round
    held = held_parameters(graph, chip)
    again = copy.deepcopy(graph)
    for node, w in held.weights.items():  # as a float32 model would carry them
        again.nodes[node].weight = w.astype(np.float32)
    chip2 = lower(again, decay_groups=2)
    for layer in ("lif", "readout"):
        assert chip2.report["layers"][layer]["weight_error"] < 1e-6
        assert chip2.report["layers"][layer]["voltage_unit"] == chip.report["layers"][layer]["voltage_unit"]
    for a, b in zip(chip.synapses, chip2.synapses):
        assert (a.name, a.exp) == (b.name, b.exp)
        np.testing.assert_array_equal(a.dense(), b.dense())


def _cnn(strided_cnn, threshold=np.ones((4, 5, 5))):
    return normalize(strided_cnn(nir.LIF(tau=np.full((4, 5, 5), 5e-3), r=np.ones((4, 5, 5)), v_leak=np.zeros((4, 5, 5)),
                                         v_threshold=threshold, v_reset=np.zeros((4, 5, 5))),
                                 nir.IF(r=np.ones((6, 3, 3)), v_threshold=np.full((6, 3, 3), 0.8))))


def test_convolutions_are_read_back_as_kernels_that_lower_to_the_same_mantissas(strided_cnn):
    """Stride, padding, dilation and groups: every synapse of a kernel weight holds one value, within half a
    step of the float weight; the kernels put back lower to the chip's mantissas again."""
    graph = _cnn(strided_cnn)
    chip = lower(graph)
    held = held_parameters(graph, chip)
    assert {n: w.shape for n, w in held.weights.items()} == {"c1": (4, 2, 3, 3), "c2": (6, 2, 2, 2), "fc": (5, 54)}
    for layer, conv in (("l1", "c1"), ("l2", "c2")):
        group = next(g for g in chip.synapses if g.target == layer)
        neuron = read_neuron(layer, graph.nodes[layer], 1e-3)  # the folding: weight * gain / threshold
        step = 2.0 * 2.0**group.exp / (chip.report["layers"][layer]["voltage_unit"][layer] / 64.0)
        step *= neuron.threshold[0] / neuron.gain[0]
        assert np.abs(held.weights[conv] - graph.nodes[conv].weight).max() <= step / 2 + 1e-12
    assert chip.report["layers"]["l1"]["weight_error"] > 1e-3
    again = copy.deepcopy(graph)
    for node, w in held.weights.items():
        again.nodes[node].weight = w.astype(np.float32)
    chip2 = lower(again)
    assert all(layer["weight_error"] < 1e-6 for layer in chip2.report["layers"].values())
    for a, b in zip(chip.synapses, chip2.synapses):
        assert (a.name, a.exp) == (b.name, b.exp)
        np.testing.assert_array_equal(a.dense(), b.dense())


def test_a_channel_whose_neurons_differ_in_threshold_is_refused_naming_the_node(strided_cnn):
    threshold = np.ones((4, 5, 5))
    threshold[1, 2, 3] = 1.3  # one neuron of channel 1: its synapses round the shared kernel differently
    graph = _cnn(strided_cnn, threshold)
    with pytest.raises(GraphError, match="within a channel") as err:
        held_parameters(graph, lower(graph))
    assert err.value.node == "c1" and "\n" not in str(err.value)


def _pooled(pool_first: bool) -> nir.NIRGraph:
    """input (1, 6, 6) -> Conv 3x3 padding 1 -> IF (2, 6, 6) -> [pool 2 -> Flatten -> Affine] -> IF (5), or with
    ``pool_first=False`` the pooling between the convolution and its IF: input -> Conv -> SumPool -> IF (2, 3, 3)."""
    rng = np.random.default_rng(0)
    conv = nir.Conv2d(input_shape=None, weight=rng.normal(0.3, 0.4, (2, 1, 3, 3)), stride=1, padding=1, dilation=1,
                      groups=1, bias=np.zeros(2))
    shape = (2, 6, 6) if pool_first else (2, 3, 3)
    nodes = {"input": nir.Input(input_type={"input": np.array([1, 6, 6])}), "conv": conv,
             "l1": nir.IF(r=np.ones(shape), v_threshold=np.ones(shape)),
             "fc": nir.Affine(weight=rng.normal(0, 0.5, (5, 18)), bias=np.zeros(5)),
             "l2": nir.IF(r=np.ones(5), v_threshold=np.ones(5)),
             "output": nir.Output(output_type={"output": np.array([5])})}
    pool = nir.AvgPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0]))
    if pool_first:
        nodes |= {"pool": pool, "flat": nir.Flatten(input_type={"input": np.array([2, 3, 3])})}
        edges = [("input", "conv"), ("conv", "l1"), ("l1", "pool"), ("pool", "flat"), ("flat", "fc"), ("fc", "l2")]
    else:
        two = np.array([2, 2])
        nodes |= {"pool": nir.SumPool2d(kernel_size=two, stride=two, padding=np.array([0, 0]))}
        edges = [("input", "conv"), ("conv", "pool"), ("pool", "l1"), ("l1", "fc"), ("fc", "l2")]
    return normalize(nir.NIRGraph(nodes=nodes, edges=[*edges, ("l2", "output")], metadata={"dt": 1.0},
                                  type_check=False))


def test_pooling_before_an_affine_is_read_back_through_its_coefficient():
    """IF -> AvgPool 2x2 -> Flatten -> Affine: four synapses carry each Affine weight times 1/4."""
    graph = _pooled(pool_first=True)
    chip = lower(graph)
    held = held_parameters(graph, chip)
    assert held.weights["fc"].shape == (5, 18)
    assert 0 < np.abs(held.weights["fc"] - graph.nodes["fc"].weight).max() < 0.05
    again = copy.deepcopy(graph)
    again.nodes["fc"].weight = held.weights["fc"]
    again.nodes["conv"].weight = held.weights["conv"]
    assert lower(again).report["layers"]["l2"]["weight_error"] < 1e-9


def test_pooling_after_a_convolution_is_refused_naming_the_node():
    """Conv -> SumPool -> IF: each synapse sums several kernel weights, which the chip rounds as one."""
    graph = _pooled(pool_first=False)
    with pytest.raises(GraphError, match="sum of several") as err:
        held_parameters(graph, lower(graph))
    assert err.value.node == "conv"


def test_a_current_bias_source_is_not_read_as_weights():
    """A CubaLIF with an Affine bias gets an always-on source (pass current_bias): held weights skip it."""
    rng = np.random.default_rng(0)
    w = rng.normal(0.3, 0.5, (6, 4))
    graph = nir.NIRGraph(
        nodes={"input": nir.Input(input_type={"input": np.array([4])}),
               "fc": nir.Affine(weight=w, bias=np.full(6, 0.2)),
               "lif": nir.CubaLIF(tau_syn=np.full(6, 5e-3), tau_mem=np.full(6, 1e-2), r=np.ones(6),
                                  v_leak=np.zeros(6), v_threshold=np.ones(6), w_in=np.ones(6)),
               "output": nir.Output(output_type={"output": np.array([6])})},
        edges=[("input", "fc"), ("fc", "lif"), ("lif", "output")], metadata={"dt": 1e-3})
    graph = normalize(graph)
    chip = lower(graph, decay_groups=1)
    assert any(p.always_on for p in chip.populations)
    held = held_parameters(graph, chip)
    assert set(held.weights) == {"fc"}
    np.testing.assert_allclose(held.weights["fc"], w, rtol=0.02, atol=0.02)
