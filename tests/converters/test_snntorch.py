"""snnTorch frontend: spike-for-spike agreement with snnTorch, reset checks, file round trip, chip exactness."""

import copy
import dataclasses
import warnings

import nir
import numpy as np
import pytest
import torch

snn = pytest.importorskip("snntorch")
from snntorch import utils as snn_utils  # noqa: E402

from st2chip.chip.lower import lower  # noqa: E402
from st2chip.converters.frontend import finish  # noqa: E402
from st2chip.converters.snntorch import DEFAULT_DT, repair, to_nir  # noqa: E402
from st2chip.errors import InputError  # noqa: E402
from st2chip.graph.nirfile import read_graph  # noqa: E402
from st2chip.graph.simulate import simulate  # noqa: E402
from st2chip.targets import engine, lava  # noqa: E402

N_IN, BATCH, STEPS = 10, 4, 20


def make_net(reset="zero", seed=0, beta2=None):
    """Linear -> Leaky -> Linear -> Leaky, weights scaled so that every layer spikes."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Linear(N_IN, 8),
        snn.Leaky(beta=0.9, init_hidden=True, reset_mechanism=reset),
        torch.nn.Linear(8, 4),
        snn.Leaky(beta=0.8 if beta2 is None else beta2, threshold=0.7, init_hidden=True, reset_mechanism=reset))
    with torch.no_grad():
        net[0].weight.abs_().mul_(1.5)
        net[0].bias.fill_(-0.1)
        net[2].weight.abs_().mul_(1.0)
    return net


def input_spikes(steps=STEPS, batch=BATCH, seed=0):
    return (np.random.default_rng(seed).random((batch, steps, N_IN)) < 0.3).astype(np.uint8)


def run_snntorch(net, x, reset=snn_utils.reset):
    """Spikes of the neuron layers '1' and '3', (B, T, n) each, run step by step in snnTorch (float32) after
    ``reset(net)``."""
    recorded = {"1": [], "3": []}
    hooks = [net[int(k)].register_forward_hook(lambda m, i, o, k=k: recorded[k].append(o.clone()))
             for k in recorded]
    reset(net)
    with torch.no_grad():
        for t in range(x.shape[1]):
            net(torch.as_tensor(x[:, t], dtype=torch.float32))
    for h in hooks:
        h.remove()
    return {k: torch.stack(v, 1).numpy().astype(np.uint8) for k, v in recorded.items()}


@pytest.mark.parametrize("dt, reset_delay, beta2, kind", [
    (None, True, torch.linspace(0.5, 0.95, 4), "LIF"),   # per-neuron beta, scalar threshold
    (1e-3, True, torch.linspace(0.5, 0.95, 4), "LIF"),   # another dt: same per-step dynamics
    (None, False, 0.8, "LIF"),                           # reset in the spike's own step: same spikes
    (None, True, 1.0, "IF"),                             # beta = 1: no leak
])
def test_spikes_equal_snntorch(dt, reset_delay, beta2, kind):
    net = make_net(beta2=beta2)
    net[1].reset_delay = net[3].reset_delay = reset_delay
    x = input_spikes()
    converted = to_nir(net, torch.zeros(BATCH, N_IN), dt=dt)
    assert converted.graph.metadata["dt"] == (dt or DEFAULT_DT)
    assert [type(n).__name__ for n in converted.graph.nodes.values()] == \
        ["Input", "Affine", "LIF", "Affine", kind, "Output"]
    ours = simulate(converted.graph, x).spikes
    theirs = run_snntorch(net, x)
    for layer in ("1", "3"):
        assert theirs[layer].sum(axis=(0, 1)).min() > 0, f"test needs every neuron of {layer} to spike"
        np.testing.assert_array_equal(ours[layer].sum(axis=1), theirs[layer].sum(axis=1))  # counts per neuron
        np.testing.assert_array_equal(ours[layer], theirs[layer])  # and spike for spike, step for step


def test_to_nir_leaves_the_model_alone():
    net = make_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    to_nir(net, torch.zeros(3, N_IN))
    after = net.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k


@pytest.mark.parametrize("reset, beta2", [("subtract", torch.linspace(0.5, 0.95, 4)), ("subtract", 1.0),
                                           ("none", 0.8), ("none", 1.0)])
def test_subtract_and_no_reset_convert_spike_for_spike(reset, beta2):
    """snnTorch subtracts the threshold undecayed at the next step (or never): st2chip's subtract reset plus a
    self-connection (beta - c) threshold gives the same spikes, step for step."""
    net = make_net(reset=reset, beta2=beta2)
    x = input_spikes(steps=30)
    converted = to_nir(net, torch.zeros(BATCH, N_IN))
    graph = converted.graph
    for layer in ("1", "3"):
        assert graph.nodes[layer].metadata["reset"] == "subtract"
    loops = {a for a, b in graph.edges if b == a + ".reset"}
    no_leak = isinstance(beta2, float) and beta2 == 1.0
    assert loops == ({"1"} if reset == "subtract" and no_leak else {"1", "3"})  # beta = 1 subtract: none needed
    np.testing.assert_allclose(np.diag(graph.nodes["1.reset"].weight), 0.9 - (reset == "subtract"), rtol=1e-6)
    ours = simulate(graph, x).spikes
    theirs = run_snntorch(net, x)
    for layer in ("1", "3"):
        assert theirs[layer].sum() > 0
        np.testing.assert_array_equal(ours[layer], theirs[layer], err_msg=layer)
    assert any("self-connection '1.reset'" in n for n in converted.notes)


def test_subtract_reset_runs_on_the_chip_engine_equal_to_lava():
    net = make_net(reset="subtract")
    chip = lower(to_nir(net, torch.zeros(N_IN)).graph, decay_groups=1)
    assert {p.reset for p in chip.populations} == {"subtract"}
    x = {"input": input_spikes(steps=12, batch=2)}
    ref, lav = engine.run(chip, x), lava.run(chip, x)
    for layer in ref.spikes:
        np.testing.assert_array_equal(ref.spikes[layer], lav.spikes[layer], err_msg=layer)
        np.testing.assert_array_equal(ref.voltages[layer], lav.voltages[layer], err_msg=layer)


def test_delayed_reset_off_and_stale_setter_are_refused():
    net = make_net(reset="subtract")
    net[1].reset_delay = False
    with pytest.raises(InputError, match=r"layer '1'.*reset_delay=False.*not converted") as info:
        to_nir(net, torch.zeros(N_IN))
    assert "layer '3'" not in str(info.value) and "\n" not in str(info.value)
    converted = to_nir(net, torch.zeros(N_IN), force_reset_zero=True)
    forced = [n for n in converted.notes if "force_reset_zero=True" in n]
    assert len(forced) == 1 and "layer '1'" in forced[0]
    assert "reset" not in (converted.graph.nodes["1"].metadata or {})
    net = make_net(reset="subtract")
    net[1].reset_mechanism = "zero"   # snnTorch 1.0: forward keeps the subtract update chosen in __init__
    net[3].reset_mechanism = "zero"
    with pytest.raises(InputError, match=r"layer '1'.*forward still runs the 'subtract' update"):
        to_nir(net, torch.zeros(N_IN))


def test_unsupported_layers_named_at_once():
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), snn.Leaky(0.9, init_hidden=True, reset_mechanism="zero",
                                                               graded_spikes_factor=2.0),
                              torch.nn.Dropout(0.1), torch.nn.Linear(3, 2),
                              snn.Lapicque(beta=0.9, init_hidden=True))
    with pytest.raises(InputError) as info:
        to_nir(net, torch.zeros(4))
    message = str(info.value)
    for text in ("layer '1'", "graded_spikes_factor", "layer '2' (Dropout)", "layer '4' (Lapicque)"):
        assert text in message


def _raw_export(net, sample):
    """What snntorch.export_to_nir builds before its failing infer_types() call, made writable."""
    import nirtorch
    from snntorch.export_nir import _extract_snntorch_module, export_to_nir

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="Type inference error"):  # the quirk this frontend works around
            export_to_nir(net, sample)
        graph = nirtorch.extract_nir_graph(net, _extract_snntorch_module, sample, model_name="snntorch",
                                           ignore_submodules_of=[snn.RLeaky, snn.RSynaptic])
    for node in graph.nodes.values():  # 0-d arrays / numpy scalars: nir.write refuses them
        for f in dataclasses.fields(node):
            value = getattr(node, f.name)
            if isinstance(value, (np.ndarray, np.generic, torch.Tensor)):
                setattr(node, f.name, np.atleast_1d(np.asarray(value, dtype=np.float64)))
    return graph


def test_file_round_trip_and_raw_export(tmp_path):
    net = make_net()
    converted = to_nir(net, torch.zeros(BATCH, N_IN))
    nir.write(tmp_path / "converted.nir", converted.graph)
    back = finish(read_graph(tmp_path / "converted.nir"), dt=DEFAULT_DT).graph
    assert list(back.nodes) == list(converted.graph.nodes) and back.edges == converted.graph.edges
    x = input_spikes(steps=10)
    np.testing.assert_array_equal(simulate(back, x).spikes["3"],
                                  simulate(converted.graph, x).spikes["3"])

    raw = _raw_export(make_net(), torch.zeros(BATCH, N_IN))  # Input shape (4, 10): a batch dimension
    nir.write(tmp_path / "raw.nir", raw)
    raw_read = read_graph(tmp_path / "raw.nir")
    snapshot = copy.deepcopy(raw_read)
    repaired, notes = repair(raw_read, 1e-4)
    assert raw_read.metadata == snapshot.metadata and list(raw_read.nodes) == list(snapshot.nodes)
    for name, node in snapshot.nodes.items():  # repair does not mutate its input
        for f in dataclasses.fields(node):
            a, b = getattr(node, f.name), getattr(raw_read.nodes[name], f.name)
            assert repr(a) == repr(b), f"{name}.{f.name}"
    assert any("cannot tell the reset mechanism" in n and "reset to zero" in n for n in notes)
    assert any("batch dimension 4 dropped" in n for n in notes)
    canonical = finish(repaired, dt=1e-4, notes=notes, producer="snntorch").graph
    assert list(canonical.nodes) == list(converted.graph.nodes)
    assert canonical.edges == converted.graph.edges
    assert canonical.metadata["dt"] == converted.graph.metadata["dt"] == 1e-4
    for name, node in converted.graph.nodes.items():
        other = canonical.nodes[name]
        assert type(other) is type(node), name
        for f in dataclasses.fields(node):
            a, b = getattr(node, f.name), getattr(other, f.name)
            if isinstance(a, np.ndarray):
                np.testing.assert_allclose(b, a, rtol=1e-6, err_msg=f"{name}.{f.name}")
    np.testing.assert_array_equal(simulate(canonical, x).spikes["3"], simulate(converted.graph, x).spikes["3"])


def test_chip_reference_equals_lava():
    net = make_net()
    chip = lower(to_nir(net, torch.zeros(N_IN)).graph)
    x = {"input": input_spikes(steps=STEPS, batch=BATCH, seed=1)}
    ref, lav = engine.run(chip, x), lava.run(chip, x, voltages=False)
    assert sum(int(s.sum()) for s in ref.spikes.values()) > 0, "test needs activity"
    assert ref.spikes.keys() == lav.spikes.keys()
    for layer in ref.spikes:
        np.testing.assert_array_equal(ref.spikes[layer], lav.spikes[layer], err_msg=layer)


def make_recurrent_net(seed=0, reset="zero", **synaptic):
    """Linear -> RSynaptic (recurrent weights with a bias) -> Linear (bias) -> Synaptic, weights that spike."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Linear(N_IN, 8),
        snn.RSynaptic(alpha=0.8, beta=0.9, linear_features=8, init_hidden=True, reset_mechanism=reset),
        torch.nn.Linear(8, 4),
        snn.Synaptic(alpha=0.7, beta=0.85, threshold=0.7, init_hidden=True, reset_mechanism=reset, **synaptic))
    with torch.no_grad():
        net[0].weight.abs_().mul_(1.5)
        net[1].recurrent.weight.mul_(0.5)
        net[1].recurrent.bias.fill_(0.05)
        net[2].weight.abs_()
        net[2].bias.fill_(0.1)
    return net


