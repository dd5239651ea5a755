"""Convolution, pooling, recurrence and reset by subtraction on the chip: float vs engine vs real Lava.

Each tiny graph is lowered, run on the engine and on Lava's fixed-point simulator
(which must agree spike for spike and voltage for voltage), and compared with the
float NIR simulation (which the chip approximates after quantization).
"""

import warnings

import nir
import numpy as np
import pytest

from st2chip.analysis.verify import compare
from st2chip.chip.lower import FeedbackLatencyWarning, lower
from st2chip.chip.table import format_table
from st2chip.graph.normalize import normalize
from st2chip.graph.simulate import simulate
from st2chip.targets import engine, lava

DT = 1e-3


def _lif(shape, seed: int, reset: str = "zero") -> nir.LIF:
    rng = np.random.default_rng(seed)
    beta = rng.uniform(0.7, 0.95, shape)
    return nir.LIF(tau=DT / (1 - beta), r=1 / (1 - beta), v_leak=np.zeros(shape),
                   v_threshold=rng.uniform(0.8, 1.2, shape), v_reset=np.zeros(shape), metadata={"reset": reset})


def _check(graph: nir.NIRGraph, chip, x: np.ndarray, min_agreement: float):
    """Engine = Lava exactly; float vs engine spike agreement per layer at least ``min_agreement``."""
    inputs = {"input": x}
    eng, lav = engine.run(chip, inputs), lava.run(chip, inputs)
    for layer in eng.spikes:
        np.testing.assert_array_equal(eng.spikes[layer], lav.spikes[layer], err_msg=layer)
        np.testing.assert_array_equal(eng.voltages[layer], lav.voltages[layer], err_msg=layer)
    flt = simulate(graph, x)
    agreement = compare(flt, eng, voltages=False).spike_agreement
    assert all(flt.spikes[layer].sum() > 0 for layer in agreement), "every layer should spike"
    assert min(agreement.values()) >= min_agreement, agreement
    return flt, eng


def _spikes(seed: int, shape, rate: float = 0.3) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) < rate).astype(np.uint8)


def test_convolutions_with_stride_padding_groups_and_dilation(strided_cnn):
    graph = normalize(strided_cnn(_lif((4, 5, 5), 1), _lif((6, 3, 3), 2)))
    chip = lower(graph, decay_groups=2)
    assert chip.report["layers"]["l1"]["chains"] == ["Conv2d"]
    assert {s.form for s in chip.synapses if s.target.startswith("l1")} == {"sparse"}
    assert "Conv2d" in format_table(chip)
    _check(graph, chip, _spikes(1, (3, 20, 162)), 0.97)


def test_sum_and_average_pooling_fold_into_the_next_convolution(random_conv):
    rng = np.random.default_rng(3)
    nodes = {"input": nir.Input(input_type={"input": np.array([1, 8, 8])}),
             "c1": random_conv(rng, 4, 1, 3, padding=1), "l1": _lif((4, 8, 8), 4),
             "sum": nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0])),
             "c2": random_conv(rng, 4, 4, 3, padding=1), "l2": _lif((4, 4, 4), 5),
             "avg": nir.AvgPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0])),
             "flat": nir.Flatten(input_type={"input": np.array([4, 2, 2])}),
             "fc": nir.Affine(weight=rng.normal(0.2, 0.5, (3, 16)), bias=np.zeros(3)),
             "l3": _lif(3, 6), "output": nir.Output(output_type={"output": np.array([3])})}
    edges = [("input", "c1"), ("c1", "l1"), ("l1", "sum"), ("sum", "c2"), ("c2", "l2"), ("l2", "avg"),
             ("avg", "flat"), ("flat", "fc"), ("fc", "l3"), ("l3", "output")]
    graph = normalize(nir.NIRGraph(nodes=nodes, edges=edges, metadata={"dt": DT}, type_check=False))
    chip = lower(graph)
    assert chip.report["layers"]["l2"]["chains"] == ["SumPool2d -> Conv2d"]
    assert chip.report["layers"]["l3"]["chains"] == ["AvgPool2d -> Affine"]
    assert [s.source for s in chip.synapses if s.target == "l2"] == ["l1"]  # one group: pool and conv composed
    _check(graph, chip, _spikes(2, (3, 20, 64), 0.4), 0.97)


def _cuba(n: int, seed: int, reset: str = "zero") -> nir.CubaLIF:
    """Per-neuron decays drawn from two values each, so that two decay groups hold them exactly."""
    rng = np.random.default_rng(seed)
    beta_syn, beta_mem = rng.choice([0.55, 0.75], n), rng.choice([0.82, 0.93], n)
    return nir.CubaLIF(tau_syn=DT / (1 - beta_syn), tau_mem=DT / (1 - beta_mem), r=1 / (1 - beta_mem),
                       v_leak=np.zeros(n), v_threshold=rng.uniform(0.8, 1.2, n), v_reset=np.zeros(n),
                       w_in=1 / (1 - beta_syn), metadata={"reset": reset})


