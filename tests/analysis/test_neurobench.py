"""Cross-check with NeuroBench: its SynapticOperations and st2chip's chip count agree exactly on the same models and inputs.

NeuroBench 2.3 counts effective operations from a binarised copy of every Linear/Conv layer
(pruned zeros drop out, bias ignored) on the binarised inputs, ACs when every input is in
{-1, 0, 1}. st2chip counts on the lowered, placed ChipGraph: one AC per spike per non-zero
weight. Same trained model, same input spikes, same hidden spikes (the float backend) ->
the same numbers. Behind a sum-pooling layer the two conventions part, by a known amount.
"""

from __future__ import annotations

import numpy as np
import torch
from neurobench.metrics.utils.layers import single_layer_MACs
from neurobench.metrics.utils.layers.macs import stateless_layer_macs
from neurobench.metrics.workload import SynapticOperations
from neurobench.models import TorchModel
from torch import nn
from torch.nn.utils import prune

from st2chip.analysis.traffic import count_ops
from st2chip.chip.lower import lower
from st2chip.chip.placement import place
from st2chip.converters.cnn import cnn_to_nir
from st2chip.converters.mlp import mlp_to_nir
from st2chip.graph.normalize import normalize
from st2chip.graph.simulate import simulate
from st2chip.learn.cnn import CNNConfig, SpikingCNN
from st2chip.learn.data import Split
from st2chip.learn.mlp import MLPConfig, SpikingMLP
from st2chip.learn.training import train_classifier

SAMPLES = 12


def _trained(model: nn.Module, digits) -> nn.Module:
    """A few seeded training steps, then 50 % magnitude pruning (zeros NeuroBench and the chip must both skip)."""
    train, test = digits
    train_classifier(model, Split(train.x[:192], train.y[:192]), Split(test.x[:32], test.y[:32]), epochs=1,
                     seed=0, device="cpu", progress=False)
    layers = [(m, "weight") for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    prune.global_unstructured(layers, pruning_method=prune.L1Unstructured, amount=0.5)
    for m, _ in layers:
        prune.remove(m, "weight")
    return model.double().eval()


def _neurobench(model: nn.Module, x: torch.Tensor) -> tuple[dict, list[tuple[int, bool]]]:
    """NeuroBench's SynapticOperations per sample, and (ops, spiking) per connection layer from its hooks."""
    wrapped = TorchModel(model)
    wrapped.register_hooks()
    with torch.no_grad():
        preds = wrapped(x)
    per_layer = [single_layer_MACs(hook.inputs[0][0], hook.layer) for hook in wrapped.connection_hooks]
    totals = SynapticOperations()(wrapped, preds, (x.transpose(0, 1), None))
    wrapped.cleanup_hooks()
    return totals, per_layer


def _chip_count(graph, x: torch.Tensor):
    """st2chip: lower and place the graph, run the float backend on the same spikes, count on the chip."""
    canon = normalize(graph)
    chip = lower(canon)
    traces = simulate(canon, x.transpose(0, 1).numpy())
    return chip, traces, count_ops(chip, traces, place(chip, "loihi2"))


def _assert_same_weights(model: nn.Module, chip) -> None:
    """Precondition: quantization zeroed no weight, so both sides see the same non-zero synapses."""
    torch_nnz = [int((m.weight != 0).sum()) for m in model.modules() if isinstance(m, nn.Linear)]
    chip_nnz = [sum(g.nnz for g in chip.synapses if chip.population(g.target).layer == layer)
                for layer in chip.layers()]
    assert chip_nnz[-len(torch_nnz):] == torch_nnz


def _assert_same_spikes(model, x, traces, names) -> None:
    with torch.no_grad():
        hidden = model.hidden_spikes(x)
    for name, spikes in zip(names, hidden):
        np.testing.assert_array_equal(traces.spikes[name], spikes.flatten(2).transpose(0, 1).numpy(), err_msg=name)


def test_mlp_neurobench_equals_chip_count(digits):
    torch.manual_seed(0)
    model = _trained(SpikingMLP(MLPConfig(sizes=[64, 32, 10], steps=8)), digits)
    x = model.encode(torch.as_tensor(digits[1].x[:SAMPLES])).double()
    nb, per_layer = _neurobench(model, x)
    chip, traces, counts = _chip_count(mlp_to_nir(model), x)
    _assert_same_weights(model, chip)
    _assert_same_spikes(model, x, traces, ["lif1"])
    assert [spiking for _, spiking in per_layer] == [True, True]
    assert [ops for ops, _ in per_layer] == list(counts.by_layer("acs"))
    assert nb["Effective_ACs"] * SAMPLES == counts.by_layer("acs").sum() > 0
    assert nb["Effective_MACs"] == 0 == counts.by_layer("macs").sum()


def _cnn(pool: int, digits) -> SpikingCNN:
    torch.manual_seed(0)
    return _trained(SpikingCNN(CNNConfig(channels=[4, 8], steps=8, pool=pool)), digits)


def test_cnn_without_pooling_neurobench_equals_chip_count(digits):
    model = _cnn(1, digits)
    x = model.encode(torch.as_tensor(digits[1].x[:SAMPLES])).double()
    nb, per_layer = _neurobench(model, x)
    chip, traces, counts = _chip_count(cnn_to_nir(model), x)
    _assert_same_spikes(model, x, traces, ["lif1", "lif2"])
    assert all(spiking for _, spiking in per_layer)
    assert [ops for ops, _ in per_layer] == list(counts.by_layer("acs"))
    assert nb["Effective_ACs"] * SAMPLES == counts.by_layer("acs").sum() > 0
    assert nb["Effective_MACs"] == 0


def test_cnn_with_sum_pooling_parts_by_the_pooled_spike_counts(digits):
    """Behind SumPool2d NeuroBench sees spike counts (0..4): binarised, one MAC per non-zero count; the chip folds
    the pooling into the weights and pays one AC per spike. Same first layer; the rest differs by the counts."""
    model = _cnn(2, digits)
    x = model.encode(torch.as_tensor(digits[1].x[:SAMPLES])).double()
    nb, per_layer = _neurobench(model, x)
    chip, traces, counts = _chip_count(cnn_to_nir(model), x)
    _assert_same_spikes(model, x, traces, ["lif1", "lif2"])
    acs = counts.by_layer("acs")
    (first, spiking), *pooled = per_layer
    assert spiking and first == acs[0]
    assert [s for _, s in pooled] == [False, False]
    wrapped = TorchModel(model)
    wrapped.register_hooks()
    with torch.no_grad():
        wrapped(x)
    layers = [(h.inputs[0][0], h.layer) for h in wrapped.connection_hooks]
    wrapped.cleanup_hooks()
    # the chip's ACs = NeuroBench's binarised layer applied to the unbinarised counts
    assert [int(stateless_layer_macs(inp, layer, False)) for inp, layer in layers[1:]] == list(acs[1:])
    assert nb["Effective_MACs"] * SAMPLES == sum(ops for ops, _ in pooled) < acs[1:].sum()
