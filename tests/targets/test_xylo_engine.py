"""st2chip's Xylo engine equals SynSense's xylosim bit for bit: spikes, v and i of every neuron at every step."""

import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from st2chip.errors import InputError
from st2chip.targets import xylo_engine
from st2chip.targets.xylo_engine import run_xylo, saturating_sums
from st2chip.targets.xylosim_run import run_xylosim
from st2chip.xylo.xylograph import RUN_FIELDS, XyloGraph, XyloNeurons



def _assert_same(a, b) -> None:
    for name in RUN_FIELDS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def _neurons(n: int, dash_syn=1, dash_mem=1, threshold=32767, bias=0) -> XyloNeurons:
    full = lambda v: np.broadcast_to(v, n).copy()  # noqa: E731
    return XyloNeurons(full(dash_syn), full(dash_mem), full(threshold), full(bias))


def _graph(w_in, w_rec=None, w_out=None, shifts=(0, 0, 0), hidden=None, outputs=None) -> XyloGraph:
    w_in = np.asarray(w_in)
    n_hid = w_in.shape[1]
    w_rec = np.zeros((n_hid, n_hid), int) if w_rec is None else np.asarray(w_rec)
    w_out = np.zeros((n_hid, 1), int) if w_out is None else np.asarray(w_out)
    return XyloGraph(w_in, w_rec, w_out, *shifts, hidden or _neurons(n_hid), outputs or _neurons(w_out.shape[1]))


def _both(graph: XyloGraph, counts) -> "xylo_engine.XyloRun":
    """The engine's run, after checking it equals xylosim's on every array."""
    ours = run_xylo(graph, np.asarray(counts))
    _assert_same(ours, run_xylosim(graph, np.asarray(counts)))
    return ours


@st.composite
def xylo_cases(draw):
    """Random small networks: sparse-to-dense 8-bit weights (zeros included), every shift and dash, small
    thresholds (many spikes per step) and large ones, biases up to the int16 limits, counts 0..20."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n_in, n_hid, n_out = (draw(st.integers(1, hi)) for hi in (16, 40, 8))

    def weights(shape):
        w = rng.integers(-128, 128, shape)
        w[rng.random(shape) < rng.random()] = 0
        return w

    def neurons(n):
        small = rng.random(n) < rng.random()
        threshold = np.where(small, rng.integers(1, 64, n), rng.integers(1, 32768, n))
        big = rng.random(n) < 0.3
        bias = np.where(big, rng.integers(-32768, 32768, n), rng.integers(-64, 64, n) * (rng.random(n) < 0.5))
        return XyloNeurons(rng.integers(0, 16, n), rng.integers(0, 16, n), threshold, bias)

    graph = XyloGraph(weights((n_in, n_hid)), weights((n_hid, n_hid)), weights((n_hid, n_out)),
                      *(int(s) for s in rng.integers(0, 8, 3)), neurons(n_hid), neurons(n_out))
    batch, steps = draw(st.integers(1, 3)), draw(st.integers(1, 12))
    counts = rng.integers(0, 21, (batch, steps, n_in)) * (rng.random((batch, steps, n_in)) < rng.random())
    return graph, counts


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(xylo_cases())
def test_engine_equals_xylosim_on_every_array_and_step(case) -> None:
    graph, counts = case
    _assert_same(run_xylo(graph, counts), run_xylosim(graph, counts))


@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(xylo_cases())
def test_sparse_and_dense_products_and_recording_change_nothing(case) -> None:
    graph, counts = case
    saved = xylo_engine.EVENT_RATE
    try:
        xylo_engine.EVENT_RATE = 2.0  # every step's product sparse
        sparse = run_xylo(graph, counts)
        xylo_engine.EVENT_RATE = 0.0  # every step's product dense
        dense = run_xylo(graph, counts)
    finally:
        xylo_engine.EVENT_RATE = saved
    _assert_same(sparse, dense)
    lean = run_xylo(graph, counts, record=False)
    assert lean.hidden_v is lean.hidden_i is lean.output_v is lean.output_i is None
    np.testing.assert_array_equal(lean.hidden_spikes, dense.hidden_spikes)
    np.testing.assert_array_equal(lean.output_spikes, dense.output_spikes)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.integers(0, 2**32 - 1), st.integers(0, 9))
def test_saturating_sums_equal_one_add_at_a_time(seed: int, n_sources: int) -> None:
    """The exact path's pairwise reduction equals xylosim's loop: each add of each source saturating in turn."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 32, (4, n_sources)) * (rng.random((4, n_sources)) < 0.7)
    weights = rng.integers(-128, 128, (n_sources, 5)) << rng.integers(0, 8)
    rows, cols = rng.integers(0, 4, 30), rng.integers(0, 5, 30)
    start = rng.integers(-32768, 32768, 30)
    want = start.copy()
    for m in range(30):
        for k in range(n_sources):
            for _ in range(counts[rows[m], k]):
                want[m] = min(max(want[m] + weights[k, cols[m]], -32768), 32767)
    got = saturating_sums(*(torch.from_numpy(a) for a in (start, counts, weights, rows, cols)))
    np.testing.assert_array_equal(got.numpy(), want)


