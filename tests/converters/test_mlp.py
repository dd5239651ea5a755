"""NIR export: round trip through nir.write/nir.read and numerical equality with torch."""

import nir
import numpy as np
import torch

from st2chip.converters.mlp import mlp_to_nir
from st2chip.graph.nirfile import write_nir
from st2chip.graph.normalize import normalize
from st2chip.graph.simulate import simulate


def test_parameter_mapping_round_trip(random_mlp, tmp_path):
    model = random_mlp()
    path = write_nir(mlp_to_nir(model, dt=1e-3), tmp_path / "m.nir")
    graph = nir.read(path)
    lif = graph.nodes["lif1"]
    beta = 1 - graph.metadata["dt"] / lif.tau
    np.testing.assert_allclose(beta, model.neurons[0].beta.detach().double().numpy(), rtol=1e-6)
    np.testing.assert_allclose(lif.v_threshold, model.neurons[0].theta.detach().double().numpy(), rtol=1e-6)
    assert graph.metadata["steps"] == model.config.steps


def test_float_simulation_matches_torch(random_mlp, digit_spikes, tmp_path):
    model = random_mlp()
    x = digit_spikes(8)
    graph = normalize(write_nir(mlp_to_nir(model), tmp_path / "m.nir"))
    traces = simulate(graph, x)
    with torch.no_grad():
        inp = torch.as_tensor(x, dtype=torch.float32).permute(1, 0, 2)
        hidden = model.hidden_spikes(inp)[0].permute(1, 0, 2).numpy()
        scores = model(inp).numpy()
    agreement = np.mean(traces.spikes["lif1"] == hidden)
    assert agreement > 0.999  # float32 torch vs float64 NIR simulation
    np.testing.assert_allclose(traces.scores / model.config.steps, scores, atol=1e-3)
