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
