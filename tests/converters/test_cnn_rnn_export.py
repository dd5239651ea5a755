"""NIR export of the CNN and the RNN: the float NIR reading equals the torch model spike for spike."""

import nir
import numpy as np
import pytest
import torch

from st2chip.converters.cnn import cnn_to_nir
from st2chip.converters.rnn import rnn_to_nir
from st2chip.errors import InputError
from st2chip.graph.nirfile import write_nir
from st2chip.graph.normalize import normalize
from st2chip.graph.simulate import simulate
from st2chip.learn.cnn import CNNConfig, SpikingCNN
from st2chip.learn.rnn import RNNConfig, SpikingRNN


def _random_cnn(reset: str, seed: int = 0) -> SpikingCNN:
    torch.manual_seed(seed)
    model = SpikingCNN(CNNConfig(reset=reset, steps=10))
    with torch.no_grad():
        for conv in model.convs:
            conv.weight.mul_(2.0)
        for neuron in model.neurons:
            neuron.threshold.uniform_(0.5, 1.5)
            neuron.leak_logit.uniform_(-1.0, 3.0)
    return model.double()


def _random_rnn(config: RNNConfig, seed: int = 0) -> SpikingRNN:
    torch.manual_seed(seed)
    model = SpikingRNN(config)
    with torch.no_grad():
        model.threshold.uniform_(0.5, 1.5)
        model.leak_logit.uniform_(-1.0, 3.0)
        model.syn_leak_logit.uniform_(-1.0, 2.0)
        model.bias.uniform_(-0.2, 0.2)
        model.rec.weight.mul_(3.0)
    return model.double()


