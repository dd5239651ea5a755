"""Several inputs into one neuron layer: equal depths, Scale nodes, unequal depths aligned with synaptic delays."""

import nir
import numpy as np
import pytest

from st2chip.analysis.verify import compare
from st2chip.chip.lower import lower
from st2chip.errors import GraphError
from st2chip.graph.normalize import normalize
from st2chip.graph.simulate import simulate
from st2chip.targets import engine, lava

DT = 1e-3


def _lif(n: int, seed: int) -> nir.LIF:
    rng = np.random.default_rng(seed)
    beta = rng.uniform(0.6, 0.95, n)
    return nir.LIF(tau=DT / (1 - beta), r=1 / (1 - beta), v_leak=np.zeros(n), v_threshold=rng.uniform(0.5, 1.5, n),
                   v_reset=np.zeros(n))


def _affine(rng, n_out: int, n_in: int) -> nir.Affine:
    return nir.Affine(weight=rng.normal(0.4, 0.5, (n_out, n_in)), bias=rng.normal(0, 0.05, n_out))


def _float_and_chip(graph, chip, x):
    """Float traces and engine traces, after checking the engine against Lava spike for spike and volt for volt."""
    eng, lav = engine.run(chip, x), lava.run(chip, x)
    for layer in eng.spikes:
        np.testing.assert_array_equal(eng.spikes[layer], lav.spikes[layer])
        np.testing.assert_array_equal(eng.voltages[layer], lav.voltages[layer])
    return simulate(graph, x["input"]), eng


def _diamond() -> nir.NIRGraph:
    """input -> A, input -> B; A and B (same depth) -> C by two paths each kind: Affine, and Scale -> Affine."""
    rng = np.random.default_rng(0)
    nodes = {"input": nir.Input(input_type={"input": np.array([10])}),
             "fa": _affine(rng, 8, 10), "A": _lif(8, 1),
             "fb1": _affine(rng, 6, 10), "fb2": _affine(rng, 6, 10), "B": _lif(6, 2),
             "fac": _affine(rng, 5, 8), "sb": nir.Scale(scale=rng.uniform(0.5, 1.5, 6)), "fbc": _affine(rng, 5, 6),
             "C": _lif(5, 3), "output": nir.Output(output_type={"output": np.array([5])})}
    edges = [("input", "fa"), ("fa", "A"), ("input", "fb1"), ("input", "fb2"), ("fb1", "B"), ("fb2", "B"),
             ("A", "fac"), ("fac", "C"), ("B", "sb"), ("sb", "fbc"), ("fbc", "C"), ("C", "output")]
    return normalize(nir.NIRGraph(nodes=nodes, edges=edges, metadata={"dt": DT}, type_check=False))


def test_equal_depth_paths_map_and_engine_equals_lava():
    graph = _diamond()
    chip = lower(graph, decay_groups=2)
    assert chip.report["layers"]["C"]["source"] == ["A", "B"]
    assert {s.source.split("/")[0] for s in chip.synapses if s.target.startswith("C")} == {"A", "B"}
    x = {"input": (np.random.default_rng(4).random((3, 25, 10)) < 0.3).astype(np.uint8)}
    flt, eng = _float_and_chip(graph, chip, x)
    assert flt.spikes["C"].sum() > 0
    assert min(compare(flt, eng, voltages=False).spike_agreement.values()) > 0.97


def test_paths_of_different_depth_are_aligned_with_delays():
    """input -> L1 -> L2 plus a skip input -> L2 (and input -> L3 skipping two layers): the skips are delayed."""
    rng = np.random.default_rng(0)
    nodes = {"input": nir.Input(input_type={"input": np.array([6])}), "f1": _affine(rng, 5, 6), "L1": _lif(5, 1),
             "f2": _affine(rng, 4, 5), "skip": _affine(rng, 4, 6), "L2": _lif(4, 2),
             "f3": _affine(rng, 3, 4), "skip2": _affine(rng, 3, 6), "L3": _lif(3, 3),
             "output": nir.Output(output_type={"output": np.array([3])})}
    edges = [("input", "f1"), ("f1", "L1"), ("L1", "f2"), ("f2", "L2"), ("input", "skip"), ("skip", "L2"),
             ("L2", "f3"), ("f3", "L3"), ("input", "skip2"), ("skip2", "L3"), ("L3", "output")]
    graph = normalize(nir.NIRGraph(nodes=nodes, edges=edges, metadata={"dt": DT}, type_check=False))
    chip = lower(graph, decay_groups=2)
    assert chip.report["layers"]["L2"]["delays"] == {"input": 1}
    assert chip.report["layers"]["L3"]["delays"] == {"input": 2}
    assert chip.depth == 3
    x = {"input": (np.random.default_rng(5).random((3, 25, 6)) < 0.3).astype(np.uint8)}
    flt, eng = _float_and_chip(graph, chip, x)
    assert flt.spikes["L3"].sum() > 0
    assert min(compare(flt, eng, voltages=False).spike_agreement.values()) > 0.97


