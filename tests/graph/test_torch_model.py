"""The trainable float interpreter equals simulate() spike for spike (feed-forward LIF with every neuron kind,
recurrent CubaLIF, convolutions and pooling, st2chip's own RNN export), passes surrogate gradients to weights and
decays, and writes back a graph that simulates what it computed."""

from __future__ import annotations

import nir
import numpy as np
import pytest
import torch

from st2chip.errors import InputError
from st2chip.graph.normalize import normalize
from st2chip.graph.simulate import run_graph, simulate
from st2chip.graph.torch_model import GraphModule

DT = 1e-3


def _graph(nodes: dict, edges: list) -> nir.NIRGraph:
    return normalize(nir.NIRGraph(nodes=nodes, edges=edges, metadata={"dt": DT}, type_check=False))


def _feed_forward(rng: np.random.Generator) -> nir.NIRGraph:
    """LIF (v_leak, subtract reset) -> Delay -> IF -> LI readout; Affine biases, a Scale; 10 inputs, 4 classes."""
    lif = nir.LIF(tau=rng.uniform(2e-3, 2e-2, 16), r=rng.uniform(0.5, 3, 16), v_leak=rng.normal(0, 0.2, 16),
                  v_threshold=rng.uniform(0.4, 1.6, 16), v_reset=np.zeros(16), metadata={"reset": "subtract"})
    nodes = {"input": nir.Input(input_type={"input": np.array([10])}),
             "fc1": nir.Affine(weight=rng.normal(0.3, 0.5, (16, 10)), bias=rng.normal(0, 0.05, 16)),
             "lif": lif, "delay": nir.Delay(delay=rng.integers(0, 3, 16) * DT),
             "fc2": nir.Affine(weight=rng.normal(0.2, 0.5, (8, 16)), bias=np.zeros(8)),
             "if": nir.IF(r=np.full(8, 1 / DT), v_threshold=rng.uniform(0.5, 1.5, 8), v_reset=np.full(8, 0.1)),
             "scale": nir.Scale(scale=rng.uniform(0.5, 2, 8)),
             "fc3": nir.Affine(weight=rng.normal(0, 1, (4, 8)), bias=rng.normal(0, 0.1, 4)),
             "readout": nir.LI(tau=np.full(4, 5e-3), r=np.ones(4), v_leak=np.zeros(4)),
             "output": nir.Output(output_type={"output": np.array([4])})}
    names = list(nodes)
    return _graph(nodes, list(zip(names[:-1], names[1:])))


def _recurrent(rng: np.random.Generator, readout: nir.NIRNode) -> nir.NIRGraph:
    """Input -> Affine -> CubaLIF with a recurrent Affine -> Affine -> ``readout``; 10 inputs, 4 classes."""
    h = 16
    cuba = nir.CubaLIF(tau_syn=rng.uniform(2e-3, 8e-3, h), tau_mem=rng.uniform(2e-3, 2e-2, h), r=np.full(h, 3.0),
                       v_leak=np.zeros(h), v_threshold=rng.uniform(0.5, 1.5, h), v_reset=np.zeros(h), w_in=np.ones(h))
    nodes = {"input": nir.Input(input_type={"input": np.array([10])}),
             "fc_in": nir.Affine(weight=rng.normal(0.3, 0.5, (h, 10)), bias=rng.normal(0, 0.05, h)),
             "lif": cuba, "rec": nir.Affine(weight=rng.normal(0, 0.4, (h, h)), bias=np.zeros(h)),
             "fc_out": nir.Affine(weight=rng.normal(0.2, 0.6, (4, h)), bias=np.zeros(4)), "readout": readout,
             "output": nir.Output(output_type={"output": np.array([4])})}
    edges = [("input", "fc_in"), ("fc_in", "lif"), ("lif", "rec"), ("rec", "lif"), ("lif", "fc_out"),
             ("fc_out", "readout"), ("readout", "output")]
    return _graph(nodes, edges)


def _conv(rng: np.random.Generator) -> nir.NIRGraph:
    """Input (2, 8, 8) -> Conv 3x3 pad 1 -> LIF -> SumPool 2 -> Conv 3x3 stride 2 groups 2 -> IF -> AvgPool ->
    Flatten -> Affine -> LI (5)."""
    conv = lambda c_out, c_in, **kw: nir.Conv2d(  # noqa: E731
        input_shape=None, weight=rng.normal(0.2, 0.4, (c_out, c_in // kw.get("groups", 1), 3, 3)),
        stride=kw.get("stride", 1), padding=kw.get("padding", 0), dilation=1, groups=kw.get("groups", 1),
        bias=rng.normal(0, 0.05, c_out))
    nodes = {"input": nir.Input(input_type={"input": np.array([2, 8, 8])}),
             "c1": conv(4, 2, padding=1),
             "l1": nir.LIF(tau=np.full((4, 8, 8), 4e-3), r=np.full((4, 8, 8), 2.0), v_leak=np.zeros((4, 8, 8)),
                           v_threshold=np.full((4, 8, 8), 0.8), v_reset=np.zeros((4, 8, 8))),
             "pool": nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0])),
             "c2": conv(6, 4, stride=2, padding=1, groups=2),
             "l2": nir.IF(r=np.full((6, 2, 2), 1 / DT), v_threshold=np.full((6, 2, 2), 0.7),
                          v_reset=np.zeros((6, 2, 2))),
             "avg": nir.AvgPool2d(kernel_size=np.array([2, 2]), stride=np.array([1, 1]), padding=np.array([1, 1])),
             "flat": nir.Flatten(input_type={"input": np.array([6, 3, 3])}),
             "fc": nir.Affine(weight=rng.normal(0, 0.5, (5, 54)), bias=np.zeros(5)),
             "readout": nir.LI(tau=np.full(5, 5e-3), r=np.ones(5), v_leak=np.zeros(5)),
             "output": nir.Output(output_type={"output": np.array([5])})}
    names = list(nodes)
    return _graph(nodes, list(zip(names[:-1], names[1:])))


