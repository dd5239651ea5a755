"""Convolutions with inferred shapes, recurrent graphs and reset by subtraction: normalize and the float reading."""

import nir
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from st2chip.errors import GraphError
from st2chip.graph.normalize import normalize
from st2chip.graph.reading import back_edges
from st2chip.graph.simulate import simulate

DT = 1e-3


def _lif(n: int, beta: float = 0.9, theta: float = 1.0, **meta) -> nir.LIF:
    return nir.LIF(tau=np.full(n, DT / (1 - beta)), r=np.full(n, 1 / (1 - beta)), v_leak=np.zeros(n),
                   v_threshold=np.full(n, theta), v_reset=np.zeros(n), metadata=meta)


def _affine(rng, n_out: int, n_in: int, mean: float = 0.3) -> nir.Affine:
    return nir.Affine(weight=rng.normal(mean, 0.5, (n_out, n_in)), bias=np.zeros(n_out))


def test_conv_shapes_flow_from_the_input_and_flatten_keeps_c_order():
    rng = np.random.default_rng(0)
    conv = nir.Conv2d(input_shape=None, weight=rng.normal(size=(4, 2, 3, 3)), stride=2, padding=1, dilation=1,
                      groups=1, bias=rng.normal(size=4))
    nodes = {"in": nir.Input(input_type={"input": np.array([2, 6, 6])}), "conv": conv, "lif": _lif(4 * 3 * 3),
             "pool": nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([1, 1]), padding=np.array([0, 0])),
             "flat": nir.Flatten(input_type={"input": np.array([4, 2, 2])}), "fc": _affine(rng, 3, 16),
             "out": nir.Output(output_type={"output": np.array([3])})}
    edges = [("in", "conv"), ("conv", "lif"), ("lif", "pool"), ("pool", "flat"), ("flat", "fc"), ("fc", "out")]
    graph = normalize(nir.NIRGraph(nodes=nodes, edges=edges, metadata={"dt": DT}, type_check=False))
    assert list(graph.nodes["conv"].input_type["input"]) == [2, 6, 6]
    assert list(graph.nodes["conv"].output_type["output"]) == [4, 3, 3]
    assert list(graph.nodes["pool"].output_type["output"]) == [4, 2, 2]
    x = (rng.random((2, 5, 72)) < 0.5).astype(np.float64)
    run = simulate(graph, x)
    # the same network in torch, on (C, H, W) images: flat C-order signals give the same result
    w, b = torch.tensor(conv.weight), torch.tensor(conv.bias)
    v = torch.zeros(2, 4, 3, 3, dtype=torch.float64)
    score = torch.zeros(2, 3, dtype=torch.float64)
    for t in range(5):
        v = 0.9 * v + 0.1 * 10 * F.conv2d(torch.tensor(x[:, t]).reshape(2, 2, 6, 6), w, b, 2, 1)
        s = (v > 1).double()
        v = torch.where(s > 0, 0.0, v)
        np.testing.assert_array_equal(run.spikes["lif"][:, t], s.reshape(2, -1).numpy())
        score = F.conv2d(s, torch.ones(4, 1, 2, 2, dtype=torch.float64), None, 1, 0, 1, 4).reshape(2, -1) \
            @ torch.tensor(nodes["fc"].weight).T
    np.testing.assert_allclose(run.scores, score.numpy())


def test_conv_without_shapes_is_refused_with_the_reason():
    conv = nir.Conv2d(input_shape=None, weight=np.ones((2, 1, 3, 3)), stride=1, padding=0, dilation=1, groups=1,
                      bias=np.zeros(2))
    nodes = {"in": nir.Input(input_type={"input": np.array([16])}), "conv": conv, "lif": _lif(8),
             "out": nir.Output(output_type={"output": np.array([8])})}
    with pytest.raises(GraphError, match="cannot tell the") as info:
        normalize(nir.NIRGraph(nodes=nodes, edges=[("in", "conv"), ("conv", "lif"), ("lif", "out")],
                               metadata={"dt": DT}, type_check=False))
    assert (info.value.node, info.value.field) == ("conv", "input_shape")


def _recurrent(subtract: bool = False) -> nir.NIRGraph:
    """in -> fa -> A; A -> rec -> A (self); A -> fab -> B; B -> fba -> A (feedback); B -> fo -> out."""
    rng = np.random.default_rng(2)
    meta = {"reset": "subtract"} if subtract else {}
    nodes = {"in": nir.Input(input_type={"input": np.array([5])}), "fa": _affine(rng, 6, 5), "A": _lif(6, **meta),
             "rec": _affine(rng, 6, 6, 0.0), "fab": _affine(rng, 4, 6), "B": _lif(4, 0.8), "fba": _affine(rng, 6, 4),
             "fo": _affine(rng, 3, 4), "out": nir.Output(output_type={"output": np.array([3])})}
    edges = [("in", "fa"), ("fa", "A"), ("A", "rec"), ("rec", "A"), ("A", "fab"), ("fab", "B"), ("B", "fba"),
             ("fba", "A"), ("B", "fo"), ("fo", "out")]
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata={"dt": DT}, type_check=False)


