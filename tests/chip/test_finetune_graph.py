"""Chip-in-the-loop fine-tuning of NIR graphs from other frameworks: the graph it returns is one the chip holds
exactly (decays tied into K groups, lowering gives the weights back), float and chip then predict alike, the
held-out accuracies are measured before and after, the same seed gives the same graph, bad inputs are refused."""

from __future__ import annotations


import nir
import numpy as np
import pytest
import torch

import st2chip
from st2chip.chip.finetune_graph import finetune_graph as tune
from st2chip.chip.lower import lower
from st2chip.errors import GraphError, InputError
from st2chip.graph.normalize import normalize
from st2chip.graph.simulate import simulate
from st2chip.learn.data import rate_encode
from st2chip.targets import engine

STEPS = 12


def finetune_graph(*args, **kwargs):
    """The fine-tuning under test, its chip accuracy measured by st2chip's engine (as the API runs it)."""
    return tune(*args, run_chip=lambda chip, spikes: engine.run(chip, spikes, voltages=False), **kwargs)


def _recurrent_graph() -> nir.NIRGraph:
    """64 inputs -> recurrent CubaLIF (16, spread time constants, no bias into the current) -> LI readout (10)."""
    rng = np.random.default_rng(0)
    h, dt = 16, 1e-3
    nodes = {"input": nir.Input(input_type={"input": np.array([64])}),
             "fc_in": nir.Affine(weight=rng.normal(0.2, 0.4, (h, 64)), bias=np.zeros(h)),
             "lif": nir.CubaLIF(tau_syn=rng.uniform(2e-3, 8e-3, h), tau_mem=rng.uniform(3e-3, 3e-2, h),
                                r=np.full(h, 2.0), v_leak=np.zeros(h), v_threshold=rng.uniform(0.6, 1.4, h),
                                v_reset=np.zeros(h), w_in=np.ones(h)),
             "rec": nir.Affine(weight=rng.normal(0, 0.3, (h, h)), bias=np.zeros(h)),
             "fc_out": nir.Affine(weight=rng.normal(0, 0.5, (10, h)), bias=rng.normal(0, 0.1, 10)),
             "readout": nir.LI(tau=np.full(10, 5e-3), r=np.ones(10), v_leak=np.zeros(10)),
             "output": nir.Output(output_type={"output": np.array([10])})}
    edges = [("input", "fc_in"), ("fc_in", "lif"), ("lif", "rec"), ("rec", "lif"), ("lif", "fc_out"),
             ("fc_out", "readout"), ("readout", "output")]
    return normalize(nir.NIRGraph(nodes=nodes, edges=edges, metadata={"dt": dt}, type_check=False))


def _digits(digits, n: int) -> tuple[np.ndarray, np.ndarray]:
    train, _ = digits
    return rate_encode(train.x[:n], STEPS).numpy().transpose(1, 0, 2).astype(np.uint8), train.y[:n]


def _input(graph: nir.NIRGraph) -> str:
    return next(n for n, node in graph.nodes.items() if isinstance(node, nir.Input))


@pytest.fixture(scope="module")
def snntorch_graph(tmp_path_factory, snntorch_file):
    """A 64-32-10 snnTorch LIF network (untrained, biases on), exported by snnTorch's own extractor and imported
    with ``st2chip import --from snntorch``'s converter."""
    path = snntorch_file(tmp_path_factory.mktemp("snntorch") / "snn.nir", threshold=0.7)
    return st2chip.import_model(path, "snntorch").graph


@pytest.fixture(scope="module")
def tuned(snntorch_graph, digits):
    x, y = _digits(digits, 300)
    return finetune_graph(snntorch_graph, {_input(snntorch_graph): x}, y, decay_groups=2, headroom=512.0, epochs=6,
                          lr=1e-2, holdout=0.2, seed=0, progress=False)


