"""st2chip's Lava neuron: Lava's LIFReset arithmetic, plus reset by subtraction and a silent window end."""

import numpy as np
import pytest

from st2chip.targets.lava_compat import ensure_lava

ensure_lava()

from lava.magma.core.run_conditions import RunSteps  # noqa: E402
from lava.magma.core.run_configs import Loihi2SimCfg  # noqa: E402
from lava.proc.dense.process import Dense  # noqa: E402
from lava.proc.io.sink import RingBuffer as Sink  # noqa: E402
from lava.proc.io.source import RingBuffer as Source  # noqa: E402
from lava.proc.lif.process import LIFReset  # noqa: E402
from lava.proc.monitor.process import Monitor  # noqa: E402

from st2chip.targets.lava_neuron import CubaNeuron  # noqa: E402

# Lava's model search imports every module in the folder of the process's file: lava_neuron is a package
# of its own, so that search finds only it and nothing warns.
pytestmark = pytest.mark.filterwarnings("error:Cannot import module:UserWarning")

N_IN, N, STEPS = 6, 5, 40
VTH = 500
# State resets at t = 4, 17, 30 (t % 13 == 4); nonzero decays, biases of both signs with exponents.
PARAMS = dict(du=2500, dv=1000, vth=VTH, bias_mant=np.array([0, 300, -200, 50, 0]), bias_exp=np.array([0, 1, 0, 2, 0]),
              reset_interval=13, reset_offset=4)
WEIGHT_EXP = 1


def _weights() -> np.ndarray:
    """Random even weights of both signs (Dense with 8 mixed-sign bits keeps even values exactly)."""
    return np.random.default_rng(1).integers(-50, 80, (N, N_IN)) * 2


def _input() -> np.ndarray:
    """Random input spikes ``(N_IN, STEPS)``."""
    return (np.random.default_rng(101).random((N_IN, STEPS)) < 0.4).astype(np.int32)


def _run(neuron) -> tuple[np.ndarray, np.ndarray]:
    """Spikes and voltages ``(STEPS, N)`` of ``neuron`` driven through a Dense by the fixed input spikes."""
    source = Source(data=_input())
    dense = Dense(weights=_weights(), weight_exp=WEIGHT_EXP, num_weight_bits=8)
    sink, monitor = Sink(shape=(N,), buffer=STEPS), Monitor()
    source.s_out.connect(dense.s_in)
    dense.a_out.connect(neuron.a_in)
    neuron.s_out.connect(sink.a_in)
    monitor.probe(neuron.v, STEPS)
    try:
        neuron.run(condition=RunSteps(num_steps=STEPS), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
        spikes = np.asarray(sink.data.get()).T
        volts = np.asarray(monitor.get_data()[neuron.name]["v"]).reshape(STEPS, N)
    finally:
        neuron.stop()
    return spikes, volts


def _numpy_subtract() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same run written out in numpy: Loihi's fixed-point CUBA update with reset by subtraction.

    Returns spikes, voltages after the spike reset, and voltages before it (all ``(STEPS, N)``)."""
    drive = (_input().T @ _weights().T) << WEIGHT_EXP  # drive[t - 1]: Dense output of the input at step t
    bias = PARAMS["bias_mant"] << PARAMS["bias_exp"]
    vth = VTH << 6
    u, v = np.zeros(N, np.int64), np.zeros(N, np.int64)
    spikes, volts, before = [], [], []
    for t in range(1, STEPS + 1):
        a = drive[t - 2] if t >= 2 else np.zeros(N, np.int64)  # Dense delivers one step later
        if t % PARAMS["reset_interval"] == PARAMS["reset_offset"]:
            u[:], v[:] = 0, 0
        decayed = u * (4096 - (PARAMS["du"] + 1))  # Loihi's current decay has an offset of 1
        u = np.sign(decayed) * (np.abs(decayed) >> 12) + (a << 6)
        u = np.where(u > 2**23, u - 2**24, np.where(u <= -2**23, u + 2**24, u))
        decayed = v * (4096 - PARAMS["dv"])
        v = np.clip(np.sign(decayed) * (np.abs(decayed) >> 12) + u + bias, -2**23 + 1, 2**23 - 1)
        s = v > vth
        before.append(v.copy())
        v = np.where(s, v - vth, v)
        spikes.append(s)
        volts.append(v.copy())
    return np.array(spikes, np.int32), np.array(volts), np.array(before)


def test_reset_to_zero_equals_lavas_lifreset():
    ours = _run(CubaNeuron(shape=(N,), **PARAMS))
    theirs = _run(LIFReset(shape=(N,), **PARAMS))
    assert ours[0].sum() > 10 and (ours[0].sum(axis=0) < STEPS).all(), "the test needs neurons that fire, not always"
    assert (theirs[1][[15, 28]] != 0).any(), "the periodic resets at t = 17, 30 must zero a nonzero state"
    np.testing.assert_array_equal(ours[0], theirs[0])
    np.testing.assert_array_equal(ours[1], theirs[1])


def test_reset_by_subtraction_follows_the_written_out_arithmetic():
    spikes, volts = _run(CubaNeuron(shape=(N,), reset_mode="subtract", **PARAMS))
    expected_spikes, expected_volts, before = _numpy_subtract()
    assert (expected_spikes.sum(axis=0) >= 3).sum() >= 3, "the test needs neurons that fire several times"
    assert (before > 2 * (VTH << 6)).any(), "the test needs v above two thresholds at times"
    assert (expected_volts < 0).any()
    np.testing.assert_array_equal(spikes, expected_spikes)
    np.testing.assert_array_equal(volts, expected_volts)


def test_quiet_steps_silence_the_end_of_each_window_only():
    quiet = 3
    loud_s, loud_v = _run(CubaNeuron(shape=(N,), reset_mode="subtract", **PARAMS))
    quiet_s, quiet_v = _run(CubaNeuron(shape=(N,), reset_mode="subtract", quiet=quiet, **PARAMS))
    steps = np.arange(1, STEPS + 1)
    silent = (steps - PARAMS["reset_offset"]) % PARAMS["reset_interval"] >= PARAMS["reset_interval"] - quiet
    # The last 3 steps before each state reset (t = 4, 17, 30, and the next one at 43).
    assert steps[silent].tolist() == [1, 2, 3, 14, 15, 16, 27, 28, 29, 40]
    assert loud_s[silent].sum() > 0, "the test needs spikes in the silenced steps"
    assert quiet_s[silent].sum() == 0
    np.testing.assert_array_equal(quiet_s[~silent], loud_s[~silent])
    np.testing.assert_array_equal(quiet_v, loud_v)  # the state is not affected


@pytest.mark.parametrize("kw, match", [
    ({"reset_mode": "rest"}, "reset_mode must be one of"),
    ({"quiet": 13}, "quiet must lie in"),
    ({"quiet": -1}, "quiet must lie in"),
    ({"quiet": 1.5}, "quiet must be an integer"),
    ({"reset_interval": 0}, "reset_interval must be at least 1"),
    ({"reset_offset": -1}, "reset_offset must be 0 or more"),
])
def test_bad_arguments_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        CubaNeuron(shape=(N,), **{**PARAMS, **kw})
