"""sinabs frontend: converted graphs reproduce sinabs' own spikes, and what st2chip cannot express is refused."""

import dataclasses
import warnings

import nir
import numpy as np
import pytest
import sinabs
import sinabs.layers as sl
import torch
from sinabs.activation import MaxSpike, MembraneReset, MembraneSubtract, SingleSpike
from torch import nn

import st2chip
from st2chip.cli.main import main
from st2chip.converters.frontend import finish
from st2chip.converters.registry import EXPORT_DT, converter
from st2chip.converters.sinabs import DEFAULT_DT, NAME, repair, to_nir
from st2chip.errors import InputError

B, T, SIDE = 3, 16, 10
CNN_LAYERS = ("1", "4", "7")


def cnn(seed: int = 0, **neuron) -> nn.Sequential:
    """Conv2d -> IAFSqueeze -> SumPool2d -> Conv2d -> IAFSqueeze -> Flatten -> Linear -> IAFSqueeze, weights that make
    every layer spike about every third step."""
    torch.manual_seed(seed)
    iaf = lambda: sl.IAFSqueeze(batch_size=B, **neuron)  # noqa: E731
    net = nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), iaf(), sl.SumPool2d(2), nn.Conv2d(4, 4, 3), iaf(),
                        nn.Flatten(), nn.Linear(16, 3), iaf())
    with torch.no_grad():
        net[0].weight.abs_().mul_(0.4)
        net[3].weight.abs_().mul_(0.25)
        net[3].bias.fill_(-0.1)
        net[6].weight.abs_().mul_(0.2)
    return net


def frames(seed: int = 0) -> torch.Tensor:
    """Input spikes ``(B * T, 1, SIDE, SIDE)``, as sinabs' squeezed layers take them."""
    rng = np.random.default_rng(seed)
    return torch.as_tensor((rng.random((B * T, 1, SIDE, SIDE)) < 0.3).astype(np.float32))


def sinabs_spikes(net: nn.Module, x: torch.Tensor, names) -> dict[str, np.ndarray]:
    """Each named layer's output spikes ``(B, T, n)`` from sinabs' own forward pass."""
    seen = {}
    hooks = [dict(net.named_modules())[n].register_forward_hook(
        lambda _m, _i, out, n=n: seen.__setitem__(n, out.detach())) for n in names]
    sinabs.reset_states(net)
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    sinabs.reset_states(net)
    return {n: s.reshape(B, T, -1).numpy() for n, s in seen.items()}


def assert_spikes_equal(graph: nir.NIRGraph, net: nn.Module, x: torch.Tensor, names) -> None:
    ours = st2chip.simulate(graph, x.reshape(B, T, -1).numpy())
    theirs = sinabs_spikes(net, x, names)
    for name in names:
        assert theirs[name].sum() > 0, name  # every layer spikes: the comparison means something
        np.testing.assert_array_equal(ours.spikes[name], theirs[name], err_msg=name)


@pytest.mark.parametrize("neuron", [{"spike_fn": SingleSpike}, {"spike_fn": MaxSpike(1)},
                                    {"spike_fn": SingleSpike, "reset_fn": MembraneReset()}, {}],
                         ids=["single-subtract", "maxspike1", "single-reset-zero", "multispike-default"])
def test_cnn_spikes_equal_sinabs(neuron):
    net, x = cnn(**neuron), frames()
    conv = to_nir(net, x)
    assert_spikes_equal(conv.graph, net, x, CNN_LAYERS)
    reset = (conv.graph.nodes["1"].metadata or {}).get("reset")
    assert reset == (None if "reset_fn" in neuron else "subtract")
    assert conv.graph.metadata["dt"] == DEFAULT_DT == 1.0


def test_threshold_ties_fire_as_in_sinabs():
    """sinabs fires at v >= threshold; inputs of exactly the threshold must fire on st2chip's side too."""
    net = nn.Sequential(nn.Linear(2, 2, bias=False), sl.IAF(spike_fn=SingleSpike))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[0.5, 0.5], [1.0, 0.0]]))
    x = torch.ones(B, T, 2)
    conv = to_nir(net, x)
    ours = st2chip.simulate(conv.graph, x.numpy()).spikes["1"]
    sinabs.reset_states(net)
    with torch.no_grad():
        theirs = net(x).numpy()
    assert theirs.min() == 1 and np.array_equal(ours, theirs)


@pytest.mark.parametrize("kw", [{"norm_input": True}, {"norm_input": False}, {"tau_syn": 3.0},
                                {"train_alphas": True}],
                         ids=["norm-input", "no-norm-input", "tau-syn", "train-alphas"])
def test_lif_and_explLeak_equal_sinabs(kw):
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(6, 5), sl.LIF(tau_mem=torch.linspace(2.0, 9.0, 5), spike_fn=SingleSpike, **kw),
                        nn.Linear(5, 2), sl.ExpLeak(tau_mem=4.0))
    with torch.no_grad():
        net[0].weight.abs_().mul_(4.0 if kw.get("norm_input", True) else 1.0)
    x = torch.as_tensor((np.random.default_rng(0).random((B, T, 6)) < 0.4).astype(np.float32))
    conv = to_nir(net, x)
    assert type(conv.graph.nodes["1"]).__name__ == ("CubaLIF" if "tau_syn" in kw else "LIF")
    assert_spikes_equal(conv.graph, net, x, ["1"])
    sinabs.reset_states(net)
    with torch.no_grad():
        readout = net(x)[:, -1].numpy()
    np.testing.assert_allclose(st2chip.simulate(conv.graph, x.numpy()).scores, readout, rtol=1e-5, atol=1e-5)


