"""Xylo lowering: layers flattened by depth, leaks to the nearest shift, 8-bit weights with one shift per matrix,
thresholds as the integer above, readouts as output neurons that never spike; and the chip agrees with float."""

import nir
import numpy as np
import pytest
import torch

import st2chip
from st2chip.graph.simulate import simulate
from st2chip.targets.xylo_engine import run_xylo
from st2chip.xylo.lower import PASSES, lower_xylo
from st2chip.xylo.lowering.leaks import chip_decay
from st2chip.xylo.spec import load_spec
from st2chip.xylo.xylograph import STATE_RANGE

DT = 1e-3
AUDIO3 = load_spec("xylo-audio3")


def _lif(beta, theta=1.0, reset="subtract"):
    beta = np.asarray(beta, dtype=float)
    return nir.LIF(tau=DT / (1 - beta), r=1 / (1 - beta), v_leak=np.zeros(beta.size),
                   v_threshold=np.broadcast_to(theta, beta.shape).astype(float), v_reset=np.zeros(beta.size),
                   metadata={"reset": reset})


def _graph(nodes, edges, steps=20):
    return st2chip.load(nir.NIRGraph(nodes=nodes, edges=edges, metadata={"dt": DT, "steps": steps},
                                     type_check=False))


def _mlp(rng, sizes=(3, 5, 4, 2), beta=0.75):
    """Input -> (Affine -> LIF) x 2 -> Affine -> I readout."""
    nodes = {"input": nir.Input(input_type={"input": np.array([sizes[0]])})}
    edges, prev = [], "input"
    for k, (a, b) in enumerate(zip(sizes[:-2], sizes[1:-1]), start=1):
        nodes[f"fc{k}"] = nir.Affine(weight=rng.normal(0, 0.5, (b, a)), bias=rng.normal(0, 0.05, b))
        nodes[f"lif{k}"] = _lif(np.full(b, beta))
        edges += [(prev, f"fc{k}"), (f"fc{k}", f"lif{k}")]
        prev = f"lif{k}"
    nodes["fc_out"] = nir.Affine(weight=rng.normal(0, 0.5, (sizes[-1], sizes[-2])), bias=np.zeros(sizes[-1]))
    nodes["readout"] = nir.I(r=np.full(sizes[-1], 1 / DT))
    nodes["output"] = nir.Output(output_type={"output": np.array([sizes[-1]])})
    edges += [(prev, "fc_out"), ("fc_out", "readout"), ("readout", "output")]
    return _graph(nodes, edges)


def _rnn(rng, n_in=4, hidden=6, n_out=3):
    """Input -> Affine -> CubaLIF (recurrent Affine) -> Affine -> LI readout: st2chip's RNN."""
    alpha, beta = np.full(hidden, 0.5), np.full(hidden, 0.875)
    lif = nir.CubaLIF(tau_syn=DT / (1 - alpha), tau_mem=DT / (1 - beta), r=1 / (1 - beta), v_leak=np.zeros(hidden),
                      v_threshold=np.ones(hidden), v_reset=np.zeros(hidden), w_in=1 / (1 - alpha),
                      metadata={"reset": "subtract"})
    nodes = {"input": nir.Input(input_type={"input": np.array([n_in])}),
             "fc_in": nir.Affine(weight=rng.normal(0, 1, (hidden, n_in)), bias=np.zeros(hidden)), "lif": lif,
             "rec": nir.Affine(weight=rng.normal(0, 0.3, (hidden, hidden)), bias=np.zeros(hidden)),
             "fc_out": nir.Affine(weight=rng.normal(0, 1, (n_out, hidden)), bias=np.zeros(n_out)),
             "readout": nir.LI(tau=np.full(n_out, DT / 0.3), r=np.ones(n_out), v_leak=np.zeros(n_out)),
             "output": nir.Output(output_type={"output": np.array([n_out])})}
    edges = [("input", "fc_in"), ("fc_in", "lif"), ("lif", "rec"), ("rec", "lif"), ("lif", "fc_out"),
             ("fc_out", "readout"), ("readout", "output")]
    return _graph(nodes, edges)


def test_the_passes_are_named_in_order() -> None:
    assert [name for name, _ in PASSES] == ["inputs", "stack", "layout", "leaks", "weights", "thresholds"]