@pytest.mark.parametrize("reset", ["zero", "subtract"])
def test_self_recurrent_cubalif_layer(reset):
    rng = np.random.default_rng(7)
    nodes = {"input": nir.Input(input_type={"input": np.array([10])}),
             "w_in": nir.Affine(weight=rng.normal(0.15, 0.3, (12, 10)), bias=np.zeros(12)), "hidden": _cuba(12, 8, reset),
             "w_rec": nir.Affine(weight=rng.normal(0, 0.3, (12, 12)), bias=np.zeros(12)),
             "w_out": nir.Affine(weight=rng.normal(0, 0.5, (4, 12)), bias=np.zeros(4)),
             "readout": nir.LI(tau=np.full(4, 0.004), r=np.ones(4), v_leak=np.zeros(4)),
             "output": nir.Output(output_type={"output": np.array([4])})}
    edges = [("input", "w_in"), ("w_in", "hidden"), ("hidden", "w_rec"), ("w_rec", "hidden"),
             ("hidden", "w_out"), ("w_out", "readout"), ("readout", "output")]
    graph = normalize(nir.NIRGraph(nodes=nodes, edges=edges, metadata={"dt": DT}, type_check=False))
    chip = lower(graph, decay_groups=2)  # exact here: decay grouping is measured elsewhere
    assert chip.report["layers"]["hidden"]["recurrent"] == ["hidden"]
    assert any(s.feedback for s in chip.synapses) and chip.depth == 2
    assert all(p.reset == reset for p in chip.populations if p.layer == "hidden")
    assert "own (" in format_table(chip)
    flt, eng = _check(graph, chip, _spikes(3, (4, 30, 10)), 0.97)
    assert np.corrcoef(flt.scores.ravel(), eng.scores.ravel() / eng.scores.std())[0, 1] > 0.9


def test_feedback_to_an_earlier_layer_arrives_one_step_per_synapse():
    """A -> B -> back to A: on the chip the feedback takes two steps; float with one extra Delay step agrees."""
    rng = np.random.default_rng(9)

    def graph_with(extra_delay: bool) -> nir.NIRGraph:
        nodes = {"input": nir.Input(input_type={"input": np.array([6])}),
                 "fa": nir.Affine(weight=rng.normal(0.3, 0.4, (5, 6)), bias=np.zeros(5)), "A": _lif(5, 10),
                 "fab": nir.Affine(weight=rng.normal(0.3, 0.4, (4, 5)), bias=np.zeros(4)), "B": _lif(4, 11),
                 "fba": nir.Affine(weight=rng.normal(0, 0.4, (5, 4)), bias=np.zeros(5)),
                 "output": nir.Output(output_type={"output": np.array([4])})}
        edges = [("input", "fa"), ("fa", "A"), ("A", "fab"), ("fab", "B"), ("B", "fba"), ("B", "output")]
        if extra_delay:
            nodes["d"] = nir.Delay(delay=np.full(5, DT))
            edges += [("fba", "d"), ("d", "A")]
        else:
            edges += [("fba", "A")]
        return normalize(nir.NIRGraph(nodes=nodes, edges=edges, metadata={"dt": DT}, type_check=False))

    plain = graph_with(False)
    rng = np.random.default_rng(9)
    delayed = graph_with(True)
    with pytest.warns(FeedbackLatencyWarning, match="2 steps later"):
        chip = lower(plain, decay_groups=5)
    assert chip.report["layers"]["A"]["feedback_latency"] == {"B": 2}
    x = _spikes(4, (3, 25, 6), 0.4)
    flt_delayed, eng = _check(delayed, chip, x, 0.97)
    flt_plain = simulate(plain, x)
    assert not np.array_equal(flt_plain.spikes["A"], flt_delayed.spikes["A"])  # the latency does matter


def test_nir_paper_cnn_shape_maps_and_runs():
    """Input (2, 34, 34) -> Conv 16x5x5 s2 -> IF -> Conv -> IF -> SumPool -> Conv -> IF -> SumPool -> Flatten
    -> Affine -> IF -> Affine -> IF, random weights: maps, and engine = Lava on a few samples."""
    rng = np.random.default_rng(0)

    def if_(shape):
        return nir.IF(r=np.full(shape, 1 / DT), v_threshold=np.ones(shape), v_reset=np.zeros(shape))

    def conv(c_out, c_in, k, stride):
        return nir.Conv2d(input_shape=None, weight=rng.normal(0.05, 0.3, (c_out, c_in, k, k)) / np.sqrt(c_in * k * k),
                          stride=stride, padding=1, dilation=1, groups=1, bias=np.zeros(c_out))

    sum_pool = lambda: nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]),  # noqa: E731
                                     padding=np.array([0, 0]))
    nodes = {"input": nir.Input(input_type={"input": np.array([2, 34, 34])}),
             "c1": conv(16, 2, 5, 2), "i1": if_((16, 16, 16)), "c2": conv(16, 16, 3, 1), "i2": if_((16, 16, 16)),
             "p2": sum_pool(), "c3": conv(8, 16, 3, 1), "i3": if_((8, 8, 8)), "p3": sum_pool(),
             "flat": nir.Flatten(input_type={"input": np.array([8, 4, 4])}),
             "fc1": nir.Affine(weight=rng.normal(0.05, 0.2, (32, 128)), bias=np.zeros(32)), "i4": if_(32),
             "fc2": nir.Affine(weight=rng.normal(0.05, 0.3, (10, 32)), bias=np.zeros(10)), "i5": if_(10),
             "output": nir.Output(output_type={"output": np.array([10])})}
    order = list(nodes)
    graph = normalize(nir.NIRGraph(nodes=nodes, edges=list(zip(order[:-1], order[1:])), metadata={"dt": DT},
                                   type_check=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        chip = lower(graph)
    assert chip.depth == 5 and chip.layer_size("i1") == 16 * 16 * 16
    eng = engine.run(chip, {"input": _spikes(5, (2, 8, 2 * 34 * 34), 0.3)})
    lav = lava.run(chip, {"input": _spikes(5, (2, 8, 2 * 34 * 34), 0.3)}, voltages=False)
    for layer in eng.spikes:
        np.testing.assert_array_equal(eng.spikes[layer], lav.spikes[layer], err_msg=layer)
