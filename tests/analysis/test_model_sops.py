"""Synaptic-operation counting from real activity."""

from __future__ import annotations

import torch
from torch import nn

from st2chip.learn import pruning
from st2chip.learn.data import Split, load_digits_split
from st2chip.learn.pruning import LowRankLinear
from st2chip.analysis.energy import load_profile
from st2chip.analysis.model_sops import SopCounter, count_sops
from st2chip.learn.transformer import SpikeProduct, SpikingTransformer, STConfig


def _run(module: nn.Module, *inputs: torch.Tensor) -> dict:
    with SopCounter(module) as counter:
        module(*inputs)
    return counter.layers


def test_linear_spikes_hand_computed() -> None:
    lin = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.0, 2.0], [0.0, 0.0, 3.0]]))  # fan-outs: 1, 0, 2
    x = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 1.0]])  # spikes: input 0 once, input 1 twice, input 2 twice
    row = _run(lin, x)[""]
    assert row.input == "spikes" and row.acs == 1 * 1 + 2 * 0 + 2 * 2 and row.macs == 0
    assert row.nonzero_weights == 3 and row.weights == 6
    counts = _run(lin, torch.tensor([[2.0, 0.0, 3.0]]))[""]  # a sum of spike trains: 2*1 + 3*2 ACs
    assert counts.input == "counts" and counts.acs == 8
    analog = _run(lin, torch.tensor([[0.5, 0.0, 0.25]]))[""]  # every element: 1 + 0 + 2 MACs
    assert analog.input == "analog" and analog.macs == 3 and analog.acs == 0


def test_conv_counts_border_taps() -> None:
    conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        conv.weight[0, 0, 0, 0] = 0.0  # 8 non-zero taps
    x = torch.zeros(1, 1, 3, 3)
    x[0, 0, 1, 1] = 1.0  # the centre spike reaches all 9 outputs, through 8 non-zero taps
    assert _run(conv, x)[""].acs == 8
    x = torch.zeros(1, 1, 3, 3)
    x[0, 0, 0, 0] = 1.0  # a corner spike reaches 4 outputs; the tap that would carry it to (1, 1) is zero
    assert _run(conv, x)[""].acs == 3


def test_lowrank_counts_both_factors() -> None:
    layer = LowRankLinear(4, 3, 2)
    with torch.no_grad():
        layer.V[0, 1] = 0.0
    x = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    rows = _run(layer, x)
    assert rows[".V"].acs == 2 + 1  # input 0 reaches both components, input 1 only one
    assert rows[".U"].macs == 2 * 3 and rows[".U"].input == "analog"


def test_spike_product_hand_computed() -> None:
    q = torch.tensor([[1.0, 1.0], [0.0, 1.0]]).view(1, 1, 2, 2)
    k = torch.tensor([[1.0, 0.0], [1.0, 1.0]]).view(1, 1, 2, 2)
    v = torch.tensor([[1.0, 0.0], [0.0, 0.0]]).view(1, 1, 2, 2)
    # Q K^T = [[1, 2], [0, 1]]: 4 coincidences; non-zero scores meet V's one spike (row 0) in query 0 only.
    assert _run(SpikeProduct(1, 1.0), q, k, v)[""].acs == 4 + 1


def test_pruning_lowers_sops_and_counts_are_deterministic() -> None:
    _, test = load_digits_split()
    test = Split(test.x[:64], test.y[:64])
    torch.manual_seed(0)
    model = SpikingTransformer(STConfig.tiny_digits(neuron="lif", threshold=0.5))
    dense = count_sops(model, test)
    again = count_sops(model, test)
    assert dense.to_dict() == again.to_dict() and dense.acs > 0 and dense.macs > 0
    assert dense.samples == 64 and "blocks.0.attn.product" in dense.layers
    pruning.magnitude_prune(model, 0.9)
    pruning.make_permanent(model)
    sparse = count_sops(model, test)
    q_dense, q_sparse = dense.layers["blocks.0.attn.q"], sparse.layers["blocks.0.attn.q"]
    assert q_sparse.nonzero_weights < q_dense.nonzero_weights
    assert sparse.acs < dense.acs
    profile = load_profile("45nm")
    assert profile.e_ac_pj == 0.9 and profile.e_mac_pj == 4.6
    assert dense.energy_pj() == dense.acs * 0.9 + dense.macs * 4.6