def run_recurrent(net, x):
    """Spikes of the RSynaptic ('1') and Synaptic ('3') layers, (B, T, n), run step by step in snnTorch."""
    def reset(net):
        for k in ("1", "3"):
            net[int(k)].reset_mem()
    return run_snntorch(net, x, reset)


def _without_refractory(graph):
    nodes = {k: dataclasses.replace(v, metadata={}) if isinstance(v, nir.CubaLIF) else v
             for k, v in graph.nodes.items()}
    return nir.NIRGraph(nodes=nodes, edges=graph.edges, metadata=graph.metadata, type_check=False)


def test_recurrent_synaptic_zero_reset_converts_spike_for_spike():
    """snnTorch's Synaptic/RSynaptic reset to zero holds mem at 0 for the step after a spike (syn integrates):
    reset to 0 with refractory = 1, the recurrent weights (with their bias) reading the step before."""
    net = make_recurrent_net()
    x = input_spikes(steps=30)
    converted = to_nir(net, torch.zeros(BATCH, N_IN))
    graph = converted.graph
    assert graph.nodes["1.lif"].metadata == {"refractory": 1} and graph.nodes["3"].metadata == {"refractory": 1}
    assert ("1.lif", "1.w_rec") in graph.edges and ("1.w_rec", "1.lif") in graph.edges
    assert any("refractory = 1" in n for n in converted.notes)
    ours, theirs = simulate(graph, x).spikes, run_recurrent(net, x)
    for layer, node in (("1", "1.lif"), ("3", "3")):
        assert theirs[layer].sum(axis=(0, 1)).min() > 0, f"test needs every neuron of {layer} to spike"
        np.testing.assert_array_equal(ours[node], theirs[layer], err_msg=layer)
        assert not np.array_equal(simulate(_without_refractory(graph), x).spikes[node], theirs[layer]), \
            "the hold must matter on this input"


