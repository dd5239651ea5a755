"""Float NIR simulator against values worked out by hand."""

from __future__ import annotations

import nir
import numpy as np
import pytest

from st2chip.errors import GraphError, InputError
from st2chip.graph.normalize import normalize
from st2chip.graph.simulate import simulate

DT = 1e-3


def chain(*layers: tuple[str, nir.NIRNode], n_in: int) -> nir.NIRGraph:
    """Input -> layers... -> Output, normalized."""
    nodes = {"input": nir.Input(input_type={"input": np.array([n_in])}), **dict(layers),
             "output": nir.Output(output_type={"output": np.array([1])})}
    names = list(nodes)
    g = nir.NIRGraph(nodes=nodes, edges=list(zip(names[:-1], names[1:])), metadata={"dt": DT}, type_check=False)
    g.nodes["output"].output_type = {"output": None}  # let normalize infer it
    return normalize(g)


def one(weight: float = 1.0) -> tuple[str, nir.Affine]:
    return "fc", nir.Affine(weight=np.array([[weight]]), bias=np.zeros(1))


def lif_beta(beta: float, threshold: float, n: int) -> nir.LIF:
    """LIF whose Euler step is v <- beta v + I (tau = dt/(1-beta), r = 1/(1-beta))."""
    return nir.LIF(tau=np.full(n, DT / (1 - beta)), r=np.full(n, 1 / (1 - beta)), v_leak=np.zeros(n),
                   v_threshold=np.full(n, threshold), v_reset=np.zeros(n))


def two_lif_with_readout() -> nir.NIRGraph:
    fc1 = nir.Affine(weight=np.array([[0.6, 0.0], [0.0, 0.8]]), bias=np.array([0.0, 0.1]))
    fc2 = nir.Affine(weight=np.array([[1.0, -1.0], [0.5, 0.5]]), bias=np.zeros(2))
    return chain(("fc1", fc1), ("lif", lif_beta(0.5, 0.8, 2)), ("fc2", fc2),
                 ("readout", nir.I(r=np.full(2, 1 / DT))), n_in=2)


X = np.array([[[1, 0], [1, 1], [0, 1], [1, 1]],
              [[0, 0], [0, 0], [0, 0], [0, 0]]], dtype=np.uint8)  # (B=2, T=4, 2)


def test_two_neuron_lif_and_integrator_readout_by_hand():
    tr = simulate(two_lif_with_readout(), X)
    assert tr.backend == "float" and tr.meta == {"dt": DT, "steps": 4}
    # sample 0: I = W x + b = [.6,.1], [.6,.9], [0,.9], [.6,.9]; v <- .5 v + I; spike if v > .8, reset 0
    np.testing.assert_array_equal(tr.spikes["lif"][0], [[0, 0], [1, 1], [0, 1], [0, 1]])
    np.testing.assert_allclose(tr.voltages["lif"][0], [[0.6, 0.1], [0.0, 0.0], [0.0, 0.0], [0.6, 0.0]])
    # sample 1: only the bias 0.1 drives neuron 1: 0.1, 0.15, 0.175, 0.1875, never firing
    np.testing.assert_array_equal(tr.spikes["lif"][1], 0)
    np.testing.assert_allclose(tr.voltages["lif"][1], [[0, 0.1], [0, 0.15], [0, 0.175], [0, 0.1875]])
    # readout: v <- v + dt * (1/dt) * W2 s; W2 s = [0,0], [0,1], [-1,.5], [-1,.5]
    np.testing.assert_allclose(tr.voltages["readout"][0], [[0, 0], [0, 1], [-1, 1.5], [-2, 2]])
    np.testing.assert_allclose(tr.scores, [[-2, 2], [0, 0]])
    assert tr.spikes["lif"].dtype == np.uint8 and tr.voltages["lif"].dtype == np.float64
    assert set(tr.spikes) == {"lif"} and set(tr.voltages) == {"lif", "readout"}
    np.testing.assert_array_equal(tr.inputs["input"], X)
    np.testing.assert_array_equal(tr.predictions(), [1, 0])


def test_spiking_output_scores_are_spike_counts():
    fc = nir.Affine(weight=np.array([[0.6, 0.0], [0.0, 0.8]]), bias=np.array([0.0, 0.1]))
    tr = simulate(chain(("fc", fc), ("lif", lif_beta(0.5, 0.8, 2)), n_in=2), X)
    np.testing.assert_array_equal(tr.scores, [[1, 3], [0, 0]])


