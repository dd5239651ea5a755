"""Pass ``precision``: residual synapse groups (``W - Q8(W)`` at a smaller exponent) where 8-bit weights lose."""

import nir
import numpy as np
import pytest
import scipy.sparse as sp

import st2chip
from st2chip.chip.chipgraph import ChipGraph
from st2chip.chip.lower import PASSES, lower, start
from st2chip.chip.lowering.assemble import chip_graph
from st2chip.chip.lowering.plan import Options
from st2chip.chip.lowering.precision import PRECISION_BOUND, precision
from st2chip.chip.lowering.report import LayerReport, PrecisionChoice, PrecisionCosts
from st2chip.errors import GraphError
from st2chip.graph.normalize import normalize

def big_weight(n_out: int, n_in: int, peak: float, spread: float, seed: int = 0) -> np.ndarray:
    """Weights around 0 with one entry ``peak``: the population's scale follows the peak, so the rest lose
    precision to the 8-bit step (a peak of several thresholds, after the neuron's input gain ``dt/tau``,
    moves the group's exponent above 0)."""
    w = np.random.default_rng(seed).normal(spread / 4, spread, (n_out, n_in))
    w[0, 0] = peak
    return w


def two_layers(tiny, peak2: float | None = None) -> nir.NIRGraph:
    """input (6) -> LIF (8), gain 0.2, a peak weight of 40 (8 thresholds folded: exponent 3) -> LI readout (4)
    of plain weights (exponent 0), or with a peak of ``peak2``."""
    w2 = np.random.default_rng(7).normal(0, 0.3, (4, 8)) if peak2 is None else big_weight(4, 8, peak2, 0.05, seed=1)
    return tiny.chain([big_weight(8, 6, 40.0, 2.5), w2], [tiny.lif(np.ones(8)), tiny.li(4)])


def if_neurons(shape: tuple[int, ...]) -> nir.IF:
    """IF neurons of threshold 1 over a whole (C, H, W) map."""
    return nir.IF(r=np.full(shape, 1e3), v_threshold=np.ones(shape), v_reset=np.zeros(shape))


def without_precision(graph: nir.NIRGraph, **options) -> ChipGraph:
    """The ChipGraph lowering made before pass ``precision`` existed: every other pass, in order."""
    plan = start(normalize(graph), Options(**options))
    for name, run in PASSES:
        if name != "precision":
            plan = run(plan)
    return chip_graph(plan)


def assert_same_chip(a: ChipGraph, b: ChipGraph) -> None:
    assert [(i.name, i.size, i.kind, i.levels) for i in a.inputs] == [(i.name, i.size, i.kind, i.levels)
                                                                     for i in b.inputs]
    assert len(a.populations) == len(b.populations) and len(a.synapses) == len(b.synapses)
    for p, q in zip(a.populations, b.populations):
        assert (p.name, p.layer, p.du, p.dv, p.vth, p.readout, p.reset, p.voltage_unit) == (
            q.name, q.layer, q.du, q.dv, q.vth, q.readout, q.reset, q.voltage_unit)
        for field in ("index", "bias_mant", "bias_exp"):
            np.testing.assert_array_equal(getattr(p, field), getattr(q, field))
    for s, t in zip(a.synapses, b.synapses):
        assert (s.name, s.source, s.target, s.exp, s.form, s.error, s.delay, s.lag, s.feedback) == (
            t.name, t.source, t.target, t.exp, t.form, t.error, t.delay, t.lag, t.feedback)
        assert sp.issparse(s.mantissa) == sp.issparse(t.mantissa) and (s.conv is None) == (t.conv is None)
        np.testing.assert_array_equal(s.dense(), t.dense())
    assert a.report == b.report


def held_error(chip: ChipGraph, plan_layer, layer: str) -> float:
    """Relative error of what ``layer``'s groups hold (every group onto it, added) against the folded
    float weights, from the ChipGraph alone."""
    held = np.zeros(plan_layer.folded.weight.shape)
    for pop in chip.layer_populations(layer):
        scale = pop.voltage_unit / 64
        for g in chip.incoming(pop.name):
            held[np.ix_(pop.index, np.arange(g.shape[1]))] += 2.0 * g.dense() * 2.0**g.exp / scale
    w = plan_layer.folded.weight.toarray()
    return float(np.linalg.norm(held - w) / np.linalg.norm(w))


def plan_after(tiny, graph: nir.NIRGraph, **options):
    return precision(tiny.before(graph, "precision", **options))


