"""Training neurons that send up to k spikes per step (``max_spikes``): the count and ``v`` after it, the staircase
surrogate gradient (to ``v`` and to the threshold), k = 1 unchanged, the configs' refusals, and one shared count
function for training and the float interpreters."""

import math

import pytest
import torch

from st2chip.graph import simulate, torch_model
from st2chip.learn import neurons
from st2chip.learn.mlp import MLPConfig, SpikingMLP
from st2chip.learn.neurons import SLIF, count_fn, spike_fn
from st2chip.learn.rnn import RNNConfig, SpikingRNN


def _staircase(v: torch.Tensor, theta: float, k: int, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The surrogate slopes by hand: sum over j of the arctan bump at v - j theta, and of j times it."""
    bumps = [alpha / 2 / (1 + (math.pi / 2 * alpha * (v - j * theta)) ** 2) for j in range(1, k + 1)]
    return sum(bumps), sum(j * b for j, b in enumerate(bumps, start=1))


def test_slif_sends_up_to_k_spikes_per_step_each_subtracting_the_threshold():
    neuron = SLIF((), threshold=1.0, leak=0.5, learn_threshold=False, learn_leak=False, reset="subtract",
                  max_spikes=3).double()
    neuron.leak_logit.data.fill_(100.0)  # beta = 1: v <- v + I, as the hand count below
    neuron.record_v = True
    drive = torch.tensor([2.5, 0.25, 4.5, 0.0, 1.0, 0.75, 1.0], dtype=torch.float64).reshape(-1, 1)
    counts = neuron(drive)[:, 0]
    # v before: 2.5 0.75 5.25 2.25 1.25 1.0 2.0; strict v > 1 each time, at most 3
    assert counts.tolist() == [2, 0, 3, 2, 1, 0, 1]
    assert neuron.last_v[:, 0].tolist() == [0.5, 0.75, 2.25, 0.25, 0.25, 1.0, 1.0]


@pytest.mark.parametrize("k", [1, 4])
def test_the_count_gradient_is_a_staircase_of_k_surrogates_to_v_and_to_the_threshold(k):
    v = torch.tensor([[0.2, 0.6, 1.1, 1.45, 3.0], [2.2, -0.4, 0.55, 1.0, 7.0]], dtype=torch.float64,
                     requires_grad=True)
    theta = torch.full((5,), 0.5, dtype=torch.float64, requires_grad=True)
    count, after = count_fn(v, theta, k, alpha=2.0)
    expected = torch.clamp(torch.ceil(v.detach() / 0.5) - 1, 0, k)  # strict: v = j theta sends j - 1
    assert torch.equal(count, expected)
    assert torch.equal(after, v.detach() - 0.5 * count)
    count.sum().backward()
    slope, weighted = _staircase(v.detach(), 0.5, k, 2.0)
    torch.testing.assert_close(v.grad, slope, rtol=1e-12, atol=0)
    torch.testing.assert_close(theta.grad, -weighted.sum(0), rtol=1e-12, atol=0)


def test_one_spike_per_step_is_the_single_spike_surrogate():
    x = torch.linspace(-2.0, 3.0, 11, dtype=torch.float64)
    v1, v2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    t1, t2 = (torch.tensor(0.7, dtype=torch.float64, requires_grad=True) for _ in range(2))
    count_fn(v1, t1, 1, alpha=2.0)[0].sum().backward()
    spike_fn(v2 - t2, alpha=2.0).sum().backward()
    torch.testing.assert_close(v1.grad, v2.grad, rtol=1e-12, atol=0)
    torch.testing.assert_close(t1.grad, t2.grad, rtol=1e-12, atol=0)


def _mlp(max_spikes: int, reset: str = "subtract") -> SpikingMLP:
    torch.manual_seed(0)
    model = SpikingMLP(MLPConfig(sizes=[16, 12, 4], steps=10, reset=reset, max_spikes=max_spikes))
    with torch.no_grad():
        model.linears[0].weight.mul_(8.0)
    return model


def _inputs(steps: int = 10, batch: int = 5, n: int = 16) -> torch.Tensor:
    return (torch.rand(steps, batch, n, generator=torch.Generator().manual_seed(1)) < 0.5).float()


def test_the_default_is_one_spike_per_step_bit_for_bit():
    x = _inputs()
    default, one = _mlp(1), SpikingMLP(MLPConfig(sizes=[16, 12, 4], steps=10, reset="subtract"))
    one.load_state_dict(default.state_dict())
    assert MLPConfig().max_spikes == 1 and RNNConfig().max_spikes == 1
    assert torch.equal(default.hidden_spikes(x)[0], one.hidden_spikes(x)[0])
    assert default.hidden_spikes(x)[0].max() == 1 and _mlp(31).hidden_spikes(x)[0].max() > 1


def test_mlp_counts_flow_into_the_readout_with_gradients_to_weights_and_thresholds():
    model, x = _mlp(31), _inputs()
    counts = model.hidden_spikes(x)[0]
    assert counts.max() > 3 and torch.equal(counts, counts.round())
    model(x).sum().backward()
    assert model.linears[0].weight.grad.abs().sum() > 0
    assert model.neurons[0].threshold.grad.abs().sum() > 0 and model.neurons[0].leak_logit.grad.abs().sum() > 0


def test_rnn_sends_counts_through_its_recurrence_and_readout():
    torch.manual_seed(0)
    model = SpikingRNN(RNNConfig.mnist1d(hidden=10, reset="subtract", max_spikes=7))
    with torch.no_grad():
        model.fc_in.weight.mul_(6.0)
    x = model.encode(torch.rand(4, 40, generator=torch.Generator().manual_seed(2)))
    hidden = model.hidden_spikes(x)[0]
    assert 1 < hidden.max() <= 7
    model(x).sum().backward()
    assert model.rec.weight.grad.abs().sum() > 0 and model.threshold.grad.abs().sum() > 0


@pytest.mark.parametrize("make", [lambda **kw: SpikingMLP(MLPConfig(**kw)),
                                  lambda **kw: SpikingRNN(RNNConfig(**kw))], ids=["mlp", "rnn"])
@pytest.mark.parametrize("kw, needle", [({"max_spikes": 2, "reset": "zero"}, "needs reset 'subtract'"),
                                        ({"max_spikes": 0, "reset": "subtract"}, "whole number in 1..255, got 0"),
                                        ({"max_spikes": 256, "reset": "subtract"}, "in 1..255, got 256"),
                                        ({"max_spikes": 2.0, "reset": "subtract"}, "whole number")])
def test_configs_refuse_counts_they_cannot_mean(make, kw, needle):
    with pytest.raises(ValueError, match=needle):
        make(**kw)


def test_training_and_both_interpreters_share_one_count_function():
    assert simulate.spike_count is neurons.spike_count
    assert torch_model.count_fn is neurons.count_fn