def test_cubalif_by_hand():
    # dt/tau_syn = dt/tau_mem = 0.5, w_in = 2, r = 1: i = 1, 1.5, 1.75; v = 0.5, 1.0 (not > 1), 1.375 -> spike
    cuba = nir.CubaLIF(tau_syn=np.array([2 * DT]), tau_mem=np.array([2 * DT]), r=np.array([1.0]),
                       v_leak=np.array([0.0]), v_threshold=np.array([1.0]), v_reset=np.array([0.0]),
                       w_in=np.array([2.0]))
    tr = simulate(chain(one(), ("cuba", cuba), n_in=1), np.ones((1, 3, 1)))
    np.testing.assert_allclose(tr.voltages["cuba"][0, :, 0], [0.5, 1.0, 0.0])
    np.testing.assert_array_equal(tr.spikes["cuba"][0, :, 0], [0, 0, 1])


def test_if_strict_threshold_and_reset_value():
    # v <- v + dt r I with dt r = 0.5: 0.5, 1.0 (not > 1), 1.5 -> spike, reset to -0.25, then 0.25
    node = nir.IF(r=np.array([0.5 / DT]), v_threshold=np.array([1.0]), v_reset=np.array([-0.25]))
    tr = simulate(chain(one(), ("if", node), n_in=1), np.ones((1, 4, 1)))
    np.testing.assert_allclose(tr.voltages["if"][0, :, 0], [0.5, 1.0, -0.25, 0.25])
    np.testing.assert_array_equal(tr.spikes["if"][0, :, 0], [0, 0, 1, 0])
    np.testing.assert_array_equal(tr.scores, [[1]])


def test_li_leaks_towards_v_leak():
    # dt/tau = 0.5, v_leak = 1, no input: v = 0.5, 0.75, 0.875; LI does not spike
    node = nir.LI(tau=np.array([2 * DT]), r=np.array([1.0]), v_leak=np.array([1.0]))
    tr = simulate(chain(one(), ("li", node), n_in=1), np.zeros((1, 3, 1)))
    np.testing.assert_allclose(tr.voltages["li"][0, :, 0], [0.5, 0.75, 0.875])
    assert tr.spikes == {}
    np.testing.assert_allclose(tr.scores, [[0.875]])


def test_fan_in_adds_up():
    nodes = {"in": nir.Input(input_type={"input": np.array([1])}),
             "a": nir.Affine(weight=np.array([[1.0]]), bias=np.zeros(1)),
             "b": nir.Affine(weight=np.array([[2.0]]), bias=np.zeros(1)),
             "acc": nir.I(r=np.array([1 / DT])), "out": nir.Output(output_type={"output": np.array([1])})}
    edges = [("in", "a"), ("in", "b"), ("a", "acc"), ("b", "acc"), ("acc", "out")]
    g = normalize(nir.NIRGraph(nodes=nodes, edges=edges, metadata={"dt": DT}, type_check=False))
    tr = simulate(g, np.array([[[1.0], [0.5]]]))
    np.testing.assert_allclose(tr.voltages["acc"][0, :, 0], [3.0, 4.5])


def test_batch_is_independent_and_record_false_keeps_scores():
    g = two_lif_with_readout()
    rng = np.random.default_rng(1)
    x = (rng.random((5, 12, 2)) < 0.5).astype(np.uint8)
    full = simulate(g, x)
    for b in range(5):
        alone = simulate(g, x[b:b + 1])
        np.testing.assert_array_equal(alone.spikes["lif"][0], full.spikes["lif"][b])
        np.testing.assert_allclose(alone.scores[0], full.scores[b])
    quiet = simulate(g, x, record=False)
    assert quiet.spikes == {} and quiet.voltages == {}
    np.testing.assert_array_equal(quiet.scores, full.scores)


def test_round_trip_through_file_simulates_the_same(tmp_path):
    g = two_lif_with_readout()
    nir.write(tmp_path / "m.nir", g)
    np.testing.assert_array_equal(simulate(normalize(tmp_path / "m.nir"), X).scores, simulate(g, X).scores)


@pytest.mark.parametrize("shape", [(2, 4), (2, 4, 3), (0, 4, 2), (2, 0, 2)])
def test_wrong_input_shape_is_an_input_error(shape):
    with pytest.raises(InputError, match=r"inputs must have shape \(batch >= 1, steps >= 1, 2\)"):
        simulate(two_lif_with_readout(), np.zeros(shape))


def test_non_canonical_graph_is_refused():
    g = two_lif_with_readout()
    g.nodes["fc1"] = nir.Linear(weight=np.ones((2, 2)))
    with pytest.raises(GraphError, match=r"'fc1' \(Linear\).*run normalize first"):
        simulate(g, X)
