"""The refractory step (``metadata["refractory"] = 1``): v held after a spike while u integrates, in the float
interpreter, the trainable one, lowering, the engine (= Lava, on a hand ChipGraph with recurrence), the map
table and report, and netx's refusal."""

import nir
import numpy as np
import pytest
import torch

from st2chip.chip.chipgraph import ChipGraph, InputPort, Population, SynapseGroup
from st2chip.chip.lower import lower
from st2chip.chip.table import format_table, neuron_model
from st2chip.errors import ChipRangeError, GraphError
from st2chip.graph.normalize import normalize
from st2chip.graph.simulate import simulate
from st2chip.graph.torch_model import GraphModule
from st2chip.targets import engine, lava, netx

DT = 1e-3
N_IN, N_HID = 6, 5
ALPHA, BETA = 0.8, 0.9  # per-step current and voltage decays


def _graph(refractory=1, recurrent=True, hidden_meta=None) -> nir.NIRGraph:
    """Input -> Affine (bias) -> CubaLIF (i <- 0.8 i + x, v <- 0.9 v + i; -> Affine -> itself) -> Output."""
    rng = np.random.default_rng(0)
    n = N_HID
    meta = {"refractory": refractory} if hidden_meta is None else hidden_meta
    nodes = {"input": nir.Input(input_type={"input": np.array([N_IN])}),
             "w": nir.Affine(weight=rng.uniform(0.0, 0.9, (n, N_IN)), bias=np.full(n, 0.05)),
             "h": nir.CubaLIF(tau_syn=np.full(n, DT / (1 - ALPHA)), tau_mem=np.full(n, DT / (1 - BETA)),
                              r=np.full(n, 1 / (1 - BETA)), v_leak=np.zeros(n), v_threshold=np.ones(n),
                              v_reset=np.zeros(n), w_in=np.full(n, 1 / (1 - ALPHA)), metadata=meta),
             "output": nir.Output(output_type={"output": np.array([n])})}
    edges = [("input", "w"), ("w", "h"), ("h", "output")]
    if recurrent:
        nodes["rec"] = nir.Affine(weight=rng.uniform(-0.4, 0.3, (n, n)), bias=np.zeros(n))
        edges += [("h", "rec"), ("rec", "h")]
    return normalize(nir.NIRGraph(nodes=nodes, edges=edges, metadata={"dt": DT}, type_check=False))


def _spikes(batch=3, steps=25, seed=1, rate=0.4) -> np.ndarray:
    return (np.random.default_rng(seed).random((batch, steps, N_IN)) < rate).astype(np.uint8)


@pytest.mark.parametrize("meta, text", [({"refractory": 2}, "in (0, 1), got 2"),
                                        ({"refractory": "1"}, "got '1'"),
                                        ({"refractory": True}, "got True")])
def test_normalize_refuses_other_refractory_values_naming_node_and_field(meta, text):
    with pytest.raises(GraphError, match="node 'h', field 'metadata.refractory'") as info:
        _graph(hidden_meta=meta)
    assert text in str(info.value) and "\n" not in str(info.value)


def test_normalize_refuses_refractory_on_a_neuron_that_does_not_spike():
    graph = nir.NIRGraph(nodes={"input": nir.Input(input_type={"input": np.array([2])}),
                                "o": nir.LI(tau=np.full(2, 0.01), r=np.ones(2), v_leak=np.zeros(2),
                                            metadata={"refractory": 1}),
                                "output": nir.Output(output_type={"output": np.array([2])})},
                         edges=[("input", "o"), ("o", "output")], metadata={"dt": DT}, type_check=False)
    with pytest.raises(GraphError, match="node 'o', field 'metadata.refractory'.*spiking neurons.*not to LI"):
        normalize(graph)
    assert _graph().nodes["h"].metadata == {"refractory": 1}  # kept by normalize


