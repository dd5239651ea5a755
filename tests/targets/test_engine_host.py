"""The host partition (a spiking Transformer's attention product) and analog input ports, exactly: the engine
against the product written out, and against Lava."""

import numpy as np
import scipy.sparse as sp

from st2chip.chip.chipgraph import VTH_MAX, ChipGraph, HostProduct, InputPort, Population, SynapseGroup
from st2chip.targets import engine, lava

TOKENS, DIM, HEADS = 3, 4, 2
N = TOKENS * DIM


def _relay_pop(name: str, readout: bool = False) -> Population:
    """Neurons that fire the step their input arrives (u and v forget), or a readout that sums its input."""
    return Population(name, name, np.arange(N), du=4095, dv=0 if readout else 4095, vth=VTH_MAX if readout else 1,
                      bias_mant=0, bias_exp=0, readout=readout)


def _eye(name: str, source: str, target: str, m: int) -> SynapseGroup:
    return SynapseGroup(name, source, target, sp.csr_matrix(np.eye(N, dtype=np.int64) * m), 0, "sparse")


def _loop_counts(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``(Q K^T) V`` per head written out: count[n, d] = sum over tokens m of (Q_n . K_m within d's head) V_m[d]."""
    dh, out = DIM // HEADS, np.zeros(q.shape, np.int64)
    for b, t in np.ndindex(q.shape[:2]):
        qs, ks, vs = (x[b, t].astype(np.int64).reshape(TOKENS, DIM) for x in (q, k, v))
        for n, m, d in np.ndindex(TOKENS, TOKENS, DIM):
            head = slice(d // dh * dh, (d // dh + 1) * dh)
            out[b, t, n * DIM + d] += int(qs[n, head] @ ks[m, head]) * vs[m, d]
    return out


def _host_chip() -> ChipGraph:
    """Input spikes copied into layers q, k, v; their product into a summing readout t."""
    pops = [_relay_pop("q"), _relay_pop("k"), _relay_pop("v"), _relay_pop("t", readout=True)]
    groups = [SynapseGroup(f"in->{p}", "in", p, sp.csr_matrix(np.eye(N, 3 * N, k * N, dtype=np.int64) * 127), 0,
                           "sparse") for k, p in enumerate("qkv")]
    groups.append(_eye("attn->t", "attn", "t", 1))
    return ChipGraph([InputPort("in", 3 * N)], pops, groups,
                     hosts=[HostProduct("attn", ("q", "k", "v"), HEADS, TOKENS, DIM)])


def test_host_counts_reach_the_next_layer_one_step_later():
    chip = _host_chip()
    assert chip.depths() == {"q": 1, "k": 1, "v": 1, "t": 2}
    x = (np.random.default_rng(0).random((5, 6, 3 * N)) < 0.5).astype(np.uint8)
    traces = engine.run(chip, {"in": x})
    for name, k in zip("qkv", range(3)):  # the relay layers copy their slice of the input
        np.testing.assert_array_equal(traces.spikes[name], x[:, :, k * N:(k + 1) * N])
    counts = _loop_counts(x[..., :N], x[..., N:2 * N], x[..., 2 * N:])
    # the readout sums 2 * count << 6 per step: after step t it holds the counts of steps 0..t
    np.testing.assert_array_equal(traces.voltages["t"], 128 * np.cumsum(counts, axis=1))


def test_analog_levels_enter_as_integers():
    pop = _relay_pop("t", readout=True)
    chip = ChipGraph([InputPort("x", N, "analog", 255)], [pop], [_eye("x->t", "x", "t", 3)])
    x = np.random.default_rng(1).integers(0, 256, (4, 5, N)).astype(np.uint8)
    traces = engine.run(chip, {"x": x})
    np.testing.assert_array_equal(traces.voltages["t"], 6 * 64 * np.cumsum(x.astype(np.int64), axis=1))


def test_lava_runs_the_host_partition_and_analog_ports_like_the_engine():
    x = (np.random.default_rng(2).random((2, 5, 3 * N)) < 0.5).astype(np.uint8)
    chip = _host_chip()
    eng, lav = engine.run(chip, {"in": x}), lava.run(chip, {"in": x})
    for layer in eng.spikes:
        np.testing.assert_array_equal(eng.spikes[layer], lav.spikes[layer], err_msg=layer)
        np.testing.assert_array_equal(eng.voltages[layer], lav.voltages[layer], err_msg=layer)
    analog = ChipGraph([InputPort("x", N, "analog", 255)], [_relay_pop("t", readout=True)], [_eye("x->t", "x", "t", 3)])
    levels = np.random.default_rng(3).integers(0, 256, (2, 4, N)).astype(np.uint8)
    np.testing.assert_array_equal(engine.run(analog, {"x": levels}).voltages["t"],
                                  lava.run(analog, {"x": levels}).voltages["t"])


def test_lava_refuses_a_host_input_layer_split_into_populations():
    chip = _host_chip()
    half = np.arange(N // 2)
    pops = [p for p in chip.populations if p.name != "q"] + [
        Population(f"q/g{i}", "q", half + i * N // 2, du=4095, dv=4095, vth=1, bias_mant=0, bias_exp=0)
        for i in range(2)]
    groups = [g for g in chip.synapses if g.target != "q"] + [
        SynapseGroup(f"in->q/g{i}", "in", f"q/g{i}", sp.csr_matrix(np.eye(N, 3 * N)[half + i * N // 2] * 127).astype(
            np.int64), 0, "sparse") for i in range(2)]
    split = ChipGraph(chip.inputs, pops, groups, hosts=chip.hosts)
    assert "split into 2 populations" in lava.unsupported(split)
    engine.run(split, {"in": np.zeros((1, 2, 3 * N), np.uint8)})  # the engine takes it
