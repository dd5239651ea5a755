"""A spiking Transformer bundle as one ChipGraph: neurocore partition, host partition (the attention
product) and an analog input port, run by the engine against the float graph."""

import json

import numpy as np
import pytest
import torch

from st2chip.analysis.verify import compare
from st2chip.chip.lower import lower
from st2chip.cli.main import main
from st2chip.converters.transformer import export_bundle
from st2chip.graph.bundle_graph import bundle_graph
from st2chip.graph.simulate import simulate
from st2chip.learn.transformer import SpikingTransformer, STConfig
from st2chip.targets import engine


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    torch.manual_seed(1)
    model = SpikingTransformer(STConfig.tiny_digits(ranks={"blocks.0.mlp.fc2": 4})).eval()
    with torch.no_grad():  # livelier than a fresh init, so that every layer spikes, with per-neuron leaks as
        for name, p in model.named_parameters():  # sLIF learns them (decay grouping splits layers)
            if name.endswith("weight") and p.ndim > 1:
                p.mul_(4.0)
            elif name.endswith("leak_logit"):
                p.add_(torch.randn_like(p))
    return export_bundle(model, tmp_path_factory.mktemp("st") / "bundle")


def test_bundle_lowers_to_one_chipgraph_with_a_host_partition(bundle):
    chip = lower(bundle_graph(bundle), decay_groups=2)
    [host] = chip.hosts
    assert host.inputs == ("blocks.0.qkv.attn.q.lif", "blocks.0.qkv.attn.k.lif", "blocks.0.qkv.attn.v.lif")
    assert (host.tokens, host.dim, host.heads) == (16, 32, 2)
    assert [(i.kind, i.levels) for i in chip.inputs] == [("analog", 255)]
    depths = chip.depths()
    q = max(depths[p.name] for p in chip.layer_populations("blocks.0.qkv.attn.q.lif"))
    assert min(depths[p.name] for p in chip.layer_populations("blocks.0.proj.attn.lif")) == q + 1


def test_engine_follows_the_float_graph(bundle, digits):
    graph = bundle_graph(bundle)
    chip = lower(graph, decay_groups=2)
    x = np.repeat(np.round(np.asarray(digits[1].x[:40]) * 255)[:, None, :], 4, axis=1).astype(np.uint8)
    flt, eng = simulate(graph, x), engine.run(chip, {"x": x})
    assert all(flt.spikes[layer].sum() > 0 for layer in flt.spikes), "every layer should spike"
    # each float layer fed the chip's spikes into it: what lowering costs that layer (quantization, two decay
    # groups of random leaks); end to end, an untrained network with weights x4 compounds those differences.
    # The host product and the analog port are exact (tests/targets/test_engine_host.py); a wiring error
    # would leave far less.
    local = simulate(graph, x, forced={layer: eng.spikes[layer] for layer in flt.spikes})
    agreement = compare(local, eng, voltages=False).spike_agreement
    assert min(agreement.values()) > 0.97, agreement
    units = chip.voltage_units("readout")
    err = np.linalg.norm(eng.scores / units - local.scores) / np.linalg.norm(local.scores)
    assert err < 0.05, err


def test_cli_maps_a_bundle_and_verifies_it_on_the_engine_and_lava(bundle, capsys, tmp_path):
    assert main(["map", str(bundle), "--report", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "host partition 'blocks.0.product'" in out and "analog input 'x'" in out
    data = json.loads((tmp_path / "rep" / "report.json").read_text())
    layers = {r["layer"]: r for r in data["layers"]}
    assert "factored" in layers["blocks.0.mlp.mlp.fc2.lif"]["form"]  # the DSP layer, kept factored by --lowrank auto
    assert data["boundary_per_step"]["blocks.0.product"] == {"to_chip": 512, "from_chip": 1536, "kind": "host"}
    # graded sources (the analog image, the host's counts) cost MACs, spikes ACs at the assumed rate
    assert layers["sps.stem.0.lif"]["estimated_macs_per_step"] == layers["sps.stem.0.lif"]["nonzero"]
    assert layers["blocks.0.proj.attn.lif"]["estimated_macs_per_step"] == 512
    assert "## Host partitions" in (tmp_path / "rep" / "report.md").read_text()
    assert (tmp_path / "rep" / "report.png").stat().st_size > 0
    # default decay grouping splits the Q, K, V layers: Lava's host process reads one port per population
    assert len(lower(bundle_graph(bundle), decay_groups=4).layer_populations("blocks.0.qkv.attn.q.lif")) > 1
    assert main(["verify", str(bundle), "--samples", "4", "--lava-samples", "1",
                 "--min-agreement", "85", "--max-drop", "100"]) == 0
    out = capsys.readouterr().out
    assert "direct (255 levels)" in out and "reference = lava (first 1 samples): spikes and voltages identical" in out
    assert main(["map", str(bundle), "--dt", "1e-3"]) == 2


def test_lowering_leaves_the_composed_graph_alone(bundle, digits):
    """A composed bundle holds CSR weights; lowering folds thresholds into its own copies, so the float graph
    simulates the same before and after (verify runs float after lowering)."""
    import nir

    graph = bundle_graph(bundle)
    before = {n: node.weight.copy() for n, node in graph.nodes.items() if isinstance(node, nir.Affine)}
    x = np.repeat(np.round(np.asarray(digits[1].x[:8]) * 255)[:, None, :], 4, axis=1).astype(np.uint8)
    flt = simulate(graph, x)
    lower(graph, decay_groups=4, lowrank="auto")
    for name, w in before.items():
        assert (graph.nodes[name].weight != w).nnz == 0, name
    np.testing.assert_array_equal(simulate(graph, x).scores, flt.scores)