def _written_out(graph: nir.NIRGraph, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The hidden layer written out: i <- a i + W x + b (+ R s[t-1]), v <- b v + i unless it spiked at t - 1
    (then v stays 0 and it does not spike), spike when v > 1, then v = 0."""
    w, rec = graph.nodes["w"], graph.nodes["rec"]
    i = v = s = np.zeros((x.shape[0], N_HID))
    spikes, volts = [], []
    for t in range(x.shape[1]):
        i = ALPHA * i + x[:, t] @ w.weight.T + w.bias + s @ rec.weight.T
        held = s > 0
        v = np.where(held, v, BETA * v + i)
        s = ((v > 1) & ~held).astype(float)
        v = np.where(s > 0, 0.0, v)
        spikes.append(s)
        volts.append(v)
    return np.stack(spikes, 1), np.stack(volts, 1)


def test_float_holds_v_for_the_step_after_a_spike_while_the_current_integrates():
    graph, x = _graph(), _spikes()
    run = simulate(graph, x)
    spikes, volts = _written_out(graph, x)
    assert spikes.sum() > 20, "the test needs spikes"
    np.testing.assert_array_equal(run.spikes["h"], spikes)
    np.testing.assert_allclose(run.voltages["h"], volts, rtol=0, atol=1e-12)
    assert not (run.spikes["h"][:, 1:] & run.spikes["h"][:, :-1]).any()  # never two steps in a row
    plain = simulate(_graph(refractory=0), x).spikes["h"]
    assert (plain[:, 1:] & plain[:, :-1]).any(), "without the hold the same drive fires on consecutive steps"


def test_trainable_interpreter_equals_the_float_one_and_trains_through_the_hold():
    graph, x = _graph(), _spikes()
    module = GraphModule(graph, dtype=torch.float64)
    out = module.run(module.encode(x))
    np.testing.assert_array_equal(out["h"].transpose(0, 1).detach().numpy(), simulate(graph, x).spikes["h"])
    module(module.encode(x)).sum().backward()
    assert module.module("w").weight.grad.abs().sum() > 0


def test_population_refuses_other_refractory_values():
    with pytest.raises(ChipRangeError, match="population 'a': field 'refractory' must be 0 or 1"):
        Population("a", "a", np.arange(3), du=0, dv=0, vth=10, bias_mant=0, bias_exp=0, refractory=2)


def _hand_chip(refractory: int) -> ChipGraph:
    """input (8) -> A (6, recurrent, refractory) -> B (4, reset by subtraction, refractory), decays and biases."""
    rng = np.random.default_rng(3)
    a = Population("A", "A", np.arange(6), du=1500, dv=400, vth=120, bias_mant=rng.integers(-40, 60, 6),
                   bias_exp=1, refractory=refractory)
    b = Population("B", "B", np.arange(4), du=3000, dv=200, vth=90, bias_mant=10, bias_exp=0, reset="subtract",
                   refractory=refractory)
    groups = [SynapseGroup("input->A", "input", "A", rng.integers(0, 100, (6, 8)), 0),
              SynapseGroup("A->A~", "A", "A", rng.integers(-60, 40, (6, 6)), 0, feedback=True),
              SynapseGroup("A->B", "A", "B", rng.integers(-20, 90, (4, 6)), 1)]
    return ChipGraph([InputPort("input", 8)], [a, b], groups)


def test_engine_equals_lava_on_a_hand_chip_with_recurrence():
    chip = _hand_chip(1)
    x = {"input": (np.random.default_rng(4).random((2, 20, 8)) < 0.5).astype(np.uint8)}
    ref, lav = engine.run(chip, x), lava.run(chip, x)
    for layer in ("A", "B"):
        np.testing.assert_array_equal(ref.spikes[layer], lav.spikes[layer], err_msg=layer)
        np.testing.assert_array_equal(ref.voltages[layer], lav.voltages[layer], err_msg=layer)
        assert ref.spikes[layer].sum() > 10, f"{layer} should spike"
        assert not (ref.spikes[layer][:, 1:] & ref.spikes[layer][:, :-1]).any()
    plain = engine.run(_hand_chip(0), x).spikes["A"]
    assert (plain[:, 1:] & plain[:, :-1]).any(), "without the hold the same chip fires on consecutive steps"
    assert neuron_model(chip, "A") == "own (refractory, recurrent)"
    assert neuron_model(chip, "B") == "own (subtract, refractory)"


def test_lowering_carries_and_reports_it_and_netx_refuses_it(tmp_path):
    chip = lower(_graph())
    assert {p.refractory for p in chip.layer_populations("h")} == {1}
    assert chip.report["layers"]["h"]["refractory"] == 1
    assert "refractory" not in lower(_graph(refractory=0)).report["layers"]["h"]
    table = format_table(chip)
    assert "own (refractory, recurrent)" in table and "held for the step after a spike" in table
    x = _spikes(batch=2, steps=15)
    ref, lav = engine.run(chip, {"input": x}), lava.run(chip, {"input": x}, voltages=False)
    assert ref.spikes["h"].sum() > 0
    np.testing.assert_array_equal(ref.spikes["h"], lav.spikes["h"])
    with pytest.raises(GraphError, match=r"node 'A'.*held for the step after each spike \(refractory\)") as info:
        netx.export_netx(_hand_chip(1), tmp_path / "a.h5")
    assert "\n" not in str(info.value)
