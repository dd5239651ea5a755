r"""Xylo's arithmetic in torch: a batch of samples at once, bit for bit as SynSense's xylosim 0.1.3 runs it.

st2chip's Xylo engine (:func:`run_xylo`) runs a :class:`~st2chip.xylo.xylograph.XyloGraph` on integer
state (int32 tensors holding xylosim's int16 values, int64 where a step's sums could pass 2^31:
:func:`state_dtype`), on CPU or CUDA. Per chip step ``t``, as xylosim's
``XyloLayer::evolve`` (``src/v2/cpp``):

1. input counts (clipped to 15) add ``n * (w_in << shift_in)`` to the hidden neurons' current ``i``,
   source by source in index order, then the hidden spike counts of step ``t - 1`` (at most 31) add
   through ``w_rec << shift_rec`` to the hidden neurons and through ``w_out << shift_out`` to the
   outputs. Every add saturates to int16, so where the running sum can pass a limit the result depends
   on the order of the sources;
2. every neuron (hidden, then output): ``i -= decay(i, dash_syn)``;
   ``dv = sat(sat(-decay(v, dash_mem) + i) + bias)`` (``-decay`` in int16: ``-(-32768)`` wraps to
   ``-32768``, as the C++ does); ``v = sat(v + dv)``; then ``n = min(v // threshold, max)`` spikes
   (31 hidden, 1 output) and ``v -= n * threshold``. ``decay(x, d) = x >> d``, or ``sign(x)`` where
   that is 0.

Deliveries run as two float products per step, one for the input counts and one for the hidden
spikes (to hidden and output neurons at once), each giving the sums of the positive and of the negative
weights (one matrix ``[w+ | w-]``; exact: float32 where every column's ``max count * sum |w|`` stays
below 2^24, float64 otherwise; the shift is applied after, in integers). Those sums bound every running
partial sum of a neuron: where ``i + pos <= 32767`` and ``i - neg >= -32768`` (per group, inputs then
hidden spikes) no add can saturate and ``i + pos - neg`` is exact; where every add has the same sign,
one clamp is. Only the other (sample, neuron) entries take the exact path (:func:`saturating_sums`),
which composes the per-source saturating adds as clamp functions, a log-depth reduction over each
sample's active sources. On CPU, steps whose sources are sparse (below :data:`EVENT_RATE` non-zero)
use a sparse product.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from st2chip.errors import InputError
from st2chip.xylo.xylograph import (MAX_HIDDEN_SPIKES, MAX_INPUT_SPIKES, MAX_OUTPUT_SPIKES, RUN_FIELDS, STATE_RANGE,
                                    XyloGraph, XyloNeurons, XyloRun)

LOW, HIGH = STATE_RANGE
F32_EXACT = 1 << 24
EVENT_RATE = 0.1  # on CPU, a step's product is sparse below this fraction of non-zero source counts
EXACT_BLOCK = 1 << 22  # elements (entries x sources) the exact path gathers at once
COUNT_MAX = 255  # counts are passed on to xylosim as uint8


def check_counts(graph: XyloGraph, counts) -> np.ndarray:
    """``counts`` as int64 ``(batch, steps, n_inputs)``, at most :data:`COUNT_MAX` (the chip clips to 15 anyway);
    a one-line InputError names what is wrong."""
    arr = np.asarray(counts)
    want = f"(batch, steps, {graph.n_inputs})"
    if arr.ndim != 3 or arr.shape[2] != graph.n_inputs:
        raise InputError(f"Xylo input counts (--inputs): expected shape {want} (one channel per chip input), "
                         f"got {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool or np.issubdtype(arr.dtype, np.floating)):
        raise InputError(f"Xylo input counts (--inputs): expected whole numbers, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating) and not (np.isfinite(arr).all() and np.array_equal(arr, np.floor(arr))):
        raise InputError("Xylo input counts (--inputs): expected whole numbers, got fractions, NaN or inf")
    if arr.size and arr.min() < 0:
        raise InputError(f"Xylo input counts (--inputs): expected counts >= 0, got {arr.min()}")
    return np.minimum(arr, COUNT_MAX).astype(np.int64)


def run_xylo(graph: XyloGraph, counts, *, record: bool = True, device: str = "cpu") -> XyloRun:
    """Run ``graph`` on a batch of input ``counts`` ``(batch, steps, n_inputs)`` with Xylo's arithmetic.

    Returns spike counts and, when ``record``, ``v`` and ``i`` of the hidden and output neurons at the end
    of each step (int16 arrays ``(batch, steps, n)``), equal to xylosim's recordings.
    """
    x = check_counts(graph, counts)
    dev = torch.device(device)
    with _exact_products():
        return _Engine(graph, dev).run(torch.from_numpy(np.minimum(x, MAX_INPUT_SPIKES)).to(dev), record)


@contextlib.contextmanager
def _exact_products() -> Iterator[None]:
    """TF32 off while the engine runs: its float products must be exact."""
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


@dataclass
class _Neurons:
    """One population's per-neuron integers on a device, and how many spikes a neuron emits per step."""

    dash_syn: torch.Tensor
    dash_mem: torch.Tensor
    threshold: torch.Tensor
    bias: torch.Tensor
    max_spikes: int

    @classmethod
    def on(cls, neurons: XyloNeurons, max_spikes: int, device: torch.device, dtype: torch.dtype) -> "_Neurons":
        put = lambda a: torch.from_numpy(a).to(device, dtype)  # noqa: E731
        return cls(put(neurons.dash_syn), put(neurons.dash_mem), put(neurons.threshold), put(neurons.bias),
                   max_spikes)

    def evolve(self, i: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One step of xylosim's ``XyloIAFNeuron::evolve`` for every neuron: new ``i``, ``v`` and spike counts."""
        i = i - _decay(i, self.dash_syn)
        leak = -_decay(v, self.dash_mem)
        leak = torch.where(leak > HIGH, LOW, leak)  # the C++ stores -(-32768) in an int16: it wraps
        dv = _sat(_sat(leak + i) + self.bias)
        v = _sat(v + dv)
        spikes = torch.div(v, self.threshold, rounding_mode="floor").clamp(0, self.max_spikes)
        return i, v - spikes * self.threshold, spikes


def _decay(x: torch.Tensor, dash: torch.Tensor) -> torch.Tensor:
    """xylosim's bit-shift decay: ``x >> dash`` (arithmetic), ``sign(x)`` where that is 0."""
    d = x >> dash
    return torch.where(d == 0, torch.sign(x), d)


def _sat(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(LOW, HIGH)


class _Product:
    """Source counts times one weight block: the shifted sums of its positive and of its negative weights."""

    def __init__(self, weights: np.ndarray, shifts: np.ndarray, max_count: int, device: torch.device,
                 state: torch.dtype) -> None:
        worst = int((max_count * np.abs(weights).sum(axis=0)).max(initial=0))
        self.dtype = torch.float32 if worst < F32_EXACT else torch.float64
        split = np.concatenate([np.maximum(weights, 0), np.maximum(-weights, 0)], axis=1)
        self.split = torch.from_numpy(split).to(self.dtype).to(device)
        self.shifts = torch.from_numpy(np.asarray(shifts, np.int64)).to(device, state)
        self.state = state
        self.columns = weights.shape[1]
        self.events = device.type == "cpu"

    def __call__(self, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = counts.to(self.dtype)
        if self.events and c.numel() and int(torch.count_nonzero(c)) < EVENT_RATE * c.numel():
            prod = torch.sparse.mm(c.to_sparse(), self.split)
        else:
            prod = c @ self.split
        prod = prod.to(self.state)
        return prod[:, :self.columns] << self.shifts, prod[:, self.columns:] << self.shifts


def state_dtype(graph: XyloGraph) -> torch.dtype:
    """int32 where every sum the engine forms fits (the state plus a step's largest delivery), else int64."""
    reach = lambda w, shift, n: (n * np.abs(w).sum(axis=0)) << shift  # noqa: E731
    hidden = reach(graph.w_in, graph.shift_in, MAX_INPUT_SPIKES) + reach(graph.w_rec, graph.shift_rec,
                                                                         MAX_HIDDEN_SPIKES)
    worst = max(int(hidden.max(initial=0)), int(reach(graph.w_out, graph.shift_out, MAX_HIDDEN_SPIKES).max(initial=0)))
    return torch.int32 if 4 * (HIGH + 1) + worst < 2**31 else torch.int64


class _Engine:
    """One XyloGraph on a device: the step loop over a batch."""

    def __init__(self, graph: XyloGraph, device: torch.device) -> None:
        self.n_hidden, self.n_outputs, self.device = graph.n_hidden, graph.n_outputs, device
        self.dtype = dtype = state_dtype(graph)
        self.hidden = _Neurons.on(graph.hidden, MAX_HIDDEN_SPIKES, device, dtype)
        self.outputs = _Neurons.on(graph.outputs, MAX_OUTPUT_SPIKES, device, dtype)
        self.inputs = _Product(graph.w_in, np.full(graph.n_hidden, graph.shift_in), MAX_INPUT_SPIKES, device, dtype)
        self.recurrent = _Product(np.concatenate([graph.w_rec, graph.w_out], axis=1),  # one product per step
                                  np.r_[np.full(graph.n_hidden, graph.shift_rec), np.full(graph.n_outputs,
                                                                                          graph.shift_out)],
                                  MAX_HIDDEN_SPIKES, device, dtype)
        to_hidden = np.concatenate([graph.w_in << graph.shift_in, graph.w_rec << graph.shift_rec])
        self.to_hidden = torch.from_numpy(to_hidden).to(device, dtype)  # the exact path's weights, sources in order
        self.to_outputs = torch.from_numpy(graph.w_out << graph.shift_out).to(device, dtype)

    def run(self, x: torch.Tensor, record: bool) -> XyloRun:
        batch, steps, _ = x.shape
        x = x.to(self.dtype)
        zeros = lambda n: torch.zeros((batch, n), dtype=self.dtype, device=self.device)  # noqa: E731
        i_h, v_h, s_h, i_o, v_o = (zeros(n) for n in (self.n_hidden,) * 3 + (self.n_outputs,) * 2)
        names = RUN_FIELDS if record else RUN_FIELDS[:2]
        sizes = {"hidden": self.n_hidden, "output": self.n_outputs}
        rec = {name: torch.zeros((batch, steps, sizes[name.split("_")[0]]), dtype=torch.int16, device=self.device)
               for name in names}
        for t in range(steps):
            pos_in, neg_in = self.inputs(x[:, t])
            pos_rec, neg_rec = self.recurrent(s_h)
            h, o = slice(0, self.n_hidden), slice(self.n_hidden, None)
            i_h = _deliver(i_h, [(pos_in, neg_in), (pos_rec[:, h], neg_rec[:, h])], (x[:, t], s_h), self.to_hidden)
            i_o = _deliver(i_o, [(pos_rec[:, o], neg_rec[:, o])], (s_h,), self.to_outputs)
            i_h, v_h, s_h = self.hidden.evolve(i_h, v_h)
            i_o, v_o, s_o = self.outputs.evolve(i_o, v_o)
            values = {"hidden_spikes": s_h, "output_spikes": s_o, "hidden_v": v_h, "hidden_i": i_h,
                      "output_v": v_o, "output_i": i_o}
            for name in names:
                rec[name][:, t] = values[name]
        return XyloRun(**{name: rec[name].cpu().numpy() for name in names})


def _deliver(i: torch.Tensor, groups: list[tuple[torch.Tensor, torch.Tensor]], sources: tuple[torch.Tensor, ...],
             weights: torch.Tensor) -> torch.Tensor:
    """``i`` after one step's deliveries, ``groups`` the (positive, negative) sums of each source group in order.

    Exact without the sources' order where no running sum can saturate (each group's sums bound its partial
    sums) or where every add has the same sign (one clamp); the other entries take :func:`saturating_sums`.
    """
    total, risky = i, torch.zeros_like(i, dtype=torch.bool)
    for pos, neg in groups:
        risky |= (total + pos > HIGH) | (total - neg < LOW)
        total = total + pos - neg
    mixed = (sum(pos for pos, _ in groups) > 0) & (sum(neg for _, neg in groups) > 0)
    total = _sat(total)
    rows, cols = (risky & mixed).nonzero(as_tuple=True)
    if rows.numel():
        total[rows, cols] = saturating_sums(i[rows, cols], torch.cat(sources, dim=1), weights, rows, cols)
    return total


def saturating_sums(start: torch.Tensor, counts: torch.Tensor, weights: torch.Tensor, rows: torch.Tensor,
                    cols: torch.Tensor) -> torch.Tensor:
    """For each entry ``m``: ``start[m]`` after source ``k = 0, 1, ...`` adds ``counts[rows[m], k]`` times
    ``weights[k, cols[m]]``, each add saturating to int16, as xylosim delivers spikes.

    ``n`` same-sign saturating adds are one clamp of ``x + n w``, and a chain of clamped adds
    ``x -> clamp(x + a, lo, hi)`` composes into one of the same form, so the sources reduce pairwise.
    Only each row's sources with a non-zero count take part (the others add nothing), in their order.
    """
    used, rows = torch.unique(rows, return_inverse=True)
    counts = counts[used]
    active = counts != 0
    width = int(active.sum(dim=1).max())
    order = torch.sort((~active).to(torch.uint8), dim=1, stable=True).indices[:, :width]  # active first, in order
    compact = torch.gather(counts, 1, order)
    out = torch.empty_like(start)
    block = max(1, EXACT_BLOCK // max(1, width))
    for lo in range(0, start.numel(), block):
        r, c = rows[lo:lo + block], cols[lo:lo + block]
        adds = compact[r] * weights[order[r], c[:, None]]
        out[lo:lo + block] = _compose(start[lo:lo + block], adds)
    return out


def _compose(start: torch.Tensor, adds: torch.Tensor) -> torch.Tensor:
    """``start`` (M,) after the saturating adds ``adds`` (M, K), left to right, in ``log2(K)`` tensor steps."""
    low, high = torch.full_like(adds, LOW), torch.full_like(adds, HIGH)
    while adds.shape[1] > 1:
        if adds.shape[1] % 2:  # a clamp with nothing to add changes no int16 value
            adds, low, high = (torch.nn.functional.pad(a, (0, 1), value=fill)
                               for a, fill in ((adds, 0), (low, LOW), (high, HIGH)))
        a1, a2, lo2, hi2 = adds[:, 0::2], adds[:, 1::2], low[:, 1::2], high[:, 1::2]
        low = torch.clamp(low[:, 0::2] + a2, lo2, hi2)
        high = torch.clamp(high[:, 0::2] + a2, lo2, hi2)
        adds = a1 + a2
    if adds.shape[1] == 0:
        return start
    return torch.clamp(start + adds[:, 0], low[:, 0], high[:, 0])
