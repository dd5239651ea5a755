"""What lowering keeps in memory: pass ``lowrank`` drops the multiplied-out weights of the paths it keeps
factored, pass ``synapses`` writes a dense group only where it is non-zero; the chip stays the same."""

import copy
import os
from pathlib import Path

import nir
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from st2chip.chip.lower import lower
from st2chip.chip.lowering import lowrank as lowrank_pass
from st2chip.chip.lowering.synapses import dense
from st2chip.converters.transformer import export_bundle
from st2chip.graph.bundle_graph import bundle_graph
from st2chip.learn.transformer import SpikingTransformer, STConfig

def columns(layer, source: str) -> sp.csr_matrix:
    """The folded weight's columns of the path from ``source``."""
    offset = 0
    for key, width in zip(layer.incoming.keys, layer.incoming.widths):
        if key.source == source:
            return layer.folded.weight[:, offset:offset + width]
        offset += width
    raise KeyError(source)


@pytest.mark.parametrize("mode", ["factored", "product"])
def test_a_factorable_path_is_held_apart_then_placed_or_dropped(tiny, mode):
    before = tiny.before(tiny.uv(), "lowrank", lowrank=mode)
    skip = columns(before.layers[0], "x2").toarray()
    if mode == "factored":  # U V multiplied out by pass paths, held apart until pass lowrank decides
        [deferred] = before.layers[0].folded.deferred.values()
        assert deferred.nnz == 30 * 30 and columns(before.layers[0], "input").nnz == 0
    else:  # always multiplied out: stacked with the rest
        assert not before.layers[0].folded.deferred and columns(before.layers[0], "input").nnz == 30 * 30
    [layer] = lowrank_pass.lowrank(before).layers
    assert layer.folded.weight is layer.incoming.weight and layer.folded.weight.shape == (30, 60)
    assert not layer.folded.deferred and not layer.incoming.deferred
    assert columns(layer, "input").nnz == (0 if mode == "factored" else 30 * 30)
    assert np.array_equal(columns(layer, "x2").toarray(), skip)


@pytest.fixture(scope="module")
def dsp_graph(tmp_path_factory) -> nir.NIRGraph:
    """A tiny spiking Transformer with its attention projection and MLP factored at rank 4 (residual sums into
    the factors' V nodes included)."""
    torch.manual_seed(2)
    ranks = {"blocks.0.attn.q": 4, "blocks.0.attn.proj": 4, "blocks.0.mlp.fc1": 4, "blocks.0.mlp.fc2": 4}
    model = SpikingTransformer(STConfig.tiny_digits(ranks=ranks)).eval()
    return bundle_graph(export_bundle(model, tmp_path_factory.mktemp("dsp") / "bundle"))


@pytest.mark.parametrize("mode", ["factored", "auto"])
def test_dropping_the_product_changes_no_population_group_or_report(dsp_graph, mode, monkeypatch, tiny):
    chip = lower(dsp_graph, decay_groups=2, lowrank=mode)
    assert any(g.form == "factored" for g in chip.synapses)
    monkeypatch.setattr(lowrank_pass, "without_factored", lambda layer: layer)  # the pass as it was
    kept = lower(dsp_graph, decay_groups=2, lowrank=mode)
    assert [p.name for p in chip.populations] == [p.name for p in kept.populations]
    assert tiny.record_bytes(chip.populations) == tiny.record_bytes(kept.populations)
    assert [g.name for g in chip.synapses] == [g.name for g in kept.synapses]
    assert tiny.record_bytes(chip.synapses) == tiny.record_bytes(kept.synapses)
    assert chip.report == kept.report


@pytest.mark.parametrize("mode", ["factored", "auto"])
def test_holding_the_products_apart_changes_no_population_group_or_report(dsp_graph, mode, monkeypatch, tiny):
    from st2chip.chip.lowering import paths as paths_pass
    rng = np.random.default_rng(0)
    graph = copy.deepcopy(dsp_graph)
    for node in graph.nodes.values():  # per-neuron thresholds, as sLIF learns them: folding scales each row
        if hasattr(node, "v_threshold") and np.size(node.v_threshold) > 1:
            node.v_threshold = 0.6 + 0.8 * rng.random(np.shape(node.v_threshold))
    chip = lower(graph, decay_groups=2, lowrank=mode)
    monkeypatch.setattr(paths_pass, "_deferrable", lambda graph, found: False)  # stacked with the rest, as before
    stacked = lower(graph, decay_groups=2, lowrank=mode)
    assert tiny.record_bytes(chip.populations) == tiny.record_bytes(stacked.populations)
    assert tiny.record_bytes(chip.synapses) == tiny.record_bytes(stacked.synapses)
    assert chip.report == stacked.report


def resident_bytes() -> int:
    """This process's resident memory now (Linux)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads resident memory from /proc")
def test_a_dense_group_takes_memory_only_where_it_is_non_zero():
    n = 6000  # 288 MB as int64 once every page is written
    mant = sp.csr_matrix(sp.diags(np.arange(n) % 255 - 127, dtype=np.int16))
    before = resident_bytes()
    out = dense(mant)
    grown = resident_bytes() - before
    assert out.dtype == np.int64 and out.flags.c_contiguous and np.array_equal(out, mant.toarray())
    assert grown < 64 * 2**20  # one page per row: 24 MB
