import torch

from st2chip.learn.neurons import SLIF


def test_update_equations_by_hand():
    neuron = SLIF(2, threshold=1.0, leak=0.5)
    with torch.no_grad():
        neuron.threshold.copy_(torch.tensor([1.0, 0.7]))
    neuron.record_v = True
    current = torch.tensor([[[0.6, 0.6]], [[0.6, 0.6]], [[0.6, 0.6]]])  # (T=3, B=1, n=2)
    spikes = neuron(current)
    # neuron 0: v = 0.6, 0.9, 1.05 -> spike at t=2, reset to 0
    # neuron 1: v = 0.6, 0.9 > 0.7 -> spike at t=1; then v = 0 + 0.6 = 0.6
    assert spikes[:, 0, 0].tolist() == [0.0, 0.0, 1.0]
    assert spikes[:, 0, 1].tolist() == [0.0, 1.0, 0.0]
    torch.testing.assert_close(neuron.last_v[:, 0, 1], torch.tensor([0.6, 0.0, 0.6]))


def test_reset_by_subtraction():
    neuron = SLIF((), threshold=1.0, leak=0.5, reset="subtract")
    neuron.record_v = True
    neuron(torch.full((2, 1), 1.5))
    torch.testing.assert_close(neuron.last_v[:, 0], torch.tensor([0.5, 0.75]))


def test_gradient_reaches_threshold_and_leak():
    torch.manual_seed(0)
    neuron = SLIF(8)
    out = neuron(torch.rand(6, 4, 8) * 1.5).sum()
    out.backward()
    assert neuron.threshold.grad is not None and neuron.threshold.grad.abs().sum() > 0
    assert neuron.leak_logit.grad is not None and neuron.leak_logit.grad.abs().sum() > 0


def test_plain_lif_is_frozen_and_shared():
    neuron = SLIF.plain(threshold=0.8, leak=0.9)
    assert neuron.is_plain and neuron.threshold.shape == ()
    assert not any(p.requires_grad for p in neuron.parameters())