def test_a_small_network_by_hand() -> None:
    """Three steps worked out on paper: decays by shift (at least 1), bias, subtractive reset, and the
    output reading the hidden spikes of the step before."""
    graph = _graph(w_in=[[10, 0], [0, -4]], w_rec=[[0, 3], [0, 0]], w_out=[[5], [0]],
                   hidden=XyloNeurons([1, 1], [1, 2], [6, 100], [0, 1]), outputs=XyloNeurons([2], [1], [4], [0]))
    run = _both(graph, [[[2, 1], [0, 0], [0, 0]]])
    np.testing.assert_array_equal(run.hidden_spikes[0], [[1, 0], [1, 0], [0, 0]])
    np.testing.assert_array_equal(run.hidden_i[0], [[10, -2], [5, 0], [3, 2]])
    np.testing.assert_array_equal(run.hidden_v[0], [[4, -1], [1, 1], [3, 3]])
    np.testing.assert_array_equal(run.output_i[0], [[0], [4], [7]])
    np.testing.assert_array_equal(run.output_v[0], [[0], [0], [3]])
    np.testing.assert_array_equal(run.output_spikes[0], [[0], [1], [1]])


@pytest.mark.parametrize("w_in, counts, current", [
    ([[127], [-128]], [15, 1], 8192),   # +32767 (saturated) then -16384: 16383, decayed by half
    ([[-128], [127]], [1, 15], 16384),  # -16384 then +243840: 32767, decayed by half
])
def test_mixed_sign_saturation_follows_the_source_order(w_in, counts, current) -> None:
    """Summing first and clamping once (16384 in both orders) is wrong: each add saturates in turn."""
    run = _both(_graph(w_in, shifts=(7, 0, 0)), [[counts]])
    assert run.hidden_i[0, 0, 0] == current


def test_inputs_add_before_the_recurrent_spikes() -> None:
    """h0 fires 31 spikes at step 0; at step 1, 15 x 16256 from the input saturates h1 first, then the
    31 x -1 from h0 take it to 32736 (recurrent first, or one clamp of the sum, gives 32767)."""
    graph = _graph(w_in=[[127, 0], [0, 127]], w_rec=[[0, -1], [0, 0]], shifts=(7, 0, 0),
                   hidden=XyloNeurons([1, 1], [1, 1], [1, 32767], [0, 0]))
    run = _both(graph, [[[1, 0], [0, 15]]])
    assert run.hidden_spikes[0, 0, 0] == 31
    assert run.hidden_i[0, 1, 1] == 32736 - (32736 >> 1)


