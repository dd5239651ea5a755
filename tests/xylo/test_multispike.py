"""A float graph whose hidden layer sends up to 31 spikes per step (``metadata["max_spikes"] = 31``) means what
Xylo does: lowered with ``lower_xylo`` and run on st2chip's Xylo engine (and xylosim), it equals the float
interpreter spike for spike, and the hidden membranes before the spikes' subtraction state for state.

The graph lies on Xylo's grid: CubaLIF layers with ``tau_syn = 2 dt`` (current decay 1/2: ``dash_syn = 1``)
and ``tau_mem = dt`` (no voltage memory: ``dash_mem = 0``), thresholds ``n / 4096`` (scale 4096, so the
float threshold is ``n`` LSBs and the chip's too; n odd while v stays on multiples of 4 LSBs, so ``v > n`` and
``v >= n`` never differ on a tie), weights whose
chip values are multiples of ``2^10`` (hidden) and ``2^8`` (outputs) LSBs, so that the halving current stays
exact over the 8 steps run, and no sum that saturates 16 bits.
"""

import nir
import numpy as np

import st2chip
from st2chip.graph.simulate import simulate
from st2chip.targets.xylo_engine import run_xylo
from st2chip.targets.xylosim_run import run_xylosim
from st2chip.xylo.lower import lower_xylo
from st2chip.xylo.spec import load_spec

DT = 1e-3
STEPS = 8
SCALE = 4096  # LSBs per float unit of v that the lowering picks for both layers
HIDDEN_THETA = np.array([4095, 1023, 255])  # LSBs: up to 7, 31 and (capped) 31 spikes per step
W_HIDDEN = np.array([[72, 8, 40], [-24, 72, 48], [40, 32, 48]]) / 64  # chip: 64 W << 7
W_OUT = np.array([[8, 4, -2], [8, -4, 2]]) / 64                       # chip: 1024 W << 3


def _cuba(theta_lsb: np.ndarray, meta: dict) -> nir.CubaLIF:
    """i <- i/2 + x, v <- i (tau_syn = 2 dt with w_in = 2, tau_mem = dt), spike where v > theta, subtract it."""
    n = theta_lsb.size
    return nir.CubaLIF(tau_syn=np.full(n, 2 * DT), tau_mem=np.full(n, DT), r=np.ones(n), v_leak=np.zeros(n),
                       v_threshold=theta_lsb / SCALE, v_reset=np.zeros(n), w_in=np.full(n, 2.0),
                       metadata={"reset": "subtract", **meta})


def _graph() -> nir.NIRGraph:
    """Input (3) -> Affine -> CubaLIF (3, up to 31 spikes per step) -> Affine -> CubaLIF (2, one) -> Output."""
    nodes = {"input": nir.Input(input_type={"input": np.array([3])}),
             "fc1": nir.Affine(weight=W_HIDDEN, bias=np.zeros(3)),
             "hidden": _cuba(HIDDEN_THETA, {"max_spikes": 31}),
             "fc2": nir.Affine(weight=W_OUT, bias=np.zeros(2)),
             "out": _cuba(np.array([4095, 4095]), {}),
             "output": nir.Output(output_type={"output": np.array([2])})}
    edges = [("input", "fc1"), ("fc1", "hidden"), ("hidden", "fc2"), ("fc2", "out"), ("out", "output")]
    return st2chip.load(nir.NIRGraph(nodes=nodes, edges=edges, metadata={"dt": DT, "steps": STEPS},
                                     type_check=False))


def test_xylo_engine_equals_the_float_interpreter_with_31_spikes_per_step():
    graph = _graph()
    chip = lower_xylo(graph, load_spec("xylo-audio3"))
    for layer in ("hidden", "out"):  # the graph lies on the chip's grid: nothing rounded
        report = chip.report[layer]
        assert report["scale"] == SCALE and report["weight_error"] == 0 and report["leak_error"] == 0, report
    np.testing.assert_array_equal(chip.hidden.threshold, HIDDEN_THETA)
    x = (np.random.default_rng(0).random((6, STEPS, 3)) < 0.5).astype(np.int64)
    counts = np.concatenate([x, np.zeros((6, chip.latency, 3), np.int64)], axis=1)
    run = run_xylo(chip, counts)
    float_run = simulate(graph, x.astype(np.float64))

    hidden = run.hidden_spikes[:, :STEPS]  # depth 0: the sample's own steps
    assert hidden.max() == 31 and np.count_nonzero(hidden > 1) > 50, "the test needs many spikes per step"
    np.testing.assert_array_equal(hidden, float_run.spikes["hidden"])
    np.testing.assert_array_equal(run.output_spikes[:, chip.latency:chip.latency + STEPS], float_run.spikes["out"])
    assert float_run.spikes["out"].sum() > 10
    before_chip = run.hidden_v[:, :STEPS] + hidden * chip.hidden.threshold
    before_float = SCALE * float_run.voltages["hidden"] + hidden * HIDDEN_THETA
    np.testing.assert_array_equal(before_chip, before_float)
    sim = run_xylosim(chip, counts[:2])
    np.testing.assert_array_equal(sim.hidden_spikes, run.hidden_spikes[:2])
