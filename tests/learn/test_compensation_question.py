"""The compensation question: BN folding, paired arms, paired statistics, the benchmark's machinery."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from st2chip.learn import compensation, pruning
from st2chip.learn.data import Split, load_digits_split, load_mnist1d_split
from st2chip.learn.mlp import MLPConfig, SpikingMLP
from st2chip.learn.neurons import SLIF
from st2chip.learn.transformer import SpikingTransformer, STConfig, fold_batch_norms

ROOT = Path(__file__).resolve().parents[2]


def _benchmark():
    spec = importlib.util.spec_from_file_location("compensation_benchmark", ROOT / "benchmarks" / "compensation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _mnist1d(n: int = 64) -> tuple[Split, Split]:
    train, test = load_mnist1d_split()
    return Split(train.x[:n], train.y[:n]), Split(test.x[:n], test.y[:n])


def _st_with_norm_statistics(config: STConfig) -> SpikingTransformer:
    """A double-precision model in eval mode whose batch norms have non-trivial statistics and affine parameters."""
    torch.manual_seed(0)
    model = SpikingTransformer(config)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.2, 2.0)
                m.weight.uniform_(0.5, 2.0)
                m.bias.uniform_(-0.3, 0.3)
    return model.double().eval()


@pytest.mark.parametrize("preset,load", [(STConfig.tiny_mnist1d, load_mnist1d_split),
                                         (STConfig.tiny_digits, load_digits_split)])
def test_folded_model_equals_unfolded_in_eval_mode(preset, load) -> None:
    train = load()[0]
    model = _st_with_norm_statistics(preset(neuron="lif", threshold=0.5))
    folded = fold_batch_norms(model).double().eval()
    assert folded.config.norm is False
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    x = model.encode(torch.as_tensor(train.x[:32])).double()
    with torch.no_grad():
        assert model.sps(x).sum() > 0
        assert torch.allclose(model.sps(x), folded.sps(x))
        assert torch.allclose(model(x), folded(x), atol=1e-9)


def test_fold_carries_into_low_rank_and_refuses_a_second_fold() -> None:
    train, _ = _mnist1d()
    model = _st_with_norm_statistics(STConfig.tiny_mnist1d(neuron="lif", threshold=0.5))
    pruning.factorize(model)
    folded = fold_batch_norms(model).double().eval()
    assert all(m.bias is not None for m in pruning.prunable_layers(folded).values())
    x = model.encode(torch.as_tensor(train.x[:32])).double()
    with torch.no_grad():
        assert torch.allclose(model(x), folded(x), atol=1e-9)
    pruning.truncate(folded, rank=2)
    assert all(m.rank == 2 and m.bias is not None for m in pruning.prunable_layers(folded).values())
    with pytest.raises(ValueError, match="no batch norms"):
        fold_batch_norms(folded)


def test_paired_arms_share_masks_and_data_order(monkeypatch) -> None:
    train, test = _mnist1d(48)
    torch.manual_seed(0)
    model = SpikingMLP(MLPConfig(sizes=[40, 32, 10], steps=4, neuron="lif"))
    pruning.magnitude_prune(model, 0.9)
    masks = {n: m.weight_mask.clone() for n, m in pruning.prunable_layers(model).items()}
    orders = []
    original = torch.randperm

    def recording(*args, **kwargs):
        out = original(*args, **kwargs)
        orders.append(out.clone())
        return out

    monkeypatch.setattr(torch, "randperm", recording)
    runs = compensation.paired_finetune(model, train, test, budgets=[1, 2], seed=3)
    assert len(orders) == 4  # two epochs per arm
    assert torch.equal(orders[0], orders[2]) and torch.equal(orders[1], orders[3])
    assert set(runs) == {"lif", "slif"} and all(set(r.accuracy) == {1, 2} for r in runs.values())
    for run in runs.values():
        for name, m in pruning.prunable_layers(run.model).items():
            assert torch.equal(m.weight_mask, masks[name])
    slif_neurons = [m for m in runs["slif"].model.modules() if isinstance(m, SLIF)]
    assert all(not m.is_plain for m in slif_neurons)


def test_paired_difference_on_known_input() -> None:
    control = [0.5, 0.5, 0.5, 0.5, 0.5]
    treatment = [0.51, 0.52, 0.53, 0.54, 0.55]  # differences 0.01 .. 0.05: mean 0.03, sd 0.0158
    st = compensation.paired_difference(treatment, control)
    half = 2.7764451051977987 * 0.015811388300841896 / 5 ** 0.5  # t(0.975, 4) * sd / sqrt(n)
    assert st.n == 5 and st.mean == pytest.approx(0.03)
    assert st.std == pytest.approx(0.015811388300841896)
    assert (st.low, st.high) == (pytest.approx(0.03 - half), pytest.approx(0.03 + half))
    assert st.excludes_zero
    flat = compensation.paired_difference([0.6, 0.7], [0.6, 0.7])
    assert (flat.mean, flat.low, flat.high, flat.excludes_zero) == (0.0, 0.0, 0.0, False)
    with pytest.raises(ValueError):
        compensation.paired_difference([0.1], [0.2])


def test_quick_benchmark_machinery_on_a_tiny_grid(tmp_path: Path) -> None:
    bench = _benchmark()
    args = ["--quick", "--limit", "96", "--seeds", "2", "--base-epochs", "1", "--budgets", "1", "--st-steps", "2",
            "--mlp-steps", "2", "--chip-groups", "1", "2"]
    outs = [tmp_path / "a.json", tmp_path / "b.json"]
    for out in outs:
        assert bench.main([*args, "--out", str(out)]) == 0
    first, second = (json.loads(p.read_text()) for p in outs)
    assert first["complete"] and first["runs"] == second["runs"]  # same seeds -> same numbers
    conditions = {(r["model"], r["method"]) for r in first["table"]}
    assert conditions == {("mlp", "l1p"), ("st", "l1p"), ("st", "dsp")}
    assert all("diff_low" in r and len(r["seeds"]) == 2 for r in first["table"])
    assert set(first["chip"]["stages"]) == {"float", "K=1", "K=2"}
    assert (tmp_path / "a.png").is_file()
    assert bench.main(["--reanalyse", str(outs[0])]) == 0  # statistics again from the stored runs: the same table
    assert json.loads(outs[0].read_text())["table"] == first["table"]