def test_counts_are_clipped_to_15_in_and_31_hidden_and_1_out() -> None:
    graph = _graph(w_in=[[1]], w_out=[[1]], hidden=_neurons(1, dash_syn=15, threshold=1, bias=32767),
                   outputs=_neurons(1, dash_syn=15, threshold=1, bias=32767))
    run = _both(graph, [[[20], [0]]])
    assert run.hidden_i[0, 0, 0] == 15 - 1  # 15 of the 20 input spikes arrive; dash 15 still decays by 1
    assert run.hidden_spikes[0, 0, 0] == 31 and run.hidden_v[0, 0, 0] == 32767 - 31
    assert run.output_spikes[0, 0, 0] == 1 and run.output_v[0, 0, 0] == 32767 - 1
    assert run.output_i[0, 1, 0] == 31 - 1  # the 31 hidden spikes of step 0 reach the output at step 1
    _assert_same(run, run_xylo(graph, [[[15], [0]]]))


def test_dash_syn_zero_keeps_input_from_the_membrane() -> None:
    run = _both(_graph(w_in=[[100]], hidden=_neurons(1, dash_syn=0)), [[[3], [3], [0]]])
    assert not run.hidden_i.any() and not run.hidden_v.any()


def test_a_membrane_at_minus_32768_with_dash_mem_zero_stays_there() -> None:
    """xylosim stores ``-decay(-32768, 0) = 32768`` in an int16, where it wraps to -32768: the neuron does
    not forget its membrane (without the wrap, step 1 gives ``-32768 + 32768 + 32766 - 1 = -2``)."""
    graph = _graph(w_in=[[-128], [127]], shifts=(7, 0, 0), hidden=_neurons(1, dash_syn=15, dash_mem=0, bias=-1))
    run = _both(graph, [[[2, 0], [0, 15]]])
    np.testing.assert_array_equal(run.hidden_i[0, :, 0], [-32767, 32766])
    np.testing.assert_array_equal(run.hidden_v[0, :, 0], [-32768, -32768])


def test_outputs_lag_the_hidden_layer_by_one_step() -> None:
    graph = _graph(w_in=[[50]], w_out=[[40]], hidden=_neurons(1, threshold=20), outputs=_neurons(1, threshold=10))
    run = _both(graph, [[[1], [0], [0]]])
    np.testing.assert_array_equal(run.hidden_spikes[0, :, 0], [1, 0, 0])
    np.testing.assert_array_equal(run.output_i[0, :, 0], [0, 20, 10])
    np.testing.assert_array_equal(run.output_spikes[0, :, 0], [0, 1, 1])


def test_state_is_int32_where_every_sum_fits_and_int64_beyond() -> None:
    """15 x 16384 per input reach 2^31 at about 8,700 inputs: a wide fan-in runs on int64, still as xylosim."""
    assert xylo_engine.state_dtype(_graph(w_in=np.full((8000, 1), -128), shifts=(7, 7, 7))) == torch.int32
    rng = np.random.default_rng(0)
    wide = _graph(w_in=rng.choice([-128, 127], (9000, 2)), w_rec=[[0, -128], [127, 0]], w_out=[[127], [-128]],
                  shifts=(7, 7, 7), hidden=_neurons(2, threshold=1000))
    assert xylo_engine.state_dtype(wide) == torch.int64
    run = _both(wide, rng.integers(0, 20, (2, 4, 9000)))
    assert np.isin(run.hidden_i, [-16384, 16384]).all()  # every sum saturates (to -32768 or 32767), then halves


@pytest.mark.parametrize("counts, words", [
    (np.zeros((2, 3)), "shape (batch, steps, 1)"),
    (np.zeros((1, 3, 2), int), "got (1, 3, 2)"),
    (np.full((1, 2, 1), 0.5), "fractions"),
    (np.full((1, 2, 1), -1), ">= 0"),
    (np.array([[["a"]]]), "whole numbers"),
])
def test_bad_counts_are_one_line_input_errors(counts, words) -> None:
    graph = _graph(w_in=[[1]])
    for run in (run_xylo, run_xylosim):
        with pytest.raises(InputError, match=words.replace("(", r"\(").replace(")", r"\)")) as err:
            run(graph, counts)
        assert "\n" not in str(err.value)


def test_a_missing_xylosim_is_a_one_line_install_hint(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "xylosim", None)  # `import xylosim` fails as where it is not installed
    with pytest.raises(InputError, match="pip install xylosim==0.1.3"):
        run_xylosim(_graph(w_in=[[1]]), np.zeros((1, 1, 1), int))
