"""A factored low-rank layer on Lava: the relay as lava-nc's GradedVec equals the engine spike for spike."""

import nir
import numpy as np

from st2chip.chip.lower import lower
from st2chip.graph.normalize import normalize
from st2chip.targets import engine, lava


def two_path_graph() -> nir.NIRGraph:
    """input -> lif0 -> lif1 -> lif2 -> LI, and a pruned rank-2 U·V from the input into lif2: the factored
    path (depth 2 through the relay) is one step shorter than lif1's (depth 3), so V takes a delay."""
    rng = np.random.default_rng(3)
    v, u = rng.normal(size=(2, 8)) * 1.5, rng.normal(size=(6, 2)) * 1.5
    v[rng.random(v.shape) < 0.3] = 0

    def lif(n: int) -> nir.LIF:
        return nir.LIF(tau=np.full(n, 0.005), r=np.ones(n), v_leak=np.zeros(n),
                       v_threshold=rng.uniform(0.5, 1.5, n), v_reset=np.zeros(n))

    nodes = {"input": nir.Input(input_type={"input": np.array([8])}),
             "fc0": nir.Affine(weight=rng.normal(size=(5, 8)), bias=np.zeros(5)), "lif0": lif(5),
             "fc1": nir.Affine(weight=rng.normal(size=(5, 5)), bias=np.zeros(5)), "lif1": lif(5),
             "fc2": nir.Affine(weight=rng.normal(size=(6, 5)), bias=np.zeros(6)),
             "V": nir.Affine(weight=v, bias=np.zeros(2)), "U": nir.Affine(weight=u, bias=np.zeros(6)),
             "lif2": lif(6), "fc3": nir.Affine(weight=rng.normal(size=(3, 6)), bias=np.zeros(3)),
             "li": nir.LI(tau=np.full(3, 0.01), r=np.ones(3), v_leak=np.zeros(3)),
             "output": nir.Output(output_type={"output": np.array([3])})}
    edges = [("input", "fc0"), ("fc0", "lif0"), ("lif0", "fc1"), ("fc1", "lif1"), ("lif1", "fc2"), ("fc2", "lif2"), ("input", "V"), ("V", "U"),
             ("U", "lif2"), ("lif2", "fc3"), ("fc3", "li"), ("li", "output")]
    return normalize(nir.NIRGraph(nodes=nodes, edges=edges, type_check=False, metadata={"dt": 1e-3}))


def test_factored_layer_engine_equals_lava_spike_for_spike_and_voltage_for_voltage():
    chip = lower(two_path_graph(), lowrank="factored")
    v_group = next(s for s in chip.synapses if s.target == "V")
    assert v_group.delay == 1 and chip.depths()["lif2"] == 3
    x = {"input": (np.random.default_rng(1).random((2, 8, 8)) < 0.4).astype(np.uint8)}
    ref, lav = engine.run(chip, x), lava.run(chip, x)
    assert ref.spikes["V"].any() and ref.spikes["lif2"].any()
    for layer in ref.spikes:
        np.testing.assert_array_equal(ref.spikes[layer], lav.spikes[layer], err_msg=layer)
        np.testing.assert_array_equal(ref.voltages[layer], lav.voltages[layer], err_msg=layer)
    np.testing.assert_array_equal(ref.scores, lav.scores)
