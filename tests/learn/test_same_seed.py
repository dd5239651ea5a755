"""Same seed, same numbers: a short training run of each trained model, twice with one seed and once with another."""

import pytest
import torch

from st2chip.learn.cnn import CNNConfig, SpikingCNN
from st2chip.learn.data import Split
from st2chip.learn.rnn import RNNConfig, SpikingRNN
from st2chip.learn.training import seed_everything, train_classifier

MODELS = {
    "cnn": (lambda: SpikingCNN(CNNConfig(channels=[4, 8], steps=6)), "fc.weight"),
    "rnn": (lambda: SpikingRNN(RNNConfig.digits(hidden=32, hold=1)), "rec.weight"),
}


def _short_run(digits, make, seed: int) -> tuple[float, dict]:
    train = Split(digits[0].x[:192], digits[0].y[:192])
    seed_everything(seed)
    model = make()
    result = train_classifier(model, train, train, epochs=1, batch_size=64, seed=seed, device="cpu", progress=False)
    return result.train_accuracy, {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_same_seed_same_numbers(digits, kind):
    make, weight = MODELS[kind]
    acc_a, state_a = _short_run(digits, make, 3)
    acc_b, state_b = _short_run(digits, make, 3)
    assert acc_a == acc_b
    for k in state_a:
        torch.testing.assert_close(state_a[k], state_b[k], rtol=0, atol=0, msg=k)
    _, state_c = _short_run(digits, make, 4)
    assert not torch.equal(state_a[weight], state_c[weight])
