r"""A canonical NIR graph as a differentiable torch module: the float interpreter, trainable.

:class:`GraphModule` computes in its forward pass exactly what
:func:`st2chip.graph.simulate.simulate` computes (the same coefficients, the same
operations in the same order, the same discrete-time reading of
:mod:`st2chip.graph.reading`): run in float64 it reproduces ``simulate`` spike for
spike. Spikes are Heaviside forward (strict :math:`v > \theta`) and the arctan
surrogate backward (:func:`~st2chip.learn.neurons.spike_fn`) of
:math:`(v - \theta)/|\theta|`; the reset is taken out of the gradient. A node with
``metadata["max_spikes"] = k > 1`` outputs a count (:func:`~st2chip.learn.neurons.count_fn`: forward
:func:`~st2chip.learn.neurons.spike_count`, simulate's own function) whose gradient is the sum of the surrogate's at
:math:`(v - j\theta)/|\theta|` for :math:`j = 1..k`: a staircase of :math:`k` spike functions.

What it trains: each ``Affine`` and convolution node's ``weight`` and ``bias``, and
each leaky neuron's decays — its voltage decay :math:`\beta = 1 - dt/\tau` (``LIF``,
``LI``, the membrane of ``CubaLIF``/``CubaLI``) and its current decay
:math:`\beta_u = 1 - dt/\tau_{syn}` (``CubaLIF``/``CubaLI``) — as plain values. A
neuron's input gains (:math:`dt\,r/\tau`, :math:`dt\,w_{in}/\tau_{syn}`) and leak
offset (:math:`dt\,v_{leak}/\tau`) stay fixed while a decay moves: the gains are
redundant with the weights. :meth:`GraphModule.to_nir` writes the graph back with
the trained values, solving :math:`\tau`, :math:`r`, :math:`w_{in}`, :math:`v_{leak}`
from them.

Scores are :func:`~st2chip.graph.simulate.simulate`'s: per Output node, spike counts
of a spiking source, else its value at the last step. Composed bundles (sparse
token weights, spike products) are not covered.
"""

from __future__ import annotations

import copy

import nir
import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from st2chip.errors import GraphError, InputError
from st2chip.graph.reading import (NEURONS, SPIKING, back_edges, coefficients, delay_steps, max_spikes,
                                   refractory_steps, reset_mode)
from st2chip.graph.simulate import LINEAR, PASS_THROUGH, topological_order
from st2chip.learn.neurons import count_fn, spike_fn

LEAKY = (nir.LIF, nir.LI, nir.CubaLIF, nir.CubaLI)  # neuron types with a voltage decay that trains
CURRENT = (nir.CubaLIF, nir.CubaLI)                  # ... and a current decay


def _f64(value) -> torch.Tensor:
    return torch.as_tensor(np.asarray(value, dtype=np.float64))


def _ints(value) -> tuple[int, ...]:
    return tuple(int(i) for i in np.atleast_1d(value))