def _held_exactly(graph: nir.NIRGraph, decay_groups: int) -> dict:
    """Every layer's report after lowering ``graph``; asserts that the chip holds its weights and decays."""
    chip = lower(normalize(graph), decay_groups=decay_groups)
    for name, layer in chip.report["layers"].items():
        assert layer["weight_error"] < 1e-6, name
        assert layer["leak_error"] < 1e-6 and (layer.get("current_leak_error") or 0) < 1e-6, name
        assert layer["decay_groups"] <= decay_groups and len(chip.layer_populations(name)) == layer["decay_groups"]
    return chip.report["layers"]


def test_the_tuned_graph_is_what_the_chip_holds(snntorch_graph, tuned, tmp_path):
    before = lower(snntorch_graph, decay_groups=2).report["layers"]
    assert max(layer["weight_error"] for layer in before.values()) > 1e-3  # the float graph is not on the chip
    assert tuned.last_change == 0 and tuned.rounds >= 1
    assert tuned.graph.metadata["decay_groups"] == 2
    assert set(_held_exactly(tuned.graph, 2)) == set(before)
    from st2chip.graph.nirfile import write_nir
    write_nir(tuned.graph, tmp_path / "tuned.nir")  # and as a file, read back the way every command reads it
    _held_exactly(st2chip.load(tmp_path / "tuned.nir"), 2)


def test_float_and_chip_predict_alike_after_and_training_learned(tuned, digits):
    assert (tuned.train_samples, tuned.holdout_samples) == (240, 60)
    assert tuned.after.agreement >= 0.98
    assert tuned.after.float > tuned.before.float + 0.2  # an untrained network: fine-tuning trains it
    x, y = _digits(digits, 300)
    chip = engine.run(lower(tuned.graph, decay_groups=2), {_input(tuned.graph): x}, voltages=False)
    assert np.mean(simulate(tuned.graph, x, record=False).predictions() == chip.predictions()) >= 0.98


def test_a_recurrent_cubalif_graph_ties_current_and_voltage_decays(digits):
    graph = _recurrent_graph()
    x, y = _digits(digits, 120)
    result = finetune_graph(graph, {"input": x}, y, decay_groups=3, headroom=512.0, epochs=1, lr=1e-2,
                            holdout=0.25, seed=0, progress=False)
    assert result.last_change == 0
    layers = _held_exactly(result.graph, 3)
    assert layers["lif"]["decay_groups"] == 3  # 16 spread (tau_syn, tau_mem) pairs tied into 3
    lif = result.graph.nodes["lif"]
    assert len({(a, b) for a, b in zip(lif.tau_syn, lif.tau_mem)}) == 3
    assert np.all(result.graph.nodes["fc_in"].bias == 0)  # no bias into the current where the graph had none
    assert result.after.agreement >= 0.95


def test_same_seed_same_graph(snntorch_graph, digits):
    x, y = _digits(digits, 100)
    runs = [finetune_graph(snntorch_graph, {_input(snntorch_graph): x}, y, decay_groups=2, headroom=512.0, epochs=1,
                           lr=1e-2, holdout=0.2, seed=seed, progress=False).graph for seed in (3, 3, 4)]
    weights = [[np.asarray(node.weight) for node in g.nodes.values() if isinstance(node, nir.Affine)] for g in runs]
    assert all(np.array_equal(a, b) for a, b in zip(weights[0], weights[1]))
    assert not all(np.array_equal(a, b) for a, b in zip(weights[0], weights[2]))


def test_bad_inputs_are_refused_with_one_line(snntorch_graph, digits):
    x, y = _digits(digits, 20)
    spikes = {_input(snntorch_graph): x}
    run = lambda labels, **kw: finetune_graph(snntorch_graph, spikes, labels, decay_groups=2,  # noqa: E731
                                              headroom=512.0, epochs=1, lr=1e-2, seed=0, progress=False,
                                              **{"holdout": 0.2, **kw})
    for labels, kw, match in ((None, {}, "needs labels"), (np.full(20, 10), {}, "label 10 of sample 0"),
                              (y, {"holdout": 1.5}, "--holdout"), (y, {"holdout": 0.01}, "cannot be split")):
        with pytest.raises(InputError, match=match) as err:
            run(labels, **kw)
        assert "\n" not in str(err.value)


