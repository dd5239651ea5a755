"""The recurrent CubaLIF network and the 'rows' encoding: equations, checkpoints, a short training run."""

import numpy as np
import pytest
import torch

from st2chip.errors import InputError
from st2chip.learn.checkpoint import load_checkpoint, save_checkpoint
from st2chip.learn.data import Split, rows_encode, sequence_encode
from st2chip.learn.rnn import RNNConfig, SpikingRNN
from st2chip.learn.training import evaluate, seed_everything, train_classifier


def test_rows_encoding_shows_each_row_for_hold_steps():
    x = np.zeros((2, 64), dtype=np.float32)
    x[0, 8 * 3 + 5] = 0.5  # row 3, column 5: levels 0 and 1 of 4 (0.5 >= 0.125, 0.375)
    x[1, 7] = 1.0  # row 0, column 7: all four levels
    spikes = rows_encode(x, levels=4, hold=2)
    assert spikes.shape == (16, 2, 32)
    on = {(int(t), int(b), int(n)) for t, b, n in torch.nonzero(spikes)}
    assert on == {(t, 0, 5 * 4 + k) for t in (6, 7) for k in (0, 1)} | {(t, 1, 7 * 4 + k) for t in (0, 1)
                                                                      for k in range(4)}
    # one row is a thermometer code of its 8 pixels, as sequence_encode codes one value
    row = torch.rand(8)
    torch.testing.assert_close(rows_encode(torch.cat([row, torch.zeros(56)]), 5, 1)[0],
                               sequence_encode(row, 5).reshape(-1))
    with pytest.raises(InputError, match="64"):
        rows_encode(np.zeros((2, 40)))
    with pytest.raises(InputError, match="hold"):
        rows_encode(x, hold=0)


def _reference(model: SpikingRNN, spikes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The module docstring's equations, step by step, in float64."""
    m = model.double()
    w_in, w_rec = m.fc_in.weight, m.rec.weight
    a, b, th, bias = m.alpha, m.beta, m.theta, m.bias
    i = v = s = torch.zeros(spikes.shape[1], m.config.hidden, dtype=torch.float64)
    out = []
    for x in spikes.double():
        i = a * i + x @ w_in.T + s @ w_rec.T
        v = b * v + i + bias
        s = (v > th).double()
        v = torch.where(s > 0, v - th, v) if m.config.reset == "subtract" else torch.where(s > 0, 0.0, v)
        out.append(s)
    hidden = torch.stack(out)
    current = hidden @ m.fc_out.weight.T + m.fc_out.bias
    if m.config.readout == "integrate":
        return hidden, current.mean(0)
    c, y = m.config.readout_leak, torch.zeros_like(current[0])
    for c_t in current:
        y = c * y + (1 - c) * c_t
    return hidden, y


@pytest.mark.parametrize("reset", ["zero", "subtract"])
@pytest.mark.parametrize("readout", ["leaky", "integrate"])
def test_forward_is_the_documented_recurrence(reset, readout, digits):
    torch.manual_seed(0)
    model = SpikingRNN(RNNConfig.digits(hidden=24, reset=reset, readout=readout)).double()
    with torch.no_grad():
        model.threshold.uniform_(0.5, 1.5)
        model.leak_logit.uniform_(-1.0, 3.0)
        model.syn_leak_logit.uniform_(-1.0, 2.0)
        model.bias.uniform_(-0.2, 0.2)
        model.rec.weight.mul_(4.0)
    spikes = model.encode(digits[1].x[:6]).double()
    with torch.no_grad():
        hidden, scores = model.run(spikes)[0], model(spikes)
        ref_hidden, ref_scores = _reference(model, spikes)
    assert 0.02 < hidden.mean() < 0.9
    torch.testing.assert_close(hidden, ref_hidden, rtol=0, atol=0)
    torch.testing.assert_close(scores, ref_scores)


def test_configs_for_both_data_sets():
    c = RNNConfig.digits(levels=3, hold=4)
    assert (c.inputs, c.steps, c.encoding) == (24, 32, "rows")
    m = RNNConfig.mnist1d(hidden=16)
    assert (m.inputs, m.steps, m.levels, m.encoding) == (16, 40, 16, "sequence")
    assert SpikingRNN(m).encode(np.random.rand(3, 40)).shape == (40, 3, 16)
    assert SpikingRNN(c).encode(np.random.rand(3, 64)).shape == (32, 3, 24)
    lif = SpikingRNN(RNNConfig.digits(neuron="lif"))
    assert not any(p.requires_grad for p in (lif.threshold, lif.leak_logit, lif.syn_leak_logit, lif.bias))


@pytest.mark.parametrize("bad", [{"inputs": 30}, {"steps": 15}, {"reset": "hard"}, {"encoding": "rate"},
                                 {"leak": 1.0}, {"readout": "max"}, {"readout_leak": 1.0}, {"dropout": 1.0}])
def test_bad_configs_are_refused(bad):
    with pytest.raises(ValueError):
        SpikingRNN(RNNConfig(**bad))


def test_dropout_acts_in_training_only(digits):
    torch.manual_seed(0)
    model = SpikingRNN(RNNConfig.digits(hidden=16, dropout=0.5))
    plain = SpikingRNN(RNNConfig.digits(hidden=16))
    plain.load_state_dict(model.state_dict())
    x = model.encode(digits[1].x[:4])
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x), rtol=0, atol=0)
        model.train()
        assert not torch.equal(model(x), plain(x))


@pytest.mark.parametrize("factory", [RNNConfig.digits, RNNConfig.mnist1d])
def test_checkpoint_round_trip(factory, tmp_path):
    torch.manual_seed(1)
    model = SpikingRNN(factory(hidden=12, reset="subtract"))
    with torch.no_grad():
        model.bias.uniform_(-1, 1)
    path = save_checkpoint(model, "rnn", model.config.to_dict(), tmp_path / "r.pt")
    kind, again, _ = load_checkpoint(path)
    assert kind == "rnn" and again.config == model.config
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    bad = save_checkpoint(model, "rnn", {**model.config.to_dict(), "hidden": -3}, tmp_path / "bad.pt")
    with pytest.raises(InputError, match="hidden"):
        load_checkpoint(bad)


def test_a_few_training_steps_learn_something(digits):
    seed_everything(0)
    train, test = Split(digits[0].x[:768], digits[0].y[:768]), Split(digits[1].x[:200], digits[1].y[:200])
    model = SpikingRNN(RNNConfig.digits(hidden=64))
    before = evaluate(model, test)
    train_classifier(model, train, test, epochs=3, lr=1e-2, batch_size=32, seed=0, device="cpu", progress=False)
    assert evaluate(model, test) > max(before, 0.5)
