"""Rockpool frontend: converted graphs reproduce Rockpool's own spikes, per-layer dt included; the rest is refused."""

import dataclasses
import warnings

import nir
import numpy as np
import pytest
import torch
from rockpool.nn.combinators import Sequential
from rockpool.nn.modules import ExpSynTorch, LIFNeuronTorch, LIFTorch, LinearTorch
from rockpool.nn.modules.torch.nir import to_nir as rockpool_to_nir

import st2chip
from st2chip.cli.main import main
from st2chip.converters.frontend import finish
from st2chip.converters.registry import EXPORT_DT, converter
from st2chip.converters.rockpool import DEFAULT_DT, NAME, repair, step_ratio, to_nir
from st2chip.errors import InputError
from st2chip.graph.nirfile import read_graph

B, T, N_IN = 3, 25, 6
SPIKING = ("1_LIFTorch", "3_LIFNeuronTorch")


def net(seed: int = 0, *, scale: float = 2.0, bias: float = 0.05, rec: bool = False, **lif) -> Sequential:
    """Linear -> LIFTorch (1 ms) -> Linear -> LIFNeuronTorch (2 ms: another dt per layer) -> Linear -> ExpSynTorch."""
    torch.manual_seed(seed)
    model = Sequential(LinearTorch((N_IN, 8), has_bias=False),
                       LIFTorch(8, tau_mem=0.02, tau_syn=0.01, bias=bias, has_rec=rec, **lif),
                       LinearTorch((8, 4)), LIFNeuronTorch(4, tau_mem=0.03, dt=2e-3, bias=bias, **lif),
                       LinearTorch((4, 2), has_bias=False), ExpSynTorch(2, tau=0.05))
    with torch.no_grad():
        model[0].weight.abs_().mul_(scale)
        model[2].weight.abs_().mul_(scale)
        if rec:
            model[1].w_rec.mul_(0.5)
    return model


def spikes_in(seed: int = 0) -> torch.Tensor:
    return torch.as_tensor((np.random.default_rng(seed).random((B, T, N_IN)) < 0.4).astype(np.float32))


def assert_equal_to_rockpool(graph: nir.NIRGraph, model: Sequential, x: torch.Tensor) -> None:
    model.reset_state()
    out, _, record = model(x, record=True)
    ours = st2chip.simulate(graph, x.numpy())
    for name in SPIKING:
        theirs = record[f"{name}_output"].detach().numpy()
        assert 0 < theirs.sum() and theirs.max() == 1, name
        np.testing.assert_array_equal(ours.spikes[name], theirs, err_msg=name)
    np.testing.assert_allclose(ours.scores, out[:, -1].detach().numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kw", [{"max_spikes_per_dt": 1}, {"scale": 0.08}, {"rec": True, "max_spikes_per_dt": 1}],
                         ids=["max-one-spike", "multi-spike-unused", "recurrent"])
def test_model_spikes_equal_rockpool(kw):
    model, x = net(**kw), spikes_in()
    conv = to_nir(model, x)
    assert_equal_to_rockpool(conv.graph, model, x)
    node = conv.graph.nodes["1_LIFTorch"]
    assert node.metadata["reset"] == "subtract" and np.all(node.v_leak != 0)  # the bias the export drops
    assert ("1_LIFTorch.rec" in conv.graph.nodes) == bool(kw.get("rec"))


def test_several_spikes_per_step_refused():
    with pytest.raises(InputError, match=r"module '1_LIFTorch': emits up to \d+ spikes in one step"):
        to_nir(net(scale=4.0), spikes_in())


def test_unconvertible_options_refused_at_once():
    model = Sequential(LinearTorch((3, 3)), LIFTorch(3, noise_std=0.1), LinearTorch((3, 3)), torch.nn.ReLU())
    with pytest.raises(InputError) as err:
        to_nir(model, torch.zeros(1, 4, 3))
    assert "noise_std = 0.1" in str(err.value) and "'3_ReLU' (TorchModulePatch): not converted" in str(err.value)


def test_step_ratio_recovers_each_layers_dt():
    tau = np.array([0.01, 0.02, 0.5])
    for dt in (1e-4, 1e-3, 2e-3):
        r = tau * np.exp(-dt / tau) / dt
        np.testing.assert_allclose(step_ratio("n", "r", r) * tau, dt, rtol=1e-12)


def _writable(graph: nir.NIRGraph) -> nir.NIRGraph:
    for node in graph.nodes.values():
        for f in dataclasses.fields(node):
            value = getattr(node, f.name)
            if isinstance(value, (torch.Tensor, np.ndarray)) and f.name not in ("input_type", "output_type"):
                setattr(node, f.name, np.atleast_1d(np.asarray(value.detach() if hasattr(value, "detach") else value,
                                                               dtype=np.float64)))
    return graph


def rockpool_file(path, model: Sequential) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nir.write(path, _writable(rockpool_to_nir(model, torch.zeros(1, N_IN))))


def test_file_with_two_dts_equals_rockpool(tmp_path):
    """Rockpool's export keeps each layer's dt only inside r: the file alone gives Rockpool's spikes (no bias)."""
    model, x = net(scale=0.08, bias=0.0), spikes_in()
    rockpool_file(tmp_path / "r.nir", model)
    graph, notes = repair(read_graph(tmp_path / "r.nir"), DEFAULT_DT)  # nir.read type-checks: [1, 6] -> [6] fails
    conv = finish(graph, dt=DEFAULT_DT, notes=notes)
    assert_equal_to_rockpool(conv.graph, model, x)
    assert any("Rockpool's dt 0.002 s solved from tau and r" in n for n in conv.notes)
    with pytest.raises(InputError, match="already converted from Rockpool"):
        repair(conv.graph, DEFAULT_DT)


def test_registry_knows_rockpool():
    assert converter("rockpool").NAME == NAME and EXPORT_DT["rockpool"] == DEFAULT_DT


def test_cli_import_then_verify(tmp_path, capsys):
    raw, canon, inputs = tmp_path / "r.nir", tmp_path / "m.nir", tmp_path / "x.npy"
    rockpool_file(raw, net(scale=0.08, bias=0.0))
    np.save(inputs, spikes_in().numpy().astype(np.uint8))
    assert main(["import", "--from", "rockpool", str(raw), "-o", str(canon)]) == 0
    assert "dt = 0.001 s" in capsys.readouterr().out
    code = main(["verify", str(canon), "--inputs", str(inputs)])
    assert code == 0, capsys.readouterr().out