def _float_equals_engine(graph: nir.NIRGraph, x: np.ndarray, decay_groups: int) -> None:
    """Every neuron layer's spikes: the float interpreter on ``graph`` equals st2chip's engine on its lowering."""
    floating = simulate(graph, x)
    chip = engine.run(lower(graph, decay_groups=decay_groups), {_input(graph): x}, voltages=False)
    for layer, spikes in floating.spikes.items():
        assert spikes.any(), layer
        np.testing.assert_array_equal(spikes, chip.spikes[layer], err_msg=layer)


def test_a_convolutional_graph_tunes_to_kernels_the_chip_holds(strided_cnn):
    """Strided, dilated and grouped convolutions with leaky and IF layers: the tuned kernels lower exactly, and
    float and chip then spike alike."""
    shape = (4, 5, 5)
    graph = normalize(strided_cnn(nir.LIF(tau=np.full(shape, 5e-3), r=np.full(shape, 4.0), v_leak=np.zeros(shape),
                                          v_threshold=np.ones(shape), v_reset=np.zeros(shape)),
                                  nir.IF(r=np.full((6, 3, 3), 1e3), v_threshold=np.full((6, 3, 3), 0.8)), 0.3))
    x = (np.random.default_rng(0).random((60, 8, 162)) < 0.3).astype(np.uint8)
    result = finetune_graph(graph, {"input": x}, np.arange(60) % 5, decay_groups=2, headroom=512.0, epochs=2,
                            lr=1e-2, holdout=0.2, seed=0, progress=False)
    assert result.last_change == 0
    assert {n: np.shape(result.graph.nodes[n].weight) for n in ("c1", "c2")} == {"c1": (4, 2, 3, 3), "c2": (6, 2, 2, 2)}
    assert not np.array_equal(result.graph.nodes["c1"].weight, graph.nodes["c1"].weight)
    _held_exactly(result.graph, 2)
    _float_equals_engine(result.graph, x, 2)


def test_a_sinabs_cnn_export_tunes_to_what_the_chip_holds(digits):
    """sinabs' own export of Conv2d -> IAF -> SumPool2d -> Flatten -> Linear -> IAF (subtract reset), through
    ``st2chip import --from sinabs``'s converter: fine-tuned, it lowers exactly and the chip spikes as float."""
    import sinabs.layers as sl
    from sinabs.activation import SingleSpike
    from st2chip.converters.sinabs import to_nir
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1),
                              sl.IAFSqueeze(num_timesteps=STEPS, spike_fn=SingleSpike),
                              sl.SumPool2d(2), torch.nn.Flatten(), torch.nn.Linear(64, 10),
                              sl.IAFSqueeze(num_timesteps=STEPS, spike_fn=SingleSpike))
    x, y = _digits(digits, 100)
    graph = to_nir(net, torch.from_numpy(x[:2]).float().reshape(-1, 1, 8, 8)).graph
    result = finetune_graph(graph, {_input(graph): x}, y, decay_groups=1, headroom=512.0, epochs=2, lr=1e-2,
                            holdout=0.2, seed=0, progress=False)
    assert result.last_change == 0
    assert max(lower(graph).report["layers"][n]["weight_error"] for n in ("1", "5")) > 1e-3
    _held_exactly(result.graph, 1)
    _float_equals_engine(result.graph, x, 1)
    assert result.after.agreement == 1.0


