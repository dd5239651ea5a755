"""From each framework's .nir file to the chip by the CLI alone: import -> map -> verify --inputs -> energy --inputs."""

import dataclasses
import warnings

import nir
import numpy as np
import pytest
import torch

from st2chip.cli.main import main
from st2chip.converters.registry import EXPORT_DT, converter

N_IN = 10


def _writable(graph: nir.NIRGraph) -> nir.NIRGraph:
    """What a user does so that nir.write takes a raw export: 0-d and torch arrays -> 1-D numpy."""
    for node in graph.nodes.values():
        for f in dataclasses.fields(node):
            value = getattr(node, f.name)
            if isinstance(value, (np.ndarray, np.generic, torch.Tensor)) and f.name not in ("input_type", "output_type"):
                setattr(node, f.name, np.atleast_1d(np.asarray(value, dtype=np.float64)))
    return graph


def _norse_file(path):
    import norse.torch as norse_torch
    torch.manual_seed(0)
    net = norse_torch.SequentialState(torch.nn.Linear(N_IN, 8), norse_torch.LIFBoxCell(),
                                      torch.nn.Linear(8, 4), norse_torch.LIFBoxCell())
    with torch.no_grad():
        net[0].weight.normal_(1.0, 1.5)
        net[2].weight.normal_(1.5, 2.0)
    nir.write(path, _writable(norse_torch.to_nir(net, torch.zeros(1, N_IN))))


def _snntorch_file(path):
    import nirtorch
    import snntorch as snn
    from snntorch.export_nir import _extract_snntorch_module
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(N_IN, 8), snn.Leaky(beta=0.9, init_hidden=True, reset_mechanism="zero"),
                              torch.nn.Linear(8, 4), snn.Leaky(beta=0.8, threshold=0.7, init_hidden=True,
                                                               reset_mechanism="zero"))
    with torch.no_grad():
        net[0].weight.abs_().mul_(1.5)
        net[2].weight.abs_()
    # snntorch.export_to_nir builds this graph, then fails nir 1.0.8's type check on it (DESIGN.md)
    graph = nirtorch.extract_nir_graph(net, _extract_snntorch_module, torch.zeros(1, N_IN), model_name="snntorch",
                                       ignore_submodules_of=[snn.RLeaky, snn.RSynaptic])
    nir.write(path, _writable(graph))


def _spikingjelly_file(path):
    from spikingjelly.activation_based import functional, layer, neuron
    from spikingjelly.activation_based.nir_exchange import export_to_nir
    torch.manual_seed(0)
    net = torch.nn.Sequential(layer.Linear(N_IN, 8), neuron.LIFNode(tau=2.0), layer.Linear(8, 4), neuron.IFNode())
    with torch.no_grad():
        net[0].weight.mul_(6.0)
        net[2].weight.mul_(3.0)
    functional.set_step_mode(net, "m")
    nir.write(path, export_to_nir(net, torch.zeros(4, 1, N_IN)))


WRITERS = {"norse": _norse_file, "snntorch": _snntorch_file, "spikingjelly": _spikingjelly_file}


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_registry_dt_is_each_converters_own():
    for framework in WRITERS:
        assert converter(framework).DEFAULT_DT == EXPORT_DT[framework]
        assert converter(framework).NAME == framework


@pytest.mark.parametrize("framework", list(WRITERS))
def test_framework_file_to_verified_chip_run(framework, tmp_path, capsys):
    raw, canon = tmp_path / f"{framework}.nir", tmp_path / "model.nir"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        WRITERS[framework](raw)
    code, out, err = _run(capsys, "import", raw, "--from", framework, "-o", canon)
    assert code == 0, err
    assert f"dt = {EXPORT_DT[framework]:g} s" in out and "canonical NIR written" in out
    assert "warning" not in err  # the framework's quirks are absorbed: no tau-below-dt warning
    code, out, err = _run(capsys, "map", canon)
    assert code == 0 and f"dt={EXPORT_DT[framework]:g} s" in out, err
    x = tmp_path / "x.npy"
    np.save(x, (np.random.default_rng(0).random((3, 20, N_IN)) < 0.3).astype(np.uint8))
    code, out, err = _run(capsys, "verify", canon, "--inputs", x, "--json", tmp_path / "v.json")
    assert code == 0, out + err
    assert "reference vs lava (first 3 samples): spike agreement 100.000 %" in out and "(exact)" in out
    code, out, err = _run(capsys, "energy", canon, "--inputs", x, "-o", tmp_path / "energy")
    assert code == 0 and (tmp_path / "energy" / "energy.json").exists(), err


def test_tau_quirk_is_a_flag(tmp_path, capsys):
    """norse's dt/tau_inv quirk is told by --tau-quirk / --no-tau-quirk (the hint names the flag), for norse only."""
    raw = tmp_path / "norse.nir"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _norse_file(raw)
    # norse wrote tau = 1e-5 s; with dt = 1e-6 s that reads as seconds, and the note says how to say otherwise
    code, out, err = _run(capsys, "import", raw, "--from", "norse", "--dt", 1e-6, "-o", tmp_path / "s.nir")
    assert code == 0, err
    assert "kept as seconds" in out and "pass --tau-quirk" in out and "tau_quirk=" not in out
    code, out, err = _run(capsys, "import", raw, "--from", "norse", "--dt", 1e-6, "--tau-quirk", "-o",
                          tmp_path / "q.nir")
    assert code == 0 and "norse issue #411: to_nir wrote dt/tau_inv" in out, err
    code, out, err = _run(capsys, "import", raw, "--from", "norse", "--no-tau-quirk", "-o", tmp_path / "n.nir")
    assert "norse issue #411" not in out and "kept as seconds" not in out
    code, out, err = _run(capsys, "import", raw, "--from", "snntorch", "--tau-quirk", "-o", tmp_path / "x.nir")
    assert code == 2 and err.strip() == "st2chip: error: --tau-quirk applies to files from norse, not from snntorch"