@pytest.mark.parametrize("subtract", [False, True])
def test_recurrent_edges_read_the_step_before(subtract):
    raw = _recurrent(subtract)
    graph = normalize(raw)
    assert back_edges(graph) == {("A", "rec"), ("B", "fba")}  # the feedback, not the forward path A -> B
    x = (np.random.default_rng(3).random((3, 12, 5)) < 0.4).astype(np.float64)
    run = simulate(graph, x)
    n = raw.nodes
    mat = {k: n[k].weight for k in ("fa", "rec", "fab", "fba", "fo")}
    vA, vB = np.zeros((3, 6)), np.zeros((3, 4))
    sA, sB = np.zeros((3, 6)), np.zeros((3, 4))
    for t in range(12):
        vA = 0.9 * vA + (x[:, t] @ mat["fa"].T + sA @ mat["rec"].T + sB @ mat["fba"].T)
        sA = (vA > 1).astype(float)
        vA = vA - sA if subtract else np.where(sA > 0, 0.0, vA)
        vB = 0.8 * vB + sA @ mat["fab"].T
        sB = (vB > 1).astype(float)
        vB = np.where(sB > 0, 0.0, vB)
        np.testing.assert_array_equal(run.spikes["A"][:, t], sA)
        np.testing.assert_array_equal(run.spikes["B"][:, t], sB)
    assert run.spikes["A"].sum() > 0 and run.spikes["B"].sum() > 0


def test_a_loop_of_linear_nodes_is_refused():
    rng = np.random.default_rng(0)
    nodes = {"in": nir.Input(input_type={"input": np.array([3])}), "f": _affine(rng, 3, 3), "g": _affine(rng, 3, 3),
             "lif": _lif(3), "out": nir.Output(output_type={"output": np.array([3])})}
    edges = [("in", "f"), ("f", "g"), ("g", "f"), ("g", "lif"), ("lif", "out")]
    with pytest.raises(GraphError, match="no neuron on it"):
        normalize(nir.NIRGraph(nodes=nodes, edges=edges, metadata={"dt": DT}, type_check=False))


def test_unknown_reset_mode_is_refused():
    graph = _recurrent()
    graph.nodes["B"].metadata = {"reset": "to-rest"}
    with pytest.raises(GraphError, match="reset must be one of") as info:
        simulate(normalize(graph), np.zeros((1, 2, 5)))
    assert info.value.node == "B"


def test_forced_layers_feed_their_given_spikes_downstream_and_on_back_edges():
    """Forcing A and B with other spikes: each layer runs on the forced spikes of its sources (B on A's, A on its
    own and B's of the step before) and records what it does itself (the layer-by-layer reading of verify)."""
    raw = _recurrent()
    graph = normalize(raw)
    rng = np.random.default_rng(4)
    x = (rng.random((2, 10, 5)) < 0.4).astype(np.float64)
    fA, fB = ((rng.random((2, 10, n)) < 0.3).astype(np.uint8) for n in (6, 4))
    run = simulate(graph, x, forced={"A": fA, "B": fB})
    assert run.backend == "float (layer by layer)"
    mat = {k: raw.nodes[k].weight for k in ("fa", "rec", "fab", "fba", "fo")}
    vA, vB = np.zeros((2, 6)), np.zeros((2, 4))
    for t in range(10):
        before_a = fA[:, t - 1] if t else np.zeros((2, 6))
        before_b = fB[:, t - 1] if t else np.zeros((2, 4))
        vA = 0.9 * vA + x[:, t] @ mat["fa"].T + before_a @ mat["rec"].T + before_b @ mat["fba"].T
        sA = (vA > 1).astype(float)
        vA = np.where(sA > 0, 0.0, vA)  # a layer resets on its own spikes
        vB = 0.8 * vB + fA[:, t] @ mat["fab"].T
        sB = (vB > 1).astype(float)
        vB = np.where(sB > 0, 0.0, vB)
        np.testing.assert_array_equal(run.spikes["A"][:, t], sA)
        np.testing.assert_array_equal(run.spikes["B"][:, t], sB)
    assert not np.array_equal(run.spikes["B"], simulate(graph, x).spikes["B"])  # the forcing changed B's inputs
    np.testing.assert_allclose(run.scores, fB[:, -1] @ mat["fo"].T)  # the output reads what it is fed: forced B


def test_only_neuron_layers_can_be_forced():
    graph = normalize(_recurrent())
    with pytest.raises(GraphError, match=r"only neuron nodes can be forced, not \['fa'\]"):
        simulate(graph, np.zeros((1, 2, 5)), forced={"fa": np.zeros((1, 2, 6))})
