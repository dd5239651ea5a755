"""Lava layer by layer: each population alone on Lava, fed what the engine recorded for its inputs, equals the
engine bit for bit; a wrong record is caught and the population named; Lava's processes per run stay bounded."""

import gc
import importlib.util
import os
import tempfile
import warnings
from collections import Counter
from pathlib import Path

import nir
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from st2chip import limits
from st2chip.analysis.verify import verify
from st2chip.chip.lower import lower
from st2chip.errors import InputError
from st2chip.graph.normalize import normalize
from st2chip.targets import engine, lava, lava_layers


def _engine_tests():
    """tests/targets/test_engine.py, for its random ChipGraphs (delays, lags, skips, decay groups)."""
    spec = importlib.util.spec_from_file_location("engine_tests", Path(__file__).with_name("test_engine.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


chip_graphs = _engine_tests().chip_graphs

DT = 1e-3
X = {"input": (np.random.default_rng(1).random((2, 10, 8)) < 0.4).astype(np.uint8)}


def _lif(rng: np.random.Generator, n: int, reset: str = "zero") -> nir.LIF:
    beta = rng.uniform(0.7, 0.95, n)
    return nir.LIF(tau=DT / (1 - beta), r=1 / (1 - beta), v_leak=np.zeros(n), v_threshold=rng.uniform(0.8, 1.2, n),
                   v_reset=np.zeros(n), metadata={"reset": reset})


@pytest.fixture(scope="module")
def chip():
    """input -> A (self-recurrent, reset by subtraction) -> B -> back to A; input -> V (relay) -> U -> B; B -> LI.
    Two decay groups per layer: populations A/g0, A/g1, V, B/g0, B/g1, li, with feedback groups."""
    rng = np.random.default_rng(5)
    v, u = rng.normal(size=(2, 8)) * 1.5, rng.normal(size=(6, 2)) * 1.5

    def affine(n_out: int, n_in: int, mean: float = 0.0) -> nir.Affine:
        return nir.Affine(weight=rng.normal(mean, 0.4, (n_out, n_in)), bias=np.zeros(n_out))

    nodes = {"input": nir.Input(input_type={"input": np.array([8])}), "fa": affine(6, 8, 0.3),
             "A": _lif(rng, 6, "subtract"), "w_rec": affine(6, 6), "fab": affine(6, 6, 0.3), "B": _lif(rng, 6),
             "fba": affine(6, 6), "V": nir.Affine(weight=v, bias=np.zeros(2)),
             "U": nir.Affine(weight=u, bias=np.zeros(6)), "fc": affine(3, 6),
             "li": nir.LI(tau=np.full(3, 0.01), r=np.ones(3), v_leak=np.zeros(3)),
             "output": nir.Output(output_type={"output": np.array([3])})}
    edges = [("input", "fa"), ("fa", "A"), ("A", "w_rec"), ("w_rec", "A"), ("A", "fab"), ("fab", "B"),
             ("B", "fba"), ("fba", "A"), ("input", "V"), ("V", "U"), ("U", "B"), ("B", "fc"), ("fc", "li"),
             ("li", "output")]
    graph = normalize(nir.NIRGraph(nodes=nodes, edges=edges, metadata={"dt": DT}, type_check=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the feedback's latency warning
        out = lower(graph, lowrank="factored", decay_groups=2)
    assert any(s.feedback for s in out.synapses) and any(p.graded for p in out.populations)
    return out


def _assert_same(a, b) -> None:
    for layer in a.spikes:
        np.testing.assert_array_equal(a.spikes[layer], b.spikes[layer], err_msg=layer)
        np.testing.assert_array_equal(a.voltages[layer], b.voltages[layer], err_msg=layer)
    np.testing.assert_array_equal(a.scores, b.scores)


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(chip_graphs())
def test_cut_out_populations_replay_the_engine_exactly(case):
    """The cutting and timing alone (delays, lags, skips, decay groups), on the engine: fast, many graphs."""
    graph, x = case
    out = lava_layers.run(graph, x, max_processes=9, simulate=engine.run)
    assert out.meta["differences"] == []
    _assert_same(engine.run(graph, x), out)


def test_recurrence_and_a_relay_replay_the_engine_exactly_on_the_engine(chip):
    out = lava_layers.run(chip, X, max_processes=10 ** 6, simulate=engine.run)
    assert out.meta["differences"] == [] and out.meta["runs"] == 1
    _assert_same(engine.run(chip, X), out)


def test_layers_and_whole_agree_with_the_engine_on_lava_within_the_process_bound(chip):
    eng = engine.run(chip, X)
    _assert_same(eng, lava.run(chip, X))
    whole = lava.process_count(chip)
    limits.set_memory_budget(20 * lava.PROCESS_BYTES)  # the budget bounds a run, below max_processes
    try:
        out = lava_layers.run(chip, X, max_processes=10 ** 6)
    finally:
        limits.set_memory_budget(None)
    assert out.meta["differences"] == [] and out.meta["lava_mode"] == "layers"
    assert out.meta["max_processes"] <= 20 < whole and out.meta["runs"] > 1
    _assert_same(eng, out)
    assert eng.spikes["A"].any() and eng.spikes["B"].any() and eng.spikes["V"].any()


def test_the_memory_budget_bounds_each_runs_weights_not_only_its_processes(chip):
    """A budget that holds every process of the whole graph but not its weights: the check splits into runs whose
    processes and weights fit, and a lone population too large for the budget is refused, naming Lava."""
    whole = lava.memory_bytes(chip)
    assert whole > lava.process_count(chip) * lava.PROCESS_BYTES  # the weights count
    budget = lava.process_count(chip) * lava.PROCESS_BYTES + (whole - lava.process_count(chip) * lava.PROCESS_BYTES) // 2
    sizes = []

    def simulate(small, data, voltages):
        sizes.append(lava.memory_bytes(small))
        return engine.run(small, data, voltages=voltages)

    limits.set_memory_budget(budget)
    try:
        out = lava_layers.run(chip, X, max_processes=10 ** 6, simulate=simulate)
        limits.set_memory_budget(lava.PROCESS_BYTES)
        with pytest.raises(InputError, match="lava: .*Lava processes .* and their weights"):
            lava.run(chip, X)
    finally:
        limits.set_memory_budget(None)
    assert out.meta["differences"] == [] and out.meta["runs"] == len(sizes) > 1
    assert max(sizes) <= budget < whole


def test_a_wrong_record_is_caught_and_the_populations_named(chip):
    """One recorded spike of A/g0 flipped: Lava's A/g0 (fed the true inputs) differs at that very step and neuron,
    and each population that read the flipped spike differs from when it read it; verify fails, naming them."""
    rec = lava_layers.record(chip, X)
    pop = chip.population("A/g0")
    depth = chip.depths()[pop.name]
    rec.sent[pop.name][1, depth + 3, 2] ^= 1
    out = lava_layers.run(chip, X, max_processes=10 ** 6, rec=rec)
    found = {d.population: d for d in out.meta["differences"]}
    d = found["A/g0"]
    assert (d.sample, d.step, d.neuron, d.what, d.layer) == (1, 3, int(pop.index[2]), "spike", "A")
    # B (one step deeper) reads it at its own step 3; A/g1 through the feedback group one step later
    assert set(found) == {"A/g0", "A/g1", "B/g0", "B/g1"} and (found["B/g0"].step, found["A/g1"].step) == (3, 4)
    report = verify([engine.run(chip, X)], cross_checks=(out,))
    check = next(c for c in report.checks if c.name.startswith("reference = lava"))
    assert not check.passed and "population 'A/g0' differs from step 3 (sample 1" in check.detail
    text = report.to_text()
    assert "lava mode: layers (each of 6 populations alone" in text
    assert "population 'B/g0' (layer 'B') differs on Lava from step 3" in text


def test_each_run_stays_within_its_process_bound_and_a_larger_unit_runs_alone(chip):
    runs = []

    def counted(graph, inputs, voltages):
        runs.append((lava.process_count(graph),
                     [p.name for p in graph.populations]))
        return engine.run(graph, inputs, voltages=voltages)

    for bound in (1, 12, 20, 40):
        runs.clear()
        out = lava_layers.run(chip, X, max_processes=bound, simulate=counted)
        assert out.meta["runs"] == len(runs) and out.meta["max_processes"] == max(n for n, _ in runs)
        assert sorted(p for _, pops in runs for p in pops) == sorted(p.name for p in chip.populations)
        assert all(n <= bound or len(pops) == 1 for n, pops in runs), (bound, runs)
    assert len(runs) < len(chip.populations)  # at 40, several populations share a run


def test_a_fan_in_tree_is_checked_relay_by_relay_with_the_relays_it_sums():
    """input (24) -> lif (3), cores of 4 axons: a two-level tree of graded partial sums; a relay that sums
    relays runs with them, the rest on their recorded inputs; engine and Lava agree with the whole run."""
    from st2chip.chip.placement import load_resources
    rng = np.random.default_rng(2)
    nodes = {"input": nir.Input(input_type={"input": np.array([24])}),
             "fc": nir.Affine(weight=rng.normal(0.2, 0.5, (3, 24)), bias=np.zeros(3)), "lif": _lif(rng, 3),
             "output": nir.Output(output_type={"output": np.array([3])})}
    graph = normalize(nir.NIRGraph(nodes=nodes, edges=[("input", "fc"), ("fc", "lif"), ("lif", "output")],
                                   metadata={"dt": DT}, type_check=False))
    tree = lower(graph, resources=load_resources("loihi2").replace(axons_in_per_core=4))
    relays = {p.name for p in tree.populations if p.graded}
    assert any(s.source in relays and s.target in relays for s in tree.synapses)  # relays that sum relays
    x = {"input": (np.random.default_rng(3).random((2, 6, 24)) < 0.4).astype(np.uint8)}
    eng = engine.run(tree, x)
    assert eng.spikes["lif"].any()
    on_engine = lava_layers.run(tree, x, max_processes=10 ** 6, simulate=engine.run)
    on_lava = lava_layers.run(tree, x, max_processes=10 ** 6)
    for out in (on_engine, on_lava):
        assert out.meta["differences"] == []
        _assert_same(eng, out)


@pytest.fixture(scope="module")
def skip_chip():
    """input -> A (CubaLIF, Affine bias: an always-on source) -> B, and input -> B directly: that group is
    delayed one step to align with the path through A."""
    rng = np.random.default_rng(7)
    nodes = {"input": nir.Input(input_type={"input": np.array([8])}),
             "fa": nir.Affine(weight=rng.normal(0.3, 0.4, (6, 8)), bias=np.full(6, 0.2)),
             "A": nir.CubaLIF(tau_syn=np.full(6, 8e-3), tau_mem=np.full(6, 10e-3), r=np.full(6, 10.0),
                              v_leak=np.zeros(6), v_threshold=np.ones(6), v_reset=np.zeros(6), w_in=np.full(6, 10.0)),
             "fab": nir.Affine(weight=rng.normal(0.3, 0.5, (5, 6)), bias=np.zeros(5)),
             "fskip": nir.Affine(weight=rng.normal(0.2, 0.5, (5, 8)), bias=np.zeros(5)), "B": _lif(rng, 5),
             "output": nir.Output(output_type={"output": np.array([5])})}
    edges = [("input", "fa"), ("fa", "A"), ("A", "fab"), ("fab", "B"), ("input", "fskip"), ("fskip", "B"),
             ("B", "output")]
    graph = normalize(nir.NIRGraph(nodes=nodes, edges=edges, metadata={"dt": DT}, type_check=False))
    out = lower(graph, decay_groups=1)
    assert any(s.delay for s in out.synapses) and any(p.always_on for p in out.populations)
    return out


def _skip_inputs() -> dict[str, np.ndarray]:
    """Three samples of 6 steps: dense, silent, sparse (a silent sample right after a busy one)."""
    x = (np.random.default_rng(4).random((3, 6, 8)) < 0.3).astype(np.uint8)
    x[0], x[1] = 1, 0
    return {"input": x}


def test_ports_take_the_delays_so_each_sample_takes_its_steps_plus_one(skip_chip):
    """Each cut-out run gets T port rows, its groups from ports undelayed and its populations at depth 1 (an
    always-on one at 0): a sample takes T + 1 Lava steps, not T + the pipeline's depth; still exact."""
    x = _skip_inputs()
    runs = []

    def seen(graph, inputs, voltages):
        runs.append((graph, {name: rows.shape[1] for name, rows in inputs.items()}))
        return engine.run(graph, inputs, voltages=voltages)

    out = lava_layers.run(skip_chip, x, max_processes=10 ** 6, simulate=seen)
    assert out.meta["differences"] == [] and len(runs) == 1
    _assert_same(engine.run(skip_chip, x), out)
    graph, rows = runs[0]
    assert set(rows.values()) == {6} and graph.depth == 1
    assert all(s.delay == 0 for s in graph.synapses)


def test_samples_back_to_back_on_lava_do_not_leak_and_an_idle_run_works(skip_chip):
    """On Lava, each population alone (the always-on one in a run of its own, with no input): a silent sample
    after a busy one and the delayed skip path equal the engine bit for bit."""
    x = _skip_inputs()
    eng = engine.run(skip_chip, x)
    out = lava_layers.run(skip_chip, x, max_processes=1)
    assert out.meta["differences"] == [] and out.meta["runs"] == len(skip_chip.populations)
    _assert_same(eng, out)
    assert eng.spikes["B"][0].any() and eng.spikes["B"][2].any()


def test_a_flipped_input_through_the_delayed_path_is_named_where_the_engine_says(skip_chip):
    """A recorded input spike flipped (sample 2): Lava's B differs first at the sample, step and neuron where the
    engine fed the flipped input differs from the engine's run (the skip group's delay counted once)."""
    x = _skip_inputs()
    rec = lava_layers.record(skip_chip, x)
    flipped = {"input": x["input"].copy()}
    flipped["input"][2, 1, :] ^= 1
    rec.sent["input"][2, 1, :] ^= 1
    want, got = engine.run(skip_chip, x), engine.run(skip_chip, flipped)
    diff_s = want.spikes["B"] != got.spikes["B"]
    diff_v = want.voltages["B"] != got.voltages["B"]
    step = int(np.nonzero((diff_s | diff_v).any(axis=(0, 2)))[0][0])
    what, diff = ("spike", diff_s) if diff_s[:, step].any() else ("voltage", diff_v)
    sample, neuron = (int(i[0]) for i in np.nonzero(diff[:, step]))
    out = lava_layers.run(skip_chip, x, max_processes=10 ** 6, rec=rec)
    found = {d.population: d for d in out.meta["differences"]}
    b = found[skip_chip.layer_populations("B")[0].name]
    assert (b.sample, b.step, b.neuron, b.what) == (sample, step, neuron, what)


def _one_run(chip) -> tuple:
    """The cut-out graph and port data of ``chip`` checked layer by layer in a single run."""
    runs = []

    def grab(graph, inputs, voltages):
        runs.append((graph, inputs))
        return engine.run(graph, inputs, voltages=voltages)

    lava_layers.run(chip, X, max_processes=10 ** 6, simulate=grab)
    (small, inputs), = runs
    return small, inputs


def test_one_source_sends_every_input_and_one_recorder_records_every_population(chip):
    """A run layer by layer replays several recorded sources: one Lava process sends them all, one records all
    populations, and Lava compiles exactly ``process_count`` processes."""
    from lava.magma.core.run_configs import Loihi2SimCfg

    small, inputs = _one_run(chip)
    assert len(small.inputs) >= 4
    source_data, window, total = lava._source_data(small, inputs)
    lava._import_lava()
    monitored = [p for p in small.populations if lava._monitored(p, True)]
    with tempfile.TemporaryDirectory() as folder:
        anchor = lava._network(small, source_data, window, total, monitored, folder)
        compiled = anchor.compile(Loihi2SimCfg(select_tag="fixed_pt")).process_list
    kinds = Counter(type(p).__name__ for p in compiled)
    assert kinds[f"Source_{len(small.inputs)}"] == 1
    assert kinds[f"Recorder_{len(small.populations)}_{len(monitored)}"] == 1
    assert len(compiled) == lava.process_count(small) == 1 + len(small.populations) + len(small.synapses) + 1


_forks: list[int] | None = None  # while a test watches: the frozen objects at each fork of this process


def _count_frozen_at_fork() -> None:
    if _forks is not None:
        _forks.append(gc.get_freeze_count())


os.register_at_fork(before=_count_frozen_at_fork)


def test_lava_forks_its_workers_from_a_frozen_heap_and_unfreezes_it_after(chip):
    """Lava's workers fork from the process that runs it (here this one): with its heap frozen, their garbage
    collectors leave the inherited pages alone; the heap is unfrozen once Lava has stopped."""
    global _forks
    small, inputs = _one_run(chip)
    source_data, window, total = lava._source_data(small, inputs)
    _forks = []
    try:
        spikes, _ = lava._simulate(small, source_data, window, total, True)
    finally:
        forks, _forks = _forks, None
    assert len(forks) >= lava.process_count(small) and min(forks) > 0
    assert gc.get_freeze_count() == 0 and set(spikes) == {p.name for p in small.populations}
