"""The fixed-point engine equals Lava's fixed_pt simulation bit for bit: hypothesis-generated and hand-built ChipGraphs."""

import os
from dataclasses import replace

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from st2chip.chip.chipgraph import ChipGraph, InputPort, Population, SynapseGroup
from st2chip.chip.lower import lower
from st2chip.converters.mlp import mlp_to_nir
from st2chip.targets import engine, lava


@st.composite
def chip_graphs(draw):
    """1-3 layers, each 1-2 populations (decay groups) with their own du/dv/vth/bias; dense or CSR
    synapses with both signs of exponent and sometimes extra delays (from the input, some of them graph-level
    lags), skip connections from the input;
    random input spikes."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n_in = draw(st.integers(1, 12))
    steps = draw(st.integers(1, 8))
    batch = draw(st.integers(1, 3))
    inputs = [InputPort("x", n_in)]
    pops, syns = [], []
    sources = [("x", n_in)]
    for layer in range(draw(st.integers(1, 3))):
        readout = layer > 0 and draw(st.booleans())
        layer_pops = []
        for g in range(draw(st.integers(1, 2))):
            size = int(rng.integers(1, 9))
            name = f"l{layer}/g{g}"
            layer_pops.append(Population(
                name, f"l{layer}", np.arange(sum(p.size for p in layer_pops), sum(p.size for p in layer_pops) + size),
                du=int(rng.choice([4095, rng.integers(0, 4096)])), dv=int(rng.integers(0, 4096)),
                vth=131071 if readout else int(rng.integers(0, 3000)),
                bias_mant=rng.integers(-4096, 4096, size) * (rng.random() < 0.5), bias_exp=rng.integers(0, 8, size),
                readout=readout))
        for pop in layer_pops:
            feeds = [sources[-1]] + ([sources[0]] if len(sources) > 1 and rng.random() < 0.5 else [])
            for src, n_src in feeds:
                m = rng.integers(-128, 128, size=(pop.size, n_src))
                m[rng.random(m.shape) < rng.random()] = 0
                sparse = rng.random() < 0.5
                delay = int(rng.integers(1, 4)) if rng.random() < 0.3 else 0
                syns.append(SynapseGroup(f"{src}->{pop.name}", src, pop.name, sp.csr_matrix(m) if sparse else m,
                                         exp=int(rng.integers(-8, 8)), form="sparse" if sparse else "dense",
                                         delay=delay, lag=int(rng.integers(0, delay + 1)) if src == "x" else 0))
        pops += layer_pops
        if readout:
            break
        sources += [(p.name, p.size) for p in layer_pops[:1]]
        if len(layer_pops) > 1:
            sources.append((layer_pops[1].name, layer_pops[1].size))
    chip = ChipGraph(inputs, pops, syns)
    x = {"x": (rng.random((batch, steps, n_in)) < rng.uniform(0.05, 0.9)).astype(np.uint8)}
    return chip, x


def _assert_equal(a, b):
    assert a.spikes.keys() == b.spikes.keys()
    for layer in a.spikes:
        np.testing.assert_array_equal(a.spikes[layer], b.spikes[layer], err_msg=f"spikes of {layer}")
        np.testing.assert_array_equal(a.voltages[layer], b.voltages[layer], err_msg=f"voltages of {layer}")
    np.testing.assert_array_equal(a.scores, b.scores)


# The default suite runs a fixed set of generated graphs (a stable CI); ST2CHIP_ENGINE_EXAMPLES=200 explores
# that many fresh random ones against Lava.
EXPLORE = os.environ.get("ST2CHIP_ENGINE_EXAMPLES")


@settings(max_examples=int(EXPLORE or 12), deadline=None, derandomize=EXPLORE is None,
          suppress_health_check=[HealthCheck.too_slow])
@given(chip_graphs(), st.booleans())
def test_engine_equals_lava_bit_for_bit(case, progress):
    chip, x = case  # with a progress bar Lava runs one sample window at a time, continuing each run
    _assert_equal(engine.run(chip, x), lava.run(chip, x, progress=progress))


@settings(max_examples=40, deadline=None, derandomize=EXPLORE is None)
@given(chip_graphs(), st.integers(1, 3))
def test_batching_event_path_and_recording_change_nothing(case, batch_size):
    chip, x = case
    whole = engine.run(chip, x)
    _assert_equal(whole, engine.run(chip, x, batch_size=batch_size))
    lean = engine.run(chip, x, voltages=False)  # voltages of the readout populations only
    assert set(lean.voltages) == set(chip.readout_layers())
    for layer in lean.voltages:
        np.testing.assert_array_equal(lean.voltages[layer], whole.voltages[layer], err_msg=layer)
    for layer in whole.spikes:
        np.testing.assert_array_equal(lean.spikes[layer], whole.spikes[layer], err_msg=layer)
    np.testing.assert_array_equal(lean.scores, whole.scores)


@settings(max_examples=25, deadline=None, derandomize=EXPLORE is None)
@given(chip_graphs())
def test_csr_groups_run_alike_as_sparse_or_dense_products(case):
    """The engine runs a CSR group as a dense one when that is faster (DENSE_FROM); both give the same run."""
    chip, x = case
    saved = engine.DENSE_FROM
    try:
        engine.DENSE_FROM = 2.0  # every CSR group stays sparse
        as_csr = engine.run(chip, x)
        engine.DENSE_FROM = 0.0  # every CSR group runs dense
        as_dense = engine.run(chip, x)
    finally:
        engine.DENSE_FROM = saved
    _assert_equal(as_csr, as_dense)


def _with_resets(chip: ChipGraph, rng: np.random.Generator) -> ChipGraph:
    """``chip`` with some populations resetting by subtraction and some refractory (one step)."""
    pops = [replace(p, reset=str(rng.choice(["zero", "subtract"])), refractory=int(rng.integers(0, 2)))
            for p in chip.populations]
    return ChipGraph(chip.inputs, pops, chip.synapses)


@settings(max_examples=40, deadline=None, derandomize=EXPLORE is None)
@given(chip_graphs(), st.integers(0, 2**32 - 1), st.sampled_from([0.0, engine.DENSE_FROM, 2.0]))
def test_the_cpu_kernels_equal_the_torch_path(case, seed, dense_from):
    """One compiled pass per step (engine_kernels) gives the torch path's bits: every reset, refractory
    populations, delays, both signs of exponent, dense groups by events or by product, CSR groups by events."""
    chip, x = case
    chip = _with_resets(chip, np.random.default_rng(seed))
    saved = engine.DENSE_FROM
    try:
        engine.DENSE_FROM = dense_from
        assert engine.Engine(chip).use_kernels
        _assert_equal(engine.run(chip, x), engine.run(chip, x, use_kernels=False))
        lean, slow = (engine.run(chip, x, voltages=False, batch_size=2, use_kernels=k) for k in (True, False))
        assert lean.voltages.keys() == slow.voltages.keys()
        for record, other in ((lean.spikes, slow.spikes), (lean.voltages, slow.voltages)):
            for layer in record:
                np.testing.assert_array_equal(record[layer], other[layer], err_msg=layer)
    finally:
        engine.DENSE_FROM = saved


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
@settings(max_examples=20, deadline=None, derandomize=EXPLORE is None)
@given(chip_graphs())
def test_cuda_equals_cpu(case):
    chip, x = case
    _assert_equal(engine.run(chip, x, device="cpu"), engine.run(chip, x, device="cuda"))


def test_product_dtype_follows_the_exactness_bound():
    small = np.full((2, 100), 127)
    assert engine.product_dtype(small) == torch.float32
    wide = np.full((1, 70000), 127)  # 70000 * 254 > 2^24
    assert engine.product_dtype(wide) == torch.float64
    assert engine.product_dtype(sp.csr_matrix(wide)) == torch.float64


@pytest.mark.parametrize("exp", [-3, 0, 2])
def test_the_event_path_equals_the_integer_product(exp):
    """Below EVENT_RATE a wide dense group sums the rows of the sources that spiked (embedding_bag):
    the same integers as the product, samples without a spike included."""
    rng = np.random.default_rng(exp + 10)
    m = rng.integers(-128, 128, (100, 300))
    syn = engine.Synapses(SynapseGroup("x->p", "x", "p", m, exp=exp), torch.device("cpu"))
    assert syn.events
    s = torch.from_numpy(rng.random((7, 300)) < 0.03)
    s[3] = False
    exact = torch.from_numpy(2 * m).T[None] * s[:, :, None].long()
    exact = exact.sum(1)
    exact = (exact << exp if exp >= 0 else exact >> -exp) << 6
    assert float(s.float().mean()) < engine.EVENT_RATE
    assert torch.equal(syn.accumulate(s), exact)


def test_an_all_zero_sparse_group_adds_nothing():
    """A fully pruned CSR group (no stored weights) is legal and contributes zero input."""
    pop = Population("h", "h", np.arange(3), du=4095, dv=100, vth=10, bias_mant=np.array([50, 0, -20]), bias_exp=3)
    zero = np.zeros((3, 4), dtype=np.int64)
    x = {"x": np.ones((2, 5, 4), np.uint8)}
    traces = [engine.run(ChipGraph([InputPort("x", 4)], [pop], [SynapseGroup("x->h", "x", "h", m, exp=0, form=f)]),
                         x) for m, f in ((sp.csr_matrix(zero), "sparse"), (zero, "dense"))]
    _assert_equal(*traces)
    assert traces[0].spikes["h"][:, :, 0].sum() > 0  # the bias alone drives neuron 0


# -- hand-built cases ----------------------------------------------------------------------------

@pytest.mark.parametrize("groups", [1, 3])
def test_mlp_bit_exact(random_mlp, digit_spikes, groups):
    chip = lower(mlp_to_nir(random_mlp()), decay_groups=groups)
    x = {"input": digit_spikes(5)}
    ref, lav = engine.run(chip, x), lava.run(chip, x)
    assert sum(int(s.sum()) for s in ref.spikes.values()) > 0, "test needs activity"
    _assert_equal(ref, lav)


def test_edge_cases_bit_exact():
    """Sparse weights, negative and positive exponents, big activations, current decay, bias."""
    rng = np.random.default_rng(1)
    n_in, n_hid, n_out, steps = 12, 9, 4, 10
    m1 = rng.integers(-128, 128, size=(n_hid, n_in))
    m1[rng.random(m1.shape) < 0.6] = 0
    chip = ChipGraph(
        inputs=[InputPort("x", n_in)],
        populations=[
            Population("h", "h", np.arange(n_hid), du=3000, dv=700, vth=300,
                       bias_mant=rng.integers(-4096, 4096, n_hid), bias_exp=rng.integers(0, 3, n_hid)),
            Population("o", "o", np.arange(n_out), du=4095, dv=0, vth=131071,
                       bias_mant=rng.integers(-200, 200, n_out), bias_exp=0, readout=True),
        ],
        synapses=[
            SynapseGroup("x->h", "x", "h", sp.csr_matrix(m1), exp=2, form="sparse"),
            SynapseGroup("h->o", "h", "o", rng.integers(-128, 128, size=(n_out, n_hid)), exp=-3),
        ])
    x = {"x": (rng.random((3, steps, n_in)) < 0.5).astype(np.uint8)}
    ref, lav = engine.run(chip, x), lava.run(chip, x)
    assert ref.spikes["h"].sum() > 0
    _assert_equal(ref, lav)


def test_without_hidden_voltages_spikes_and_scores_still_match(random_mlp, digit_spikes):
    chip = lower(mlp_to_nir(random_mlp()), decay_groups=2)
    x = {"input": digit_spikes(3)}
    ref, lav = engine.run(chip, x), lava.run(chip, x, voltages=False)
    assert set(lav.voltages) == {"readout"}
    for layer in ref.spikes:
        np.testing.assert_array_equal(ref.spikes[layer], lav.spikes[layer])
    np.testing.assert_array_equal(ref.scores, lav.scores)
