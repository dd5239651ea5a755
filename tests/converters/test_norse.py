"""norse frontend: real norse 1.1 models against st2chip's float simulation, the chip and a file round trip.

Equality is exact here: every supported norse step is a forward-Euler step that
:mod:`converters.norse` maps onto st2chip's reading (see its table). norse runs
in float32 and st2chip in float64, so a voltage within ~1e-6 of threshold could
in principle differ; the seeded networks below have none.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import nir
import numpy as np
import pytest
import torch

norse_torch = pytest.importorskip("norse.torch")

from norse.torch.functional.reset import reset_subtract  # noqa: E402

from st2chip.chip.lower import lower  # noqa: E402
from st2chip.converters import norse as conv  # noqa: E402
from st2chip.converters.frontend import finish  # noqa: E402
from st2chip.errors import GraphError, InputError  # noqa: E402
from st2chip.graph.nirfile import read_graph  # noqa: E402
from st2chip.graph.normalize import TimeConstantWarning, normalize  # noqa: E402
from st2chip.graph.simulate import simulate  # noqa: E402

torch.set_num_threads(1)
N_IN, B, T = 12, 4, 20


def lifbox_net(seed: int = 0) -> torch.nn.Module:
    """Linear -> LIFBoxCell -> Linear -> LIFBoxCell, weights scaled so that every layer spikes."""
    torch.manual_seed(seed)
    net = norse_torch.SequentialState(torch.nn.Linear(N_IN, 8), norse_torch.LIFBoxCell(),
                                      torch.nn.Linear(8, 4), norse_torch.LIFBoxCell())
    with torch.no_grad():  # positive-leaning weights: 10-40 % spike rates with input rate 0.3
        net[0].weight.normal_(1.0, 1.5)
        net[2].weight.normal_(1.5, 2.0)
    return net


def mixed_net(seed: int = 1) -> torch.nn.Module:
    """Every exportable cell, non-default parameters and dt = 0.5 ms (float simulation)."""
    torch.manual_seed(seed)
    dt = 5e-4
    net = norse_torch.SequentialState(
        torch.nn.Linear(N_IN, 10),
        norse_torch.LIFCell(norse_torch.LIFParameters(tau_syn_inv=torch.tensor(300.0),
                                                       tau_mem_inv=torch.tensor(150.0),
                                                       v_th=torch.tensor(0.6), v_reset=torch.tensor(-0.1)), dt=dt),
        torch.nn.Linear(10, 6, bias=False),
        norse_torch.IAFCell(norse_torch.IAFParameters(v_th=torch.tensor(1.5)), dt=dt),
        torch.nn.Linear(6, 5),
        norse_torch.LIFBoxCell(norse_torch.LIFBoxParameters(tau_mem_inv=torch.tensor(80.0),
                                                             v_th=torch.tensor(0.7)), dt=dt),
        torch.nn.Linear(5, 3),
        norse_torch.LIBoxCell(norse_torch.LIBoxParameters(tau_mem_inv=torch.tensor(50.0)), dt=dt),
    )
    with torch.no_grad():
        net[0].weight.mul_(10.0)
        net[2].weight.mul_(6.0)
        net[4].weight.mul_(8.0)
    return net


def input_spikes(seed: int = 0, p: float = 0.3) -> np.ndarray:
    return (np.random.default_rng(seed).random((B, T, N_IN)) < p).astype(np.uint8)


def run_norse(net: torch.nn.Module, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every layer's output ``(B, T, n)`` by module name, stepping the SequentialState's layers by hand."""
    names = [name for name, _ in net.named_children()]
    state: list = [None] * len(names)
    out: dict[str, list[np.ndarray]] = {name: [] for name in names}
    with torch.no_grad():
        for t in range(x.shape[1]):
            h = torch.as_tensor(x[:, t], dtype=torch.float32)
            for k, (name, module) in enumerate(net.named_children()):
                if net.stateful_layers[k]:
                    h, state[k] = module(h, state[k])
                else:
                    h = module(h)
                out[name].append(h.numpy().copy())
    return {name: np.stack(v, axis=1) for name, v in out.items()}


