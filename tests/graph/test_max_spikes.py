"""Several spikes per step (``metadata["max_spikes"] = k``): the float interpreter's counts, the trainable
interpreter equal to it with a gradient, normalize's refusals, a .nir round trip and Loihi's refusal."""

import math

import nir
import numpy as np
import pytest
import torch

import st2chip
from st2chip.chip.lower import lower
from st2chip.errors import GraphError
from st2chip.graph.normalize import normalize
from st2chip.graph.simulate import simulate
from st2chip.graph.torch_model import GraphModule, NeuronNode

DT = 1e-3


def _counter(k=3, reset="subtract", theta=1.0) -> nir.NIRGraph:
    """Input (1) -> IF (v <- v + x, up to k spikes per step) -> Affine (0.5) -> I (sums what it gets) -> Output."""
    one = np.ones(1)
    meta = {"reset": reset, "max_spikes": k}
    nodes = {"input": nir.Input(input_type={"input": np.array([1])}),
             "h": nir.IF(r=one / DT, v_threshold=one * theta, v_reset=0 * one, metadata=meta),
             "half": nir.Affine(weight=np.array([[0.5]]), bias=np.zeros(1)),
             "o": nir.I(r=one / DT),
             "output": nir.Output(output_type={"output": np.array([1])})}
    edges = [("input", "h"), ("h", "half"), ("half", "o"), ("o", "output")]
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata={"dt": DT}, type_check=False)


def test_float_sends_up_to_k_spikes_per_step_each_subtracting_the_threshold():
    drive = np.array([2.5, 0.25, 4.5, 0.0, 1.0, 0.75, 1.0])
    run = simulate(normalize(_counter(k=3)), drive.reshape(1, -1, 1))
    # v before: 2.5 0.75 5.25 2.25 1.25 1.0 2.0; strict v > 1 each time, at most 3; v after subtracting
    np.testing.assert_array_equal(run.spikes["h"][0, :, 0], [2, 0, 3, 2, 1, 0, 1])
    np.testing.assert_array_equal(run.voltages["h"][0, :, 0], [0.5, 0.75, 2.25, 0.25, 0.25, 1.0, 1.0])
    assert run.scores[0, 0] == 0.5 * 9  # the counts flow through the Affine weight like spikes
    once = simulate(normalize(_counter(k=1)), drive.reshape(1, -1, 1))
    np.testing.assert_array_equal(once.spikes["h"][0, :, 0], [1] * 7)  # one at most: v piles up


def _recurrent(k=5, refractory=0) -> nir.NIRGraph:
    """Input (4) -> Affine -> CubaLIF (6, recurrent, up to k spikes per step) -> Affine -> LIF (3) -> Output."""
    rng = np.random.default_rng(0)
    n, m = 6, 3
    hidden_meta = {"reset": "subtract", "max_spikes": k, "refractory": refractory}
    nodes = {"input": nir.Input(input_type={"input": np.array([4])}),
             "w": nir.Affine(weight=rng.uniform(0.0, 1.5, (n, 4)), bias=np.full(n, 0.05)),
             "h": nir.CubaLIF(tau_syn=np.full(n, 2 * DT), tau_mem=np.full(n, 10 * DT), r=np.full(n, 10.0),
                              v_leak=np.zeros(n), v_threshold=rng.uniform(0.3, 0.8, n), v_reset=np.zeros(n),
                              w_in=np.full(n, 2.0), metadata=hidden_meta),
             "rec": nir.Affine(weight=rng.uniform(-0.2, 0.1, (n, n)), bias=np.zeros(n)),
             "v": nir.Affine(weight=rng.uniform(-0.3, 0.6, (m, n)), bias=np.zeros(m)),
             "o": nir.LIF(tau=np.full(m, 5 * DT), r=np.full(m, 5.0), v_leak=np.zeros(m), v_threshold=np.ones(m),
                          v_reset=np.zeros(m), metadata={"reset": "subtract"}),
             "output": nir.Output(output_type={"output": np.array([m])})}
    edges = [("input", "w"), ("w", "h"), ("h", "rec"), ("rec", "h"), ("h", "v"), ("v", "o"), ("o", "output")]
    return normalize(nir.NIRGraph(nodes=nodes, edges=edges, metadata={"dt": DT}, type_check=False))


