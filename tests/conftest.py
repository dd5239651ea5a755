import pytest
import torch

from st2chip.learn.data import load_digits_split, rate_encode
from st2chip.learn.mlp import MLPConfig, SpikingMLP


@pytest.fixture(scope="session")
def digits():
    return load_digits_split()


@pytest.fixture
def random_mlp():
    """An untrained sLIF MLP with spread-out thresholds and leaks (so folding and grouping matter)."""
    def make(sizes=(64, 24, 10), steps=8, seed=0):
        torch.manual_seed(seed)
        model = SpikingMLP(MLPConfig(sizes=list(sizes), steps=steps))
        with torch.no_grad():
            for lin in model.linears:
                lin.weight.mul_(3.0)
            for neuron in model.neurons:
                neuron.threshold.uniform_(0.4, 1.6)
                neuron.leak_logit.uniform_(-1.0, 4.0)
        return model
    return make


@pytest.fixture
def digit_spikes(digits):
    def make(n=6, steps=8):
        return rate_encode(digits[1].x[:n], steps).numpy().transpose(1, 0, 2)
    return make
