"""A DSP low-rank layer U·V kept factored through a graded relay: lowering, cost model, report, engine."""

import nir
import numpy as np
import pytest

from st2chip.analysis.traffic import count_ops
from st2chip.chip.chipgraph import ChipGraph, HostProduct, InputPort, Population, Relay, SynapseGroup
from st2chip.chip.lower import lower
from st2chip.chip.placement import place
from st2chip.chip.table import format_table, layer_rows
from st2chip.errors import ChipRangeError, GraphError
from st2chip.graph.normalize import normalize
from st2chip.graph.simulate import simulate
from st2chip.targets import engine, lava


def uv_graph(n: int = 12, m: int = 10, rank: int = 2, prune: float = 0.0, skip: bool = False,
             scaled: bool = False, permuted: bool = False, residual: bool = False, seed: int = 0) -> nir.NIRGraph:
    """input -> V (rank x n) -> U (m x rank) -> LIF -> Affine -> LI; ``skip``: also input -> Affine -> LI;
    ``scaled``: a Scale node between U and the LIF; ``permuted``: a permutation (an Affine that reorders, as a
    bundle's token reshape) between the input and V; ``residual``: V also reads input -> Affine -> LIF ``lif0``
    (NIR adds its two inputs: a residual sum into the DSP layer)."""
    rng = np.random.default_rng(seed)
    v, u = rng.normal(size=(rank, n)) * 1.5, rng.normal(size=(m, rank)) * 1.5
    v[rng.random(v.shape) < prune] = 0
    u[rng.random(u.shape) < prune] = 0
    nodes = {"input": nir.Input(input_type={"input": np.array([n])}),
             "fc1.V": nir.Affine(weight=v, bias=np.zeros(rank)),
             "fc1.U": nir.Affine(weight=u, bias=rng.normal(size=m) * 0.1),
             "lif1": nir.LIF(tau=np.full(m, 0.005), r=np.ones(m), v_leak=np.zeros(m),
                             v_threshold=rng.uniform(0.5, 1.5, m), v_reset=np.zeros(m)),
             "fc2": nir.Affine(weight=rng.normal(size=(3, m)), bias=np.zeros(3)),
             "li": nir.LI(tau=np.full(3, 0.01), r=np.ones(3), v_leak=np.zeros(3)),
             "output": nir.Output(output_type={"output": np.array([3])})}
    edges = [("input", "fc1.V"), ("fc1.V", "fc1.U"), ("fc1.U", "lif1"), ("lif1", "fc2"), ("fc2", "li"),
             ("li", "output")]
    if scaled:
        nodes["fc1.S"] = nir.Scale(scale=np.full(m, 2.0))
        edges = [e for e in edges if e != ("fc1.U", "lif1")] + [("fc1.U", "fc1.S"), ("fc1.S", "lif1")]
    if residual:
        nodes["pre"] = nir.Affine(weight=rng.normal(0.3, 1.0, size=(n, n)), bias=np.zeros(n))
        nodes["lif0"] = nir.LIF(tau=np.full(n, 0.005), r=np.ones(n), v_leak=np.zeros(n),
                                v_threshold=np.ones(n), v_reset=np.zeros(n))
        edges += [("input", "pre"), ("pre", "lif0"), ("lif0", "fc1.V")]
    if permuted:
        nodes["fc1.P"] = nir.Affine(weight=np.eye(n)[rng.permutation(n)], bias=np.zeros(n))
        edges = [e for e in edges if e != ("input", "fc1.V")] + [("input", "fc1.P"), ("fc1.P", "fc1.V")]
    if skip:
        nodes["skip"] = nir.Affine(weight=rng.normal(size=(3, n)) * 0.3, bias=np.zeros(3))
        edges += [("input", "skip"), ("skip", "li")]
    return normalize(nir.NIRGraph(nodes=nodes, edges=edges, type_check=False, metadata={"dt": 1e-3}))


def spikes(batch: int = 3, steps: int = 12, n: int = 12) -> np.ndarray:
    return (np.random.default_rng(1).random((batch, steps, n)) < 0.3).astype(np.uint8)


def test_factored_layer_is_relay_plus_two_groups_and_a_pipeline_step():
    chip = lower(uv_graph(skip=True), lowrank="factored")
    relay = chip.population("fc1.V")
    assert isinstance(relay, Relay) and relay.size == 2 and relay.graded
    v, u = (next(s for s in chip.synapses if s.name == name) for name in ("input->fc1.V", "fc1.V->lif1"))
    assert v.form == u.form == "factored" and v.shape == (2, 12) and u.shape == (10, 2)
    assert chip.depths() == {"fc1.V": 1, "lif1": 2, "li": 3}
    skip = next(s for s in chip.synapses if s.name == "input->li")
    assert skip.delay == 2  # one step more than the product form's, for the relay
    assert lower(uv_graph(skip=True)).depths() == {"lif1": 1, "li": 2}