def test_pooling_after_a_convolution_is_refused_naming_the_node(random_conv):
    """input -> Conv -> SumPool -> IF: every synapse sums four kernel weights, which the chip rounds as one."""
    rng = np.random.default_rng(0)
    two = np.array([2, 2])
    nodes = {"input": nir.Input(input_type={"input": np.array([1, 6, 6])}),
             "conv": random_conv(rng, 2, 1, 3, padding=1),
             "pool": nir.SumPool2d(kernel_size=two, stride=two, padding=np.array([0, 0])),
             "lif": nir.IF(r=np.ones(18), v_threshold=np.ones(18)),
             "output": nir.Output(output_type={"output": np.array([18])})}
    names = list(nodes)
    graph = normalize(nir.NIRGraph(nodes=nodes, edges=list(zip(names[:-1], names[1:])), metadata={"dt": 1.0},
                                   type_check=False))
    x = (np.random.default_rng(0).random((10, 6, 36)) < 0.3).astype(np.uint8)
    with pytest.raises(GraphError, match="sum of several") as err:
        finetune_graph(graph, {"input": x}, np.arange(10) % 5, decay_groups=1, headroom=512.0, epochs=1, lr=1e-2,
                       holdout=0.2, seed=0, progress=False)
    assert err.value.node == "conv" and "\n" not in str(err.value)


def test_the_loss_temperature_fits_the_graphs_score_units(digits):
    from st2chip.chip.finetune_graph import calibrate
    from st2chip.graph.torch_model import GraphModule
    graph = _recurrent_graph()
    x, y = _digits(digits, 60)
    module = GraphModule(graph)
    with torch.no_grad():
        scores = module.scores(module.run(module.encode(torch.from_numpy(x))))
    loss = lambda t: float(torch.nn.functional.cross_entropy(scores / t, torch.from_numpy(y)))  # noqa: E731
    t = calibrate(module, x, y)
    assert module.temperature == t and all(loss(t) <= loss(other) + 1e-6 for other in (1.0, t / 3, t * 3))
    with torch.no_grad():
        torch.testing.assert_close(module(module.encode(torch.from_numpy(x))), scores / t)
    module.module("fc_out").weight.data.mul_(40.0)  # scores in 40 times larger units: so is the temperature
    module.module("fc_out").bias.data.mul_(40.0)
    assert calibrate(module, x, y) == pytest.approx(40 * t, rel=0.25)


def test_a_layer_that_barely_leaks_keeps_the_chips_smallest_leak(digits):
    """tau = 10 s at dt = 1 ms rounds to no decay (dv = 0), which no LIF can write (tau = inf): the tie keeps dv = 1."""
    rng = np.random.default_rng(0)
    nodes = {"input": nir.Input(input_type={"input": np.array([64])}),
             "fc1": nir.Affine(weight=rng.normal(0.1, 0.3, (16, 64)), bias=np.zeros(16)),
             "lif": nir.LIF(tau=np.full(16, 10.0), r=np.ones(16), v_leak=np.zeros(16), v_threshold=np.full(16, 2e-3),
                            v_reset=np.zeros(16)),
             "fc2": nir.Affine(weight=rng.normal(0, 0.5, (10, 16)), bias=np.zeros(10)),
             "readout": nir.LI(tau=np.full(10, 5e-3), r=np.ones(10), v_leak=np.zeros(10)),
             "output": nir.Output(output_type={"output": np.array([10])})}
    names = list(nodes)
    graph = normalize(nir.NIRGraph(nodes=nodes, edges=list(zip(names[:-1], names[1:])), metadata={"dt": 1e-3},
                                   type_check=False))
    x, y = _digits(digits, 60)
    result = finetune_graph(graph, {"input": x}, y, decay_groups=2, headroom=512.0, epochs=1, lr=1e-6, holdout=0.2,
                            seed=0, progress=False)
    np.testing.assert_allclose(result.graph.nodes["lif"].tau, 1e-3 * 4096)
    _held_exactly(result.graph, 2)


def test_decays_train_at_a_tenth_of_the_learning_rate():
    from st2chip.chip.finetune_graph import _param_groups
    from st2chip.graph.torch_model import GraphModule
    module = GraphModule(_recurrent_graph())
    weights, decays = _param_groups(module, 1e-2)
    assert "lr" not in weights and decays["lr"] == pytest.approx(1e-3)
    lif, readout = module.module("lif"), module.module("readout")
    assert {id(p) for p in decays["params"]} == {id(lif.decay), id(lif.syn_decay), id(readout.decay)}
    assert len(weights["params"]) == 6  # fc_in, rec, fc_out: weight and bias each
