"""The engine's CPU kernels (targets/engine_kernels.py): int32 state only where it is exact, relays, and the torch
path where no compiler builds them. Generated graphs against the torch path: test_engine.py."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

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


def _sparse(rng: np.random.Generator, shape: tuple[int, int], density: float = 0.03) -> sp.csr_matrix:
    """Random 8-bit mantissas, both signs, ``density`` of them non-zero (below DENSE_FROM: the group stays sparse)."""
    m = rng.integers(-128, 128, shape)
    m[rng.random(shape) > density] = 0
    return sp.csr_matrix(m)


@pytest.mark.parametrize("seed", range(4))
def test_sparse_groups_out_of_graded_sources_multiply_in_int32_rows(seed):
    """Spikes into a relay, the relay and an analog port into a population: sparse groups out of graded sources
    run on the kernels' int32 rows (graded_csr), exponents of both signs, and give the torch path's bits."""
    rng = np.random.default_rng(seed)
    relay = Relay("r", "r", np.arange(60))
    out = Population("o", "o", np.arange(50), du=int(rng.integers(0, 4096)), dv=int(rng.integers(0, 4096)),
                     vth=int(rng.integers(1, 3000)), bias_mant=0, bias_exp=0)
    groups = [SynapseGroup("x->r", "x", "r", _sparse(rng, (60, 400), 0.04), exp=int(rng.integers(-2, 3)),
                           form="sparse"),
              SynapseGroup("r->o", "r", "o", _sparse(rng, (50, 60), 0.04), exp=int(rng.integers(-8, -4)),
                           form="sparse"),
              SynapseGroup("y->o", "y", "o", _sparse(rng, (50, 400)), exp=int(rng.integers(-3, 3)), form="sparse")]
    chip = ChipGraph([InputPort("x", 400), InputPort("y", 400, "analog", 255)], [relay, out], groups)
    built = engine.Engine(chip)
    assert [syn.graded_rows is not None for syn, *_ in built.synapses] == [False, True, True]
    x = {"x": (rng.random((3, 5, 400)) < 0.3).astype(np.uint8), "y": rng.integers(0, 256, (3, 5, 400)).astype(np.uint8)}
    traces = _assert_same_run(chip, x)
    assert traces.spikes["o"].any() and (traces.voltages["r"] < 0).any()


def _skip_chip(rng: np.random.Generator) -> ChipGraph:
    """x -> a -> b -> c, a skip a -> c (c reads a after a's own window) and a feedback c -> a; a spikes on its
    bias every step, also after its input ends; c is a readout."""
    def pop(name: str, **kw) -> Population:
        return Population(name, name, np.arange(6), du=int(rng.integers(0, 4096)), dv=int(rng.integers(0, 4096)),
                          **({"vth": 10, "bias_mant": 1000, "bias_exp": 0} | kw))
    pops = [pop("a"), pop("b", bias_mant=0), pop("c", vth=VTH_MAX, bias_mant=0, readout=True)]
    dense = lambda: rng.integers(-128, 128, (6, 6))  # noqa: E731
    groups = [SynapseGroup("x->a", "x", "a", dense(), exp=0), SynapseGroup("a->b", "a", "b", dense(), exp=2),
              SynapseGroup("b->c", "b", "c", dense(), exp=0), SynapseGroup("a->c", "a", "c", dense(), exp=3),
              SynapseGroup("c->a", "c", "a", dense(), exp=0, feedback=True)]
    return ChipGraph([InputPort("x", 6)], pops, groups)


def test_a_run_computes_each_population_only_while_a_window_reads_it():
    """run() records each population's own window (global steps d + 1 .. d + T) and skips the later steps no
    window reads: c's window reads a, through the skip, one step after a's own window ends, so a runs on; the
    last step (nobody reads it) is skipped. Full records (Lava layer by layer) stay complete, as the torch path's."""
    rng = np.random.default_rng(3)
    chip = _skip_chip(rng)
    assert chip.depths() == {"a": 1, "b": 2, "c": 3}
    x = {"x": (rng.random((2, 4, 6)) < 0.5).astype(np.uint8)}
    _assert_same_run(chip, x)
    built, slow = engine.Engine(chip), engine.Engine(chip, use_kernels=False)
    tensors = {"x": torch.from_numpy(x["x"])}
    full, windowed = built.run_batch(tensors), built.run_batch(tensors, window=True)
    expected = slow.run_batch(tensors)
    for record, other in zip(full, expected):
        torch.testing.assert_close(record.long(), other.long(), rtol=0, atol=0)
    a = slice(built.layout.start["a"], built.layout.start["a"] + 6)
    assert full[0][5, :, a].any() and torch.equal(windowed[0][5, :, a], full[0][5, :, a])  # a's step 6: read by c
    assert full[0][6, :, a].any() and not windowed[0][6, :, a].any()  # a's step 7: skipped