def test_multispike_that_emits_several_spikes_is_refused():
    net = cnn()
    with torch.no_grad():
        net[6].weight.mul_(10)
    with pytest.raises(InputError, match=r"layer '7' \(IAFSqueeze\): spike_fn=MultiSpike emits up to \d+ spikes"):
        to_nir(net, frames())


def test_voltage_floor_refused_only_where_it_changes_spikes():
    net = cnn(spike_fn=SingleSpike, min_v_mem=-1.0)
    with torch.no_grad():
        net[0].weight.normal_(0.1, 0.5)  # negative weights drive layer '1' below the floor
    with pytest.raises(InputError, match=r"layer '1' \(IAFSqueeze\): min_v_mem = -1 changes its spikes"):
        to_nir(net, frames())
    net = cnn(spike_fn=SingleSpike, min_v_mem=-100.0)
    conv = to_nir(net, frames())
    assert any("min_v_mem dropped" in n for n in conv.notes)
    assert_spikes_equal(conv.graph, net, frames(), CNN_LAYERS)


def test_options_without_exact_form_are_refused_at_once():
    net = nn.Sequential(nn.Linear(3, 3), sl.IAF(reset_fn=MembraneReset(reset_value=0.5)),
                        nn.Linear(3, 3), sl.IAF(reset_fn=MembraneSubtract(subtract_value=2.0)),
                        nn.Linear(3, 3), sl.IAF(tau_syn=2.0), nn.ReLU())
    with pytest.raises(InputError) as err:
        to_nir(net, torch.zeros(1, 4, 3))
    text = str(err.value)
    assert "layer '1' (IAF): reset_fn=MembraneReset(reset_value=0.5)" in text
    assert "layer '3' (IAF): reset_fn=MembraneSubtract(subtract_value=2.0)" in text
    assert "layer '5' (IAF): IAF with tau_syn" in text and "layer '6' (ReLU): not converted" in text


def _writable(graph: nir.NIRGraph) -> nir.NIRGraph:
    """What a sinabs user does before nir.write: tensors -> numpy, Conv2d input shapes filled (infer_types)."""
    for node in graph.nodes.values():
        for f in dataclasses.fields(node):
            value = getattr(node, f.name)
            if isinstance(value, torch.Tensor):
                setattr(node, f.name, value.detach().numpy())
    graph.infer_types()
    return graph


def sinabs_file(path, net: nn.Module, x: torch.Tensor) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nir.write(path, _writable(sinabs.to_nir(net, x)))


def test_file_reads_as_sinabs_from_nir_does(tmp_path):
    """A file holds neither spike_fn nor min_v_mem: it is read as sinabs' from_nir reads it (MultiSpike, subtract,
    min_v_mem = -threshold), which gives sinabs' spikes while no step has two spikes and the floor is not reached."""
    net, x = cnn(min_v_mem=-1.0), frames()
    sinabs_file(tmp_path / "s.nir", net, x)
    graph, notes = repair(nir.read(tmp_path / "s.nir"), DEFAULT_DT)
    conv = finish(graph, dt=DEFAULT_DT, notes=notes)
    assert_spikes_equal(conv.graph, net, x, CNN_LAYERS)
    assert any("reaches twice its threshold" in n for n in conv.notes)
    with pytest.raises(InputError, match="already converted from sinabs"):
        repair(conv.graph, DEFAULT_DT)


def test_registry_knows_sinabs():
    assert converter("sinabs").NAME == NAME and EXPORT_DT["sinabs"] == DEFAULT_DT


def test_cli_import_then_verify_sinabs_cnn(tmp_path, capsys):
    """Acceptance: a sinabs CNN export, `st2chip import --from sinabs` then `verify --inputs` exit 0, every layer
    spiking; the raw file without --dt is refused."""
    raw, canon, inputs = tmp_path / "x.nir", tmp_path / "m.nir", tmp_path / "x.npy"
    net, x = cnn(spike_fn=SingleSpike), frames()
    sinabs_file(raw, net, x)
    np.save(inputs, x.reshape(B, T, -1).numpy().astype(np.uint8))
    assert main(["import", "--from", "sinabs", str(raw), "-o", str(canon)]) == 0
    assert "dt = 1 s" in capsys.readouterr().out
    code = main(["verify", str(canon), "--inputs", str(inputs)])
    out = capsys.readouterr().out
    assert code == 0, out
    rates = {line.split()[0]: float(line.split()[1]) for line in out.splitlines() if line.split()[:1] in
             [[n] for n in CNN_LAYERS] and "%" in line and len(line.split()) > 5}
    assert set(rates) == set(CNN_LAYERS) and all(0 < r < 1 for r in rates.values()), out
    assert main(["verify", str(raw), "--inputs", str(inputs)]) == 2
    assert "--dt" in capsys.readouterr().err