class AffineNode(nn.Module):
    """``y = W x + b`` over the last axis."""

    def __init__(self, node: nir.Affine) -> None:
        super().__init__()
        self.weight = nn.Parameter(_f64(node.weight))
        self.bias = nn.Parameter(_f64(node.bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class ScaleNode(nn.Module):
    """``y = s * x`` (``s`` fixed)."""

    def __init__(self, node: nir.Scale) -> None:
        super().__init__()
        self.register_buffer("scale", _f64(node.scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class MapNode(nn.Module):
    """A convolution (``weight``, ``bias`` trained) or pooling node on flat or shaped signals, as simulate reads it."""

    def __init__(self, node: nir.NIRNode) -> None:
        super().__init__()
        self.kind = type(node)
        shape = (getattr(node, "input_type", None) or {}).get("input")
        self.in_shape = tuple(int(d) for d in shape) if shape is not None else None
        self.spatial = 1 if isinstance(node, nir.Conv1d) else 2
        if isinstance(node, (nir.Conv1d, nir.Conv2d)):
            self.weight = nn.Parameter(_f64(node.weight))
            self.bias = nn.Parameter(_f64(node.bias))
            self.padding = node.padding if isinstance(node.padding, str) else _ints(node.padding)
            self.stride, self.dilation, self.groups = _ints(node.stride), _ints(node.dilation), int(node.groups)
        else:
            self.kernel, self.stride, self.padding = _ints(node.kernel_size), _ints(node.stride), _ints(node.padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = self.in_shape
        flat = shape is not None and x.shape[-1] == int(np.prod(shape)) and tuple(x.shape[-len(shape):]) != shape
        if flat:  # a canonical flat signal: to (C, H, W) and back
            x = x.reshape(*x.shape[:-1], *shape)
        lead = x.shape[:-(self.spatial + 1)]
        x = x.reshape(-1, *x.shape[-(self.spatial + 1):])
        if self.kind in (nir.Conv1d, nir.Conv2d):
            conv = F.conv1d if self.spatial == 1 else F.conv2d
            y = conv(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        elif self.kind is nir.AvgPool2d:
            y = F.avg_pool2d(x, self.kernel, self.stride, self.padding, count_include_pad=True)
        else:  # SumPool2d: a depthwise convolution with ones
            ones = torch.ones(x.shape[1], 1, *self.kernel, dtype=x.dtype, device=x.device)
            y = F.conv2d(x, ones, None, self.stride, self.padding, 1, x.shape[1])
        y = y.reshape(*lead, *y.shape[1:])
        return y.reshape(*lead, -1) if flat else y


class DelayNode(nn.Module):
    """``y[t] = x[t - k]`` per element (whole steps), zero before the signal arrives."""

    def __init__(self, name: str, node: nir.Delay, dt: float) -> None:
        super().__init__()
        self.register_buffer("steps", torch.as_tensor(delay_steps(name, node, dt)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Over a whole sequence ``(T, ...)``; a step-major run passes the history so far and keeps ``[-1]``."""
        k = self.steps.expand(x.shape[-1:])
        out = torch.zeros_like(x)
        for d in torch.unique(k).tolist():
            cols = torch.nonzero(k == d).reshape(-1)
            if d < x.shape[0]:
                out[d:, ..., cols] = x[:x.shape[0] - d, ..., cols]
        return out


class NeuronNode(nn.Module):
    """One neuron node: decays (trained where the type leaks), fixed gains, offset, threshold and reset.

    Per step: :math:`i \\leftarrow \\beta_u i + g_u x` (CubaLIF/CubaLI), then
    :math:`v \\leftarrow \\beta v + g\\,x + o`; a spiking node fires where :math:`v > \\theta` and resets
    to ``v_reset`` (or subtracts :math:`\\theta`); with ``metadata["refractory"] = 1`` it keeps that ``v`` and
    stays silent for the step after a spike; with ``metadata["max_spikes"] = k > 1`` it sends up to ``k``
    spikes per step, subtracting :math:`\\theta` for each. LI/I/CubaLI output their voltage.
    """

    def __init__(self, name: str, node: nir.NIRNode, dt: float, alpha: float) -> None:
        super().__init__()
        self.kind, self.alpha = type(node), alpha
        self.cuba = isinstance(node, CURRENT)
        c = coefficients(node, dt)  # the float interpreter's step: the same numbers
        if self.cuba:
            self.syn_decay = nn.Parameter(_f64(c.syn_decay))
            self.register_buffer("syn_gain", _f64(c.syn_gain))
        if isinstance(node, LEAKY):
            self.decay = nn.Parameter(_f64(c.decay))
        else:  # IF, I: no leak, nothing to train
            self.register_buffer("decay", _f64(c.decay))
        self.register_buffer("gain", _f64(c.gain))
        self.register_buffer("offset", _f64(c.offset))
        self.spiking = isinstance(node, SPIKING)
        self.subtract = self.spiking and reset_mode(name, node) == "subtract"
        self.refractory = self.spiking and refractory_steps(name, node) > 0
        self.max_spikes = max_spikes(name, node) if self.spiking else 1
        if self.spiking:
            theta = np.asarray(node.v_threshold, dtype=np.float64)
            self.register_buffer("theta", _f64(theta))
            self.register_buffer("v_reset", _f64(node.v_reset))
            self.register_buffer("surrogate_scale", _f64(np.where(theta != 0, np.abs(theta), 1.0)))

    def step(self, drive: torch.Tensor, v: torch.Tensor | None, i: torch.Tensor | None,
             held: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Output for one step (spikes, or the voltage) given ``drive``; the new voltage (after reset), current and
        ``held`` (a refractory node's spikes of this step, which hold it at the next; None otherwise)."""
        if v is None:
            v, i = torch.zeros_like(drive), torch.zeros_like(drive)
        v_before = v
        if self.cuba:
            i = self.syn_decay * i + self.syn_gain * drive
            drive = i
        v = self.decay * v + self.gain * drive + self.offset
        if not self.spiking:
            return v, v, i, None
        if self.max_spikes > 1:
            return self._step_count(v, v_before, i, held)
        s = spike_fn((v - self.theta) / self.surrogate_scale, self.alpha)
        if held is not None:  # the step after a spike: v kept, no spike
            v, s = torch.where(held, v_before, v), s * (~held)
        fired = s.detach() > 0
        v = torch.where(fired, v - self.theta, v) if self.subtract else torch.where(fired, self.v_reset.expand_as(v), v)
        return s, v, i, (fired if self.refractory else None)

    def _step_count(self, v: torch.Tensor, v_before: torch.Tensor, i: torch.Tensor, held: torch.Tensor | None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """:meth:`step`'s spikes and reset for a node sending up to ``max_spikes`` per step: the count, ``v`` after
        the subtractions (simulate's values; the gradient passes ``v`` through them unchanged)."""
        s, after = count_fn(v, self.theta, self.max_spikes, self.alpha, self.surrogate_scale)
        v = after + (v - v.detach())
        if held is not None:  # the step after a spike: v kept, no spike
            v, s = torch.where(held, v_before, v), s * (~held)
        return s, v, i, ((s.detach() > 0) if self.refractory else None)

    def forward(self, current: torch.Tensor) -> torch.Tensor:
        """Outputs ``(T, ...)`` for input currents ``(T, ...)``, state zero at the start."""
        v = i = held = None
        outputs = []
        for drive in current:
            out, v, i, held = self.step(drive, v, i, held)
            outputs.append(out)
        return torch.stack(outputs)


def _node_module(name: str, node: nir.NIRNode, dt: float, alpha: float) -> nn.Module:
    if isinstance(node, nir.Affine):
        if sp.issparse(node.weight):
            raise GraphError("a sparse (composed bundle) Affine is not trained; use a plain .nir graph", node=name)
        return AffineNode(node)
    if isinstance(node, nir.Scale):
        return ScaleNode(node)
    if isinstance(node, LINEAR):
        return MapNode(node)
    if isinstance(node, nir.Delay):
        return DelayNode(name, node, dt)
    if isinstance(node, NEURONS):
        return NeuronNode(name, node, dt, alpha)
    if isinstance(node, PASS_THROUGH):
        return nn.Identity()
    raise GraphError(f"the trainable interpreter cannot run node type {type(node).__name__} (it runs Affine, Scale, "
                     f"convolutions, pooling, Delay, Flatten and LIF, CubaLIF, IF, LI, CubaLI, I neurons)", node=name)


class GraphModule(nn.Module):
    """A canonical NIR graph (:func:`st2chip.load`'s output) as a trainable torch module (see the module docstring).

    ``forward(x)`` takes time-first inputs ``(T, B, n)`` (the Input nodes' values side by side, in graph order,
    as :func:`~st2chip.graph.simulate.simulate` splits them) and returns the scores ``(B, classes)`` divided by
    ``temperature`` (1 unless set: the logits a loss sees; predictions are the same);
    :meth:`encode` turns ``(B, T, n)`` spikes into that. :meth:`run` gives every node's output, :meth:`scores`
    the scores as simulate gives them.
    """

    def __init__(self, graph: nir.NIRGraph, *, alpha: float = 2.0, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.graph = copy.deepcopy(graph)
        self.dt = float(graph.metadata["dt"])
        self.names = list(graph.nodes)
        self.layers = nn.ModuleList([_node_module(n, node, self.dt, alpha) for n, node in graph.nodes.items()])
        self.index = {name: k for k, name in enumerate(self.names)}
        self.preds = {name: [a for a, b in graph.edges if b == name] for name in self.names}
        self.back = back_edges(graph)
        self.order = topological_order(graph)
        self.inputs = [n for n, node in graph.nodes.items() if isinstance(node, nir.Input)]
        self.widths = [int(np.prod(graph.nodes[n].input_type["input"])) for n in self.inputs]
        self.outputs = [n for n, node in graph.nodes.items() if isinstance(node, nir.Output)]
        self.temperature = 1.0
        if self.order is None:
            loose = sorted(f"{a} -> {b}" for a, b in self.back if not isinstance(graph.nodes[a], NEURONS))
            if loose:
                raise GraphError(f"edge(s) {', '.join(loose)} point backwards from a node that is not a neuron; "
                                 f"load the graph with st2chip.load (it orders recurrent graphs)", field="edges")
        self.to(dtype)

    def module(self, name: str) -> nn.Module:
        """The submodule of node ``name``."""
        return self.layers[self.index[name]]

    def neurons(self) -> dict[str, NeuronNode]:
        """Neuron node name -> its module, in graph order."""
        return {n: m for n, m in zip(self.names, self.layers) if isinstance(m, NeuronNode)}

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Spikes ``(B, T, n)`` -> time-first float inputs ``(T, B, n)`` in the module's dtype."""
        return torch.as_tensor(x).to(self._dtype()).transpose(0, 1)

    def _dtype(self) -> torch.dtype:
        return next(t.dtype for t in (*self.parameters(), *self.buffers()) if t.is_floating_point())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scores(self.run(x)) / self.temperature

    def run(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every node's output ``(T, B, ...)`` for time-first inputs ``(T, B, n)``."""
        if x.dim() != 3 or x.shape[-1] != sum(self.widths):
            raise InputError(f"inputs must have shape (steps, batch, {sum(self.widths)}), got {tuple(x.shape)}")
        bounds = np.cumsum([0, *self.widths])
        xs = {n: x[..., bounds[k]:bounds[k + 1]] for k, n in enumerate(self.inputs)}
        return self._run_nodes(xs) if self.order is not None else self._run_steps(xs)

    def _run_nodes(self, xs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Node by node over the whole sequence (a graph without back edges)."""
        values: dict[str, torch.Tensor] = {}
        for name in self.order:
            if name in xs:
                values[name] = xs[name]
                continue
            preds = [values[a] for a in self.preds[name]]
            if not preds:
                raise GraphError("node has no input edge", node=name)
            x = preds[0] if len(preds) == 1 else torch.stack(preds).sum(0)
            values[name] = self.module(name)(x)
        return values

    def _run_steps(self, xs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Step by step, every node once per step in graph order; a back edge carries the step before."""
        first = next(iter(xs.values()))
        feeds = {n: [a for a in self.preds[n] if (a, n) not in self.back] for n in self.names}
        state: dict[str, tuple[torch.Tensor | None, ...]] = {}
        history: dict[str, list[torch.Tensor]] = {}
        outputs: dict[str, list[torch.Tensor]] = {n: [] for n in self.names}
        for t in range(first.shape[0]):
            now: dict[str, torch.Tensor] = {}
            for name, module in zip(self.names, self.layers):
                if name in xs:
                    now[name] = xs[name][t]
                    continue
                parts = [now[a] for a in feeds[name]]
                parts += [outputs[a][t - 1] for a in self.preds[name] if (a, name) in self.back and t > 0]
                if not parts:  # only back edges, at the first step: they carry zeros
                    parts = [first.new_zeros(*first.shape[1:-1], self._width(a)) for a in self.preds[name]]
                x = parts[0] if len(parts) == 1 else torch.stack(parts).sum(0)
                if isinstance(module, NeuronNode):
                    now[name], *state[name] = module.step(x, *state.get(name, (None, None, None)))
                elif isinstance(module, DelayNode):
                    history.setdefault(name, []).append(x)
                    now[name] = module(torch.stack(history[name]))[-1]
                elif isinstance(module, nn.Identity):
                    now[name] = x
                else:
                    now[name] = module(x)
            for name, value in now.items():
                outputs[name].append(value)
        return {name: torch.stack(values) for name, values in outputs.items()}

    def _width(self, name: str) -> int:
        return int(self.module(name).gain.numel())

    def scores(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """What feeds the Output nodes, concatenated: spike counts of a spiking source, else its last value."""
        return torch.cat([self._score(n, values) for n in self.outputs], dim=1)

    def _score(self, name: str, values: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = []
        for p in self.preds[name]:
            node = self.graph.nodes[p]
            if isinstance(node, SPIKING):
                parts.append(values[p].sum(0))
            elif isinstance(node, nir.Flatten):
                parts.append(self._score(p, values))
            else:
                parts.append(values[p][-1])
        return sum(parts)

    @torch.no_grad()
    def to_nir(self) -> nir.NIRGraph:
        """The graph with this module's weights, biases and decays (see the module docstring)."""
        graph = copy.deepcopy(self.graph)
        for name, module in zip(self.names, self.layers):
            node = graph.nodes[name]
            if isinstance(module, (AffineNode, MapNode)) and hasattr(module, "weight"):
                node.weight = _numpy(module.weight).reshape(np.shape(node.weight))
                node.bias = _numpy(module.bias).reshape(np.shape(node.bias))
            elif isinstance(module, NeuronNode) and isinstance(node, LEAKY):
                _write_neuron(node, module, self.dt)
        return graph


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy().copy()


def _write_neuron(node: nir.NIRNode, module: NeuronNode, dt: float) -> None:
    """Solve a leaky node's time constants and gains from its module's decays, gains and offset."""
    g = 1 - _numpy(module.decay)
    if np.any(g <= 0) or np.any(g > 1):
        raise GraphError(f"a voltage decay left (0, 1) in training: {float(1 - g.min()):g}", field="tau")
    gain, offset = _numpy(module.gain), _numpy(module.offset)
    if module.cuba:
        g_syn = 1 - _numpy(module.syn_decay)
        if np.any(g_syn <= 0) or np.any(g_syn > 1):
            raise GraphError(f"a current decay left (0, 1) in training: {float(1 - g_syn.min()):g}", field="tau_syn")
        node.tau_syn, node.w_in = dt / g_syn, _numpy(module.syn_gain) / g_syn
        node.tau_mem = dt / g
    else:
        node.tau = dt / g
    node.r, node.v_leak = gain / g, offset / g