def test_factored_engine_is_close_to_float_and_to_product():
    graph = uv_graph(skip=True)
    x = spikes()
    flt = simulate(graph, x)
    factored, product = lower(graph, lowrank="factored"), lower(graph, lowrank="product")
    runs = {name: engine.run(chip, {"input": x}) for name, chip in (("f", factored), ("p", product))}
    assert np.mean(runs["f"].spikes["lif1"] == flt.spikes["lif1"]) >= 0.97
    for name, chip in (("f", factored), ("p", product)):
        err = np.linalg.norm(runs[name].voltages["li"] / chip.voltage_units("li") - flt.voltages["li"])
        assert err < 0.15 * np.linalg.norm(flt.voltages["li"])  # measured: factored 5 %, product 11 %
    relay_v = runs["f"].voltages["fc1.V"]
    assert np.array_equal(runs["f"].spikes["fc1.V"], (relay_v != 0).astype(np.uint8))
    expect = (x @ (2 * next(s for s in factored.synapses if s.target == "fc1.V").dense().T))
    assert np.array_equal(relay_v, expect)  # exponent 0 here: the relay sends exactly V's integer sum


def test_report_gives_both_costs_the_choice_and_errors():
    chip = lower(uv_graph(), lowrank="factored")
    entry = chip.report["layers"]["lif1"]["lowrank"]["fc1.V"]
    assert entry["chosen"] == "factored" and entry["rank"] == 2 and entry["shape"] == [10, 12]
    assert entry["cost"]["product"]["weights"] == 120 and entry["cost"]["factored"]["weights"] == 2 * 12 + 10 * 2
    assert 0 < entry["v_error"] < 0.02 and 0 < entry["u_error"] < 0.02 and 0 < entry["product_error"] < 0.03
    assert chip.report["layers"]["lif1"]["weight_error"] >= entry["product_error"]
    rows = {r["layer"]: r for r in layer_rows(chip)}
    assert rows["fc1.V"]["kind"] == "relay" and rows["fc1.V"]["model"] == "graded"
    assert rows["lif1"]["form"] == ["factored"] and rows["lif1"]["nonzero"] == 20
    assert "relay" in format_table(chip)


def test_auto_picks_factored_for_a_low_rank_and_product_for_a_high_rank():
    low = lower(uv_graph(n=64, m=64, rank=2), lowrank="auto")
    assert low.report["layers"]["lif1"]["lowrank"]["fc1.V"]["chosen"] == "factored"
    assert any(p.graded for p in low.populations)
    high = lower(uv_graph(n=8, m=8, rank=6), lowrank="auto")
    entry = high.report["layers"]["lif1"]["lowrank"]["fc1.V"]
    assert entry["chosen"] == "product" and "product of ratios" in entry["why"]
    assert not any(p.graded for p in high.populations)


def test_pruned_zeros_stay_zeros_in_both_factors():
    graph = uv_graph(prune=0.5)
    chip = lower(graph, lowrank="factored")
    for name, node in (("input->fc1.V", "fc1.V"), ("fc1.V->lif1", "fc1.U")):
        group = next(s for s in chip.synapses if s.name == name)
        zeros = graph.nodes[node].weight == 0
        assert not group.dense()[zeros].any()
        assert group.nnz <= int((~zeros).sum())


def test_energy_counts_relay_to_target_as_macs():
    chip = lower(uv_graph(), lowrank="factored")
    counts = count_ops(chip, engine.run(chip, {"input": spikes()}), place(chip))
    kinds = {g.name: (g.source_kind, g.acs > 0, g.macs > 0) for g in counts.groups}
    assert kinds["fc1.V->lif1"] == ("analog", False, True)
    assert kinds["input->fc1.V"] == ("spike", True, False)


def test_factored_refused_where_it_cannot_be_kept():
    graph = uv_graph(scaled=True)
    with pytest.raises(GraphError, match="does not end in Affine V -> Affine U"):
        lower(graph, lowrank="factored")
    entry = lower(graph, lowrank="auto").report["layers"]["lif1"]["lowrank"]["input"]
    assert entry["chosen"] == "product"
    with pytest.raises(GraphError, match="lowrank must be one of"):
        lower(graph, lowrank="both")


def test_chipgraph_validates_relays():
    with pytest.raises(ChipRangeError, match="fixed"):
        Relay("r", "r", np.arange(2), vth=3)
    port, relay = InputPort("in", 3), Relay("r", "r", np.arange(1))
    target = Population("t", "t", np.arange(1), du=4095, dv=0, vth=10, bias_mant=0, bias_exp=0)
    into = SynapseGroup("in->r", "in", "r", np.full((1, 3), 127), 7)  # up to 3 * 254 << 7 per step
    out = SynapseGroup("r->t", "r", "t", np.full((1, 1), 127), 7)
    ChipGraph([port], [relay, target], [into, SynapseGroup("r->t", "r", "t", np.full((1, 1), 1), -8)])
    with pytest.raises(ChipRangeError, match="graded synaptic input"):
        ChipGraph([port], [relay, target], [into, out])
    delayed = SynapseGroup("r->t", "r", "t", np.full((1, 1), 1), 0, delay=1)
    with pytest.raises(ChipRangeError, match="undelayed"):
        ChipGraph([port], [relay, target], [into, delayed])


