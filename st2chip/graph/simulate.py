r"""The one float interpreter of NIR graphs: the reference meaning every chip backend is compared with.

:func:`run_graph` evaluates a graph node by node in topological order, each node
over the whole time sequence ``(T, ...)`` at once (linear nodes in one call,
neurons step by step); that is exact for graphs without cycles and delays,
which is what normalize accepts today. A node's inputs add up. State is zero at
the start of every sample. With ``dt = graph.metadata["dt"]`` (forward Euler),
per step:

- ``Affine``: :math:`y = W x + b` over the last axis; ``Scale``: :math:`y = s \odot x`; ``Conv2d``: 2-D
  convolution with bias of ``(C, H, W)`` maps; ``Flatten``, ``Input``,
  ``Output``: identity (canonical signals are flat already).
- ``LIF``: :math:`v \leftarrow (1 - \tfrac{dt}{\tau}) v + \tfrac{dt}{\tau}(v_{leak} + r I)`,
  :math:`s = [v > v_{threshold}]`, :math:`v \leftarrow v_{reset}` where :math:`s`.
  With :math:`\tau = dt/(1-\beta)`, :math:`r = 1/(1-\beta)`, :math:`v_{leak} = 0`
  this is sLIF's :math:`v \leftarrow \beta v + I`.
- ``CubaLIF``: :math:`i \leftarrow (1 - \tfrac{dt}{\tau_{syn}}) i + \tfrac{dt}{\tau_{syn}} w_{in} I`, then
  :math:`v \leftarrow (1 - \tfrac{dt}{\tau_{mem}}) v + \tfrac{dt}{\tau_{mem}}(v_{leak} + r i)`; spike and reset as LIF.
- ``IF``: :math:`v \leftarrow v + dt\, r I` (NIR's :math:`\dot v = R I`); spike and reset as LIF.
- ``LI``: as LIF without spikes; ``I``: :math:`v \leftarrow v + dt\, r I`. Both output their voltage.
- ``Delay``: :math:`y[t] = x[t - \tau/dt]` per element (whole steps), zero before the signal arrives.

The coefficients (:math:`1 - dt/\tau`, :math:`dt\,r/\tau`, ...) are computed in
float64 and the run happens in the dtype asked for: float64 for
:func:`simulate` (the ``float`` backend), float32 where a bundle must reproduce
a float32 torch model bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import nir
import numpy as np
import torch
import torch.nn.functional as F

from st2chip.errors import GraphError, InputError
from st2chip.traces import Traces

SPIKING = (nir.LIF, nir.CubaLIF, nir.IF)
NEURONS = (*SPIKING, nir.LI, nir.I)
LINEAR = (nir.Affine, nir.Scale, nir.Conv2d)
PASS_THROUGH = (nir.Input, nir.Output, nir.Flatten)
EVALUATED = (*PASS_THROUGH, *LINEAR, *NEURONS, nir.Delay)


@dataclass
class GraphRun:
    """Every node's output ``(T, ...)`` and, when recorded, each neuron node's voltage after reset."""

    values: dict[str, torch.Tensor]
    voltages: dict[str, torch.Tensor] = field(default_factory=dict)


def topological_order(graph: nir.NIRGraph) -> list[str]:
    """Node names, each after all of its sources (ties in the graph's order); a cycle is a GraphError."""
    preds = {n: {a for a, b in graph.edges if b == n} for n in graph.nodes}
    order: list[str] = []
    done: set[str] = set()
    while len(order) < len(preds):
        ready = [n for n, p in preds.items() if n not in done and p <= done]
        if not ready:
            stuck = ", ".join(n for n in preds if n not in done)
            raise GraphError(f"the graph has a cycle through {stuck}; the float interpreter runs feed-forward "
                             f"graphs only", field="edges")
        order += ready
        done.update(ready)
    return order


def _coef(value, dtype: torch.dtype) -> torch.Tensor:
    return torch.as_tensor(np.asarray(value, dtype=np.float64)).to(dtype)


def _neuron(node: nir.NIRNode, dt: float, current: torch.Tensor, record: bool
            ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Output ``(T, ...)`` (spikes, or voltage for LI/I) of a neuron node driven by ``current``, and its voltages."""
    f64 = lambda a: np.asarray(a, dtype=np.float64)  # noqa: E731
    dtype = current.dtype
    syn_decay = syn_gain = None
    if isinstance(node, (nir.LIF, nir.LI)):
        g = dt / f64(node.tau)
        decay, gain, offset = 1 - g, g * f64(node.r), g * f64(node.v_leak)
    elif isinstance(node, nir.CubaLIF):
        g_syn, g_mem = dt / f64(node.tau_syn), dt / f64(node.tau_mem)
        syn_decay, syn_gain = _coef(1 - g_syn, dtype), _coef(g_syn * f64(node.w_in), dtype)
        decay, gain, offset = 1 - g_mem, g_mem * f64(node.r), g_mem * f64(node.v_leak)
    else:  # IF, I
        decay, gain, offset = np.ones_like(f64(node.r)), dt * f64(node.r), np.zeros_like(f64(node.r))
    decay, gain, offset = _coef(decay, dtype), _coef(gain, dtype), _coef(offset, dtype)
    spiking = isinstance(node, SPIKING)
    if spiking:
        theta, v_reset = _coef(node.v_threshold, dtype), _coef(node.v_reset, dtype)
    v = torch.zeros_like(current[0])
    i_syn = torch.zeros_like(current[0])
    outputs, volts = [], []
    for drive in current:
        if syn_decay is not None:
            i_syn = syn_decay * i_syn + syn_gain * drive
            drive = i_syn
        v = decay * v + gain * drive + offset
        if spiking:
            s = v > theta
            v = torch.where(s, v_reset.expand_as(v), v)
            outputs.append(s.to(dtype))
        else:
            outputs.append(v)
        if record:
            volts.append(v)
    return torch.stack(outputs), (torch.stack(volts) if record else None)


def _linear(node: nir.NIRNode, x: torch.Tensor) -> torch.Tensor:
    t = lambda a: _coef(a, x.dtype)  # noqa: E731
    if isinstance(node, nir.Affine):
        return F.linear(x, t(node.weight), t(node.bias))
    if isinstance(node, nir.Scale):
        return x * t(node.scale)
    lead = x.shape[:-3]  # Conv2d over (..., C, H, W)
    padding = node.padding if isinstance(node.padding, str) else tuple(int(p) for p in np.atleast_1d(node.padding))
    y = F.conv2d(x.reshape(-1, *x.shape[-3:]), t(node.weight), t(node.bias),
                 tuple(int(s) for s in np.atleast_1d(node.stride)), padding,
                 tuple(int(d) for d in np.atleast_1d(node.dilation)), int(node.groups))
    return y.reshape(*lead, *y.shape[1:])


def delay_steps(name: str, node: nir.Delay, dt: float) -> np.ndarray:
    """A Delay node's per-element delays in whole steps; a delay that is not a multiple of dt is an error."""
    steps = np.asarray(node.delay, dtype=np.float64).reshape(-1) / dt
    whole = np.rint(steps)
    if np.any(np.abs(steps - whole) > 1e-6):
        raise GraphError(f"delays must be whole multiples of dt = {dt:g} s, got {np.asarray(node.delay).ravel()[:4]}",
                         node=name, field="delay")
    return whole.astype(np.int64)


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
              dtype: torch.dtype = torch.float64, record: bool = False) -> GraphRun:
    """Run ``graph`` on time-first inputs ``(T, ...)`` (one per Input node name); see the module docstring."""
    unknown = [f"'{n}' ({type(node).__name__})" for n, node in graph.nodes.items() if not isinstance(node, EVALUATED)]
    if unknown:
        raise GraphError(f"the float interpreter cannot run node(s) {', '.join(unknown)}; "
                         f"run normalize first (Linear becomes Affine)", field="nodes")
    missing = [n for n, node in graph.nodes.items() if isinstance(node, nir.Input) and n not in inputs]
    if missing:
        raise InputError(f"the graph needs inputs {missing}")
    run = GraphRun({})
    for name in topological_order(graph):
        node = graph.nodes[name]
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
            run.values[name], v = _neuron(node, dt, x, record)
            if v is not None:
                run.voltages[name] = v
        else:
            run.values[name] = x
    return run


def simulate(graph: nir.NIRGraph, inputs: np.ndarray, *, record: bool = True) -> Traces:
    """The ``float`` backend: a canonical graph on ``inputs`` ``(B, T, n_in)``, in float64.

    Several Input nodes take consecutive slices of the last axis, in graph order.
    ``scores`` are what feeds the Output nodes (concatenated in graph order): spike
    counts over all steps for a spiking node, otherwise the value at the last step
    (an ``I``/``LI`` readout's voltage). With ``record=False`` spikes and voltages stay empty.
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
    run = run_graph(graph, {n: torch.from_numpy(np.ascontiguousarray(s.transpose(1, 0, 2), dtype=np.float64))
                            for n, s in slices.items()}, dt, record=record)
    to_numpy = lambda t: t.permute(1, 0, 2).numpy()  # noqa: E731  (T, B, n) -> (B, T, n)
    spiking = [n for n, node in nodes.items() if isinstance(node, SPIKING)]
    spikes = {n: to_numpy(run.values[n]).astype(np.uint8) for n in spiking} if record else {}
    voltages = {n: to_numpy(v) for n, v in run.voltages.items()}
    preds: dict[str, list[str]] = {name: [] for name in nodes}
    for a, b in graph.edges:
        preds[b].append(a)
    outputs = [n for n, node in nodes.items() if isinstance(node, nir.Output)]
    scores = np.concatenate([_score(n, nodes, preds, run.values) for n in outputs], axis=1)
    return Traces(backend="float", inputs={n: s.copy() for n, s in slices.items()}, spikes=spikes,
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
