"""Fan-in trees in a spiking Transformer: the readout of every token of the residual stream, a convolution,
a DSP layer kept factored and the attention's host product, with cores of 64 axons."""

import numpy as np
import pytest
import torch

from st2chip.chip.lower import lower
from st2chip.chip.placement import PlacementError, load_resources, place
from st2chip.converters.transformer import export_bundle
from st2chip.graph.bundle_graph import bundle_graph
from st2chip.learn.transformer import SpikingTransformer, STConfig
from st2chip.targets import engine


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    torch.manual_seed(1)
    model = SpikingTransformer(STConfig.tiny_digits(ranks={"blocks.0.mlp.fc2": 4})).eval()
    with torch.no_grad():  # livelier than a fresh init, so that every layer spikes (as tests/chip/test_bundle_on_chip)
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.ndim > 1:
                p.mul_(4.0)
            elif name.endswith("leak_logit"):
                p.add_(torch.randn_like(p))
    return bundle_graph(export_bundle(model, tmp_path_factory.mktemp("st") / "bundle"))


def test_the_transformer_with_trees_runs_bit_for_bit_as_without_and_places(graph):
    res = load_resources("loihi2").replace(axons_in_per_core=64)
    options = dict(decay_groups=2, lowrank="factored")
    plain, split = lower(graph, **options, resources=None), lower(graph, **options, resources=res)
    trees = {name: layer["fanin"] for name, layer in split.report["layers"].items() if "fanin" in layer}
    assert trees["readout"]["fan_in"] == {"before": 2048, "after": 35}  # 16 tokens x 32 x 4 residual branches
    assert {"sps.rpe.lif", "blocks.0.mlp.mlp.fc1.lif"} <= set(trees)
    assert split.hosts and any(p.graded and p.name == "blocks.0.mlp.mlp.fc2.V" for p in split.populations)
    x = {"x": np.random.default_rng(0).integers(0, 256, size=(3, 4, 64)).astype(np.uint8)}
    a, b = engine.run(plain, x), engine.run(split, x)
    for layer in a.spikes:
        assert np.array_equal(a.spikes[layer], b.spikes[layer]) and np.array_equal(a.voltages[layer],
                                                                                    b.voltages[layer]), layer
    assert sum(int(s.sum()) for s in a.spikes.values()) > 0
    with pytest.raises(PlacementError, match="layer 'readout': fan-in 2048 axons > 64 per core"):
        place(plain, res, max_chips=None)
    assert max(c.fan_in for c in place(split, res, max_chips=None).cores) <= 64
