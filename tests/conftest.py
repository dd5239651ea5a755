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


@pytest.fixture(scope="session")
def snntorch_file():
    """Write a seeded, untrained snnTorch ``Linear -> Leaky -> Linear -> Leaky`` network (reset to zero) as
    snnTorch's own extractor writes it (``snntorch.export_to_nir`` builds this graph, then fails nir 1.0.8's
    type check on it: DESIGN.md), with 0-d and torch arrays made what ``nir.write`` takes."""
    def write(path, sizes=(64, 32, 10), seed=0, gain=2.0, threshold=1.0):
        import dataclasses
        import warnings

        import nir
        import nirtorch
        import numpy as np
        import snntorch as snn
        from snntorch.export_nir import _extract_snntorch_module
        torch.manual_seed(seed)
        n_in, hidden, n_out = sizes
        net = torch.nn.Sequential(torch.nn.Linear(n_in, hidden),
                                  snn.Leaky(beta=0.9, init_hidden=True, reset_mechanism="zero"),
                                  torch.nn.Linear(hidden, n_out),
                                  snn.Leaky(beta=0.8, threshold=threshold, init_hidden=True, reset_mechanism="zero"))
        with torch.no_grad():
            net[0].weight.mul_(gain)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = nirtorch.extract_nir_graph(net, _extract_snntorch_module, torch.zeros(1, n_in),
                                               model_name="snntorch", ignore_submodules_of=[snn.RLeaky, snn.RSynaptic])
        for node in graph.nodes.values():
            for f in dataclasses.fields(node):
                value = getattr(node, f.name)
                if isinstance(value, (np.ndarray, np.generic, torch.Tensor)) and f.name not in ("input_type",
                                                                                                  "output_type"):
                    setattr(node, f.name, np.atleast_1d(np.asarray(value, dtype=np.float64)))
        nir.write(path, graph)
        return path
    return write