def assert_same_graph(a: nir.NIRGraph, b: nir.NIRGraph) -> None:
    assert list(a.nodes) == list(b.nodes)
    assert [tuple(e) for e in a.edges] == [tuple(e) for e in b.edges]
    assert a.metadata == b.metadata
    for name, node in a.nodes.items():
        other = b.nodes[name]
        assert type(node) is type(other), name
        for key, value in vars(node).items():
            if key == "metadata":
                continue
            if isinstance(value, dict):
                assert value.keys() == vars(other)[key].keys()
                for k in value:
                    np.testing.assert_array_equal(value[k], vars(other)[key][k], err_msg=f"{name}.{key}")
            else:
                np.testing.assert_array_equal(value, vars(other)[key], err_msg=f"{name}.{key}")


def raw_export(net: torch.nn.Module, sample: torch.Tensor, dt: float = conv.DEFAULT_DT) -> nir.NIRGraph:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return norse_torch.to_nir(net, sample, dt=dt)


@pytest.fixture(scope="module")
def converted():
    net = lifbox_net()
    return net, conv.to_nir(net, torch.zeros(1, N_IN))


# -- 1. agreement with norse ----------------------------------------------------------------------

def test_lifbox_net_matches_norse_spike_for_spike(converted):
    net, result = converted
    x = input_spikes()
    ref = run_norse(net, x)
    traces = simulate(result.graph, x)
    for layer in ("1", "3"):
        assert ref[layer].sum() > 0, f"layer {layer} is silent: the test would prove nothing"
        np.testing.assert_array_equal(traces.spikes[layer], ref[layer].astype(np.uint8), err_msg=layer)
    np.testing.assert_array_equal(traces.scores, ref["3"].sum(axis=1))


def test_every_exportable_cell_matches_norse(tmp_path: Path):
    """LIFCell (CubaLIF, v_reset != 0), IAFCell, LIFBoxCell and LIBoxCell at dt = 0.5 ms."""
    net = mixed_net()
    result = conv.to_nir(net, torch.zeros(1, N_IN))
    assert result.graph.metadata["dt"] == 5e-4  # the cells' own dt
    assert [type(n).__name__ for n in result.graph.nodes.values()] == [
        "Input", "Affine", "CubaLIF", "Affine", "IF", "Affine", "LIF", "Affine", "LI", "Output"]
    assert any("v_reset = -0.1" in line for line in result.notes)
    x = input_spikes(seed=3, p=0.4)
    ref = run_norse(net, x)
    traces = simulate(result.graph, x)
    for layer in ("1", "3", "5"):
        assert ref[layer].sum() > 0, f"layer {layer} is silent"
        np.testing.assert_array_equal(traces.spikes[layer], ref[layer].astype(np.uint8), err_msg=layer)
    np.testing.assert_allclose(traces.voltages["7"], ref["7"], rtol=1e-5, atol=1e-5)  # LI readout voltage


# -- 2. write / read back, no warnings -------------------------------------------------------------

def test_converted_graph_writes_and_reads_back(converted, tmp_path: Path):
    net, result = converted
    with warnings.catch_warnings():
        warnings.simplefilter("error", TimeConstantWarning)
        again = conv.to_nir(net, torch.zeros(3, N_IN))  # a batch of 3 in the sample changes nothing
        repaired, notes = conv.repair(raw_export(net, torch.zeros(1, N_IN)), conv.DEFAULT_DT)
        normalize(repaired, dt=conv.DEFAULT_DT)
    assert_same_graph(again.graph, result.graph)
    assert any("norse issue #411" in line and "1e-05 s -> 0.01 s" in line for line in notes)
    nir.write(tmp_path / "norse.nir", result.graph)
    assert_same_graph(normalize(tmp_path / "norse.nir"), result.graph)


# -- 3. chip: reference == Lava --------------------------------------------------------------------

def test_lowered_reference_equals_lava(converted):
    from st2chip.targets import engine, lava

    _, result = converted
    chip = lower(result.graph)
    inputs = {"input": input_spikes(seed=5)}
    ref = engine.run(chip, inputs)
    lav = lava.run(chip, inputs, voltages=True)
    assert set(ref.spikes) == set(lav.spikes) == {"1", "3"}
    assert sum(int(s.sum()) for s in ref.spikes.values()) > 0
    for layer in ref.spikes:
        np.testing.assert_array_equal(ref.spikes[layer], lav.spikes[layer], err_msg=layer)


# -- 4. errors --------------------------------------------------------------------------------------

