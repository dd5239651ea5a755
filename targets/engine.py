r"""The fixed-point engine: a ChipGraph run in torch, bit-exact with Lava's ``fixed_pt`` models.

st2chip's one implementation of the chip arithmetic (backend ``reference``,
alias ``engine``). It runs a batch of samples at once on CPU or CUDA with
integer state (int64), exactly as Lava's ``PyLifModelBitAcc`` with ``Dense`` /
``Sparse`` synapses (see :class:`~st2chip.chip.chipgraph.Population` and
:class:`~st2chip.chip.chipgraph.SynapseGroup` for the update):

- every population of the graph is one slice of one state vector ``(B, N)``
  with per-neuron ``du``, ``dv``, ``vth``, bias and depth, so a step is a few
  tensor operations whatever the number of decay groups;
- each synapse group is a :class:`Synapses` object (the plug-in point for later
  kinds: convolution, recurrence, delays, graded spikes): ``accumulate(spikes)``
  returns the integer input ``(Σ_j 2 m_ij s_j) << exp`` for its target slice.
  Products run in float32 where the group's largest fan-in sum ``Σ_j |2 m_ij|``
  stays below 2^24 (every partial sum of 0/1 spikes is then an exactly
  representable integer; checked once, when the engine is built), in float64
  below 2^53, and the exponent is applied after, in int64. Dense groups use a
  matrix product, CSR groups (pruned weights) a sparse one (those at least
  :data:`DENSE_FROM` dense and small run as dense ones: torch's CSR product is
  no faster than the dense one at 10 % density, ``benchmarks/sparse_products.py``), and on CPU at low
  spike rates (below :data:`EVENT_RATE`) dense groups sum the weight rows of
  the sources that spiked (event-driven, ``embedding_bag``), decided per step;
- a :class:`~st2chip.chip.chipgraph.Relay` (a factored low-rank layer's middle)
  sends its integer input, unshifted, as a graded value; groups out of it
  multiply value × weight (exact: the float bound then covers ``Σ |2 m| max|x|``),
  with Lava's floor shift for a negative exponent; it records ``x != 0`` as
  its spikes and ``x`` as its voltage;
- a :class:`~st2chip.chip.chipgraph.HostProduct` (the host partition of a spiking
  Transformer: its attention product) reads its three layers' spikes of the step
  and sends the integer counts :math:`(Q K^\top) V` per head, graded, like a relay
  (exact: a product of 0/1 matrices, in float32 while its largest count stays below
  2^24, else float64); an analog input
  port sends its integer levels the same way;
- reset to zero, or by subtraction of the threshold for ``reset="subtract"``
  populations; a ``refractory=1`` population's neurons that spiked at the step
  before keep ``v`` and do not spike (``u`` integrates); feedback (recurrent)
  groups read the spikes of the step before, like every group;
- timing as Lava's: every synapse group delays spikes by one step; a population
  at depth ``d`` ignores its input and keeps zero state until the sample's first
  input reaches it (global step ``d + 1``).

Weights live once on the device, shared by the whole batch; state grows as
batch × neurons. On CUDA, TF32 is switched off for the run (exactness).

On a CPU where a C compiler builds them, :mod:`~st2chip.targets.engine_kernels` run the
same arithmetic with the same bits in one compiled pass per step (synaptic inputs summed,
neurons updated, records written; int32 state where the graph's bounds prove it fits) and
event-driven products (int16 weight rows or a sparse group's columns of the sources that
spiked, a sparse group without a right shift added straight into the step's input; a graded
source's sparse groups by int32 rows); ``use_kernels=False`` keeps the torch path, which CUDA
always runs. The kernels compute a population only from its depth on (before, its state is
zero), and :func:`run`, which reads each population's own ``T`` steps, only as long as some
population's window depends on it (:meth:`Engine.run_batch` ``window``): a pipeline of depth
``d`` then costs about ``T`` steps per population instead of ``T + d``.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import warnings
from collections import deque
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import scipy.sparse as sp
import torch

from st2chip.attention import attention_counts
from st2chip.chip.chipgraph import ACT_SHIFT, DECAY_SHIFT, UV_MAX, ChipGraph, SynapseGroup
from st2chip.targets import engine_kernels as kernels
from st2chip.traces import Traces

F32_EXACT = 1 << 24
F64_EXACT = 1 << 53
I32_EXACT = 1 << 31  # the kernels' integer sums (event path) and int32 state are exact below this
EVENT_RATE = 0.1  # on CPU, dense groups sum the rows of active sources below this spike rate ...
EVENT_MIN_TARGETS = 64  # ... when they have this many targets (fewer: the gather costs more than it saves)
DENSE_FROM = 0.05  # a CSR group at least this dense runs as a dense one (no slower, and it gets the event path)
DENSE_BYTES = 64 * 2**20  # ... when its weights, dense, take at most this much memory
KERNEL_EVENT_RATE = 0.25  # with the CPU kernels, dense groups sum the rows of active sources below this rate


def batch_steps(inputs: dict[str, np.ndarray]) -> tuple[int, int]:
    """Batch size and time steps shared by all input arrays ``(B, T, n)``."""
    shapes = {name: tuple(np.shape(x)[:2]) for name, x in inputs.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"inputs disagree in (batch, steps): {shapes}")
    return next(iter(shapes.values()))


def product_dtype(mantissa: np.ndarray | sp.csr_matrix, source_max: np.ndarray | None = None) -> torch.dtype:
    """float32 when every fan-in sum of ``|2 m| x_max`` is below 2^24 (exact), float64 below 2^53
    (``source_max``: the largest value per source, 1 for spikes)."""
    if not np.size(mantissa):
        fan_in = np.zeros(1)
    elif source_max is None:
        fan_in = _fan_in(mantissa)
    else:
        fan_in = np.asarray(abs(sp.csr_matrix(mantissa, dtype=np.float64)) @ np.asarray(source_max, np.float64)
                            ).ravel() * 2
    return _exact_dtype(float(fan_in.max(initial=0)))


def _exact_dtype(worst: float) -> torch.dtype:
    """The narrowest float type whose products are exact for a largest fan-in sum ``worst``."""
    if worst < F32_EXACT:
        return torch.float32
    if worst < F64_EXACT:
        return torch.float64
    raise ValueError(f"fan-in sum {worst:g} exceeds 2^53: no exact float product")


def _fan_in(mantissa: np.ndarray | sp.csr_matrix) -> np.ndarray:
    """``Σ_j |2 m_ij|`` per target, int64."""
    return np.asarray(abs(mantissa).sum(axis=1), dtype=np.int64).ravel() * 2


class Synapses:
    """One synapse group on a device: integer synaptic input for its target from source spikes."""

    def __init__(self, group: SynapseGroup, device: torch.device, source_max: np.ndarray | None = None,
                 act_shift: int = ACT_SHIFT) -> None:
        self.group, self.name, self.exp, self.act_shift = group, group.name, group.exp, act_shift
        self.device = device
        self.graded = source_max is not None  # the source sends values (a relay), not 0/1 spikes
        self.fan_in = _fan_in(group.mantissa)  # Σ_j |2 m_ij|: the bound of a 0/1 source's sums
        self.dtype = (product_dtype(group.mantissa, source_max) if self.graded
                      else _exact_dtype(float(self.fan_in.max(initial=0))))
        size = group.shape[0] * group.shape[1]
        dense_bytes = size * torch.finfo(self.dtype).bits // 8
        self.sparse = sp.issparse(group.mantissa) and (group.nnz < DENSE_FROM * size or dense_bytes > DENSE_BYTES)
        self.n_tgt = group.shape[0]
        self.empty = group.nnz == 0
        self.rows = self.columns = None  # the CPU kernels' event forms (0/1 sources, sums < 2^31)
        self.graded_rows = None  # the CPU kernels' form of a sparse group out of a graded source (sums < 2^31)
        self.direct = None  # ... of a sparse group of 0/1 sources without a right shift: added into the step's input
        if self.empty:
            return
        if not self.sparse:  # (n_src, n_tgt): rows are what one source spike adds to every target
            self.weight_t = torch.from_numpy(2 * group.dense().T).to(self.dtype).to(device).contiguous()
        self.events = not self.sparse and not self.graded and self.n_tgt >= EVENT_MIN_TARGETS
        if device.type == "cpu":
            self._kernel_forms(source_max)

    @functools.cached_property
    def weight(self) -> torch.Tensor:
        """A sparse group's ``2 m`` as a torch CSR matrix, for the torch path's product (built on first use:
        the CPU kernels mostly run without it)."""
        csr = sp.csr_matrix(2 * self.group.mantissa)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
            return torch.sparse_csr_tensor(torch.from_numpy(csr.indptr).long(), torch.from_numpy(csr.indices).long(),
                                           torch.from_numpy(csr.data).to(self.dtype), size=csr.shape,
                                           device=self.device, check_invariants=True)

    def _kernel_forms(self, source_max: np.ndarray | None) -> None:
        """The CPU kernels' integer forms where their sums fit int32: a 0/1 source's dense rows (int16) or sparse
        columns (per source: its targets and weights, shifted to the current's scale without a right shift),
        a graded source's sparse rows."""
        group = self.group
        if not self.graded and int(self.fan_in.max(initial=0)) < I32_EXACT:
            if not self.sparse:
                self.rows = self.weight_t.to(torch.int16)
                return
            csc = sp.csc_matrix(group.mantissa)
            rshift, lshift = self.shifts
            weights = (csc.data.astype(np.int32) * 2) << lshift if rshift == 0 else csc.data.astype(np.int16) * 2
            form = (torch.from_numpy(csc.indptr.astype(np.int64)), torch.from_numpy(csc.indices.astype(np.int32)),
                    torch.from_numpy(weights))
            if rshift == 0:
                self.direct = form
            else:
                self.columns = form
        elif self.graded and self.sparse and int(group.input_bound(source_max)[0].max(initial=0)) < I32_EXACT:
            csr = sp.csr_matrix(group.mantissa)
            self.graded_rows = (torch.from_numpy(csr.indptr.astype(np.int64)),
                                torch.from_numpy(csr.indices.astype(np.int32)),
                                torch.from_numpy(csr.data.astype(np.int16) * 2))

    def input_bound(self, source_max: np.ndarray | None) -> np.ndarray:
        """Worst-case ``|a|`` per target: the group's input at the current's scale (after both shifts)."""
        if source_max is None:  # 0/1 spikes: the fan-in sum, shifted
            acc = self.fan_in
            shifted = acc << self.exp if self.exp >= 0 else -((-acc) >> -self.exp)
        else:
            shifted = self.group.input_bound(source_max)[1]
        return shifted << self.act_shift

    @property
    def shifts(self) -> tuple[int, int]:
        """The right shift (a negative exponent, floor) and then the left shift (a positive one, plus the
        activation shift) that turn this group's sum into its target's input."""
        return max(0, -self.exp), max(0, self.exp) + self.act_shift

    def scatter(self, src: torch.Tensor, lo: int) -> kernels.Scatter:
        """This group's part of a step's :func:`~st2chip.targets.engine_kernels.event_csc_add` (``src``: the
        source's spikes ``(B, n_src)``, unit column stride; ``lo``: the target's first state column)."""
        ptr, idx, val = self.direct
        return kernels.Scatter(src.data_ptr(), src.stride(0), src.shape[1], lo, ptr.data_ptr(), idx.data_ptr(),
                               val.data_ptr())

    def kernel_sum(self, src: torch.Tensor, out: torch.Tensor, threads: int) -> torch.Tensor:
        """``Σ_j 2 m_ij x_j`` ``(B, n_tgt)``, before the exponent, for the CPU kernels: int32 into ``out`` from
        the event kernels (0/1 ``src`` below :data:`KERNEL_EVENT_RATE`, or a sparse group) and from a sparse
        group's rows for a graded ``src`` (where its sums fit int32), else the float product. ``src``:
        ``(B, n_src)`` with unit column stride (bool spikes, or a graded source's integers)."""
        lib = kernels.library()
        batch, n_src = src.shape
        if self.graded_rows is not None:
            ptr, idx, val = self.graded_rows
            xt = src.to(torch.int32).T.contiguous()  # (n_src, B): |x| < 2^30 wherever a weight reads it
            lib.graded_csr(batch, self.n_tgt, xt.data_ptr(), ptr.data_ptr(), idx.data_ptr(), val.data_ptr(),
                           out.data_ptr(), out.stride(0), threads)
            return out
        if self.columns is not None:
            ptr, idx, val = self.columns
            lib.event_csc(batch, n_src, self.n_tgt, src.data_ptr(), src.stride(0), ptr.data_ptr(), idx.data_ptr(),
                          val.data_ptr(), out.data_ptr(), threads)
            return out
        if self.rows is not None and lib.event_dense(batch, n_src, self.n_tgt, src.data_ptr(), src.stride(0),
                                                     self.rows.data_ptr(), out.data_ptr(),
                                                     int(KERNEL_EVENT_RATE * batch * n_src), threads) >= 0:
            return out
        s = src.to(self.dtype)
        if self.sparse:
            return torch.sparse.mm(self.weight, s.T).T.contiguous()
        return s @ self.weight_t

    def accumulate(self, spikes: torch.Tensor) -> torch.Tensor:
        """``((Σ_j 2 m_ij s_j) << exp) << act_shift`` as int64 ``(B, n_tgt)`` for 0/1 ``spikes`` (or a relay's
        integer values) ``(B, n_src)``: the synaptic input already shifted to the current's scale
        (``a << 6``; a relay target takes ``a`` unshifted)."""
        if self.empty:
            return torch.zeros(spikes.shape[0], self.n_tgt, dtype=torch.int64, device=spikes.device)
        s = spikes.to(self.dtype)
        if self.sparse:
            acc = torch.sparse.mm(self.weight, s.T).T
        elif self.events and s.device.type == "cpu" and s.numel() and float(s.mean()) < EVENT_RATE:
            acc = self._events(s)
        else:
            acc = s @ self.weight_t
        acc = acc.to(torch.int64)
        if self.exp >= 0:  # (acc << exp) << 6 in one shift
            return acc.bitwise_left_shift_(self.exp + self.act_shift)
        return acc.bitwise_right_shift_(-self.exp).bitwise_left_shift_(self.act_shift)  # floor first, as Lava

    def _events(self, s: torch.Tensor) -> torch.Tensor:
        """Event-driven: per sample, the sum of the weight rows of the sources that spiked (torch's
        ``embedding_bag``, one fused gather-and-sum; exact under the same bound as the product)."""
        b, j = torch.nonzero(s, as_tuple=True)  # row-major: samples in order
        offsets = torch.searchsorted(b, torch.arange(s.shape[0], device=s.device))
        return torch.nn.functional.embedding_bag(j, self.weight_t, offsets, mode="sum")


@dataclass
class _Layout:
    """Where each population sits in the engine's one state vector."""

    names: list[str]
    start: dict[str, int]
    size: dict[str, int]
    depth: dict[str, int]


class Engine:
    """A ChipGraph built once on a device; :meth:`run` takes batches of input spikes."""

    def __init__(self, chip: ChipGraph, device: str | torch.device = "cpu", use_kernels: bool = True) -> None:
        self.chip = chip
        self.device = torch.device(device)
        depths = chip.depths()
        names = [p.name for p in chip.populations]
        starts = np.cumsum([0] + [p.size for p in chip.populations])
        self.layout = _Layout(names, {n: int(s) for n, s in zip(names, starts)},
                              {p.name: p.size for p in chip.populations}, depths)
        self.n = int(starts[-1])
        dev = self.device

        def per_neuron(values) -> torch.Tensor:
            return torch.from_numpy(np.concatenate(values).astype(np.int64)).to(dev)

        pops = chip.populations
        self.decay_u = per_neuron([np.full(p.size, (1 << DECAY_SHIFT) - (p.du + 1)) for p in pops])
        self.decay_v = per_neuron([np.full(p.size, (1 << DECAY_SHIFT) - p.dv) for p in pops])
        self.vth = per_neuron([np.full(p.size, p.vth << ACT_SHIFT) for p in pops])
        self.bias = per_neuron([p.bias for p in pops])
        self.depth = per_neuron([np.full(p.size, depths[p.name]) for p in pops])
        self.subtract = per_neuron([np.full(p.size, p.reset == "subtract") for p in pops]).bool()
        self.any_subtract = bool(self.subtract.any())
        self.refractory = per_neuron([np.full(p.size, p.refractory > 0) for p in pops]).bool()
        self.any_refractory = bool(self.refractory.any())
        # shortcuts that skip whole passes, exact by construction:
        self.u_forgets = bool((self.decay_u == 0).all())        # du = 4095 everywhere: u = a
        self.v_keeps = bool((self.decay_v == 1 << DECAY_SHIFT).all())  # dv = 0 everywhere: no leak
        self.has_bias = bool((self.bias != 0).any())
        relays, graded = chip.relay_bounds(), chip.source_bounds()
        self.relays = {name: self._slice(name) for name in relays}
        self.hosts = [(h, [self._layer_index(layer) for layer in h.inputs]) for h in chip.hosts]
        self.host_names = {h.name for h in chip.hosts}
        self._plans: dict[tuple[int, bool], list] = {}  # _schedule's per (steps, window): the same for every batch
        self.analog = {i.name for i in chip.inputs if i.kind == "analog"}
        fed: set[str] = set()
        self.synapses = []
        for s in chip.synapses:
            syn = Synapses(s, dev, graded.get(s.source), 0 if s.target in relays else ACT_SHIFT)
            self.synapses.append((syn, s.source, s.target, s.target not in fed, s.delay))
            fed.add(s.target)
        self.max_delay = max((s.delay for s in chip.synapses), default=0)
        self.unfed = [self._slice(p.name) for p in pops if p.name not in fed]
        self.inputs = {i.name: i.size for i in chip.inputs}
        # on a CPU with a C compiler: one compiled pass per step (engine_kernels), same bits as the torch path
        self.use_kernels = use_kernels and self.device.type == "cpu" and kernels.library() is not None
        if self.use_kernels:
            self.narrow = self._state_fits_int32(graded)
            mode = (self.subtract.to(torch.uint8) * kernels.SUBTRACT + self.refractory.to(torch.uint8)
                    * kernels.REFRACTORY)
            for cols in self.relays.values():
                mode[cols] = kernels.RELAY
            self.neuron_params = [t.to(torch.int32).contiguous() for t in (self.decay_u, self.decay_v, self.vth,
                                                                           self.bias, self.depth)] + [mode]

    def _state_fits_int32(self, graded: dict[str, np.ndarray]) -> bool:
        """Whether ``u`` and ``v`` fit int32 at every step, from each neuron's worst-case synaptic input
        ``|a|``: ``v`` is clamped to 24 bit (a relay's is its input); ``u`` stays within 24 bit (one wrap
        suffices) while ``|a| <= 2^23``; where ``u`` forgets (``du = 4095``), ``u`` is ``a`` wrapped once."""
        worst = np.zeros(self.n, np.int64)
        for syn, source, target, _, _ in self.synapses:
            worst[self._slice(target)] += syn.input_bound(graded.get(source))
        forgets = self.decay_u.cpu().numpy() == 0
        return bool(np.all(np.where(forgets, worst < I32_EXACT, worst <= UV_MAX)))

    def layer_record(self, record: torch.Tensor, layer: str, steps: int, starts: dict[str, int] | None = None,
                     out: torch.Tensor | None = None) -> torch.Tensor:
        """One layer's record ``(B, T, n_layer)`` in the layer's neuron order, each population's
        window shifted by its depth (global steps ``d + 1 .. d + T`` are the sample's steps).
        ``starts``: where each population's columns begin in ``record`` (default: the state layout);
        ``out``: where to write it (any dtype and device: one copy, converted on the way)."""
        pops = self.chip.layer_populations(layer)
        starts = self.layout.start if starts is None else starts
        if out is None:
            out = torch.empty(record.shape[1], steps, self.chip.layer_size(layer), dtype=record.dtype,
                              device=record.device)
        for p in pops:
            d = self.layout.depth[p.name]
            part = record[d:d + steps, :, starts[p.name]:starts[p.name] + p.size].transpose(0, 1)
            lo = int(p.index[0]) if p.size else 0
            if np.array_equal(p.index, np.arange(lo, lo + p.size)):  # a contiguous block: a plain copy
                out[:, :, lo:lo + p.size] = part
            else:
                out[:, :, torch.from_numpy(p.index).to(out.device)] = part.to(out.device, out.dtype)
        return out

    def voltage_columns(self, layers: list[str]) -> tuple[torch.Tensor | None, dict[str, int]]:
        """State positions of the populations of ``layers`` (None: all of them), and where each
        population starts among those positions: what :meth:`run_batch` records voltages of."""
        pops = [p for layer in layers for p in self.chip.layer_populations(layer)]
        if len(pops) == len(self.chip.populations):
            return None, self.layout.start
        starts, cols, at = {}, [], 0
        for p in pops:
            starts[p.name], at = at, at + p.size
            cols.append(np.arange(self.layout.start[p.name], self.layout.start[p.name] + p.size))
        return torch.from_numpy(np.concatenate(cols or [np.zeros(0, np.int64)])).to(self.device), starts

    def _layer_index(self, layer: str) -> torch.Tensor:
        """Positions of ``layer``'s neurons, in the layer's order, in the state vector."""
        index = np.empty(self.chip.layer_size(layer), np.int64)
        for p in self.chip.layer_populations(layer):
            index[p.index] = self.layout.start[p.name] + np.arange(p.size)
        return torch.from_numpy(index).to(self.device)

    def _host_step(self, fired: torch.Tensor, names: set[str] | None = None) -> dict[str, torch.Tensor]:
        """Each host product's (of ``names`` only, when given) counts ``(Q K^T) V`` per head from this step's
        spikes of its input layers."""
        out = {}
        for h, inputs in self.hosts:
            if names is not None and h.name not in names:
                continue
            exact = torch.float32 if h.max_value < F32_EXACT else torch.float64  # every partial sum <= max_value
            q, k, v = (fired[:, i].to(exact) for i in inputs)
            out[h.name] = attention_counts(q, k, v, h.tokens, h.heads).round_().to(torch.int64)
        return out

    def _slice(self, name: str) -> slice:
        start = self.layout.start[name]
        return slice(start, start + self.layout.size[name])

    @staticmethod
    def _decay(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        """``trunc(x * factor / 4096)``: Loihi's sign-magnitude shift is division truncated toward zero."""
        prod = x * factor
        # toward zero: negative values get 4095 added before the arithmetic shift (no slow integer division)
        return prod.add_(prod.bitwise_right_shift(63).bitwise_and_((1 << DECAY_SHIFT) - 1)).bitwise_right_shift_(
            DECAY_SHIFT)

    @staticmethod
    def _wrap(u: torch.Tensor) -> torch.Tensor:
        """u is 24-bit: one wrap into ``(-2^23, 2^23]`` as Lava does (skipped when nothing is out of range)."""
        low, high = torch.aminmax(u)
        if int(high) > UV_MAX or int(low) <= -UV_MAX:
            u = torch.where(u > UV_MAX, u - 2 * UV_MAX, u)
            u = torch.where(u <= -UV_MAX, u + 2 * UV_MAX, u)
        return u

    def _relay_step(self, a_in: torch.Tensor, u: torch.Tensor, v: torch.Tensor, fired: torch.Tensor, g: int
                    ) -> dict[str, torch.Tensor]:
        """Each relay sends its input ``x`` (from its window's start on); it keeps no state, records
        ``x != 0`` as spikes and ``x`` as voltage (``u``, ``v``, ``fired`` are overwritten in place)."""
        out = {}
        for name, cols in self.relays.items():
            x = a_in[:, cols].clone() if g > self.layout.depth[name] else torch.zeros_like(a_in[:, cols])
            u[:, cols] = 0  # u may be a_in itself (a view of x's source): x is a copy
            v[:, cols] = x
            fired[:, cols] = x != 0
            out[name] = x
        return out

    def run_batch(self, inputs: dict[str, torch.Tensor], voltages: bool = True,
                  voltage_cols: torch.Tensor | None = None, window: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Spikes of every neuron at every global step, ``(T + depth, B, N)``, and voltages (of the state
        positions ``voltage_cols`` only, when given; none without ``voltages``; int64, or int32 with the CPU
        kernels where the state fits). ``window``: only each population's own ``T`` steps (global steps
        ``d + 1 .. d + T``, what :func:`run` reads) are sure to be recorded; the CPU kernels then skip the steps
        after a population's window that no window reads (its later spikes stay zero, its voltages stale)."""
        if self.use_kernels:
            return self._run_kernels(inputs, voltages, voltage_cols, window)
        batch, steps = inputs[next(iter(inputs))].shape[:2]
        horizon = steps + self.chip.depth
        dev, n = self.device, self.n
        # raw bytes to the device once, then bool (spikes) or int64 (analog levels) and time-major there: (T, B, n)
        kinds = {name: torch.int64 if name in self.analog else torch.bool for name in inputs}
        inputs = {name: x.to(dev, non_blocking=True).to(kinds[name]).transpose(0, 1).contiguous()
                  for name, x in inputs.items()}
        u = torch.zeros(batch, n, dtype=torch.int64, device=dev)
        v = torch.zeros_like(u)
        spikes = torch.zeros(batch, n, dtype=torch.bool, device=dev)
        in_prev = {name: torch.zeros(batch, size, dtype=kinds[name], device=dev) for name, size in self.inputs.items()}
        # every step writes its row: no need to zero them first
        rec_s = torch.empty(horizon, batch, n, dtype=torch.bool, device=dev)
        width = n if voltage_cols is None else voltage_cols.numel()
        rec_v = torch.empty(horizon, batch, width, dtype=torch.int64, device=dev) if voltages else None
        history: deque = deque(maxlen=self.max_delay)  # (population spikes, input spikes) of earlier steps
        sent = {name: torch.zeros(batch, cols.stop - cols.start, dtype=torch.int64, device=dev)
                for name, cols in self.relays.items()}  # each relay's (and host's) graded values of the step before
        sent |= {h.name: torch.zeros(batch, h.size, dtype=torch.int64, device=dev) for h, _ in self.hosts}
        for g in range(1, horizon + 1):
            a_in = torch.empty(batch, n, dtype=torch.int64, device=dev)
            for cols in self.unfed:
                a_in[:, cols] = 0
            for syn, source, target, first, delay in self.synapses:
                if delay and len(history) < delay:  # nothing has reached this group yet
                    past_s, past_in = torch.zeros_like(spikes), {k: torch.zeros_like(x) for k, x in in_prev.items()}
                else:
                    past_s, past_in = history[-delay] if delay else (spikes, in_prev)
                src = (past_in[source] if source in past_in else sent[source] if source in sent
                       else past_s[:, self._slice(source)])
                if first:  # the first group into a population writes its input, later ones add
                    a_in[:, self._slice(target)] = syn.accumulate(src)
                else:
                    a_in[:, self._slice(target)] += syn.accumulate(src)
            u = self._wrap(a_in if self.u_forgets else self._decay(u, self.decay_u).add_(a_in))
            if self.any_refractory:  # held: spiked at the step before
                held, v_kept = spikes & self.refractory, v.clone()
            v = (v if self.v_keeps else self._decay(v, self.decay_v)).add_(u)
            if self.has_bias:
                v.add_(self.bias)
            v.clamp_(-UV_MAX + 1, UV_MAX - 1)
            if g <= self.chip.depth:  # populations the sample has not reached yet keep zero state
                active = g > self.depth
                u = torch.where(active, u, 0)
                v = torch.where(active, v, 0)
                fired = (v > self.vth) & active
            else:
                fired = v > self.vth
            if self.any_refractory:
                v, fired = torch.where(held, v_kept, v), fired & ~held
            if self.any_subtract:
                v = torch.where(fired, torch.where(self.subtract, v - self.vth, 0), v)
            else:
                v.masked_fill_(fired, 0)
            if self.relays:
                sent = sent | self._relay_step(a_in, u, v, fired, g)
            if self.hosts:
                sent = sent | self._host_step(fired)
            prev_spikes, spikes = spikes, fired
            rec_s[g - 1] = fired
            if rec_v is not None:
                rec_v[g - 1] = v if voltage_cols is None else v.index_select(1, voltage_cols)
            if self.max_delay:
                history.append((prev_spikes, in_prev))
            in_prev = {name: (x[g - 1] if g <= steps else torch.zeros_like(in_prev[name]))
                       for name, x in inputs.items()}
        return rec_s, rec_v

    def _run_kernels(self, inputs: dict[str, torch.Tensor], voltages: bool, voltage_cols: torch.Tensor | None,
                     window: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`run_batch` on the CPU kernels: per step each group's sum (its term), then one compiled pass
        adds the terms, updates the neurons and writes the step's records -- of the active populations only
        (:meth:`_schedule`; the others' records stay zero)."""
        lib, threads = kernels.library(), torch.get_num_threads()
        batch, steps = inputs[next(iter(inputs))].shape[:2]
        horizon, n = steps + self.chip.depth, self.n
        x = {name: t.to(torch.int64 if name in self.analog else torch.bool).contiguous() for name, t in inputs.items()}
        state = torch.int32 if self.narrow else torch.int64
        u = torch.zeros(batch, n, dtype=state)
        v = torch.zeros_like(u)
        rec_s = torch.zeros(horizon, batch, n, dtype=torch.bool)  # a population's inactive steps: no spikes
        cols = torch.arange(n) if voltage_cols is None else voltage_cols.contiguous()
        rec_v = torch.empty(horizon, batch, cols.numel(), dtype=state) if voltages else None
        before = torch.zeros(batch, n, dtype=torch.bool)  # the spikes of step 0
        sums = [None if syn.empty or syn.direct is not None else torch.empty(batch, syn.n_tgt, dtype=torch.int32)
                for syn, *_ in self.synapses]
        hosts = {h.name: torch.zeros(batch, h.size, dtype=torch.int64) for h, _ in self.hosts}
        acc = torch.zeros(batch, n, dtype=torch.int64)  # the direct groups' input of a step (lif_step zeroes it)
        step = lib.lif_step_i32 if self.narrow else lib.lif_step_i64
        params = [t.data_ptr() for t in self.neuron_params]
        v_row = 0 if rec_v is None else rec_v[0].numel() * rec_v.element_size()
        for g, (groups, ranges, active_hosts) in enumerate(self._schedule(steps, window), start=1):
            terms = (kernels.Term * max(1, len(groups)))()
            kept, scatters = [], []  # the terms' (and scatters') tensors, alive until the step has read them
            for term, i in zip(terms, groups):
                syn, source, target, _, delay = self.synapses[i]
                src = self._kernel_source(source, delay, g, x, rec_s, v, hosts)
                term.kind = -1
                if src is None:
                    continue
                cols_t = self._slice(target)
                if syn.direct is not None:
                    kept.append(src)
                    scatters.append(syn.scatter(src, cols_t.start))
                    continue
                out = syn.kernel_sum(src, sums[i], threads)
                kept.append(out)
                term.lo, term.hi, (term.rshift, term.lshift) = cols_t.start, cols_t.stop, syn.shifts
                term.x, term.ld, term.kind = out.data_ptr(), out.stride(0), kernels.KIND[out.dtype]
            if scatters:
                lib.event_csc_add(batch, n, (kernels.Scatter * len(scatters))(*scatters), len(scatters), acc.data_ptr(),
                                  threads)
            prev = rec_s[g - 2] if g > 1 else before
            step(batch, n, g, ctypes.addressof(terms), len(groups), u.data_ptr(), v.data_ptr(), *params,
                 prev.data_ptr(), n, rec_s[g - 1].data_ptr(), n,
                 None if rec_v is None else rec_v.data_ptr() + (g - 1) * v_row, cols.numel(), cols.data_ptr(),
                 0 if rec_v is None else cols.numel(), ranges.data_ptr(), ranges.shape[0], acc.data_ptr(), threads)
            if active_hosts:
                hosts |= self._host_step(rec_s[g - 1], active_hosts)
        return rec_s, rec_v

    def _schedule(self, steps: int, window: bool) -> list[tuple[list[int], torch.Tensor, set[str]]]:
        """Per global step: the synapse groups whose sum can be non-zero and reaches an active target, the
        state column ranges ``(k, 2)`` of the active populations, and the host products to compute (made once
        per ``(steps, window)``: every batch of a run reads the same plan).

        A population is active from its depth on (before, its state is zero and it does not spike: skipping
        it changes nothing) to the last step anything recorded depends on: the run's last step, or with
        ``window`` the end of its own window or, if later, of a window it reaches (:meth:`_last_steps`). A
        group's sum is zero while its source has not reached its own first active step."""
        if (steps, window) not in self._plans:
            self._plans[steps, window] = self._plan(steps, window)
        return self._plans[steps, window]

    def _plan(self, steps: int, window: bool) -> list[tuple[list[int], torch.Tensor, set[str]]]:
        """:meth:`_schedule`'s plan, made."""
        horizon = steps + self.chip.depth
        first = {name: d + 1 for name, d in self.layout.depth.items()}
        for h, _ in self.hosts:
            first[h.name] = min(first[p.name] for layer in h.inputs for p in self.chip.layer_populations(layer))
        last = self._last_steps(steps) if window else dict.fromkeys(first, horizon)
        plan = []
        for g in range(1, horizon + 1):
            on = [name for name in self.layout.names if first[name] <= g <= last[name]]
            groups = [i for i, (syn, source, target, _, delay) in enumerate(self.synapses)
                      if not syn.empty and first[target] <= g <= last[target]
                      and g - self._latency(source, delay) >= first.get(source, 1)]
            ranges: list[list[int]] = []
            for name in on:
                cols = self._slice(name)
                if ranges and ranges[-1][1] == cols.start:
                    ranges[-1][1] = cols.stop
                elif cols.stop > cols.start:
                    ranges.append([cols.start, cols.stop])
            hosts = {h.name for h, _ in self.hosts if first[h.name] <= g <= last[h.name]}
            plan.append((groups, torch.tensor(ranges, dtype=torch.int64).reshape(-1, 2), hosts))
        return plan

    def _latency(self, source: str, delay: int) -> int:
        """Steps from a source's value to the target that reads it: a relay's or host's values of the step
        before, a population's (or input's) spikes ``1 + delay`` steps before."""
        return 1 if source in self.relays or source in self.host_names else 1 + delay

    def _last_steps(self, steps: int) -> dict[str, int]:
        """Per population and host product, the last global step that a population's window (global steps
        ``d + 1 .. d + T``) depends on: its own window's end, or a step ``latency`` before one of its targets'
        last steps (a shorter path into a deeper population, a feedback group), relaxed until nothing changes."""
        horizon = steps + self.chip.depth
        last = {name: min(horizon, d + steps) for name, d in self.layout.depth.items()}
        last |= {h.name: 0 for h, _ in self.hosts}
        edges = [(source, target, self._latency(source, delay))
                 for _, source, target, _, delay in self.synapses if source in last]
        edges += [(p.name, h.name, 0) for h, _ in self.hosts for layer in h.inputs
                  for p in self.chip.layer_populations(layer)]
        changed = True
        while changed:
            changed = False
            for source, target, latency in edges:
                if last[target] - latency > last[source]:
                    last[source], changed = last[target] - latency, True
        return last

    def _kernel_source(self, source: str, delay: int, g: int, x: dict[str, torch.Tensor], rec_s: torch.Tensor,
                       v: torch.Tensor, hosts: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """What a group out of ``source`` reads at global step ``g`` (None: nothing has reached it yet), as
        the torch path: spikes (or an input's values) of step ``g - 1 - delay``, a relay's or host's values
        of the step before."""
        if source in x:
            t = g - 2 - delay
            return x[source][:, t] if 0 <= t < x[source].shape[1] else None
        if source in hosts:
            return hosts[source]
        if source in self.relays:
            return v[:, self.relays[source]]
        return rec_s[g - 2 - delay, :, self._slice(source)] if g - 2 - delay >= 0 else None


@contextlib.contextmanager
def _exact_cuda() -> Iterator[None]:
    """TF32 off while the engine runs: its float products must be exact."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def run(chip: ChipGraph, inputs: dict[str, np.ndarray], *, device: str | None = None,
        batch_size: int | None = None, voltages: bool = True, progress: bool = False,
        use_kernels: bool = True) -> Traces:
    """Run ``inputs`` (name -> spikes ``(B, T, n)``) through ``chip``; traces per layer, like Lava's.

    ``batch_size`` splits the samples into batches (default: all at once);
    ``voltages=False`` records voltages of readout layers only; ``use_kernels=False`` runs the torch path
    on a CPU too (the same bits, slower).
    """
    batch, steps = batch_steps(inputs)
    engine = Engine(chip, device or "cpu", use_kernels)
    size = batch_size or batch
    starts = range(0, batch, size)
    if progress:
        from tqdm.auto import tqdm
        starts = tqdm(starts, desc="engine", unit="batch", leave=False)
    layers = chip.layers()
    record_v = [layer for layer in layers if voltages or layer in chip.readout_layers()]
    spikes = {layer: np.zeros((batch, steps, chip.layer_size(layer)), np.uint8) for layer in layers}
    volts = {layer: np.zeros((batch, steps, chip.layer_size(layer)), np.int64) for layer in record_v}
    cols, col_starts = engine.voltage_columns(record_v)
    with _exact_cuda():
        for lo in starts:
            hi = min(lo + size, batch)
            chunk = {name: torch.from_numpy(np.ascontiguousarray(x[lo:hi])) for name, x in inputs.items()}
            rec_s, rec_v = engine.run_batch(chunk, voltages=bool(record_v), voltage_cols=cols, window=True)
            for layer in layers:  # one device-to-host copy, straight into the result arrays
                engine.layer_record(rec_s, layer, steps, out=torch.from_numpy(spikes[layer][lo:hi]))
                if layer in volts:
                    engine.layer_record(rec_v, layer, steps, col_starts, out=torch.from_numpy(volts[layer][lo:hi]))
    return Traces("reference", {k: np.asarray(v, np.uint8) for k, v in inputs.items()}, spikes, volts,
                  scores(chip, spikes, volts))


def scores(chip: ChipGraph, spikes: dict[str, np.ndarray], volts: dict[str, np.ndarray]) -> np.ndarray:
    """Readout voltages at the last step (or, without a readout, the last layer's spike counts)."""
    readouts = chip.readout_layers()
    if readouts:
        return np.concatenate([volts[layer][:, -1] for layer in readouts], axis=1)
    return spikes[chip.layers()[-1]].sum(axis=1)


def assemble(chip: ChipGraph, backend: str, inputs: dict[str, np.ndarray],
             pop_spikes: dict[str, np.ndarray], pop_volts: dict[str, np.ndarray]) -> Traces:
    """Gather per-population records ``(B, T, n_pop)`` into per-layer :class:`Traces`.

    A layer gets voltages only when every one of its populations recorded them.
    """
    batch, steps = batch_steps(inputs)
    spikes, volts = {}, {}
    for layer in chip.layers():
        n = chip.layer_size(layer)
        pops = chip.layer_populations(layer)
        spikes[layer] = np.zeros((batch, steps, n), np.uint8)
        for pop in pops:
            spikes[layer][:, :, pop.index] = pop_spikes[pop.name]
        if all(pop.name in pop_volts for pop in pops):
            volts[layer] = np.zeros((batch, steps, n), np.int64)
            for pop in pops:
                volts[layer][:, :, pop.index] = pop_volts[pop.name]
    return Traces(backend, {k: np.asarray(v, np.uint8) for k, v in inputs.items()}, spikes, volts,
                  scores(chip, spikes, volts))
