r"""The one float interpreter of NIR graphs: the reference meaning every chip backend is compared with.

:func:`run_graph` evaluates a feed-forward graph node by node in topological
order, each node over the whole time sequence ``(T, ...)`` at once (linear nodes
in one call, neurons step by step). A graph with recurrent (back) edges (see
:mod:`st2chip.graph.reading`) runs step by step instead, every node once per
step in the graph's order, a back edge carrying its source's output of the step
before. A node's inputs add up. State is zero at the start of every sample.
With ``dt = graph.metadata["dt"]`` (forward Euler), per step:

- ``Affine``: :math:`y = W x + b` over the last axis (``W`` dense, or a scipy sparse matrix in a composed
  bundle, whose token parts are replicated block-diagonally); ``Scale``: :math:`y = s \odot x`; ``Conv1d``/``Conv2d``:
  convolution with bias of ``(C, N)``/``(C, H, W)`` maps (a flat signal is reshaped to the node's
  ``input_type`` and flattened back); ``SumPool2d``/``AvgPool2d``: window sums / means (zero padding,
  counted); ``Flatten``, ``Input``, ``Output``: identity (canonical signals are flat already).
- ``LIF``: :math:`v \leftarrow (1 - \tfrac{dt}{\tau}) v + \tfrac{dt}{\tau}(v_{leak} + r I)`,
  :math:`s = [v > v_{threshold}]`, :math:`v \leftarrow v_{reset}` where :math:`s` (or
  :math:`v \leftarrow v - v_{threshold}` for ``metadata["reset"] == "subtract"``).
  With ``metadata["refractory"] == 1`` a neuron that spiked at the step before keeps its ``v`` (the value
  after its reset) and does not spike; a current ``i`` integrates as usual.
  With ``metadata["max_spikes"] == k > 1`` (reset by subtraction only) the node may spike several times
  per step: while :math:`v > v_{threshold}` and fewer than :math:`k` spikes were sent, one more is sent and
  :math:`v \leftarrow v - v_{threshold}` (the strict test each time, the subtractions one after the other:
  :func:`spike_count`). Its output is the count :math:`0..k`, which the next ``Affine`` weighs like a spike;
  recorded spikes and scores are counts. Xylo's hidden neurons spike so, up to 31 times.
  With :math:`\tau = dt/(1-\beta)`, :math:`r = 1/(1-\beta)`, :math:`v_{leak} = 0`
  this is sLIF's :math:`v \leftarrow \beta v + I`.
- ``CubaLIF``: :math:`i \leftarrow (1 - \tfrac{dt}{\tau_{syn}}) i + \tfrac{dt}{\tau_{syn}} w_{in} I`, then
  :math:`v \leftarrow (1 - \tfrac{dt}{\tau_{mem}}) v + \tfrac{dt}{\tau_{mem}}(v_{leak} + r i)`; spike and reset as LIF.
- ``IF``: :math:`v \leftarrow v + dt\, r I` (NIR's :math:`\dot v = R I`); spike and reset as LIF.
- ``LI``, ``CubaLI``: as LIF, CubaLIF without spikes; ``I``: :math:`v \leftarrow v + dt\, r I`. Both output their voltage.
- ``Delay``: :math:`y[t] = x[t - \tau/dt]` per element (whole steps), zero before the signal arrives.
- :class:`~st2chip.graph.product.SpikeProduct` (st2chip's attention product, in composed bundles):
  :math:`s (Q K^\top) V` per head of its three named inputs at the same step (feed-forward graphs only).

The coefficients (:math:`1 - dt/\tau`, :math:`dt\,r/\tau`, ...) are computed in
float64 and the run happens in the dtype asked for: float64 for
:func:`simulate` (the ``float`` backend), float32 where a bundle must reproduce
a float32 torch model bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import nir
import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from st2chip.errors import GraphError, InputError
from st2chip.graph.product import SpikeProduct
from st2chip.graph.reading import (NEURONS, SPIKING, back_edges, coefficients, delay_steps, max_spikes,
                                   refractory_steps, reset_mode)
from st2chip.learn.neurons import spike_count
from st2chip.traces import Traces

LINEAR = (nir.Affine, nir.Scale, nir.Conv1d, nir.Conv2d, nir.SumPool2d, nir.AvgPool2d)
PASS_THROUGH = (nir.Input, nir.Output, nir.Flatten)
EVALUATED = (*PASS_THROUGH, *LINEAR, *NEURONS, nir.Delay, SpikeProduct)


@dataclass
class GraphRun:
    """Every node's output ``(T, ...)`` and, when recorded, each neuron node's voltage after reset."""

    values: dict[str, torch.Tensor]
    voltages: dict[str, torch.Tensor] = field(default_factory=dict)
    own: dict[str, torch.Tensor] = field(default_factory=dict)  # a forced node's own output (see run_graph)


def topological_order(graph: nir.NIRGraph) -> list[str] | None:
    """Node names, each after all of its sources (ties in the graph's order); None when the graph has a cycle."""
    preds = {n: {a for a, b in graph.edges if b == n} for n in graph.nodes}
    order: list[str] = []
    done: set[str] = set()
    while len(order) < len(preds):
        ready = [n for n, p in preds.items() if n not in done and p <= done]
        if not ready:
            return None
        order += ready
        done.update(ready)
    return order


def _coef(value, dtype: torch.dtype) -> torch.Tensor:
    return torch.as_tensor(np.asarray(value, dtype=np.float64)).to(dtype)


class _Neuron:
    """One neuron node's state for a batch; :meth:`step` advances it by one time step."""

    def __init__(self, name: str, node: nir.NIRNode, dt: float, dtype: torch.dtype) -> None:
        c = coefficients(node, dt)
        self.syn_decay = None if c.syn_decay is None else _coef(c.syn_decay, dtype)
        self.syn_gain = None if c.syn_gain is None else _coef(c.syn_gain, dtype)
        self.decay, self.gain, self.offset = _coef(c.decay, dtype), _coef(c.gain, dtype), _coef(c.offset, dtype)
        self.spiking = isinstance(node, SPIKING)
        if self.spiking:
            self.theta, self.v_reset = _coef(node.v_threshold, dtype), _coef(node.v_reset, dtype)
            self.subtract = reset_mode(name, node) == "subtract"
        self.refractory = self.spiking and refractory_steps(name, node) > 0
        self.max_spikes = max_spikes(name, node) if self.spiking else 1
        self.v: torch.Tensor | None = None
        self.i_syn: torch.Tensor | None = None
        self.fired: torch.Tensor | None = None  # the step before's spikes (refractory nodes)

    def step(self, drive: torch.Tensor) -> torch.Tensor:
        """Output for one step (spikes, or the voltage of LI/I) given the input ``drive``; ``self.v`` after reset."""
        if self.v is None:
            self.v, self.i_syn = torch.zeros_like(drive), torch.zeros_like(drive)
        if self.syn_decay is not None:
            self.i_syn = self.syn_decay * self.i_syn + self.syn_gain * drive
            drive = self.i_syn
        v = self.decay * self.v + self.gain * drive + self.offset
        if not self.spiking:
            self.v = v
            return v
        if self.max_spikes > 1:
            s, after = spike_count(v, self.theta, self.max_spikes)
        else:
            fire = v > self.theta
            s = fire.to(v.dtype)
            after = torch.where(fire, v - self.theta, v) if self.subtract \
                else torch.where(fire, self.v_reset.expand_as(v), v)
        if self.refractory and self.fired is not None:  # held for the step after a spike: v kept, no spike
            after, s = torch.where(self.fired, self.v, after), torch.where(self.fired, 0.0, s)
        self.v, self.fired = after, s > 0
        return s


def _neuron(name: str, node: nir.NIRNode, dt: float, current: torch.Tensor, record: bool
            ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Output ``(T, ...)`` (spikes, or voltage for LI/I) of a neuron node driven by ``current``, and its voltages."""
    state = _Neuron(name, node, dt, current.dtype)
    outputs, volts = [], []
    for drive in current:
        outputs.append(state.step(drive))
        if record:
            volts.append(state.v)
    return torch.stack(outputs), (torch.stack(volts) if record else None)


def _linear(node: nir.NIRNode, x: torch.Tensor) -> torch.Tensor:
    t = lambda a: _coef(a, x.dtype)  # noqa: E731
    if isinstance(node, nir.Affine) and sp.issparse(node.weight):  # a composed bundle's replicated token part
        w = sp.csr_matrix(node.weight)
        y = torch.from_numpy(np.ascontiguousarray((w @ x.reshape(-1, x.shape[-1]).numpy().T).T)).to(x.dtype)
        return y.reshape(*x.shape[:-1], w.shape[0]) + t(node.bias)
    if isinstance(node, nir.Affine):
        return F.linear(x, t(node.weight), t(node.bias))
    if isinstance(node, nir.Scale):
        return x * t(node.scale)
    ints = lambda v: tuple(int(i) for i in np.atleast_1d(v))  # noqa: E731
    in_shape = (getattr(node, "input_type", None) or {}).get("input")
    in_shape = tuple(int(d) for d in in_shape) if in_shape is not None else None
    spatial = 1 if isinstance(node, nir.Conv1d) else 2
    flat = in_shape is not None and x.shape[-1] == int(np.prod(in_shape)) \
        and tuple(x.shape[-len(in_shape):]) != in_shape
    if flat:  # a canonical flat signal: to (C, H, W) and back
        x = x.reshape(*x.shape[:-1], *in_shape)
    lead = x.shape[:-(spatial + 1)]
    x = x.reshape(-1, *x.shape[-(spatial + 1):])
    if isinstance(node, (nir.Conv1d, nir.Conv2d)):
        conv = F.conv1d if spatial == 1 else F.conv2d
        padding = node.padding if isinstance(node.padding, str) else ints(node.padding)
        y = conv(x, t(node.weight), t(node.bias), ints(node.stride), padding, ints(node.dilation), int(node.groups))
    elif isinstance(node, nir.AvgPool2d):
        y = F.avg_pool2d(x, ints(node.kernel_size), ints(node.stride), ints(node.padding), count_include_pad=True)
    else:  # SumPool2d: a depthwise convolution with ones, exact on spike counts
        kernel = ints(node.kernel_size)
        ones = torch.ones(x.shape[1], 1, *kernel, dtype=x.dtype)
        y = F.conv2d(x, ones, None, ints(node.stride), ints(node.padding), 1, x.shape[1])
    y = y.reshape(*lead, *y.shape[1:])
    return y.reshape(*lead, -1) if flat else y


def _delay(name: str, node: nir.Delay, x: torch.Tensor, dt: float) -> torch.Tensor:
    """``y[t] = x[t - k]`` per element over the time axis (0), zero before the signal arrives."""
    k = np.broadcast_to(delay_steps(name, node, dt), x.shape[-1:])
    out = torch.zeros_like(x)
    for d in np.unique(k):
        cols = torch.from_numpy(np.flatnonzero(k == d))
        if d < x.shape[0]:
            out[d:, ..., cols] = x[:x.shape[0] - d, ..., cols]
    return out


def run_graph(graph: nir.NIRGraph, inputs: dict[str, torch.Tensor], dt: float, *,
              dtype: torch.dtype = torch.float64, record: bool = False,
              forced: dict[str, torch.Tensor] | None = None) -> GraphRun:
    """Run ``graph`` on time-first inputs ``(T, ...)`` (one per Input node name); see the module docstring.

    ``forced`` (neuron node -> output ``(T, ...)``) replaces those nodes' outputs downstream (and on their
    back edges) while each still runs on its own: its own output is kept in ``GraphRun.own``. Forcing every
    neuron layer with a chip's spikes runs each layer of the float graph on the chip's inputs to it.
    """
    forced = {name: torch.as_tensor(x).to(dtype) for name, x in (forced or {}).items()}
    unforceable = sorted(n for n in forced if not isinstance(graph.nodes.get(n), NEURONS))
    if unforceable:
        raise GraphError(f"only neuron nodes can be forced, not {unforceable}", field="forced")
    unknown = [f"'{n}' ({type(node).__name__})" for n, node in graph.nodes.items() if not isinstance(node, EVALUATED)]
    if unknown:
        raise GraphError(f"the float interpreter cannot run node(s) {', '.join(unknown)}; "
                         f"run normalize first (Linear becomes Affine)", field="nodes")
    missing = [n for n, node in graph.nodes.items() if isinstance(node, nir.Input) and n not in inputs]
    if missing:
        raise InputError(f"the graph needs inputs {missing}")
    order = topological_order(graph)
    if order is None:
        return _run_steps(graph, inputs, dt, dtype, record, forced)
    run = GraphRun({})
    for name in order:
        node = graph.nodes[name]
        if isinstance(node, SpikeProduct):
            run.values[name] = node(*(run.values[s] for s in node.inputs))
            continue
        if isinstance(node, nir.Input):
            x = torch.as_tensor(inputs[name]).to(dtype)
        else:
            preds = [run.values[a] for a, b in graph.edges if b == name]
            if not preds:
                raise GraphError("node has no input edge", node=name)
            x = preds[0] if len(preds) == 1 else torch.stack(preds).sum(0)
        if isinstance(node, LINEAR):
            run.values[name] = _linear(node, x)
        elif isinstance(node, nir.Delay):
            run.values[name] = _delay(name, node, x, dt)
        elif isinstance(node, NEURONS):
            run.values[name], v = _neuron(name, node, dt, x, record)
            if v is not None:
                run.voltages[name] = v
            if name in forced:
                run.own[name], run.values[name] = run.values[name], forced[name]
        else:
            run.values[name] = x
    return run


def _run_steps(graph: nir.NIRGraph, inputs: dict[str, torch.Tensor], dt: float, dtype: torch.dtype,
               record: bool, forced: dict[str, torch.Tensor]) -> GraphRun:
    """Step-major run of a graph with back edges, nodes in the graph's (canonical) order."""
    back = back_edges(graph)
    if any(isinstance(node, SpikeProduct) for node in graph.nodes.values()):
        raise GraphError("a graph with a SpikeProduct runs feed-forward only; this one has a cycle", field="edges")
    loose = sorted(f"{a} -> {b}" for a, b in back if not isinstance(graph.nodes[a], NEURONS))
    if loose:
        raise GraphError(f"the graph has a cycle, and edge(s) {', '.join(loose)} point backwards from a node that is "
                         f"not a neuron; run normalize first (it orders recurrent graphs)", field="edges")
    preds = {name: [a for a, b in graph.edges if b == name] for name in graph.nodes}
    feeds = {name: [a for a in preds[name] if (a, name) not in back] for name in graph.nodes}
    xs = {name: torch.as_tensor(x).to(dtype) for name, x in inputs.items()}
    steps = next(iter(xs.values())).shape[0]
    neurons = {name: _Neuron(name, node, dt, dtype) for name, node in graph.nodes.items() if isinstance(node, NEURONS)}
    history: dict[str, list[torch.Tensor]] = {n: [] for n, node in graph.nodes.items() if isinstance(node, nir.Delay)}
    outputs: dict[str, list[torch.Tensor]] = {name: [] for name in graph.nodes}
    volts: dict[str, list[torch.Tensor]] = {name: [] for name in neurons}
    own: dict[str, list[torch.Tensor]] = {name: [] for name in forced}
    for t in range(steps):
        now: dict[str, torch.Tensor] = {}
        for name, node in graph.nodes.items():
            if isinstance(node, nir.Input):
                now[name] = xs[name][t]
                continue
            parts = [now[a] for a in feeds[name]]
            parts += [outputs[a][t - 1] for a in preds[name] if (a, name) in back and t > 0]
            if not parts:  # only back edges, at the first step: they carry zeros
                parts = [torch.zeros(*next(iter(xs.values())).shape[1:-1], _width(graph.nodes[a]), dtype=dtype)
                         for a in preds[name]]
            x = parts[0] if len(parts) == 1 else torch.stack(parts).sum(0)
            if isinstance(node, LINEAR):
                now[name] = _linear(node, x)
            elif isinstance(node, nir.Delay):
                history[name].append(x)
                now[name] = _delay(name, node, torch.stack(history[name]), dt)[-1]
            elif name in neurons:
                now[name] = neurons[name].step(x)
                if record:
                    volts[name].append(neurons[name].v)
                if name in forced:
                    own[name].append(now[name])
                    now[name] = forced[name][t]
            else:
                now[name] = x
        for name, value in now.items():
            outputs[name].append(value)
    run = GraphRun({name: torch.stack(values) for name, values in outputs.items()})
    run.voltages = {name: torch.stack(v) for name, v in volts.items() if v}
    run.own = {name: torch.stack(values) for name, values in own.items()}
    return run


def _width(node: nir.NIRNode) -> int:
    """Output size of a neuron node (the source of every back edge in a canonical graph)."""
    return int(np.size(node.r))


def simulate(graph: nir.NIRGraph, inputs: np.ndarray, *, record: bool = True,
             forced: dict[str, np.ndarray] | None = None) -> Traces:
    """The ``float`` backend: a canonical graph on ``inputs`` ``(B, T, n_in)``, in float64.

    Several Input nodes take consecutive slices of the last axis, in graph order.
    ``scores`` are what feeds the Output nodes (concatenated in graph order): spike
    counts over all steps for a spiking node (a ``max_spikes`` node's counts summed), otherwise
    the value at the last step (an ``I``/``LI`` readout's voltage). With ``record=False`` spikes and voltages stay empty.
    ``forced`` (layer -> spikes ``(B, T, n)``, e.g. a chip backend's) feeds every layer downstream of a
    forced one those spikes instead of its float output (backend ``float (layer by layer)``): each
    layer's recorded spikes are then what the float layer does with the chip's inputs.
    """
    nodes = graph.nodes
    dt = float(graph.metadata["dt"])
    input_names = [n for n, node in nodes.items() if isinstance(node, nir.Input)]
    widths = [int(nodes[n].input_type["input"][0]) for n in input_names]
    x = np.asarray(inputs)
    if x.ndim != 3 or x.shape[2] != sum(widths) or 0 in x.shape[:2]:
        raise InputError(f"inputs must have shape (batch >= 1, steps >= 1, {sum(widths)}), got {x.shape}")
    batch, steps = x.shape[:2]
    bounds = np.cumsum([0, *widths])
    slices = {n: x[:, :, bounds[i]:bounds[i + 1]] for i, n in enumerate(input_names)}
    time_first = lambda a: torch.from_numpy(np.ascontiguousarray(np.asarray(a).transpose(1, 0, 2),  # noqa: E731
                                                                 dtype=np.float64))
    run = run_graph(graph, {n: time_first(s) for n, s in slices.items()}, dt, record=record,
                    forced={n: time_first(s) for n, s in (forced or {}).items()})
    to_numpy = lambda t: t.permute(1, 0, 2).numpy()  # noqa: E731  (T, B, n) -> (B, T, n)
    own = {**run.values, **run.own}
    spiking = [n for n, node in nodes.items() if isinstance(node, SPIKING)]
    spikes = {n: to_numpy(own[n]).astype(np.uint8) for n in spiking} if record else {}
    voltages = {n: to_numpy(v) for n, v in run.voltages.items()}
    preds: dict[str, list[str]] = {name: [] for name in nodes}
    for a, b in graph.edges:
        preds[b].append(a)
    outputs = [n for n, node in nodes.items() if isinstance(node, nir.Output)]
    scores = np.concatenate([_score(n, nodes, preds, own) for n in outputs], axis=1)
    return Traces(backend="float (layer by layer)" if forced else "float",
                  inputs={n: s.copy() for n, s in slices.items()}, spikes=spikes,
                  voltages=voltages, scores=scores, meta={"dt": dt, "steps": steps})


def _score(name: str, nodes: dict, preds: dict[str, list[str]], values: dict[str, torch.Tensor]) -> np.ndarray:
    """What feeds node ``name``, looking through Flatten: spike counts or last values ``(B, n)``."""
    parts = []
    for p in preds[name]:
        if isinstance(nodes[p], SPIKING):
            parts.append(values[p].sum(0).numpy())
        elif isinstance(nodes[p], nir.Flatten):
            parts.append(_score(p, nodes, preds, values))
        else:
            parts.append(values[p][-1].numpy())
    return sum(parts)
