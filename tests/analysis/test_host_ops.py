"""A host partition's own operations (the attention product) and the spikes it reads, counted from traces."""

import numpy as np
import pytest
import scipy.sparse as sp

from st2chip.analysis.energy import energy_report
from st2chip.analysis.traffic import count_ops
from st2chip.chip.chipgraph import VTH_MAX, ChipGraph, HostProduct, InputPort, Population, SynapseGroup
from st2chip.chip.placement import place
from st2chip.targets import engine

TOKENS, DIM, HEADS = 3, 4, 2
N = TOKENS * DIM


def _chip() -> ChipGraph:
    copy = lambda name, readout=False: Population(  # noqa: E731
        name, name, np.arange(N), du=4095, dv=0 if readout else 4095, vth=VTH_MAX if readout else 1,
        bias_mant=0, bias_exp=0, readout=readout)
    groups = [SynapseGroup(f"in->{p}", "in", p, sp.csr_matrix(np.eye(N, 3 * N, k * N, dtype=np.int64) * 127), 0,
                           "sparse") for k, p in enumerate("qkv")]
    groups.append(SynapseGroup("attn->t", "attn", "t", sp.csr_matrix(np.eye(N, dtype=np.int64)), 0, "sparse"))
    return ChipGraph([InputPort("in", 3 * N)], [copy("q"), copy("k"), copy("v"), copy("t", True)], groups,
                     hosts=[HostProduct("attn", ("q", "k", "v"), HEADS, TOKENS, DIM)])


def _loop_ops(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> int:
    """One accumulate per coincident (i, j, d) spike pair of a head, and one per V spike meeting a non-zero score."""
    dh, ops = DIM // HEADS, 0
    for b, t, h in np.ndindex(q.shape[0], q.shape[1], HEADS):
        cols = slice(h * dh, (h + 1) * dh)
        qh, kh, vh = (x[b, t].reshape(TOKENS, DIM)[:, cols] for x in (q, k, v))
        for i, j in np.ndindex(TOKENS, TOKENS):
            score = int((qh[i] * kh[j]).sum())
            ops += score + (int(vh[j].sum()) if score else 0)
    return ops


def test_host_operations_and_the_spikes_it_reads_are_counted():
    chip = _chip()
    x = (np.random.default_rng(4).random((3, 5, 3 * N)) < 0.5).astype(np.uint8)
    traces = engine.run(chip, {"in": x})
    counts = count_ops(chip, traces, place(chip, "loihi2"))
    [host] = counts.hosts
    q, k, v = (traces.spikes[layer] for layer in "qkv")
    assert host.ops == _loop_ops(q, k, v) > 0
    assert host.spikes_in == int(q.sum() + k.sum() + v.sum())
    routed_host = counts.by_layer("routed_host")
    for i, layer in enumerate(counts.layers):
        if layer in "qkv":  # the input's spikes from the host into the layer, and the layer's to the host
            k_in = "qkv".index(layer)
            assert routed_host[i] == int(x[:, :, k_in * N:(k_in + 1) * N].sum() + traces.spikes[layer].sum())
    report = energy_report(chip, traces, "45nm")
    [row] = [r for r in report.layers if r.partition == "host"]
    assert row.host_ops == pytest.approx(host.ops / 3) and row.energy_pj["host"] == pytest.approx(row.host_ops * 0.9)
    assert "host partition operations (no E_HOST_OP_pJ)" in energy_report(chip, traces, "loihi2").unpriced()


def test_boundary_traffic_is_counted_per_step_from_the_traces():
    """The input port's spikes go in; Q, K, V spikes go out to the host and its non-zero counts come back,
    per step, averaged over samples; written to the report's Markdown and JSON."""
    chip = _chip()
    x = (np.random.default_rng(5).random((3, 5, 3 * N)) < 0.5).astype(np.uint8)
    traces = engine.run(chip, {"in": x})
    port, host = count_ops(chip, traces, place(chip, "loihi2")).boundaries
    assert (port.name, port.kind, host.name, host.kind) == ("in", "spike", "attn", "host")
    np.testing.assert_allclose(port.to_chip, x.sum(axis=(0, 2)) / 3)
    np.testing.assert_array_equal(port.from_chip, 0)
    q, k, v = (traces.spikes[layer].astype(np.int64) for layer in "qkv")
    np.testing.assert_allclose(host.from_chip, (q + k + v).sum(axis=(0, 2)) / 3)
    dh = DIM // HEADS
    nonzero = np.zeros(5)
    for b, t, h in np.ndindex(3, 5, HEADS):  # count[n, d] of head h is non-zero when some m has Q_n.K_m > 0, V_m,d
        cols = slice(h * dh, (h + 1) * dh)
        qh, kh, vh = (a[b, t].reshape(TOKENS, DIM)[:, cols] for a in (q, k, v))
        nonzero[t] += np.count_nonzero((qh @ kh.T) @ vh)
    np.testing.assert_allclose(host.to_chip, nonzero / 3)
    assert host.to_chip.sum() > 0
    report = energy_report(chip, traces, "45nm")
    assert report.to_dict()["boundaries"][1]["to_chip_per_step"] == pytest.approx((nonzero / 3).tolist())
    assert "| attn     |  host |" in report.to_markdown()
