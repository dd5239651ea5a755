"""Passes ``lowrank``, ``depths`` and ``synapses`` alone on tiny graphs, and the pass list itself."""

import numpy as np
import pytest
import scipy.sparse as sp

from st2chip.analysis.energy import load_profile
from st2chip.chip.chipgraph import Relay
from st2chip.chip.lower import PASSES
from st2chip.chip.lowering import lowrank as lowrank_pass
from st2chip.chip.lowering.depths import depths
from st2chip.chip.lowering.plan import PathKey
from st2chip.chip.lowering.synapses import synapses
from st2chip.errors import GraphError

def test_the_passes_run_in_this_order():
    assert [name for name, _ in PASSES] == ["read", "paths", "fold", "decays", "populations", "lowrank", "depths",
                                             "synapses", "precision", "current_bias", "fanin"]


def test_lowrank_keeps_a_factored_path_through_a_relay(tiny):
    [layer] = lowrank_pass.lowrank(tiny.before(tiny.uv(), "lowrank", lowrank="factored")).layers
    [relay] = layer.lowrank.relays
    assert isinstance(relay, Relay) and relay.name == "V" and relay.size == 2
    groups = layer.lowrank.factored[PathKey("input", 0, False)]
    assert sorted(g.name for g in groups) == ["V->n1", "input->V"]
    choice = layer.lowrank.choices["V"]
    assert choice.chosen == "factored" and choice.rank == 2 and choice.factored.product_error < 0.05


def test_lowrank_product_keeps_no_relay_and_says_why(tiny):
    [layer] = lowrank_pass.lowrank(tiny.before(tiny.uv(), "lowrank", lowrank="product")).layers
    assert layer.lowrank.relays == [] and layer.lowrank.factored == {}
    assert layer.lowrank.choices["V"].to_dict()["why"] == "lowrank=product"


def test_lowrank_factored_refuses_a_recurrent_low_rank_path(tiny):
    graph = tiny.uv()
    graph.edges = [e for e in graph.edges if e != ("input", "V")] + [("n1", "V")]
    with pytest.raises(GraphError, match="node 'n1'.*cannot be kept factored: a recurrent path"):
        lowrank_pass.lowrank(tiny.before(graph, "lowrank", lowrank="factored"))


def test_the_cost_model_prices_a_mac_from_the_45nm_profile():
    profile = load_profile("45nm")
    assert lowrank_pass.MAC_PER_AC == profile.e_mac_pj / profile.e_ac_pj
    cost = lowrank_pass.costs(sp.csr_matrix(np.ones((30, 2))), sp.csr_matrix(np.ones((2, 30))), 900)
    assert cost.factored_ops == cost.acs + lowrank_pass.MAC_PER_AC * cost.macs


def test_depths_count_a_relay_as_one_more_step(tiny):
    graph = tiny.chain([np.ones((3, 30)), np.ones((2, 3))], [tiny.lif(np.ones(3)), tiny.li(2)])
    plan = depths(tiny.before(graph, "depths"))
    assert plan.depth == {"input": 0, "n1": 1, "n2": 2}
    factored = depths(tiny.before(tiny.uv(), "depths", lowrank="factored"))
    assert factored.depth == {"input": 0, "x2": 0, "n1": 2}


def test_synapses_delay_the_shorter_path_and_name_each_group(tiny):
    plan = synapses(tiny.before(tiny.uv(), "synapses", lowrank="factored"))
    [layer] = plan.layers
    by_name = {g.name: g for g in layer.synapses.groups}
    assert set(by_name) == {"x2->n1", "input->V", "V->n1"}
    assert by_name["x2->n1"].delay == 1 and by_name["input->V"].delay == 0  # the relay is the other step
    assert layer.synapses.delays == {"x2": 1}
    assert layer.synapses.weight_error >= layer.lowrank.choices["V"].factored.product_error