def test_precision_8_is_todays_chip_graph(tiny, strided_cnn):
    recurrent = two_layers(tiny)
    recurrent.nodes["rec"] = nir.Affine(weight=np.random.default_rng(9).normal(0, 0.2, (8, 8)), bias=np.zeros(8))
    recurrent.edges += [("n1", "rec"), ("rec", "n1")]
    cnn = strided_cnn(if_neurons((4, 5, 5)), if_neurons((6, 3, 3)), conv_mean=0.1)
    for graph in (two_layers(tiny), recurrent, cnn):
        today = without_precision(graph, decay_groups=2)
        assert_same_chip(lower(normalize(graph), decay_groups=2, precision="8"), today)
        assert_same_chip(lower(normalize(graph), decay_groups=2), today)  # the pass's own default
        assert_same_chip(st2chip.lower(normalize(graph), decay_groups=2, precision=8), today)
        assert_same_chip(st2chip.lower(normalize(graph), decay_groups=2), today)  # the API's default: 8


def test_precision_16_adds_a_residual_group_per_group_and_the_error_falls(tiny):
    graph = normalize(two_layers(tiny))
    plan = plan_after(tiny, graph, precision="16")
    eight, sixteen = lower(graph, precision="8"), lower(graph, precision="16")
    residuals = [g for g in sixteen.synapses if g.name.endswith("/residual")]
    assert sorted(g.name for g in residuals) == ["input->n1/residual", "n1->n2/residual"]
    for r in residuals:
        main = next(g for g in sixteen.synapses if g.name == r.name.removesuffix("/residual"))
        assert (r.source, r.target, r.delay, r.feedback, r.form) == (main.source, main.target, main.delay,
                                                                     main.feedback, main.form)
        assert r.exp == -1 < main.exp + 1  # Lava adds 2 m 2^-1 = m exactly: no floor in the sum
    for layer, factor in (("n1", 8.0), ("n2", 1.5)):  # n1's group has exponent 3 (4 bits gained), n2's 0 (1 bit)
        before = held_error(eight, plan.layer(layer), layer)
        after = held_error(sixteen, plan.layer(layer), layer)
        assert after * factor < before
        choice = plan.layer(layer).precision
        assert choice.chosen == "16" and choice.error_8 == pytest.approx(before)
        assert choice.error_16 == pytest.approx(after)
        assert plan.layer(layer).synapses.weight_error == pytest.approx(after)
        assert sixteen.layer_report(layer).precision.chosen == "16"  # in the mapping report (map --json)
        assert sixteen.report["layers"][layer]["precision"]["chosen"] == "16"
    assert eight.report == without_precision(graph).report


def test_auto_picks_16_only_where_the_8_bit_error_exceeds_the_bound_and_pays(tiny):
    plan = plan_after(tiny, two_layers(tiny), precision="auto")
    n1, n2 = plan.layer("n1").precision, plan.layer("n2").precision
    assert n1.error_8 > PRECISION_BOUND and n1.chosen == "16" and n1.residuals == {"input->n1/residual": -1}
    assert n2.error_8 < PRECISION_BOUND and n2.chosen == "8" and "within the bound" in n2.why
    assert [g.name for g in plan.layer("n2").synapses.groups] == ["n1->n2"]
    # over the bound, but exponent 0: one bit gained for ~1.5x the weights and ops -> 8 bits stay
    heavy = plan_after(tiny, two_layers(tiny, peak2=1.0), precision="auto").layer("n2").precision
    assert heavy.error_8 > PRECISION_BOUND and heavy.chosen == "8" and "gain <=" in heavy.why
    assert heavy.cost.weights_16 > heavy.cost.weights_8 and heavy.cost.ops_16 > heavy.cost.ops_8


def test_a_group_with_a_negative_exponent_or_a_conv_kernel_gets_no_residual_and_says_why(tiny, strided_cnn):
    graph = two_layers(tiny)
    graph.nodes["rec"] = nir.Affine(weight=np.full((8, 8), 0.01), bias=np.zeros(8))  # far below the peak
    graph.edges += [("n1", "rec"), ("rec", "n1")]
    n1 = plan_after(tiny, graph, precision="16").layer("n1")
    assert "exponent" in n1.precision.skipped["n1->n1~"] and "n1->n1~/residual" not in n1.precision.residuals
    cnn = strided_cnn(if_neurons((4, 5, 5)), if_neurons((6, 3, 3)), conv_mean=0.1)
    chip = lower(normalize(cnn), precision="16")
    assert chip.layer_report("l1").storage == {"input->l1": "convolution"}
    l1 = plan_after(tiny, cnn, precision="16").layer("l1").precision
    assert "convolution kernel" in l1.skipped["input->l1"] and l1.chosen == "8"