def test_an_mlp_flattens_into_one_hidden_population_by_depth() -> None:
    chip = lower_xylo(_mlp(np.random.default_rng(0)), AUDIO3)
    layers = {layer.name: layer for layer in chip.layers}
    assert (layers["lif1"].start, layers["lif1"].stop, layers["lif1"].depth) == (0, 5, 0)
    assert (layers["lif2"].start, layers["lif2"].stop, layers["lif2"].depth) == (5, 9, 1)
    assert layers["readout"].output and layers["readout"].depth == 2 and chip.latency == 2
    assert (chip.n_inputs, chip.n_hidden, chip.n_outputs) == (3, 9, 2)
    assert chip.input_names == ["input"]
    assert np.all(chip.w_in[:, 5:] == 0) and np.any(chip.w_in[:, :5])  # inputs reach the first layer only
    assert np.any(chip.w_rec[:5, 5:]) and np.all(chip.w_rec[:, :5] == 0) and np.all(chip.w_rec[5:, 5:] == 0)
    assert np.all(chip.w_out[:5] == 0) and np.any(chip.w_out[5:])  # outputs read the last layer only


def test_an_rnn_keeps_its_recurrent_block_and_current() -> None:
    chip = lower_xylo(_rnn(np.random.default_rng(1)), AUDIO3)
    assert chip.latency == 1 and [(l.name, l.depth) for l in chip.layers] == [("lif", 0), ("readout", 1)]  # noqa: E741
    assert np.count_nonzero(chip.w_rec) > 20  # the hidden -> hidden recurrent weights
    assert np.all(chip.hidden.dash_syn == 1) and np.all(chip.hidden.dash_mem == 3)  # alpha 0.5, beta 0.875: exact
    assert chip.report["lif"]["leak_error"] == 0 and chip.report["lif"]["syn_leak_error"] == 0
    assert np.all(chip.outputs.dash_mem == 2)  # LI decay 0.7: nearest 1 - 2^-2
    assert chip.report["readout"]["leak_error"] == pytest.approx(0.05)


def test_leaks_round_per_neuron_to_the_nearest_shift_and_the_report_states_the_error() -> None:
    rng = np.random.default_rng(2)
    graph = _mlp(rng)
    beta = np.array([0.5, 0.74, 0.9, 0.97, 0.2])  # sLIF: one leak per neuron
    graph.nodes["lif1"] = _lif(beta)
    chip = lower_xylo(graph, AUDIO3)
    dash = chip.hidden.dash_mem[:5]
    assert dash.tolist() == [1, 2, 3, 5, 0]
    assert chip.report["lif1"]["leak_error"] == pytest.approx(np.max(np.abs(beta - chip_decay(dash))))
    assert chip.report["lif1"]["leak_error"] == pytest.approx(0.2)  # 0.2 -> dash 0 (beta 0)
    assert "dash_syn = 1" in chip.report["lif1"]["synaptic_filter"]
    assert np.all(chip.hidden.dash_syn == 1)


def test_thresholds_and_weights_are_integers_in_range_with_v_above_theta_as_the_integer_above() -> None:
    graph = _mlp(np.random.default_rng(3))
    chip = lower_xylo(graph, AUDIO3)
    for w in (chip.w_in, chip.w_rec, chip.w_out):
        assert w.dtype == np.int64 and w.min() >= -128 and w.max() <= 127
    assert 0 <= min(chip.shift_in, chip.shift_rec, chip.shift_out) and max(chip.shift_in, chip.shift_rec) <= 7
    scale = chip.report["lif1"]["scale"]
    assert chip.hidden.threshold[:5].tolist() == [int(np.rint(scale * 1.0))] * 5
    assert 1 <= chip.hidden.threshold.min() and chip.hidden.threshold.max() <= 4096  # headroom: v holds 8
    assert np.all(chip.outputs.threshold == STATE_RANGE[1])  # the I readout never spikes
    for name in ("lif1", "lif2", "readout"):
        assert chip.report[name]["weight_error"] < 0.02
    theta = graph.nodes["fc1"].weight  # the input weights as the chip holds them, at the layer's scale
    held = chip.w_in[:, :5].T * 2 ** chip.shift_in / scale
    assert np.allclose(held, theta, atol=2 ** chip.shift_in / scale)


