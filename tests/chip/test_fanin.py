"""Fan-in trees (pass ``fanin``): incoming synapses over a core's limits split into graded partial sums on
relays; the chip's outputs are, bit for bit, those of the unsplit lowering, on the engine and on Lava."""

import json
import warnings

import nir
import numpy as np
import pytest
import scipy.sparse as sp

from st2chip.chip.chipgraph import ChipGraph, InputPort, Population, Relay, SynapseGroup
from st2chip.chip.lower import lower
from st2chip.chip.lowering.plan import FeedbackLatencyWarning
from st2chip.chip.placement import PlacementError, load_resources, place, row_costs
from st2chip.cli.main import main
from st2chip.errors import ChipRangeError, GraphError
from st2chip.graph.nirfile import write_nir
from st2chip.graph.normalize import normalize
from st2chip.targets import engine, lava

AXONS = 4  # a core that takes 4 input axons: fan-ins of 8 and 40 need trees, of 40 two levels


def _lif(n: int, rng: np.random.Generator) -> nir.LIF:
    return nir.LIF(tau=np.full(n, 0.005), r=np.ones(n), v_leak=np.zeros(n), v_threshold=rng.uniform(0.5, 1.5, n),
                   v_reset=np.zeros(n))


def skip_graph(n: int = 40, hidden: int = 8, out: int = 3) -> nir.NIRGraph:
    """input (n) -> fc1 -> lif1 (hidden) -> fc2 -> li (out), and input -> skip -> li (NIR adds both)."""
    rng = np.random.default_rng(0)
    nodes = {"input": nir.Input(input_type={"input": np.array([n])}),
             "fc1": nir.Affine(weight=rng.normal(0.1, 0.5, (hidden, n)), bias=np.zeros(hidden)),
             "lif1": _lif(hidden, rng),
             "fc2": nir.Affine(weight=rng.normal(size=(out, hidden)), bias=np.zeros(out)),
             "skip": nir.Affine(weight=rng.normal(size=(out, n)) * 0.3, bias=np.zeros(out)),
             "li": nir.LI(tau=np.full(out, 0.01), r=np.ones(out), v_leak=np.zeros(out)),
             "output": nir.Output(output_type={"output": np.array([out])})}
    edges = [("input", "fc1"), ("fc1", "lif1"), ("lif1", "fc2"), ("fc2", "li"), ("input", "skip"), ("skip", "li"),
             ("li", "output")]
    return normalize(nir.NIRGraph(nodes=nodes, edges=edges, type_check=False, metadata={"dt": 1e-3}))


@pytest.fixture(scope="module")
def small():
    """A resource model whose cores take :data:`AXONS` input axons."""
    return load_resources("loihi2").replace(axons_in_per_core=AXONS)


@pytest.fixture(scope="module")
def chips(small):
    """The skip graph lowered without fan-in trees and with them (against ``small``)."""
    graph = skip_graph()
    return lower(graph, resources=None), lower(graph, resources=small)


def _spikes(batch: int = 4, steps: int = 10, n: int = 40) -> np.ndarray:
    return (np.random.default_rng(1).random((batch, steps, n)) < 0.3).astype(np.uint8)


def _same(a, b, layers) -> bool:
    return all(np.array_equal(a.spikes[k], b.spikes[k]) and np.array_equal(a.voltages[k], b.voltages[k])
               for k in layers)


def test_placement_refuses_the_unsplit_layers_and_places_the_split_ones(chips, small):
    plain, split = chips
    with pytest.raises(PlacementError, match="layer 'lif1': fan-in 40 axons > 4 per core; layer 'li': fan-in 48"):
        place(plain, small)
    placement = place(split, small)
    assert max(c.fan_in for c in placement.cores) <= AXONS


def test_every_neuron_fits_a_core_and_the_trees_recurse_where_relays_exceed_it(chips, small):
    _, split = chips
    for pop in split.populations:
        fan_in = sum(row_costs(g, small)[0] for g in split.incoming(pop.name))
        assert fan_in.max() <= AXONS, pop.name
    # 40 inputs in blocks of 4: 10 relays per neuron, more than a core takes: a second level of 3
    assert [p.name for p in split.populations if not p.graded] == ["lif1", "li"]
    relays = [p for p in split.populations if isinstance(p, Relay)]
    assert [(r.name, r.size) for r in relays[:2]] == [("input->lif1/fanin1", 80), ("input->lif1/fanin2", 24)]
    groups = {g.name: g for g in split.synapses}
    assert groups["input->lif1/fanin1->input->lif1/fanin2"].form == "fanin"
    assert groups["input->lif1"].target == "input->lif1/fanin1" and groups["input->lif1"].exp == -1


def test_the_final_sums_keep_the_split_groups_exponents(chips):
    plain, split = chips
    final = {g.target: g for g in split.synapses if g.form == "fanin" and g.target in ("lif1", "li")
             and g.source.startswith("input")}
    unsplit = {g.target: g for g in plain.synapses if g.source == "input"}
    assert {t: g.exp for t, g in final.items()} == {t: g.exp for t, g in unsplit.items()}
    assert min(g.exp for g in final.values()) < 0  # Lava's floor: one shift of the whole sum, as unsplit


def test_engine_outputs_are_bit_for_bit_those_of_the_unsplit_chip(chips):
    plain, split = chips
    x = {"input": _spikes()}
    a, b = engine.run(plain, x), engine.run(split, x)
    assert _same(a, b, ["lif1", "li"]) and np.array_equal(a.scores, b.scores)
    assert a.spikes["lif1"].sum() > 0


