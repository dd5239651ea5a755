"""The engine's CPU kernels (targets/engine_kernels.py): int32 state only where it is exact, relays, and the torch
path where no compiler builds them. Generated graphs against the torch path: test_engine.py."""

import numpy as np
import pytest
import scipy.sparse as sp

from st2chip.chip.chipgraph import UV_MAX, VTH_MAX, ChipGraph, InputPort, Population, Relay, SynapseGroup
from st2chip.targets import engine, engine_kernels
from st2chip.traces import Traces


def _assert_same_run(chip: ChipGraph, x: dict[str, np.ndarray]) -> Traces:
    fast, slow = engine.run(chip, x), engine.run(chip, x, use_kernels=False)
    for layer in slow.spikes:
        np.testing.assert_array_equal(fast.spikes[layer], slow.spikes[layer], err_msg=layer)
        np.testing.assert_array_equal(fast.voltages[layer], slow.voltages[layer], err_msg=layer)
    return fast


def _wide_chip(n_src: int, exp: int, du: int) -> ChipGraph:
    """One readout population fed by ``n_src`` inputs at the largest weights, alternating in sign by target."""
    m = np.full((4, n_src), 127)
    m[1::2] = -127
    pop = Population("p", "p", np.arange(4), du=du, dv=5, vth=VTH_MAX, bias_mant=4095, bias_exp=7, readout=True)
    return ChipGraph([InputPort("x", n_src)], [pop], [SynapseGroup("x->p", "x", "p", m, exp=exp)])


def _inputs(n_src: int) -> dict[str, np.ndarray]:
    """An all-on sample (the worst case) and a random one."""
    x = (np.random.default_rng(0).random((2, 6, n_src)) < 0.5).astype(np.uint8)
    x[0] = 1
    return {"x": x}


# (inputs, exponent, du) at the edge of each bound: |a| < 2^31 where u forgets (du = 4095), |a| <= 2^23 otherwise;
# the last: u leaves 24 bits and grows past 2^31 within the run (du = 0)
@pytest.mark.parametrize("n_src, exp, du, narrow", [(1032, 7, 4095, True), (1033, 7, 4095, False),
                                                    (516, 0, 100, True), (517, 0, 100, False),
                                                    (255, 7, 0, False)])
def test_state_is_int32_only_where_the_bounds_prove_it(n_src, exp, du, narrow):
    """Just inside each bound the kernels store u and v as int32, just outside as int64; both give the torch
    path's (int64) bits, with u wrapping and v clamped at 24 bits."""
    chip = _wide_chip(n_src, exp, du)
    assert engine.Engine(chip).narrow is narrow
    traces = _assert_same_run(chip, _inputs(n_src))
    assert np.abs(traces.voltages["p"]).max() == UV_MAX - 1  # the clamp is reached


def test_relays_pass_their_input_on_in_the_kernels():
    """A relay (graded, no state) between a spiking input and a readout, with a negative exponent (floor)."""
    rng = np.random.default_rng(1)
    relay = Relay("r", "r", np.arange(3))
    out = Population("o", "o", np.arange(2), du=4095, dv=0, vth=VTH_MAX, bias_mant=0, bias_exp=0, readout=True)
    chip = ChipGraph([InputPort("x", 8)], [relay, out],
                     [SynapseGroup("x->r", "x", "r", rng.integers(-128, 128, (3, 8)), exp=-2),
                      SynapseGroup("r->o", "r", "o", sp.csr_matrix(rng.integers(-128, 128, (2, 3))), exp=1,
                                   form="sparse")])
    x = {"x": (rng.random((3, 7, 8)) < 0.5).astype(np.uint8)}
    traces = _assert_same_run(chip, x)
    assert traces.voltages["r"].any() and (traces.voltages["r"] < 0).any()


def test_without_a_compiler_the_torch_path_runs(monkeypatch, tmp_path):
    """No C compiler: no kernels, and the engine still runs (the torch path)."""
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    engine_kernels.library.cache_clear()
    try:
        assert engine_kernels.library() is None
        chip = _wide_chip(8, 0, 4095)
        assert not engine.Engine(chip).use_kernels
        assert engine.run(chip, _inputs(8)).voltages["p"].any()
    finally:
        engine_kernels.library.cache_clear()
