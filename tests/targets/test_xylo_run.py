"""A Xylo run read as the float model's layers (each at its depth), scored as the float model scores, and padded
with the chip's latency on the engine and on xylosim alike."""

import numpy as np

from st2chip.analysis.xylo_verify import oracle_check
from st2chip.targets.xylo_run import run_padded, xylo_traces
from st2chip.xylo.xylograph import STATE_RANGE, XyloGraph, XyloLayer, XyloNeurons, XyloRun


def _graph(out_threshold: int = 4) -> XyloGraph:
    """2 inputs -> h1 (depth 0) -> h2 (depth 1) -> out (depth 2), random weights."""
    rng = np.random.default_rng(0)
    hid = XyloNeurons(dash_syn=[1] * 4, dash_mem=[2] * 4, threshold=[20] * 4, bias=[0] * 4)
    out = XyloNeurons(dash_syn=[1] * 2, dash_mem=[3] * 2, threshold=[out_threshold] * 2, bias=[0] * 2)
    w_in = np.zeros((2, 4), int)
    w_in[:, :2] = rng.integers(0, 40, (2, 2))
    w_rec = np.zeros((4, 4), int)
    w_rec[:2, 2:] = rng.integers(-10, 60, (2, 2))
    w_out = np.zeros((4, 2), int)
    w_out[2:] = rng.integers(-10, 60, (2, 2))
    return XyloGraph(w_in=w_in, w_rec=w_rec, w_out=w_out, shift_in=1, shift_rec=1, shift_out=1, hidden=hid,
                     outputs=out, layers=[XyloLayer("h1", 0, 2, 0), XyloLayer("h2", 2, 4, 1),
                                          XyloLayer("out", 0, 2, 2, output=True)], input_names=["input"])


def _numbered_run(batch: int, steps: int) -> XyloRun:
    """Every entry its own chip step, so that a window shows where it was cut."""
    step = lambda n: np.broadcast_to(np.arange(steps)[None, :, None], (batch, steps, n)).copy()  # noqa: E731
    return XyloRun(step(4), step(2), step(4), step(4), 100 + step(2), step(2))


def test_each_layer_is_read_at_its_own_depth():
    graph, steps = _graph(), 5
    traces = xylo_traces(graph, _numbered_run(3, steps + graph.latency), steps, {}, "engine")
    assert traces.spikes["h1"][0, :, 0].tolist() == [0, 1, 2, 3, 4]
    assert traces.spikes["h2"][0, :, 0].tolist() == [1, 2, 3, 4, 5]
    assert traces.spikes["out"][0, :, 0].tolist() == [2, 3, 4, 5, 6]
    assert traces.scores.tolist() == [[20, 20]] * 3  # spike counts over the sample's 5 steps


def test_a_readout_that_never_spikes_is_scored_by_its_last_voltage():
    graph = _graph(out_threshold=STATE_RANGE[1])
    traces = xylo_traces(graph, _numbered_run(2, 7), 5, {}, "engine")
    assert "out" not in traces.spikes and traces.voltages["out"].shape == (2, 5, 2)
    assert traces.scores.tolist() == [[106, 106]] * 2  # v at the last aligned step, chip step 2 + 4


def test_the_engine_equals_xylosim_on_a_padded_run():
    graph = _graph()
    counts = np.random.default_rng(1).integers(0, 4, (3, 6, 2))
    engine = run_padded(graph, counts, batch_size=2)
    assert engine.hidden_spikes.shape == (3, 6 + graph.latency, 4)
    assert engine.hidden_spikes.sum() > 0 and engine.output_spikes.sum() > 0
    check = oracle_check(engine, run_padded(graph, counts[:2], backend="xylosim"))
    assert check.exact and check.samples == [0, 1] and check.steps == 8
    assert "on samples 0-1, 8 chip steps each" in check.check().detail