def test_synaptic_without_reset_delay_resets_in_its_own_step():
    net = make_recurrent_net(reset_delay=False)
    converted = to_nir(net, torch.zeros(BATCH, N_IN))
    assert "refractory" not in (converted.graph.nodes["3"].metadata or {})
    x = input_spikes(steps=30)
    np.testing.assert_array_equal(simulate(converted.graph, x).spikes["3"], run_recurrent(net, x)["3"])


def test_recurrent_synaptic_file_import_holds_too(tmp_path):
    """A file from snnTorch's exporter cannot tell the mechanism: read as reset to zero, CubaLIF held a step."""
    import nirtorch
    from snntorch.export_nir import _extract_snntorch_module

    from st2chip.converters.registry import import_file
    net = make_recurrent_net()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = nirtorch.extract_nir_graph(net, _extract_snntorch_module, torch.zeros(1, N_IN), model_name="snntorch",
                                           ignore_submodules_of=[snn.RLeaky, snn.RSynaptic])
    for node in graph.nodes.values():
        for f in dataclasses.fields(node):
            value = getattr(node, f.name)
            if isinstance(value, (np.ndarray, np.generic, torch.Tensor)):
                setattr(node, f.name, np.atleast_1d(np.asarray(value, dtype=np.float64)))
    nir.write(tmp_path / "raw.nir", graph)
    converted = import_file(tmp_path / "raw.nir", "snntorch")
    nodes = converted.graph.nodes
    assert nodes["1.lif"].metadata["refractory"] == nodes["3"].metadata["refractory"] == 1
    x = input_spikes(steps=30)
    np.testing.assert_array_equal(simulate(converted.graph, x).spikes["3"], run_recurrent(net, x)["3"])


