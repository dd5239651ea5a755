"""Export of models trained to send up to k spikes per step: ``metadata["max_spikes"] = k`` on the hidden neuron
nodes, and the float NIR reading (``st2chip simulate``) equal to the torch model count for count."""

import nir
import numpy as np
import torch

from st2chip.converters.mlp import mlp_to_nir
from st2chip.converters.rnn import rnn_to_nir
from st2chip.graph.nirfile import write_nir
from st2chip.graph.normalize import normalize
from st2chip.graph.simulate import simulate
from st2chip.learn.mlp import MLPConfig, SpikingMLP
from st2chip.learn.rnn import RNNConfig, SpikingRNN


def _compare(model, graph, x: torch.Tensor, layers: list[str], steps: int) -> None:
    """Counts of every hidden layer equal (several per step, so they mean something); scores equal to rounding
    (an integrating readout: T times the torch scores)."""
    traces = simulate(graph, x.permute(1, 0, 2).numpy())
    with torch.no_grad():
        hidden, scores = model.hidden_spikes(x), model(x).numpy()
    for name, counts in zip(layers, hidden):
        counts = counts.permute(1, 0, 2).numpy()
        assert counts.max() > 2 and 0.01 < (counts > 0).mean() < 0.9, name
        np.testing.assert_array_equal(traces.spikes[name], counts, err_msg=name)
    np.testing.assert_allclose(traces.scores / steps, scores, rtol=1e-9, atol=1e-9)


def test_mlp_with_counts_exports_max_spikes_and_simulates_as_trained(tmp_path):
    torch.manual_seed(0)
    model = SpikingMLP(MLPConfig(sizes=[16, 20, 12, 10], steps=40, encoding="sequence", reset="subtract",
                                 max_spikes=31))
    with torch.no_grad():
        for linear in model.linears[:-1]:
            linear.weight.mul_(6.0)
        for neuron in model.neurons:
            neuron.threshold.uniform_(0.4, 1.6)
            neuron.leak_logit.uniform_(-1.0, 4.0)
    model = model.double()
    raw = mlp_to_nir(model)
    for name in ("lif1", "lif2"):
        assert raw.nodes[name].metadata == {"reset": "subtract", "max_spikes": 31}
    graph = normalize(write_nir(raw, tmp_path / "m.nir"))
    values = torch.rand(8, 40, generator=torch.Generator().manual_seed(1))
    _compare(model, graph, model.encode(values).double(), ["lif1", "lif2"], 40)


def test_rnn_with_counts_exports_max_spikes_and_simulates_as_trained(tmp_path):
    torch.manual_seed(0)
    model = SpikingRNN(RNNConfig.mnist1d(hidden=24, reset="subtract", max_spikes=31))
    with torch.no_grad():
        model.threshold.uniform_(0.5, 1.5)
        model.leak_logit.uniform_(-1.0, 3.0)
        model.bias.uniform_(-0.2, 0.2)
        model.fc_in.weight.mul_(4.0)
        model.rec.weight.mul_(2.0)
    model = model.double()
    raw = rnn_to_nir(model)
    assert isinstance(raw.nodes["lif"], nir.CubaLIF)
    assert raw.nodes["lif"].metadata == {"reset": "subtract", "max_spikes": 31}
    graph = normalize(write_nir(raw, tmp_path / "rnn.nir"))
    values = torch.rand(8, 40, generator=torch.Generator().manual_seed(1))
    _compare(model, graph, model.encode(values).double(), ["lif"], 40)


def test_one_spike_per_step_writes_no_max_spikes():
    mlp = SpikingMLP(MLPConfig(sizes=[4, 3, 2], reset="subtract"))
    rnn = SpikingRNN(RNNConfig.mnist1d(hidden=3, reset="subtract"))
    assert mlp_to_nir(mlp).nodes["lif1"].metadata == {"reset": "subtract"}
    assert rnn_to_nir(rnn).nodes["lif"].metadata == {"reset": "subtract"}