def test_each_level_is_a_step_and_the_other_paths_wait_for_it(chips):
    plain, split = chips
    assert plain.depths()["li"] == 2 and split.depths()["li"] == 5  # lif1 two levels late, li's input three
    skip = next(g for g in split.synapses if g.name == "input->li")  # into the skip tree's first level
    assert split.depths()["input->li/fanin1"] == 2 and skip.delay == 1
    assert split.layer_report("li").delays == {"input": 1}


def test_engine_equals_lava_on_trees_of_two_and_three_levels(chips):
    _, split = chips
    x = {"input": _spikes(batch=2, steps=8)}
    ours, theirs = engine.run(split, x), lava.run(split, x)
    assert _same(ours, theirs, split.layers())


def test_the_layer_report_gives_the_trees_and_their_cost(chips):
    _, split = chips
    entry = split.report["layers"]["lif1"]["fanin"]
    assert entry["limits"]["axons"] == AXONS and entry["fan_in"] == {"before": 40, "after": 3}
    assert entry["levels"] == {"input->lif1": 2} and entry["latency_steps"] == 2
    assert entry["relays"] == {"input->lif1/fanin1": 80, "input->lif1/fanin2": 24} and entry["relay_neurons"] == 104
    assert entry["cores_at_least"] >= 80 * 5 // AXONS // 5 and 0 < entry["macs_per_step"] <= 104
    assert "fanin" not in split.report["layers"]["li"] or split.report["layers"]["li"]["fanin"]["latency_steps"] == 3


def test_a_graph_that_fits_gets_no_tree():
    graph = skip_graph()
    assert [p.name for p in lower(graph).populations] == [p.name for p in lower(graph, resources=None).populations]


def test_a_tree_that_would_lengthen_feedback_is_refused(small):
    """lif0 -> lif1 (a tree) -> back to lif0: the feedback would take the tree's steps more."""
    rng = np.random.default_rng(0)
    nodes = {"input": nir.Input(input_type={"input": np.array([3])}),
             "fc0": nir.Affine(weight=rng.normal(1, 0.3, (12, 3)), bias=np.zeros(12)), "lif0": _lif(12, rng),
             "fc1": nir.Affine(weight=rng.normal(size=(2, 12)), bias=np.zeros(2)), "lif1": _lif(2, rng),
             "back": nir.Affine(weight=rng.normal(size=(12, 2)), bias=np.zeros(12)),
             "output": nir.Output(output_type={"output": np.array([2])})}
    edges = [("input", "fc0"), ("fc0", "lif0"), ("lif0", "fc1"), ("fc1", "lif1"), ("lif1", "back"), ("back", "lif0"),
             ("lif1", "output")]
    graph = normalize(nir.NIRGraph(nodes=nodes, edges=edges, type_check=False, metadata={"dt": 1e-3}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FeedbackLatencyWarning)
        with pytest.raises(GraphError, match="latency of the feedback from 'lif1' from 2 to 3 steps"):
            lower(graph, resources=small)


def test_a_relay_may_sum_relays_listed_before_it_only():
    ones = sp.csr_matrix(np.ones((1, 2), np.int64))
    pops = [Relay("r1", "r1", np.arange(2)), Relay("r2", "r2", np.arange(1)),
            Population("out", "out", np.arange(1), du=0, dv=0, vth=10, bias_mant=0, bias_exp=0)]
    groups = [SynapseGroup("in->r1", "in", "r1", np.eye(2, dtype=np.int64) * 3, -1),
              SynapseGroup("r1->r2", "r1", "r2", ones, -1, "fanin"),
              SynapseGroup("r2->out", "r2", "out", np.ones((1, 1), np.int64), 0, "fanin")]
    chip = ChipGraph([InputPort("in", 2)], pops, groups)
    assert {k: v.tolist() for k, v in chip.relay_bounds().items()} == {"r1": [3, 3], "r2": [6]}
    with pytest.raises(ChipRangeError, match="relay 'r2': field 'populations' lists relay 'r1'"):
        ChipGraph([InputPort("in", 2)], [pops[1], pops[0], pops[2]], groups)


def test_map_places_a_readout_over_4096_axons_and_marks_its_tree(tmp_path, capsys):
    """A readout of 5,000 inputs: Loihi 2's default cores take 4,096 axons; it used to be refused (exit 2)."""
    rng = np.random.default_rng(0)
    nodes = {"input": nir.Input(input_type={"input": np.array([5000])}),
             "fc": nir.Affine(weight=rng.normal(size=(2, 5000)), bias=np.zeros(2)),
             "li": nir.LI(tau=np.full(2, 0.01), r=np.ones(2), v_leak=np.zeros(2)),
             "output": nir.Output(output_type={"output": np.array([2])})}
    graph = nir.NIRGraph(nodes=nodes, edges=[("input", "fc"), ("fc", "li"), ("li", "output")], type_check=False,
                         metadata={"dt": 1e-3})
    model = write_nir(graph, tmp_path / "wide.nir")
    assert main(["map", str(model), "--report", str(tmp_path / "report")]) == 0
    out = capsys.readouterr().out
    assert "input->li/fanin1" in out
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    entry = data["lowering"]["layers"]["li"]["fanin"]
    assert entry["fan_in"] == {"before": 5000, "after": 2} and entry["latency_steps"] == 1
    assert entry["relays"] == {"input->li/fanin1": 4}
