"""Pass ``lowrank`` counts ``nnz(U V)`` for its cost model from the weight pass ``paths`` multiplied out, and
computes the factored path's product errors only for a relay exponent that holds: the chip stays the same."""


import nir
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from st2chip.chip.lower import lower
from st2chip.chip.lowering import lowrank as lowrank_pass
from st2chip.chip.lowering.plan import Factors
from st2chip.converters.transformer import export_bundle
from st2chip.graph.bundle_graph import bundle_graph
from st2chip.learn.transformer import SpikingTransformer, STConfig


def multiplied_again(graph, found, stored, u) -> int:
    """The pass as it was: ``count_nonzero(U V)`` of the relay's factors side by side, multiplied out here."""
    v = sp.hstack([f.v for f in found.values()], format="csr")
    return sp.csr_matrix(u @ v).count_nonzero()


def cancelling_uv(between: nir.NIRNode | None, tiny) -> nir.NIRGraph:
    """``tiny.uv()`` whose U V has exact zeros where two terms cancel, with ``between`` (if any) between the
    input and V."""
    graph = tiny.uv()
    u = graph.nodes["fc1"].weight.copy()
    u[:10, 1] = u[:10, 0]
    graph.nodes["V"].weight[1, :5] = -graph.nodes["V"].weight[0, :5]  # rows 0-9 of U V are 0 in columns 0-4
    graph.nodes["fc1"] = nir.Affine(weight=u, bias=np.zeros(30))
    if between is not None:
        graph.nodes["between"] = between
        graph.edges = [e for e in graph.edges if e != ("input", "V")] + [("input", "between"), ("between", "V")]
    return graph


BETWEEN = {
    "nothing": None,
    "a permutation": nir.Affine(weight=np.eye(30)[np.random.default_rng(1).permutation(30)], bias=np.zeros(30)),
    "a Scale": nir.Scale(scale=np.linspace(0.3, 3.0, 30)),
}


@pytest.mark.parametrize("between", list(BETWEEN))
@pytest.mark.parametrize("mode", ["auto", "factored", "product"])
def test_the_cost_counts_the_non_zeros_of_u_v(tiny, between, mode):
    before = tiny.before(cancelling_uv(BETWEEN[between], tiny), "lowrank", lowrank=mode)
    found = {k: f for k, f in before.layers[0].incoming.lowrank.items() if isinstance(f, Factors)}
    assert len(found) == 1
    [factors] = found.values()
    exact = sp.csr_matrix(factors.u @ factors.v).count_nonzero()
    assert exact == 30 * 30 - 10 * 5  # the cancelled sums are not counted
    [layer] = lowrank_pass.lowrank(before).layers
    choice = layer.lowrank.choices["V"]
    assert choice.cost == lowrank_pass.costs(factors.u, factors.v, exact)
    assert choice.cost.product_weights == exact


@pytest.mark.parametrize("between", list(BETWEEN))
def test_only_a_path_through_more_than_permutations_is_multiplied_out_again(tiny, between):
    before = tiny.before(cancelling_uv(BETWEEN[between], tiny), "lowrank", lowrank="auto")
    found = {k: f for k, f in before.layers[0].incoming.lowrank.items() if isinstance(f, Factors)}
    [(key, factors)] = found.items()
    marked = lowrank_pass.product_nnz(before.graph, found, {key: -1}, factors.u)  # -1: read from the weight
    assert marked == (sp.csr_matrix(factors.u @ factors.v).count_nonzero() if between == "a Scale" else -1)


@pytest.fixture(scope="module")
def dsp_graph(tmp_path_factory) -> nir.NIRGraph:
    """A tiny spiking Transformer with attention and MLP factored at rank 4: its bundle's token permutation lies
    between each V and its source, and residual sums into V nodes share relays."""
    torch.manual_seed(3)
    ranks = {"blocks.0.attn.q": 4, "blocks.0.attn.proj": 4, "blocks.0.mlp.fc1": 4, "blocks.0.mlp.fc2": 4}
    model = SpikingTransformer(STConfig.tiny_digits(ranks=ranks)).eval()
    return bundle_graph(export_bundle(model, tmp_path_factory.mktemp("dsp") / "bundle"))


@pytest.mark.parametrize("mode", ["auto", "factored", "product"])
def test_the_chip_is_the_same_bit_for_bit(dsp_graph, mode, monkeypatch, tiny):
    chip = lower(dsp_graph, decay_groups=2, lowrank=mode)
    choices = [c for layer in chip.lowering.layers.values() for c in layer.lowrank.values() if c.cost]
    assert len(choices) >= 4
    if mode != "product":
        assert any(g.form == "factored" for g in chip.synapses)
    monkeypatch.setattr(lowrank_pass, "product_nnz", multiplied_again)
    again = lower(dsp_graph, decay_groups=2, lowrank=mode)
    assert tiny.record_bytes(chip) == tiny.record_bytes(again)
