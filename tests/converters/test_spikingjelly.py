"""SpikingJelly frontend: the converted graph reproduces SpikingJelly's spikes, files and chips agree."""

import copy
import warnings

import nir
import numpy as np
import pytest
import torch

pytest.importorskip("spikingjelly")
from spikingjelly.activation_based import functional, layer, neuron  # noqa: E402
from spikingjelly.activation_based.nir_exchange import export_to_nir  # noqa: E402

from st2chip.chip.lower import lower  # noqa: E402
from st2chip.converters.frontend import finish  # noqa: E402
from st2chip.converters.spikingjelly import DEFAULT_DT, NAME, repair, to_nir  # noqa: E402
from st2chip.errors import InputError  # noqa: E402
from st2chip.graph.nirfile import read_graph  # noqa: E402
from st2chip.graph.normalize import TimeConstantWarning, normalize  # noqa: E402
from st2chip.graph.simulate import simulate  # noqa: E402

N_IN, B, T = 10, 4, 20


def make_net(seed: int = 0, *, decay_input: bool = True, v_reset: float | None = 0.0, scale: float = 6.0,
             mode: str = "m") -> torch.nn.Sequential:
    """Linear(10, 8) -> LIFNode(tau=2) -> Linear(8, 4) -> IFNode, weights scaled so that both layers spike."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(layer.Linear(N_IN, 8), neuron.LIFNode(tau=2.0, decay_input=decay_input, v_reset=v_reset),
                              layer.Linear(8, 4), neuron.IFNode(v_reset=v_reset))
    with torch.no_grad():
        net[0].weight.mul_(scale)
        net[2].weight.mul_(scale / 2)
    functional.set_step_mode(net, mode)
    return net


def input_spikes(seed: int = 0, batch: int = B, steps: int = T) -> np.ndarray:
    return (np.random.default_rng(seed).random((batch, steps, N_IN)) < 0.3).astype(np.uint8)


def run_sj(net: torch.nn.Sequential, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hidden and output spikes ``(B, T, n)`` of SpikingJelly itself (multi-step mode)."""
    functional.reset_net(net)
    with torch.no_grad():
        hidden = net[1](net[0](torch.as_tensor(x, dtype=torch.float32).permute(1, 0, 2)))
        out = net[3](net[2](hidden))
    functional.reset_net(net)
    return hidden.permute(1, 0, 2).numpy(), out.permute(1, 0, 2).numpy()


def convert(net: torch.nn.Sequential, **kw):
    return to_nir(net, torch.zeros(T, B, N_IN), **kw)


@pytest.mark.parametrize("kw", [{}, {"decay_input": False}, {"v_reset": -0.3}, {"v_reset": None}],
                         ids=["lif", "no-decay-input", "v_reset", "soft-reset"])
def test_spike_counts_equal_spikingjelly(kw):
    net = make_net(**kw)
    x = input_spikes()
    conv = convert(net)
    assert conv.graph.metadata["dt"] == DEFAULT_DT and conv.graph.metadata["producer"] == NAME
    traces = simulate(conv.graph, x)
    hidden, out = run_sj(net, x)
    assert hidden.mean() > 0.05 and out.sum() > 10, "test needs activity"
    np.testing.assert_array_equal(traces.spikes["_1"], hidden)  # spike for spike, not only counts
    np.testing.assert_array_equal(traces.spikes["_3"].sum(axis=1), out.sum(axis=1))
    np.testing.assert_array_equal(traces.scores, out.sum(axis=1))


def test_threshold_ties_fire_as_in_spikingjelly():
    """Two inputs of 0.5 reach IFNode's threshold 1.0 exactly: SpikingJelly fires (>=), st2chip only with the nudge."""
    net = torch.nn.Sequential(layer.Linear(2, 1, bias=False), neuron.IFNode())
    with torch.no_grad():
        net[0].weight.fill_(0.5)
    functional.set_step_mode(net, "m")
    x = np.array([[[1, 1], [0, 0], [1, 0], [1, 0], [0, 1]]], dtype=np.uint8)
    functional.reset_net(net)
    with torch.no_grad():
        sj = net(torch.as_tensor(x, dtype=torch.float32).permute(1, 0, 2)).permute(1, 0, 2).numpy()
    assert sj[0, :, 0].tolist() == [1, 0, 0, 1, 0]
    conv = to_nir(net, torch.zeros(5, 1, 2))
    np.testing.assert_array_equal(simulate(conv.graph, x).spikes["_1"], sj)
    assert any("one float64 ulp" in n for n in conv.notes)
    strict = to_nir(net, torch.zeros(5, 1, 2), threshold_ge=False)
    assert simulate(strict.graph, x).spikes["_1"][0, :, 0].tolist() == [0, 0, 1, 0, 0]  # NIR's strict reading