def _rnn_export() -> nir.NIRGraph:
    from st2chip.converters.rnn import rnn_to_nir
    from st2chip.learn.rnn import RNNConfig, SpikingRNN
    torch.manual_seed(0)
    model = SpikingRNN(RNNConfig.digits(hidden=12, hold=1))
    with torch.no_grad():
        model.threshold.uniform_(0.3, 1.7)
        model.leak_logit.uniform_(0.0, 4.0)
        model.syn_leak_logit.uniform_(-1.0, 2.0)
        model.fc_in.weight.mul_(4.0)
        model.rec.weight.mul_(3.0)
    return normalize(rnn_to_nir(model))


GRAPHS = {
    "feed-forward": lambda rng: _feed_forward(rng),
    "recurrent cubalif, li readout": lambda rng: _recurrent(rng, nir.LI(tau=np.full(4, 5e-3), r=np.ones(4),
                                                                         v_leak=np.zeros(4))),
    "recurrent cubalif, cubali readout": lambda rng: _recurrent(rng, nir.CubaLI(
        tau_syn=np.full(4, 3e-3), tau_mem=np.full(4, 6e-3), r=np.ones(4), v_leak=np.zeros(4), w_in=np.ones(4))),
    "conv": lambda rng: _conv(rng),
    "st2chip rnn export": lambda rng: _rnn_export(),
}


def _spikes(graph: nir.NIRGraph, samples: int = 6, steps: int = 24, seed: int = 1) -> np.ndarray:
    n = sum(int(np.prod(node.input_type["input"])) for node in graph.nodes.values() if isinstance(node, nir.Input))
    return (np.random.default_rng(seed).random((samples, steps, n)) < 0.3).astype(np.uint8)


def _module_traces(module: GraphModule, x: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Spikes ``(B, T, n)`` of every spiking node and the scores, from the module."""
    with torch.no_grad():
        values = module.run(module.encode(torch.from_numpy(x)))
        scores = module.scores(values).numpy()
    spikes = {name: values[name].permute(1, 0, 2).numpy().astype(np.uint8) for name, m in module.neurons().items()
              if m.spiking}
    return spikes, scores


@pytest.mark.parametrize("kind", list(GRAPHS))
def test_forward_equals_simulate_spike_for_spike(kind):
    graph = GRAPHS[kind](np.random.default_rng(0))
    x = _spikes(graph)
    expected = simulate(graph, x)
    spikes, scores = _module_traces(GraphModule(graph, dtype=torch.float64), x)
    assert set(spikes) == set(expected.spikes)
    for layer, s in expected.spikes.items():
        assert 0.02 < s.mean() < 0.98, layer  # every layer spikes, and not always: the comparison means something
        np.testing.assert_array_equal(spikes[layer], s, err_msg=layer)
    np.testing.assert_array_equal(scores, expected.scores)


@pytest.mark.parametrize("kind", ["feed-forward", "recurrent cubalif, li readout"])
def test_float32_forward_equals_the_interpreter_in_float32(kind):
    graph = GRAPHS[kind](np.random.default_rng(2))
    x = _spikes(graph)
    module = GraphModule(graph)  # float32, the dtype it trains in
    with torch.no_grad():
        values = module.run(module.encode(torch.from_numpy(x)))
    reference = run_graph(graph, {"input": torch.from_numpy(x.transpose(1, 0, 2).astype(np.float32))}, DT,
                          dtype=torch.float32).values
    for name in graph.nodes:
        assert torch.equal(values[name], reference[name]), name


@pytest.mark.parametrize("kind", ["feed-forward", "recurrent cubalif, cubali readout", "conv"])
def test_surrogate_gradients_reach_weights_biases_and_decays(kind):
    graph = GRAPHS[kind](np.random.default_rng(0))
    module = GraphModule(graph)
    scores = module(module.encode(torch.from_numpy(_spikes(graph))))
    torch.nn.functional.cross_entropy(scores, torch.arange(len(scores)) % scores.shape[1]).backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    trained = {n for n, _ in module.named_parameters()}
    if kind != "conv":
        assert any(n.endswith(".decay") for n in trained)  # leaky layers train their decays; IF has none
    if kind.startswith("recurrent"):
        assert any(n.endswith(".syn_decay") for n in trained)


@pytest.mark.parametrize("kind", ["feed-forward", "recurrent cubalif, cubali readout", "conv"])
def test_to_nir_simulates_what_the_module_computes(kind):
    graph = GRAPHS[kind](np.random.default_rng(3))
    module = GraphModule(graph, dtype=torch.float64)
    with torch.no_grad():  # move every trained value away from the graph's
        for name, p in module.named_parameters():
            p.mul_(0.9 if "decay" in name else 1.1)
    x = _spikes(graph)
    spikes, scores = _module_traces(module, x)
    written = normalize(module.to_nir())
    again = simulate(written, x)
    for layer, s in again.spikes.items():
        np.testing.assert_array_equal(s, spikes[layer], err_msg=layer)
    np.testing.assert_allclose(again.scores, scores, rtol=1e-9, atol=1e-9)
    assert list(written.nodes) == list(graph.nodes) and written.edges == graph.edges


def test_inputs_of_the_wrong_width_are_refused():
    module = GraphModule(_feed_forward(np.random.default_rng(0)))
    with pytest.raises(InputError, match=r"\(steps, batch, 10\)"):
        module(torch.zeros(5, 2, 9))