def test_a_delay_beyond_the_chip_is_refused():
    rng = np.random.default_rng(0)
    nodes = {"input": nir.Input(input_type={"input": np.array([2])})}
    edges, prev = [], "input"
    for k in range(64):  # a chain 64 layers deep plus a skip from the input to its end
        nodes[f"f{k}"], nodes[f"L{k}"] = _affine(rng, 2, 2), _lif(2, k)
        edges += [(prev, f"f{k}"), (f"f{k}", f"L{k}")]
        prev = f"L{k}"
    nodes["skip"] = _affine(rng, 2, 2)
    nodes["output"] = nir.Output(output_type={"output": np.array([2])})
    edges += [("input", "skip"), ("skip", "L63"), ("L63", "output")]
    graph = normalize(nir.NIRGraph(nodes=nodes, edges=edges, metadata={"dt": DT}, type_check=False))
    with pytest.raises(GraphError, match=r"node 'L63'.*needs a delay of 63 steps; synapses delay at most 61"):
        lower(graph)


def test_nir_delay_nodes_lower_to_synaptic_delays():
    """input -> Delay(3 steps) -> Affine -> L, plus input -> Affine -> L: the delayed path lags by 3 steps."""
    rng = np.random.default_rng(1)
    nodes = {"input": nir.Input(input_type={"input": np.array([6])}), "d": nir.Delay(delay=np.full(6, 3 * DT)),
             "fd": _affine(rng, 4, 6), "f": _affine(rng, 4, 6), "L": _lif(4, 1), "f2": _affine(rng, 3, 4),
             "M": _lif(3, 2), "output": nir.Output(output_type={"output": np.array([3])})}
    edges = [("input", "d"), ("d", "fd"), ("fd", "L"), ("input", "f"), ("f", "L"), ("L", "f2"), ("f2", "M"),
             ("M", "output")]
    graph = normalize(nir.NIRGraph(nodes=nodes, edges=edges, metadata={"dt": DT}, type_check=False))
    chip = lower(graph)
    delayed = [s for s in chip.synapses if s.lag]
    assert [(s.delay, s.lag) for s in delayed] == [(3, 3)] and chip.depth == 2  # the lag does not deepen the pipeline
    x = {"input": (np.random.default_rng(2).random((3, 20, 6)) < 0.3).astype(np.uint8)}
    flt, eng = _float_and_chip(graph, chip, x)
    agreement = compare(flt, eng, voltages=False).spike_agreement
    assert agreement["L"] > 0.97 and agreement["M"] > 0.9  # M: 3 neurons, where every L difference shows
    no_delay = normalize(nir.NIRGraph(nodes={**nodes, "d": nir.Delay(delay=np.zeros(6))}, edges=edges,
                                      metadata={"dt": DT}, type_check=False))
    assert not np.array_equal(simulate(no_delay, x["input"]).spikes["L"], flt.spikes["L"])  # the delay matters


def test_a_delay_that_is_not_whole_steps_is_refused():
    graph = normalize(nir.NIRGraph(nodes={
        "input": nir.Input(input_type={"input": np.array([2])}), "d": nir.Delay(delay=np.full(2, 1.5 * DT)),
        "f": nir.Affine(weight=np.ones((2, 2)), bias=np.zeros(2)), "L": _lif(2, 0),
        "output": nir.Output(output_type={"output": np.array([2])})},
        edges=[("input", "d"), ("d", "f"), ("f", "L"), ("L", "output")], metadata={"dt": DT}, type_check=False))
    with pytest.raises(GraphError, match=r"node 'd', field 'delay'.*whole multiples of dt"):
        lower(graph)


def test_a_delay_after_a_neuron_layer_lowers_and_the_source_is_silenced_between_samples():
    """L -> Delay(2) -> g -> M next to L -> h -> M: two groups from L, one 2 steps later; on Lava, L is silent in the
    last 2 steps of each sample's window so that none of its delayed spikes reaches the next sample."""
    rng = np.random.default_rng(3)
    nodes = {"input": nir.Input(input_type={"input": np.array([5])}), "f": _affine(rng, 6, 5), "L": _lif(6, 0),
             "d": nir.Delay(delay=np.full(6, 2 * DT)), "g": _affine(rng, 4, 6), "h": _affine(rng, 4, 6),
             "M": _lif(4, 1), "output": nir.Output(output_type={"output": np.array([4])})}
    edges = [("input", "f"), ("f", "L"), ("L", "d"), ("d", "g"), ("g", "M"), ("L", "h"), ("h", "M"),
             ("M", "output")]
    graph = normalize(nir.NIRGraph(nodes=nodes, edges=edges, metadata={"dt": DT}, type_check=False))
    chip = lower(graph, decay_groups=6)
    assert sorted({(s.delay, s.lag) for s in chip.synapses if s.target.startswith("M")}) == [(0, 0), (2, 2)]
    assert set(chip.quiet_steps().values()) == {2} and all(p.startswith("L") for p in chip.quiet_steps())
    x = {"input": (np.random.default_rng(4).random((4, 15, 5)) < 0.4).astype(np.uint8)}
    flt, eng = _float_and_chip(graph, chip, x)
    assert min(compare(flt, eng, voltages=False).spike_agreement.values()) > 0.97