def _compare(model, graph, x: torch.Tensor, layers: list[str], scale: float) -> None:
    """Spikes of every hidden layer equal; scores equal to float rounding (``scale``: T for an I readout)."""
    traces = simulate(graph, x.permute(1, 0, 2).numpy())
    with torch.no_grad():
        hidden = model.hidden_spikes(x)
        scores = model(x).numpy()
    assert len(hidden) == len(layers)
    for name, spikes in zip(layers, hidden):
        torch_spikes = spikes.permute(1, 0, 2).numpy()
        assert 0.01 < torch_spikes.mean() < 0.9, name  # the comparison means something
        np.testing.assert_array_equal(traces.spikes[name], torch_spikes, err_msg=name)
    np.testing.assert_allclose(traces.scores / scale, scores, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("reset", ["zero", "subtract"])
def test_cnn_graph_matches_torch(reset, digits, tmp_path):
    model = _random_cnn(reset)
    raw = cnn_to_nir(model)
    assert [type(n).__name__ for n in raw.nodes.values()] == [
        "Input", "Conv2d", "LIF", "SumPool2d", "Conv2d", "LIF", "SumPool2d", "Flatten", "Affine", "I", "Output"]
    assert list(raw.nodes["input"].input_type["input"]) == [1, 8, 8]
    assert raw.nodes["lif1"].tau.shape == (8, 8, 8) and raw.nodes["lif2"].v_threshold.shape == (16, 4, 4)
    assert list(raw.nodes["flatten"].input_type["input"]) == [16, 2, 2]
    assert raw.nodes["conv1"].weight.shape == (8, 1, 3, 3) and tuple(raw.nodes["conv2"].input_shape) == (4, 4)
    assert raw.metadata == {"dt": 1e-3, "steps": 10, "encoding": "rate", "producer": "st2chip", "model": "cnn"}
    assert raw.nodes["lif1"].metadata == ({"reset": "subtract"} if reset == "subtract" else {})
    graph = normalize(write_nir(raw, tmp_path / "cnn.nir"))
    _compare(model, graph, model.encode(digits[1].x[:12]).double(), ["lif1", "lif2"], model.config.steps)


def test_cnn_parameters_map_back(tmp_path):
    model = _random_cnn("zero")
    graph = nir.read(write_nir(cnn_to_nir(model, dt=5e-4), tmp_path / "cnn.nir"))
    lif = graph.nodes["lif2"]
    beta = 1 - graph.metadata["dt"] / lif.tau
    np.testing.assert_allclose(beta, np.broadcast_to(model.neurons[1].beta.detach().numpy(), (16, 4, 4)))
    np.testing.assert_allclose(lif.v_threshold[:, 1, 2], model.neurons[1].theta.detach().numpy().ravel())
    np.testing.assert_array_equal(graph.nodes["conv1"].bias, model.convs[0].bias.detach().numpy())


@pytest.mark.parametrize("reset", ["zero", "subtract"])
@pytest.mark.parametrize("readout", ["leaky", "integrate"])
def test_rnn_graph_on_digit_rows_matches_torch(reset, readout, digits, tmp_path):
    model = _random_rnn(RNNConfig.digits(hidden=40, reset=reset, readout=readout))
    raw = rnn_to_nir(model)
    assert ("lif", "rec") in raw.edges and ("rec", "lif") in raw.edges
    assert isinstance(raw.nodes["lif"], nir.CubaLIF)
    assert isinstance(raw.nodes["readout"], nir.LI if readout == "leaky" else nir.I)
    assert raw.nodes["lif"].metadata == ({"reset": "subtract"} if reset == "subtract" else {})
    assert raw.metadata["encoding"] == "rows" and raw.metadata["model"] == "rnn"
    assert (raw.metadata["levels"], raw.metadata["hold"], raw.metadata["steps"]) == (4, 2, 16)
    graph = normalize(write_nir(raw, tmp_path / "rnn.nir"))
    scale = model.config.steps if readout == "integrate" else 1
    _compare(model, graph, model.encode(digits[1].x[:12]).double(), ["lif"], scale)


def test_rnn_graph_on_mnist1d_sequences_matches_torch(tmp_path):
    model = _random_rnn(RNNConfig.mnist1d(hidden=32, reset="subtract"))
    raw = rnn_to_nir(model)
    assert raw.metadata["encoding"] == "sequence" and raw.metadata["steps"] == 40 and "hold" not in raw.metadata
    graph = normalize(write_nir(raw, tmp_path / "rnn.nir"))
    values = np.random.default_rng(0).random((10, 40)).astype(np.float32)
    _compare(model, graph, model.encode(values).double(), ["lif"], 40)  # integrating readout: T = 40


def test_rnn_parameters_map_back():
    model = _random_rnn(RNNConfig.digits(hidden=8))
    graph = rnn_to_nir(model, dt=2e-3)
    lif, dt = graph.nodes["lif"], 2e-3
    np.testing.assert_allclose(1 - dt / lif.tau_syn, model.alpha.detach().numpy())
    np.testing.assert_allclose(1 - dt / lif.tau_mem, model.beta.detach().numpy())
    np.testing.assert_allclose((dt / lif.tau_syn) * lif.w_in, 1.0)
    np.testing.assert_allclose((dt / lif.tau_mem) * lif.r, 1.0)
    np.testing.assert_allclose((dt / lif.tau_mem) * lif.v_leak, model.bias.detach().numpy())
    np.testing.assert_array_equal(graph.nodes["fc_in"].bias, 0.0)
    np.testing.assert_array_equal(graph.nodes["rec"].bias, 0.0)


def test_nan_parameters_are_refused():
    cnn, rnn = _random_cnn("zero"), _random_rnn(RNNConfig.digits(hidden=8))
    with torch.no_grad():
        cnn.convs[1].weight[0, 0, 0, 0] = float("nan")
        rnn.rec.weight[0, 0] = float("inf")
    with pytest.raises(InputError, match="convs.1.weight"):
        cnn_to_nir(cnn)
    with pytest.raises(InputError, match="rec.weight"):
        rnn_to_nir(rnn)