def test_a_relay_refuses_graded_values_it_cannot_bound():
    """An analog port's levels or a host product's counts into a relay would make its bound (0/1 per source) too
    small: refused, naming the group, like a feedback group."""
    relay, target = Relay("r", "r", np.arange(3)), Population("t", "t", np.arange(3), du=4095, dv=0, vth=10,
                                                             bias_mant=0, bias_exp=0, readout=True)
    out = SynapseGroup("r->t", "r", "t", np.eye(3, dtype=np.int64), 0)
    analog = SynapseGroup("x->r", "x", "r", np.eye(3, dtype=np.int64), 0)
    with pytest.raises(ChipRangeError, match="synapse group 'x->r': a relay takes"):
        ChipGraph([InputPort("x", 3, "analog", 255)], [relay, target], [analog, out])
    qkv = [Population(n, n, np.arange(3), du=4095, dv=4095, vth=1, bias_mant=0, bias_exp=0) for n in "qkv"]
    into_qkv = [SynapseGroup(f"in->{n}", "in", n, np.eye(3, dtype=np.int64), 0) for n in "qkv"]
    host = SynapseGroup("attn->r", "attn", "r", np.eye(3, dtype=np.int64), 0)
    with pytest.raises(ChipRangeError, match="synapse group 'attn->r': a relay takes"):
        ChipGraph([InputPort("in", 3)], [*qkv, relay, target], [*into_qkv, host, out],
                  hosts=[HostProduct("attn", ("q", "k", "v"), 1, 1, 3)])


def test_a_permutation_before_v_is_multiplied_into_v():
    """input -> P -> V -> U: still a relay of rank neurons, its V group is V P; the engine equals Lava on it."""
    graph = uv_graph(permuted=True, skip=True)
    chip = lower(graph, lowrank="factored")
    assert chip.population("fc1.V").size == 2
    v_group = next(s for s in chip.synapses if s.name == "input->fc1.V")
    vp = graph.nodes["fc1.V"].weight @ graph.nodes["fc1.P"].weight
    relay_scale = chip.population("fc1.V").scale
    np.testing.assert_allclose(2 * v_group.dense() * 2.0 ** v_group.exp / relay_scale, vp,
                               atol=2.0 ** v_group.exp / relay_scale)
    x = spikes()
    eng, lav = engine.run(chip, {"input": x}), lava.run(chip, {"input": x})
    for layer in eng.spikes:
        np.testing.assert_array_equal(eng.spikes[layer], lav.spikes[layer], err_msg=layer)
        np.testing.assert_array_equal(eng.voltages[layer], lav.voltages[layer], err_msg=layer)
    same = lower(uv_graph(skip=True), lowrank="factored")  # the same network without P, on permuted inputs
    perm = np.argmax(graph.nodes["fc1.P"].weight, axis=1)
    unpermuted = engine.run(same, {"input": x[:, :, perm]})
    np.testing.assert_array_equal(unpermuted.spikes["lif1"], eng.spikes["lif1"])


def test_a_residual_sum_into_v_shares_one_relay():
    """input + lif0 -> V -> U -> lif1: one relay fed by a V group from each source, the shallower one delayed
    so that both arrive in the same step; engine = Lava, and the chip follows float as the product form does."""
    graph = uv_graph(residual=True, skip=True)
    chip = lower(graph, lowrank="factored")
    [relay] = [p for p in chip.populations if p.graded]
    into = {s.source: s for s in chip.synapses if s.target == relay.name}
    assert set(into) == {"input", "lif0"} and into["input"].delay == 1 and into["lif0"].delay == 0
    entry = chip.report["layers"]["lif1"]["lowrank"]["fc1.V"]
    assert entry["chosen"] == "factored" and entry["sources"] == ["input", "lif0"] and entry["shape"] == [10, 24]
    assert entry["product_error"] < 0.03
    x = spikes()
    eng, lav = engine.run(chip, {"input": x}), lava.run(chip, {"input": x})
    for layer in eng.spikes:
        np.testing.assert_array_equal(eng.spikes[layer], lav.spikes[layer], err_msg=layer)
        np.testing.assert_array_equal(eng.voltages[layer], lav.voltages[layer], err_msg=layer)
    flt = simulate(graph, x)
    assert flt.spikes["lif1"].sum() > 0
    assert np.mean(eng.spikes["lif1"] == flt.spikes["lif1"]) >= 0.95