def test_a_sparse_group_keeps_its_residual_sparse_within_its_pruned_pattern(tiny):
    rng = np.random.default_rng(10)
    w = big_weight(8, 6, 40.0, 2.5) * (rng.random((8, 6)) < 0.3)
    w[0, 0] = 40.0
    graph = tiny.chain([w, rng.normal(0, 0.3, (4, 8))], [tiny.lif(np.ones(8)), tiny.li(4)])
    chip = lower(normalize(graph), precision="16")
    main, res = (next(g for g in chip.synapses if g.name == n) for n in ("input->n1", "input->n1/residual"))
    assert main.form == res.form == "sparse" and sp.issparse(res.mantissa)
    assert not np.any(res.dense()[w == 0])


def test_options_refuse_an_unknown_precision_naming_the_flag():
    with pytest.raises(GraphError, match="--precision must be one of 8, 16, auto, got '32'"):
        Options(precision="32")


def test_the_layer_report_carries_the_choice_in_json():
    choice = PrecisionChoice("16", "precision=16: x", 0.02, 0.001, PrecisionCosts(10, 18, 1.0, 1.8),
                             {"a->n/residual": -1}, {"b->n": "exponent -2 < 0: x"})
    report = LayerReport(kind="LIF", neurons=3, affines=1, source="a", chains=["Affine"], decay_groups=1,
                         leak_error=0.0, threshold_range=[1.0, 1.0], bias_error=0.0, voltage_unit={"n": 64.0},
                         weight_error=0.001, precision=choice)
    assert list(report.to_dict())[-1] == "precision"
    assert report.to_dict()["precision"] == {
        "chosen": "16", "why": "precision=16: x", "error_8": 0.02, "error_16": 0.001,
        "cost": {"8": {"weights": 10, "ops": 1.0}, "16": {"weights": 18, "ops": 1.8}},
        "residuals": {"a->n/residual": -1}, "skipped": {"b->n": "exponent -2 < 0: x"}}


def lava_graph(tiny) -> nir.NIRGraph:
    """input (6) -> dense LIF (8, recurrent) -> sparse LIF (8) -> LI (4), peaks that give exponents > 0."""
    w2 = big_weight(8, 8, 30.0, 4.0, seed=2) * (np.random.default_rng(3).random((8, 8)) < 0.35)
    w2[0, 0] = 30.0
    graph = tiny.chain([big_weight(8, 6, 30.0, 4.0), w2, np.random.default_rng(8).normal(0, 0.5, (4, 8))],
                       [tiny.lif(np.ones(8)), tiny.lif(np.ones(8)), tiny.li(4)])
    graph.nodes["rec"] = nir.Affine(weight=big_weight(8, 8, 10.0, 2.0, seed=4), bias=np.zeros(8))
    graph.edges += [("n1", "rec"), ("rec", "n1")]
    return graph


def test_engine_equals_lava_with_dense_sparse_and_feedback_residual_groups(tiny):
    chip = st2chip.lower(normalize(lava_graph(tiny)), precision="16", decay_groups=1)
    forms = {g.name: (g.form, g.feedback) for g in chip.synapses if g.name.endswith("/residual")}
    assert {"dense", "sparse"} <= {f for f, _ in forms.values()} and any(fb for _, fb in forms.values())
    x = (np.random.default_rng(5).random((2, 12, 6)) < 0.4).astype(np.float32)
    eng, lav = st2chip.run(chip, x), st2chip.run(chip, x, backend="lava")
    assert eng.spikes["n1"].sum() > 0 and eng.spikes["n2"].sum() > 0
    for layer in ("n1", "n2", "n3"):
        np.testing.assert_array_equal(eng.spikes[layer], lav.spikes[layer], err_msg=layer)
        np.testing.assert_array_equal(eng.voltages[layer], lav.voltages[layer], err_msg=layer)


def test_energy_counts_an_accumulate_per_spike_and_non_zero_residual_weight(tiny):
    chip = st2chip.lower(normalize(lava_graph(tiny)), precision="16", decay_groups=1)
    x = (np.random.default_rng(6).random((3, 10, 6)) < 0.4).astype(np.float32)
    report = st2chip.energy(chip, x)
    traces = st2chip.run(chip, x)
    sent = {"input": x, "n1": traces.spikes["n1"], "n2": traces.spikes["n2"]}
    counted = {g.name: g.acs for g in report.groups}
    for g in chip.synapses:
        if g.name.endswith("/residual"):
            spikes = np.count_nonzero(sent[g.source], axis=(0, 1))
            assert counted[g.name] == int(spikes @ g.fanout()) > 0, g.name
    layer_acs = {r.layer: r.acs for r in report.layers}
    assert layer_acs["n2"] * report.samples == pytest.approx(
        sum(counted[g.name] for g in chip.synapses if g.target == "n2"))
