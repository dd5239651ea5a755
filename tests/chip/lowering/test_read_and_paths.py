"""Passes ``read`` and ``paths`` alone on tiny graphs."""

import nir
import numpy as np
import pytest

from st2chip.chip.lowering.paths import paths
from st2chip.chip.lower import start
from st2chip.chip.lowering.plan import Options, PathKey
from st2chip.chip.lowering.read import read
from st2chip.errors import GraphError


def test_read_makes_ports_and_float_layers(tiny):
    graph = tiny.chain([np.ones((3, 2))], [tiny.lif([1.0, 2.0, 0.5], tau=0.004)])
    graph.nodes["input"].metadata = {"levels": 255}
    plan = read(tiny.before(graph, "read"))
    assert [(p.name, p.kind, p.levels) for p in plan.inputs] == [("input", "analog", 255)]
    [layer] = plan.layers
    assert layer.name == "n1" and layer.incoming is None  # later passes fill the rest
    np.testing.assert_allclose(layer.neuron.beta, 1 - 1e-3 / 0.004)
    np.testing.assert_allclose(layer.neuron.threshold, [1.0, 2.0, 0.5])


def test_read_refuses_a_node_the_chip_cannot_run(tiny):
    graph = tiny.chain([np.ones((2, 2))], [tiny.lif([1.0, 1.0])], extra_nodes={"thr": nir.Threshold(np.ones(2))})
    graph.edges = [e for e in graph.edges if e != ("n1", "output")] + [("n1", "thr"), ("thr", "output")]
    with pytest.raises(GraphError, match="node 'thr'.*cannot lower node type Threshold"):
        read(start(graph, Options()))  # as it comes, not normalized


def test_paths_multiply_a_chain_out_and_key_it_by_source_lag_and_recurrence(tiny):
    w1, w2 = np.arange(6.0).reshape(3, 2), np.ones((2, 3))
    graph = tiny.chain([w1, w2], [tiny.lif([1.0] * 3), tiny.lif([1.0] * 2)],
                       extra_nodes={"rec": nir.Affine(weight=np.eye(2), bias=np.zeros(2))},
                       extra_edges=[("n2", "rec"), ("rec", "n2")])
    plan = paths(tiny.before(graph, "paths"))
    first, second = (layer.incoming for layer in plan.layers)
    assert first.keys == [PathKey("input", 0, False)] and first.widths == [2] and first.chains == ["Affine"]
    np.testing.assert_array_equal(first.weight.toarray(), w1)
    assert second.keys == [PathKey("n1", 0, False), PathKey("n2", 0, True)] and second.widths == [3, 2]
    np.testing.assert_array_equal(second.weight.toarray(), np.hstack([w2, np.eye(2)]))


def test_paths_note_low_rank_factors(tiny):
    v, u = np.array([[1.0, 2.0, 0.0]]), np.array([[1.0], [3.0]])
    graph = tiny.chain([u @ v], [tiny.lif([1.0, 1.0])])
    graph.nodes["fc1"] = nir.Affine(weight=u, bias=np.zeros(2))
    graph.nodes["V"] = nir.Affine(weight=v, bias=np.zeros(1))
    graph.edges = [("input", "V"), ("V", "fc1")] + [e for e in graph.edges if e != ("input", "fc1")]
    [layer] = paths(tiny.before(graph, "paths")).layers
    found = layer.incoming.lowrank[PathKey("input", 0, False)]
    assert found.relay == "V" and layer.incoming.affines == 2
    np.testing.assert_array_equal(found.u.toarray(), u)
    np.testing.assert_array_equal(found.v.toarray(), v)
