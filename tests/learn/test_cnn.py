"""The convolutional sLIF network: shapes, sum pooling, checkpoints, a short training run."""

import numpy as np
import pytest
import torch

from st2chip.errors import InputError
from st2chip.learn.checkpoint import load_checkpoint, save_checkpoint
from st2chip.learn.cnn import CNNConfig, SpikingCNN
from st2chip.learn.data import Split, rate_encode
from st2chip.learn.training import evaluate, seed_everything, train_classifier


def test_shapes_and_per_channel_parameters():
    model = SpikingCNN(CNNConfig())
    assert model.config.stage_shapes() == [(8, 8, 8), (16, 4, 4), (16, 2, 2)]
    assert model.fc.in_features == 64 and model.neurons[0].threshold.shape == (8, 1, 1)
    x = model.encode(torch.rand(5, 64))
    assert x.shape == (16, 5, 64)
    assert model(x).shape == (5, 10)
    assert [h.shape for h in model.hidden_spikes(x)] == [(16, 5, 512), (16, 5, 256)]
    assert SpikingCNN(CNNConfig(neuron="lif")).neurons[0].is_plain


def test_the_input_is_the_mlps_rate_code():
    x = torch.rand(3, 64)
    torch.testing.assert_close(SpikingCNN(CNNConfig(steps=8)).encode(x), rate_encode(x, 8))


def test_pooling_sums_spike_windows():
    torch.manual_seed(0)
    model = SpikingCNN(CNNConfig(channels=[2]))
    spikes = (torch.rand(3, 2, 64) < 0.5).float()
    hidden = model.hidden_spikes(spikes)[0].reshape(3, 2, 2, 8, 8)
    pooled = model._stages(spikes)[1].reshape(3, 2, 2, 4, 4)
    expected = hidden.reshape(3, 2, 2, 4, 2, 4, 2).sum((4, 6))
    torch.testing.assert_close(pooled, expected, rtol=0, atol=0)


@pytest.mark.parametrize("bad", [{"kernel": 2}, {"channels": [4, 4, 4, 4]}, {"neuron": "x"}, {"encoding": "rows"},
                                 {"image": [8, 8]}])
def test_bad_configs_are_refused(bad):
    with pytest.raises(ValueError):
        SpikingCNN(CNNConfig(**bad))


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(1)
    model = SpikingCNN(CNNConfig(channels=[4, 6], reset="subtract"))
    path = save_checkpoint(model, "cnn", model.config.to_dict(), tmp_path / "c.pt", extra={"seed": 1})
    kind, again, extra = load_checkpoint(path)
    assert kind == "cnn" and extra == {"seed": 1} and again.config == model.config
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    with pytest.raises(InputError, match="'cnn' model, expected 'rnn'"):
        load_checkpoint(path, "rnn")


def test_checkpoint_with_an_impossible_config_is_refused(tmp_path):
    model = SpikingCNN(CNNConfig())
    path = save_checkpoint(model, "cnn", {**model.config.to_dict(), "channels": [8, 16, 4, 4]}, tmp_path / "c.pt")
    with pytest.raises(InputError, match="c.pt"):
        load_checkpoint(path)
    path = save_checkpoint(model, "cnn", {**model.config.to_dict(), "channels": [0]}, tmp_path / "d.pt")
    with pytest.raises(InputError, match="channels"):
        load_checkpoint(path)


def test_a_few_training_steps_learn_something(digits):
    seed_everything(0)
    train, test = Split(digits[0].x[:512], digits[0].y[:512]), Split(digits[1].x[:200], digits[1].y[:200])
    model = SpikingCNN(CNNConfig(steps=8))
    before = evaluate(model, test)
    train_classifier(model, train, test, epochs=2, lr=1e-2, batch_size=32, seed=0, device="cpu", progress=False)
    assert evaluate(model, test) > max(before, 0.5)
    assert np.isfinite(model.neurons[0].theta.detach().numpy()).all()