def test_recurrent_synaptic_runs_on_the_chip_engine_equal_to_lava():
    chip = lower(to_nir(make_recurrent_net(), torch.zeros(N_IN)).graph)
    assert {p.refractory for p in chip.populations if p.layer in ("1.lif", "3")} == {1}
    x = {"input": input_spikes(steps=12, batch=2)}
    ref, lav = engine.run(chip, x), lava.run(chip, x)
    for layer in ("1.lif", "3"):
        assert ref.spikes[layer].sum() > 0
        np.testing.assert_array_equal(ref.spikes[layer], lav.spikes[layer], err_msg=layer)
        np.testing.assert_array_equal(ref.voltages[layer], lav.voltages[layer], err_msg=layer)


def test_synaptic_subtract_and_negative_threshold_are_refused_at_once():
    net = make_recurrent_net(reset="subtract")
    with pytest.raises(InputError, match=r"layer '1' \(RSynaptic\): reset_mechanism 'subtract' is not converted"
                                         r".*layer '3' \(Synaptic\)"):
        to_nir(net, torch.zeros(N_IN))
    forced = to_nir(net, torch.zeros(N_IN), force_reset_zero=True)
    assert sum("force_reset_zero=True" in n for n in forced.notes) == 2
    net = make_recurrent_net()
    with torch.no_grad():
        net[3].threshold.fill_(-0.1)
    with pytest.raises(InputError, match=r"layer '3' \(Synaptic\): a negative threshold"):
        to_nir(net, torch.zeros(N_IN))


def test_rleaky_zero_reset_is_held_too_and_leaky_is_not():
    """RLeaky's reset to zero drops the whole update of the step after a spike (refractory = 1); Leaky's keeps
    that step's input (no hold)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(N_IN, 8),
                              snn.RLeaky(beta=0.9, linear_features=8, init_hidden=True, reset_mechanism="zero"),
                              torch.nn.Linear(8, 4),
                              snn.Leaky(beta=0.85, threshold=0.7, init_hidden=True, reset_mechanism="zero"))
    with torch.no_grad():
        net[0].weight.abs_().mul_(1.5)
        net[1].recurrent.weight.mul_(0.5)
        net[2].weight.abs_()
    graph = to_nir(net, torch.zeros(BATCH, N_IN)).graph
    assert graph.nodes["1.lif"].metadata == {"refractory": 1} and not graph.nodes["3"].metadata
    x = input_spikes(steps=30)
    ours, theirs = simulate(graph, x).spikes, run_recurrent(net, x)
    for layer, node in (("1", "1.lif"), ("3", "3")):
        assert theirs[layer].sum() > 0
        np.testing.assert_array_equal(ours[node], theirs[layer], err_msg=layer)
