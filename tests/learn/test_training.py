import torch

from st2chip.learn.data import Split
from st2chip.learn.mlp import MLPConfig, SpikingMLP
from st2chip.learn.training import seed_everything, train_classifier


def _train(split: Split, seed: int) -> dict:
    seed_everything(seed)
    model = SpikingMLP(MLPConfig(sizes=[64, 16, 10], steps=4))
    train_classifier(model, split, split, epochs=1, batch_size=32, seed=seed, device="cpu", progress=False)
    return model.state_dict()


def test_same_seed_same_numbers(digits):
    train, _ = digits
    small = Split(train.x[:128], train.y[:128])
    a, b = _train(small, 5), _train(small, 5)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    c = _train(small, 6)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_stale_batchnorm_statistics_are_recomputed_from_the_split(digits):
    """Running statistics far from the weights' (as pruning leaves them) score like chance in eval mode; recomputed
    over the split they are its cumulative BatchNorm inputs' mean and variance, and the accuracy comes back."""
    from st2chip.learn.training import evaluate, recalibrate_norms
    from st2chip.learn.transformer import SpikingTransformer, STConfig

    train, _ = digits
    small = Split(train.x[:256], train.y[:256])
    seed_everything(0)
    model = SpikingTransformer(STConfig(dim=16, depth=1, heads=2, mlp_hidden=32, steps=2))
    train_classifier(model, small, small, epochs=2, batch_size=32, device="cpu", progress=False)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    good = {k: v.clone() for k, v in model.state_dict().items()}
    accuracy = evaluate(model, small)
    for m in norms:
        m.running_mean += 5.0
        m.running_var *= 100.0
    stale = evaluate(model, small)
    recalibrate_norms(model, small)
    assert stale < accuracy - 0.2 and evaluate(model, small) == accuracy
    for m in norms:
        assert m.momentum == 0.1 and not m.training
    for key, value in model.state_dict().items():
        if "running" in key:
            torch.testing.assert_close(value, good[key], msg=key)
