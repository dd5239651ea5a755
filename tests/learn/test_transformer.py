"""Spiking Transformer: shapes, sLIF gradients, low-rank layers, determinism."""

from __future__ import annotations

import pytest
import torch

from st2chip.learn.data import Split, load_digits_split
from st2chip.learn.neurons import SLIF
from st2chip.learn.pruning import LowRankLinear
from st2chip.learn.training import evaluate, train_classifier
from st2chip.learn.transformer import SpikingTransformer, STConfig


def _tiny_split(n: int = 96) -> tuple[Split, Split]:
    train, test = load_digits_split()
    return Split(train.x[:n], train.y[:n]), Split(test.x[:n], test.y[:n])


def test_forward_shapes_digits() -> None:
    torch.manual_seed(0)
    model = SpikingTransformer(STConfig.tiny_digits())
    x = torch.rand(5, 64)
    inp = model.encode(x)
    assert inp.shape == (4, 5, 1, 8, 8)
    assert model(inp).shape == (5, 10)


def test_forward_shapes_rgb_and_4x4_patches() -> None:
    torch.manual_seed(0)
    config = STConfig.cifar10(image_size=8, stem_channels=[8], dim=16, heads=2, mlp_hidden=16, depth=1, steps=2)
    model = SpikingTransformer(config)
    assert model(model.encode(torch.rand(3, 3, 8, 8))).shape == (3, 10)
    assert model.sps(model.encode(torch.rand(3, 3, 8, 8))).shape == (2, 3, 4, 16)  # 2x2 tokens of 4x4 patches


def test_spikformer_4_384_preset_has_the_published_size() -> None:
    torch.manual_seed(0)
    config = STConfig.spikformer_4_384()
    model = SpikingTransformer(config)
    assert (config.dim, config.depth, config.heads, config.mlp_hidden) == (384, 4, 12, 1536)
    assert model.sps(model.encode(torch.rand(1, 3, 32, 32))).shape == (4, 1, 64, 384)  # 8x8 tokens of 4x4 patches


def test_gradient_reaches_thresholds_and_leaks() -> None:
    torch.manual_seed(0)
    model = SpikingTransformer(STConfig.tiny_digits(threshold=0.5))
    model(model.encode(torch.rand(8, 64))).sum().backward()
    neurons = [m for m in model.modules() if isinstance(m, SLIF)]
    assert neurons and all(not m.is_plain for m in neurons)
    assert all(m.threshold.grad is not None and m.leak_logit.grad is not None for m in neurons)
    assert any(float(m.threshold.grad.abs().sum()) > 0 for m in neurons)
    assert any(float(m.leak_logit.grad.abs().sum()) > 0 for m in neurons)


def test_plain_lif_switch_freezes_neurons() -> None:
    model = SpikingTransformer(STConfig.tiny_digits(neuron="lif"))
    neurons = [m for m in model.modules() if isinstance(m, SLIF)]
    assert neurons and all(m.is_plain for m in neurons)


def test_ranks_build_factored_block_matrices() -> None:
    model = SpikingTransformer(STConfig.tiny_digits(ranks={"blocks.0.attn.q": 3}))
    q = model.block_matrices()["blocks.0.attn.q"]
    assert isinstance(q, LowRankLinear) and q.U.shape == (32, 3) and q.V.shape == (3, 32)
    assert model(model.encode(torch.rand(2, 64))).shape == (2, 10)
    with pytest.raises(ValueError, match="not block matrices"):
        SpikingTransformer(STConfig.tiny_digits(ranks={"head": 2}))


def test_training_is_deterministic() -> None:
    train, test = _tiny_split(48)
    results = []
    for _ in range(2):
        torch.manual_seed(123)
        model = SpikingTransformer(STConfig.tiny_digits(dim=16, mlp_hidden=16, stem_channels=[4]))
        train_classifier(model, train, test, epochs=1, seed=7, device="cpu", progress=False)
        results.append(model(model.encode(torch.as_tensor(test.x[:16]))).detach())
    assert torch.equal(results[0], results[1])


@pytest.mark.slow
def test_tiny_st_reaches_95_percent_on_digits() -> None:
    torch.manual_seed(0)
    train, test = load_digits_split()
    model = SpikingTransformer(STConfig.tiny_digits(neuron="lif"))
    train_classifier(model, train, test, epochs=20, lr=5e-3, seed=0, device="cpu", progress=False)
    assert evaluate(model, test) >= 0.95
