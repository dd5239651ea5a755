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


def _split(chip: ChipGraph, layer: str, parts: list[np.ndarray]) -> ChipGraph:
    """``chip`` with ``layer`` held by several populations (as decay grouping leaves it), each fed its rows."""
    pops = [p for p in chip.populations if p.name != layer] + [
        Population(f"{layer}/g{i}", layer, index, du=4095, dv=4095, vth=1, bias_mant=0, bias_exp=0)
        for i, index in enumerate(parts)]
    (feed,) = [g for g in chip.synapses if g.target == layer]
    groups = [g for g in chip.synapses if g.target != layer] + [
        SynapseGroup(f"{feed.source}->{layer}/g{i}", feed.source, f"{layer}/g{i}", feed.mantissa[index], 0, "sparse")
        for i, index in enumerate(parts)]
    return ChipGraph(chip.inputs, pops, groups, hosts=chip.hosts)


def test_lava_host_reads_layers_split_into_populations_like_the_engine():
    """Q split into two interleaved populations, K into three: the host process gathers each layer's spikes
    from one port per population, in the layer's order."""
    chip = _split(_host_chip(), "q", [np.arange(0, N, 2), np.arange(1, N, 2)])
    chip = _split(chip, "k", [np.array([5, 0, 7]), np.array([1, 2, 3, 4]), np.array([6, 8, 9, 10, 11])])
    x = (np.random.default_rng(4).random((2, 5, 3 * N)) < 0.5).astype(np.uint8)
    eng, lav = engine.run(chip, {"in": x}), lava.run(chip, {"in": x})
    np.testing.assert_array_equal(eng.voltages["t"], 128 * np.cumsum(_loop_counts(x[..., :N], x[..., N:2 * N],
                                                                                   x[..., 2 * N:]), axis=1))
    for layer in eng.spikes:
        np.testing.assert_array_equal(eng.spikes[layer], lav.spikes[layer], err_msg=layer)
        np.testing.assert_array_equal(eng.voltages[layer], lav.voltages[layer], err_msg=layer)


def test_the_cpu_kernels_run_hosts_and_analog_ports_like_the_torch_path():
    """The host product reads the kernels' spike record, and analog levels enter their terms as integers."""
    x = (np.random.default_rng(5).random((3, 6, 3 * N)) < 0.5).astype(np.uint8)
    analog = ChipGraph([InputPort("x", N, "analog", 255)], [_relay_pop("t", readout=True)], [_eye("x->t", "x", "t", 3)])
    levels = np.random.default_rng(6).integers(0, 256, (2, 4, N)).astype(np.uint8)
    for chip, inputs in ((_host_chip(), {"in": x}), (analog, {"x": levels})):
        assert engine.Engine(chip).use_kernels
        fast, torch_path = engine.run(chip, inputs), engine.run(chip, inputs, use_kernels=False)
        for layer in torch_path.spikes:
            np.testing.assert_array_equal(fast.spikes[layer], torch_path.spikes[layer], err_msg=layer)
            np.testing.assert_array_equal(fast.voltages[layer], torch_path.voltages[layer], err_msg=layer)