def _spikes(batch=4, steps=30, seed=1) -> np.ndarray:
    return (np.random.default_rng(seed).random((batch, steps, 4)) < 0.5).astype(np.uint8)


@pytest.mark.parametrize("refractory", [0, 1])
def test_trainable_interpreter_equals_the_float_one_bit_for_bit(refractory):
    graph, x = _recurrent(refractory=refractory), _spikes()
    float_run = simulate(graph, x)
    assert float_run.spikes["h"].max() >= 3, "the test needs several spikes in a step"
    module = GraphModule(graph, dtype=torch.float64)
    out = module.run(module.encode(x))
    for name in ("h", "o"):
        np.testing.assert_array_equal(out[name].transpose(0, 1).detach().numpy(), float_run.spikes[name])
    np.testing.assert_array_equal(module(module.encode(x)).detach().numpy(), float_run.scores)


def test_gradients_flow_through_the_counts_into_the_weights_and_decays():
    graph, x = _recurrent(), _spikes()
    module = GraphModule(graph, dtype=torch.float64)
    assert module.run(module.encode(x))["h"].max() > 1
    module(module.encode(x)).sum().backward()
    for name in ("w", "rec", "v"):
        assert module.module(name).weight.grad.abs().sum() > 0, name
    assert module.module("h").decay.grad.abs().sum() > 0


def test_the_count_is_a_staircase_of_k_arctan_surrogates():
    node = normalize(_counter(k=3, theta=0.5)).nodes["h"]
    neuron = NeuronNode("h", node, DT, alpha=2.0).double()
    v = torch.tensor([0.2, 0.6, 1.1, 1.45, 3.0], dtype=torch.float64, requires_grad=True)
    count = neuron.step(v, None, None)[0]  # IF with dt r = 1: v is the drive
    np.testing.assert_array_equal(count.detach().numpy(), [0, 1, 2, 2, 3])
    count.sum().backward()
    x = [(v.detach() - j * 0.5) / 0.5 for j in (1, 2, 3)]
    expected = sum(1.0 / (1 + (math.pi * xj) ** 2) for xj in x) / 0.5  # alpha / 2 = 1
    np.testing.assert_allclose(v.grad.numpy(), expected.numpy(), rtol=1e-12)


@pytest.mark.parametrize("value, text", [(0, "in 1..255, got 0"), (256, "got 256"), ("3", "got '3'"),
                                         (True, "got True"), (2.0, "got 2.0")])
def test_normalize_refuses_other_values_naming_node_and_field(value, text):
    with pytest.raises(GraphError, match="node 'h', field 'metadata.max_spikes'") as info:
        normalize(_counter(k=value))
    assert text in str(info.value) and "\n" not in str(info.value)


def test_normalize_refuses_several_spikes_with_a_reset_to_zero():
    with pytest.raises(GraphError, match="node 'h', field 'metadata.max_spikes'.*reset by subtraction"):
        normalize(_counter(k=2, reset="zero"))
    assert normalize(_counter(k=1, reset="zero")).nodes["h"].metadata["max_spikes"] == 1  # the default is fine


def test_normalize_refuses_several_spikes_on_a_neuron_that_does_not_spike():
    graph = _counter()
    graph.nodes["o"].metadata = {"max_spikes": 4}
    with pytest.raises(GraphError, match="node 'o', field 'metadata.max_spikes'.*spiking neurons.*not to I"):
        normalize(graph)


def test_the_key_survives_a_nir_file_and_load(tmp_path):
    path = tmp_path / "m.nir"
    nir.write(str(path), normalize(_counter(k=7)))
    graph = st2chip.load(path)
    assert int(graph.nodes["h"].metadata["max_spikes"]) == 7
    run = simulate(graph, np.array([[[9.5]]]))
    assert run.spikes["h"][0, 0, 0] == 7 and run.voltages["h"][0, 0, 0] == 2.5


def test_loihi_lowering_refuses_several_spikes_per_step_in_one_line():
    with pytest.raises(GraphError) as info:
        lower(_recurrent())
    text = str(info.value)
    assert text.startswith("node 'h', field 'metadata.max_spikes'") and "\n" not in text
    assert "Loihi's neurons spike at most once per step" in text and "--target xylo-" in text
    lower(_recurrent(k=1))  # without it the same graph lowers