def test_licell_gives_one_clear_error_naming_the_node():
    net = norse_torch.SequentialState(torch.nn.Linear(4, 3), norse_torch.LIFBoxCell(),
                                      torch.nn.Linear(3, 2), norse_torch.LICell())
    with pytest.raises(GraphError, match=r"^node '3': norse's to_nir cannot export LICell"):
        conv.to_nir(net, torch.zeros(1, 4))
    with pytest.raises(GraphError, match=r"^node '3': norse's to_nir exported no NIR node"):
        conv.repair(raw_export(net, torch.zeros(1, 4)), 1e-3)


def test_subtract_reset_and_conflicting_dt_are_refused():
    net = norse_torch.SequentialState(
        torch.nn.Linear(4, 3), norse_torch.LIFBoxCell(norse_torch.LIFBoxParameters(reset_method=reset_subtract)))
    with pytest.raises(GraphError, match=r"^node '1': LIFBoxCell resets with reset_subtract"):
        conv.to_nir(net, torch.zeros(1, 4))
    with pytest.raises(InputError, match=r"integrates with dt = 0.001 s"):
        conv.to_nir(lifbox_net(), torch.zeros(1, N_IN), dt=1e-4)


# -- 5. from the file a norse user writes -----------------------------------------------------------

def test_repair_of_written_export_equals_to_nir(converted, tmp_path: Path):
    net, result = converted
    raw = raw_export(net, torch.zeros(1, N_IN))
    before = copy.deepcopy(raw)
    repair_in_memory, _ = conv.repair(raw, conv.DEFAULT_DT)
    for name, node in before.nodes.items():  # repair did not touch its input
        for key, value in vars(node).items():
            if isinstance(value, torch.Tensor):
                assert isinstance(vars(raw.nodes[name])[key], torch.Tensor)
                torch.testing.assert_close(vars(raw.nodes[name])[key], value, rtol=0, atol=0)

    for node in raw.nodes.values():  # what a norse user does to make nir.write work: 0-d -> 1-D numpy
        for key, value in vars(node).items():
            if isinstance(value, (torch.Tensor, np.ndarray)):
                setattr(node, key, np.atleast_1d(np.asarray(value)))
    path = tmp_path / "raw.nir"
    nir.write(path, raw)
    graph, notes = conv.repair(read_graph(path), conv.DEFAULT_DT)
    from_file = finish(graph, dt=conv.DEFAULT_DT, notes=notes, producer="norse")
    assert_same_graph(from_file.graph, result.graph)
    assert_same_graph(finish(repair_in_memory, dt=conv.DEFAULT_DT, producer="norse").graph, result.graph)


def test_repair_twice_changes_nothing_more():
    """A repaired graph (tau >= dt, r/w_in no longer norse's 1) passes through repair unchanged."""
    raw = raw_export(mixed_net(), torch.zeros(1, N_IN), dt=5e-4)
    once, _ = conv.repair(raw, 5e-4)
    twice, notes = conv.repair(once, 5e-4)
    assert_same_graph(finish(twice, dt=5e-4).graph, finish(once, dt=5e-4).graph)
    assert not any("->" in line for line in notes)


def test_conv_net_with_untyped_ports_converts_spike_for_spike():
    """norse 1.1 exports Conv2d with input_type {'input': None}: read as unknown, the shape is inferred."""
    torch.manual_seed(3)
    net = norse_torch.SequentialState(torch.nn.Conv2d(1, 3, 3, stride=2, padding=1), norse_torch.LIFBoxCell(),
                                      torch.nn.Conv2d(3, 2, 4), norse_torch.LIFBoxCell())
    with torch.no_grad():
        net[0].weight.mul_(20.0)
        net[2].weight.mul_(20.0)
    graph = conv.to_nir(net, torch.zeros(1, 8, 8)).graph
    x = (np.random.default_rng(0).random((B, T, 64)) < 0.4).astype(np.uint8)
    state, ref = None, []
    with torch.no_grad():
        for t in range(T):
            y, state = net(torch.as_tensor(x[:, t], dtype=torch.float32).reshape(-1, 1, 8, 8), state)
            ref.append(y.reshape(B, 2).numpy())
    ref = np.stack(ref, axis=1)
    assert ref.sum() > 0, "the output is silent: the test would prove nothing"
    np.testing.assert_array_equal(simulate(graph, x).spikes["3"], ref.astype(np.uint8))
