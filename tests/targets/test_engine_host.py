"""The engine's host partition (a spiking Transformer's attention product) and analog input ports, exactly."""

import numpy as np
import scipy.sparse as sp
import torch

from st2chip.chip.chipgraph import VTH_MAX, ChipGraph, HostProduct, InputPort, Population, SynapseGroup
from st2chip.graph.product import SpikeProduct
from st2chip.targets import engine

TOKENS, DIM, HEADS = 3, 4, 2
N = TOKENS * DIM


def _relay_pop(name: str, readout: bool = False) -> Population:
    """Neurons that fire the step their input arrives (u and v forget), or a readout that sums its input."""
    return Population(name, name, np.arange(N), du=4095, dv=0 if readout else 4095, vth=VTH_MAX if readout else 1,
                      bias_mant=0, bias_exp=0, readout=readout)


def _eye(name: str, source: str, target: str, m: int) -> SynapseGroup:
    return SynapseGroup(name, source, target, sp.csr_matrix(np.eye(N, dtype=np.int64) * m), 0, "sparse")


def test_host_counts_reach_the_next_layer_one_step_later():
    pops = [_relay_pop("q"), _relay_pop("k"), _relay_pop("v"), _relay_pop("t", readout=True)]
    groups = [SynapseGroup(f"in->{p}", "in", p, sp.csr_matrix(np.eye(N, 3 * N, k * N, dtype=np.int64) * 127), 0,
                           "sparse") for k, p in enumerate("qkv")]
    groups.append(_eye("attn->t", "attn", "t", 1))
    chip = ChipGraph([InputPort("in", 3 * N)], pops, groups, hosts=[HostProduct("attn", ("q", "k", "v"), HEADS,
                                                                                 TOKENS, DIM)])
    assert chip.depths() == {"q": 1, "k": 1, "v": 1, "t": 2}
    x = (np.random.default_rng(0).random((5, 6, 3 * N)) < 0.5).astype(np.uint8)
    traces = engine.run(chip, {"in": x})
    for name, k in zip("qkv", range(3)):  # the relay layers copy their slice of the input
        np.testing.assert_array_equal(traces.spikes[name], x[:, :, k * N:(k + 1) * N])
    node = SpikeProduct(HEADS, TOKENS, DIM, 1.0, ("q", "k", "v"))
    s = torch.from_numpy(x).double()
    counts = node.counts(s[..., :N], s[..., N:2 * N], s[..., 2 * N:]).numpy()
    # the readout sums 2 * count << 6 per step: after step t it holds the counts of steps 0..t
    np.testing.assert_array_equal(traces.voltages["t"], 128 * np.cumsum(counts, axis=1))


def test_analog_levels_enter_as_integers():
    pop = _relay_pop("t", readout=True)
    chip = ChipGraph([InputPort("x", N, "analog", 255)], [pop], [_eye("x->t", "x", "t", 3)])
    x = np.random.default_rng(1).integers(0, 256, (4, 5, N)).astype(np.uint8)
    traces = engine.run(chip, {"x": x})
    np.testing.assert_array_equal(traces.voltages["t"], 6 * 64 * np.cumsum(x.astype(np.int64), axis=1))