def test_single_step_model_exports_the_same_graph():
    a = convert(make_net(mode="m")).graph
    b = to_nir(make_net(mode="s"), torch.zeros(B, N_IN)).graph
    assert list(a.nodes) == list(b.nodes) and a.edges == b.edges
    for name in a.nodes:
        for key, value in a.nodes[name].__dict__.items():
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(value, getattr(b.nodes[name], key))


def _assert_same_graph(a: nir.NIRGraph, b: nir.NIRGraph):
    assert list(a.nodes) == list(b.nodes) and sorted(a.edges) == sorted(b.edges)
    for name, node in a.nodes.items():
        other = b.nodes[name]
        assert type(node) is type(other), name
        for key, value in node.__dict__.items():
            if isinstance(value, np.ndarray) and key not in ("input_type", "output_type"):
                np.testing.assert_array_equal(value, getattr(other, key), err_msg=f"{name}.{key}")
    assert a.metadata["dt"] == b.metadata["dt"]


def test_file_round_trip_and_repair_of_raw_export(tmp_path):
    net = make_net(v_reset=0.1)
    conv = convert(net, steps=T)
    nir.write(tmp_path / "canonical.nir", conv.graph)
    back = normalize(read_graph(tmp_path / "canonical.nir"))  # nir.read orders nodes by name
    _assert_same_graph(back, conv.graph)
    assert back.metadata["steps"] == T and back.metadata["threshold_rule"] == conv.graph.metadata["threshold_rule"]

    raw = export_to_nir(net, torch.zeros(T, B, N_IN))
    before = copy.deepcopy(raw)
    nir.write(tmp_path / "raw.nir", raw)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TimeConstantWarning)  # dt 1e-4 is right: no tau < dt warning
        repaired, notes = repair(read_graph(tmp_path / "raw.nir"), 1e-4)
        again = finish(repaired, dt=1e-4, notes=notes, producer=NAME)
    _assert_same_graph(again.graph, conv.graph)
    np.testing.assert_array_equal(raw.nodes["_3"].v_threshold, before.nodes["_3"].v_threshold)  # input untouched
    assert len(notes) == 4  # two shifts, two nudges (dt is noted once, by finish)
    twice, notes2 = repair(repaired, 1e-4)  # idempotent: no second nudge
    _assert_same_graph(twice, repaired)
    assert notes2 == []


def test_wrong_dt_is_refused_naming_the_node():
    raw = export_to_nir(make_net(), torch.zeros(T, B, N_IN), dt=1e-3)
    with pytest.raises(InputError, match=r"node '_3' \(IF\).*dt = 0.001"):
        repair(raw, 1e-4)
    repair(raw, 1e-3)


def test_chip_reference_equals_lava():
    from st2chip.targets import engine, lava

    conv = convert(make_net())
    chip = lower(conv.graph, decay_groups=1)
    x = {name: input_spikes(1, batch=2, steps=12) for name, node in conv.graph.nodes.items()
         if isinstance(node, nir.Input)}
    ref, lav = engine.run(chip, x), lava.run(chip, x)
    assert sum(int(s.sum()) for s in ref.spikes.values()) > 0, "test needs activity"
    assert ref.spikes.keys() == lav.spikes.keys()
    for name in ref.spikes:
        np.testing.assert_array_equal(ref.spikes[name], lav.spikes[name], err_msg=name)
    np.testing.assert_array_equal(ref.scores, lav.scores)


@pytest.mark.parametrize("module, match", [
    (neuron.QIFNode(), r"layer '1' \(QIFNode\)"),
    (torch.nn.ReLU(), r"layer '1' \(ReLU\)"),
], ids=["qif", "relu"])
def test_unsupported_layer_is_one_clear_error(module, match):
    net = torch.nn.Sequential(layer.Linear(N_IN, 8), module, layer.Linear(8, 4), neuron.IFNode())
    with pytest.raises(InputError, match=match):
        to_nir(net, torch.zeros(B, N_IN))


def test_neuron_subclass_is_refused():
    class MyLIF(neuron.LIFNode):
        pass

    net = torch.nn.Sequential(layer.Linear(N_IN, 8), MyLIF())
    with pytest.raises(InputError, match=r"layer '1' \(MyLIF\): a subclass of LIFNode"):
        to_nir(net, torch.zeros(B, N_IN))
