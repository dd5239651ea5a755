"""L1P and DSP pruning, sLIF compensation, and the train/prune CLI."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from st2chip.learn import compensation, pruning
from st2chip.learn.checkpoint import load_checkpoint, save_checkpoint
from st2chip.cli.train import register
from st2chip.learn.data import Split, load_digits_split
from st2chip.errors import InputError
from st2chip.learn.neurons import SLIF
from st2chip.learn.pruning import LowRankLinear
from st2chip.learn.transformer import SpikingTransformer, STConfig


def _model(**overrides) -> SpikingTransformer:
    torch.manual_seed(0)
    return SpikingTransformer(STConfig.tiny_digits(**{"neuron": "lif", **overrides}))


def _tiny_split(n: int = 64) -> tuple[Split, Split]:
    train, test = load_digits_split()
    return Split(train.x[:n], train.y[:n]), Split(test.x[:n], test.y[:n])


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_magnitude_prune_hits_target_and_zeros_are_exact(scope: str) -> None:
    model = _model()
    originals = {n: m.weight.detach().clone() for n, m in model.block_matrices().items()}
    achieved = pruning.magnitude_prune(model, 0.8, scope)
    masks = {n: m.weight_mask.clone() for n, m in model.block_matrices().items()}
    pruning.make_permanent(model)
    total = sum(w.numel() for w in originals.values())
    assert abs(achieved - 0.8) <= len(originals) / total
    assert abs(pruning.weight_sparsity(model) - 0.8) <= len(originals) / total
    for name, m in model.block_matrices().items():
        assert not hasattr(m, "weight_mask")
        assert torch.all(m.weight[masks[name] == 0] == 0)
        assert torch.equal(m.weight[masks[name] == 1], originals[name][masks[name] == 1])
        if scope == "layer":
            assert abs(float((m.weight == 0).float().mean()) - 0.8) <= 1 / m.weight.numel()
    kept = torch.cat([originals[n][masks[n] == 1].abs() for n in originals])
    dropped = torch.cat([originals[n][masks[n] == 0].abs() for n in originals])
    if scope == "global":
        assert kept.min() >= dropped.max()


def test_finetune_keeps_masks_in_both_arms() -> None:
    train, test = _tiny_split()
    for learn in (False, True):
        model = _model()
        pruning.magnitude_prune(model, 0.9)
        masks = {n: m.weight_mask.clone() for n, m in model.block_matrices().items()}
        model, _ = compensation.finetune(model, train, test, learn_intrinsic=learn, epochs=1, device="cpu",
                                         progress=False)
        pruning.make_permanent(model)
        for name, m in model.block_matrices().items():
            assert torch.all(m.weight[masks[name] == 0] == 0)
        assert pruning.weight_sparsity(model) >= 0.9 - 1e-3


def test_l1_penalty_is_sum_of_abs_block_weights() -> None:
    model = _model()
    expected = sum(m.weight.abs().sum() for m in model.block_matrices().values())
    assert torch.allclose(pruning.l1_penalty(0.1)(model), 0.1 * expected)


def test_factorize_and_truncate_match_truncated_svd() -> None:
    model = _model()
    dense = {n: m.weight.detach().clone() for n, m in model.block_matrices().items()}
    ranks = pruning.factorize(model)
    assert ranks == {n: 32 for n in dense} | {"blocks.0.mlp.fc1": 32, "blocks.0.mlp.fc2": 32}
    for name, m in model.block_matrices().items():
        assert torch.allclose(m.product(), dense[name], atol=1e-5)
    full = {n: m.product().detach() for n, m in model.block_matrices().items()}
    ranks = pruning.truncate(model, rank=5)
    assert set(ranks.values()) == {5} and model.config.ranks == ranks
    for name, m in model.block_matrices().items():
        assert isinstance(m, LowRankLinear) and m.U.shape[1] == 5 and m.V.shape[0] == 5
        assert torch.linalg.matrix_rank(m.product()) == 5
        u, s, vh = torch.linalg.svd(full[name], full_matrices=False)
        assert torch.allclose(m.product(), u[:, :5] @ torch.diag(s[:5]) @ vh[:5], atol=1e-5)


def test_truncate_by_threshold_and_group_penalty_is_nuclear_norm() -> None:
    model = _model()
    pruning.factorize(model)
    nuclear = sum(torch.linalg.svdvals(m.product()).sum() for m in model.block_matrices().values())
    assert torch.allclose(pruning.group_penalty(1.0)(model), nuclear, rtol=1e-4)
    q = model.block_matrices()["blocks.0.attn.q"]
    s = torch.linalg.svdvals(q.product().detach())
    ranks = pruning.truncate(model, threshold=0.5)
    assert ranks["blocks.0.attn.q"] == int((s >= 0.5 * s[0]).sum())


def test_to_slif_keeps_function_and_learns_intrinsics() -> None:
    train, test = _tiny_split()
    model = _model()
    pruning.magnitude_prune(model, 0.5)
    x = model.eval().encode(torch.as_tensor(test.x[:16]))
    slif = compensation.to_slif(model).eval()
    assert torch.equal(model(x), slif(x))
    assert all(not m.is_plain for m in slif.modules() if isinstance(m, SLIF))
    before = [p.detach().clone() for p in compensation.intrinsic_parameters(slif)]
    slif, _ = compensation.finetune(slif, train, test, learn_intrinsic=True, epochs=1, device="cpu", progress=False)
    after = compensation.intrinsic_parameters(slif)
    assert any(not torch.equal(a, b) for a, b in zip(before, after))
    frozen = _model()
    pruning.magnitude_prune(frozen, 0.5)
    before = [p.detach().clone() for p in compensation.intrinsic_parameters(frozen)]
    frozen, _ = compensation.finetune(frozen, train, test, learn_intrinsic=False, epochs=1, device="cpu",
                                      progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, compensation.intrinsic_parameters(frozen)))


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="st2chip")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_train_and_prune_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ckpt, l1p, dsp = tmp_path / "st.pt", tmp_path / "l1p.pt", tmp_path / "dsp.pt"
    tiny = ["--dim", "16", "--mlp-hidden", "16", "--steps", "2", "--device", "cpu"]
    assert _cli(["train", "--model", "st", "--neuron", "lif", "--epochs", "1", "--out", str(ckpt), *tiny]) == 0
    kind, model, summary = load_checkpoint(ckpt)
    assert kind == "st" and model.config.dim == 16 and 0.0 <= summary["test_accuracy"] <= 1.0
    common = ["--epochs", "1", "--penalty-epochs", "1", "--device", "cpu"]
    assert _cli(["prune", str(ckpt), "--method", "l1p", "--sparsity", "0.75", "--out", str(l1p), *common]) == 0
    kind, pruned, summary = load_checkpoint(l1p)
    assert abs(pruning.weight_sparsity(pruned) - 0.75) < 0.01 and summary["compensate"] == "slif"
    assert all(not m.is_plain for m in pruned.modules() if isinstance(m, SLIF))
    assert _cli(["prune", str(ckpt), "--method", "dsp", "--rank", "3", "--compensate", "lif",
                 "--out", str(dsp), *common]) == 0
    kind, low, summary = load_checkpoint(dsp)
    assert set(low.config.ranks.values()) == {3} and summary["ranks"] == low.config.ranks
    assert all(isinstance(m, LowRankLinear) and m.rank == 3 for m in low.block_matrices().values())
    out = capsys.readouterr().out
    assert "l1p st: sparsity 75.0%" in out and "dsp st: ranks [3]" in out


def test_bad_checkpoints_raise_input_error_naming_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pt"
    with pytest.raises(InputError, match="missing.pt: no such checkpoint"):
        load_checkpoint(missing)
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    with pytest.raises(InputError, match="junk.pt: not a readable"):
        load_checkpoint(junk)
    wrong = tmp_path / "wrong.pt"
    model = _model()
    save_checkpoint(model, "gru", asdict(model.config), wrong)
    with pytest.raises(InputError, match="wrong.pt: checkpoint kind 'gru'"):
        load_checkpoint(wrong)
    with pytest.raises(InputError, match="wrong.pt"):
        _cli(["prune", str(wrong), "--method", "l1p", "--sparsity", "0.5", "--out", str(tmp_path / "o.pt")])


def test_threshold_is_redundant_with_a_preceding_batch_norm() -> None:
    """Reset-to-zero LIF: threshold theta_i on BN output = threshold 1 on BN scaled by 1/theta_i."""
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm1d(4).eval()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-1.0, 1.0)
    x = torch.randn(6, 3, 4)
    sn = SLIF(4, threshold=1.0, leak=0.75)
    with torch.no_grad():
        sn.threshold.copy_(torch.tensor([0.5, 1.0, 2.0, 4.0]))  # powers of two: the scaling is exact
    reference = sn(bn(x.reshape(-1, 4)).reshape(x.shape))
    with torch.no_grad():
        bn.weight /= sn.threshold
        bn.bias /= sn.threshold
    unit = SLIF(4, threshold=1.0, leak=0.75)
    assert reference.sum() > 0 and torch.equal(reference, unit(bn(x.reshape(-1, 4)).reshape(x.shape)))