def test_a_spiking_output_layer_keeps_its_threshold() -> None:
    graph = _mlp(np.random.default_rng(4), sizes=(3, 5, 2))
    graph.nodes["readout"] = _lif(np.full(2, 0.5), theta=0.5)
    chip = lower_xylo(graph, AUDIO3)
    scale = chip.report["readout"]["scale"]
    assert chip.outputs.threshold.tolist() == [int(np.rint(0.5 * scale))] * 2
    assert "readout" not in " ".join(chip.report["readout"]["approximations"])


def test_an_affine_bias_becomes_the_neurons_bias_at_its_scale() -> None:
    graph = _mlp(np.random.default_rng(5))
    chip = lower_xylo(graph, AUDIO3)
    scale = chip.report["lif1"]["scale"]
    gain = 1.0  # an sLIF's dt / tau * r
    assert np.array_equal(chip.hidden.bias[:5], np.rint(scale * gain * graph.nodes["fc1"].bias))


def test_a_model_trained_by_st2chip_lowers_within_the_design_rules() -> None:
    from st2chip.converters.mlp import mlp_to_nir
    from st2chip.learn.data import MNIST1D_LEVELS, MNIST1D_STEPS, Split, load_mnist1d_split
    from st2chip.learn.mlp import MLPConfig, SpikingMLP
    from st2chip.learn.training import train_classifier
    train, test = load_mnist1d_split()
    torch.manual_seed(0)
    model = SpikingMLP(MLPConfig(sizes=[MNIST1D_LEVELS, 32, 10], steps=MNIST1D_STEPS, encoding="sequence",
                                 reset="subtract"))
    head = lambda split, n: Split(split.x[:n], split.y[:n])  # noqa: E731
    train_classifier(model, head(train, 128), head(test, 32), epochs=1, seed=0, device="cpu", progress=False)
    chip = lower_xylo(st2chip.load(mlp_to_nir(model)), AUDIO3)
    assert (chip.n_inputs, chip.n_hidden, chip.n_outputs, chip.latency) == (16, 32, 10, 1)
    assert chip.report["lif1"]["leak_error"] < 0.05 and chip.report["lif1"]["weight_error"] < 0.02
    assert chip.report["readout"]["weight_error"] < 0.1


def test_a_lowered_mlp_classifies_on_the_engine_as_in_float() -> None:
    """Four classes, each driven by its own input channel through two hidden neurons: the chip's readout voltage
    (the engine, the outputs' view aligned by the latency) picks the class that float picks, sample by sample."""
    n = 4
    w_in = np.zeros((2 * n, n))
    w_out = np.zeros((n, 2 * n))
    for k in range(n):
        w_in[2 * k:2 * k + 2, k] = [0.7, 0.45]
        w_out[k, 2 * k:2 * k + 2] = 1.0
    w_out -= 0.2
    nodes = {"input": nir.Input(input_type={"input": np.array([n])}),
             "fc1": nir.Affine(weight=w_in, bias=np.zeros(2 * n)), "lif1": _lif(np.full(2 * n, 0.75)),
             "fc2": nir.Affine(weight=w_out, bias=np.zeros(n)), "readout": nir.I(r=np.full(n, 1 / DT)),
             "output": nir.Output(output_type={"output": np.array([n])})}
    edges = [("input", "fc1"), ("fc1", "lif1"), ("lif1", "fc2"), ("fc2", "readout"), ("readout", "output")]
    graph = _graph(nodes, edges)
    chip = lower_xylo(graph, AUDIO3)
    rng = np.random.default_rng(6)
    steps, batch = 20, 8
    x = (rng.random((batch, steps, n)) < 0.15).astype(np.int64)
    labels = np.arange(batch) % n
    x[np.arange(batch), :, labels] = rng.random((batch, steps)) < 0.8
    fl = simulate(graph, x)
    padded = np.concatenate([x, np.zeros((batch, chip.latency, n), np.int64)], axis=1)
    run = run_xylo(chip, padded).aligned(chip.latency, steps)
    chip_scores = run.output_v[:, -1]
    assert np.array_equal(fl.scores.argmax(1), labels)
    assert np.array_equal(chip_scores.argmax(1), fl.scores.argmax(1))
    scale = chip.report["readout"]["scale"]
    assert np.allclose(chip_scores / scale, fl.scores, rtol=0.35, atol=2.0)
