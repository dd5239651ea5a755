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


def _spread(model: SpikingRNN) -> SpikingRNN:
    """Spread-out thresholds and leaks, so that folding and the decay grids matter."""
    with torch.no_grad():
        model.threshold.uniform_(0.5, 1.5)
        model.leak_logit.uniform_(-1.0, 3.0)
        model.syn_leak_logit.uniform_(-1.0, 2.0)
        model.bias.uniform_(-0.2, 0.2)
        model.rec.weight.mul_(0.2)  # smaller than the input weights: the recurrent group gets its own exponent
    return model


def test_qat_lowers_to_exactly_the_grid_the_model_uses(tmp_path):
    import nir
    from st2chip.chip.lower import lower
    from st2chip.converters.rnn import rnn_to_nir
    from st2chip.graph.nirfile import write_nir
    from st2chip.graph.normalize import normalize

    torch.manual_seed(0)
    model = _spread(SpikingRNN(RNNConfig.mnist1d(hidden=20, qat=True)))
    w_in, w_rec = model.weights()
    assert not torch.equal(w_in, model.fc_in.weight) and not torch.equal(w_rec, model.rec.weight)
    chip = lower(normalize(write_nir(rnn_to_nir(model), tmp_path / "q.nir")), decay_groups=1)
    (pop,) = [p for p in chip.populations if p.layer == "lif"]
    groups = {g.source == pop.name: g for g in chip.synapses if g.target == pop.name}
    assert groups[True].exp < groups[False].exp  # two groups, two exponents
    theta = model.theta.detach()[:, None].double()
    folded = torch.cat([model.fc_in.weight, model.rec.weight], 1).detach().double() / theta
    assert pop.vth == int(254 / folded.abs().max())  # the scale the model used
    for recurrent, w in ((False, w_in), (True, w_rec)):
        g = groups[recurrent]
        chip_w = torch.as_tensor(2.0 * g.dense() * 2.0**g.exp / pop.vth) * theta
        torch.testing.assert_close(chip_w, w.detach().double(), rtol=1e-6, atol=0)  # float32 model, same grid
        assert np.all(np.abs(g.dense()) <= 127)
    # the decays lie on the chip's 12-bit grids: lowering keeps them exactly
    dv, du = 4096 * (1 - model.beta.detach().double()), 4095 - 4096 * model.alpha.detach().double()
    torch.testing.assert_close(dv, dv.round(), rtol=0, atol=1e-6)
    torch.testing.assert_close(du, du.round(), rtol=0, atol=1e-6)
    plain = SpikingRNN(RNNConfig.mnist1d(hidden=20))
    plain.load_state_dict(model.state_dict())
    assert not torch.equal(plain.beta, model.beta) and not torch.equal(plain.weights()[0], w_in)
    assert isinstance(rnn_to_nir(model).nodes["fc_in"], nir.Affine)


def test_qat_passes_gradients_straight_through():
    torch.manual_seed(1)
    model = _spread(SpikingRNN(RNNConfig.mnist1d(hidden=12, qat=True)))
    probe_in, probe_rec = torch.randn(12, 16), torch.randn(12, 12)
    w_in, w_rec = model.weights()
    ((w_in * probe_in).sum() + (w_rec * probe_rec).sum() + (model.beta * 3).sum()).backward()
    torch.testing.assert_close(model.fc_in.weight.grad, probe_in, rtol=0, atol=0)
    torch.testing.assert_close(model.rec.weight.grad, probe_rec, rtol=0, atol=0)
    beta = torch.sigmoid(model.leak_logit.detach())
    torch.testing.assert_close(model.leak_logit.grad, 3 * beta * (1 - beta))


def test_noise_acts_in_training_only_and_follows_the_seed(digits):
    torch.manual_seed(0)
    model = SpikingRNN(RNNConfig.digits(hidden=16, noise=0.2))
    plain = SpikingRNN(RNNConfig.digits(hidden=16))
    plain.load_state_dict(model.state_dict())
    x = model.encode(digits[1].x[:8])
    with torch.no_grad():
        model.eval()
        torch.testing.assert_close(model(x), plain(x), rtol=0, atol=0)
        model.train()
        plain.train()
        noisy = []
        for _ in range(2):
            torch.manual_seed(3)
            noisy.append(model(x))
        torch.testing.assert_close(noisy[0], noisy[1], rtol=0, atol=0)
        assert not torch.equal(noisy[0], plain(x))


@pytest.mark.parametrize("bad", [{"noise": -0.1}, {"noise": 1.0}, {"noise": True}, {"qat": "yes"}, {"qat": 1}])
def test_bad_noise_and_qat_are_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        SpikingRNN(RNNConfig.mnist1d(hidden=4, **bad))
