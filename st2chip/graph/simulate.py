r"""Float discrete-time simulation of a canonical NIR graph (backend ``"float"``).

The reference meaning of a canonical graph (see :mod:`st2chip.graph.normalize`)
that lowered and chip backends are compared with. Each step ``t`` processes
every node in topological order, so a signal crosses the whole graph within
one step (no synaptic delays); the inputs of a node add up. With
``dt = graph.metadata["dt"]`` (forward Euler):

- ``Affine``: :math:`y = W x + b`; ``Flatten``: :math:`y = x`.
- ``LIF``: :math:`v \leftarrow v + \tfrac{dt}{\tau}(v_{leak} - v + r I)`,
  :math:`s = [v > v_{threshold}]`, :math:`v \leftarrow v_{reset}` where :math:`s`.
  With :math:`\tau = dt/(1-\beta)`, :math:`r = 1/(1-\beta)`, :math:`v_{leak} = 0`
  this is :math:`v \leftarrow \beta v + I`.
- ``CubaLIF``: :math:`i \leftarrow i + \tfrac{dt}{\tau_{syn}}(w_{in} I - i)`, then
  :math:`v \leftarrow v + \tfrac{dt}{\tau_{mem}}(v_{leak} - v + r i)`; spike and reset as LIF.
- ``IF``: :math:`v \leftarrow v + dt\, r I` (NIR's :math:`\dot v = R I`); spike and reset as LIF.
- ``LI``: :math:`v \leftarrow v + \tfrac{dt}{\tau}(v_{leak} - v + r I)`;
  ``I``: :math:`v \leftarrow v + dt\, r I`; neither spikes.

A spiking node outputs its spikes, ``LI``/``I`` their voltage. All state starts
at zero for every sample. ``scores`` are what feeds the Output nodes
(concatenated in graph order): spike counts over all steps for a spiking node,
otherwise the value at the last step (an ``I``/``LI`` readout's voltage).
"""

from __future__ import annotations

import nir
import numpy as np

from st2chip.errors import GraphError, InputError
from st2chip.graph.normalize import NEURON_FIELDS, SPIKING_TYPES
from st2chip.traces import Traces

_CANONICAL = (nir.Input, nir.Output, nir.Affine, nir.Flatten, *NEURON_FIELDS)


def simulate(graph: nir.NIRGraph, inputs: np.ndarray, *, record: bool = True) -> Traces:
    """Run a canonical graph on ``inputs`` ``(B, T, n_in)``; several Input nodes take consecutive slices.

    With ``record=False`` only the scores are kept (spikes and voltages stay empty).
    """
    nodes = graph.nodes
    for name, node in nodes.items():
        if not isinstance(node, _CANONICAL):
            raise GraphError(f"simulate takes a canonical graph (run normalize first), found {type(node).__name__}",
                             node=name)
    dt = float(graph.metadata["dt"])
    preds: dict[str, list[str]] = {name: [] for name in nodes}
    for a, b in graph.edges:
        preds[b].append(a)
    input_names = [n for n, node in nodes.items() if isinstance(node, nir.Input)]
    widths = [int(nodes[n].input_type["input"][0]) for n in input_names]
    x = np.asarray(inputs)
    if x.ndim != 3 or x.shape[2] != sum(widths) or 0 in x.shape[:2]:
        raise InputError(f"inputs must have shape (batch >= 1, steps >= 1, {sum(widths)}), got {x.shape}")
    batch, steps = x.shape[:2]
    bounds = np.cumsum([0, *widths])
    slices = {n: x[:, :, bounds[i]:bounds[i + 1]] for i, n in enumerate(input_names)}

    sizes = {n: _size(node) for n, node in nodes.items()}
    neurons = [n for n, node in nodes.items() if isinstance(node, tuple(NEURON_FIELDS))]
    spiking = [n for n in neurons if isinstance(nodes[n], SPIKING_TYPES)]
    v = {n: np.zeros((batch, sizes[n])) for n in neurons}
    i_syn = {n: np.zeros((batch, sizes[n])) for n in neurons if isinstance(nodes[n], nir.CubaLIF)}
    counts = {n: np.zeros((batch, sizes[n])) for n in spiking}
    spikes = {n: np.zeros((batch, steps, sizes[n]), dtype=np.uint8) for n in spiking} if record else {}
    voltages = {n: np.zeros((batch, steps, sizes[n])) for n in neurons} if record else {}

    values: dict[str, np.ndarray] = {}
    for t in range(steps):
        for name, node in nodes.items():
            if isinstance(node, nir.Input):
                values[name] = slices[name][:, t].astype(np.float64)
                continue
            drive = sum(values[p] for p in preds[name])
            if isinstance(node, (nir.Output, nir.Flatten)):
                values[name] = drive
            elif isinstance(node, nir.Affine):
                values[name] = drive @ node.weight.T + node.bias
            else:
                values[name] = _step_neuron(node, v[name], i_syn.get(name), drive, dt)
                if name in counts:
                    counts[name] += values[name]
                if record:
                    voltages[name][:, t] = v[name]
                    if name in spikes:
                        spikes[name][:, t] = values[name]

    outputs = [n for n, node in nodes.items() if isinstance(node, nir.Output)]
    scores = np.concatenate([_score(n, nodes, preds, values, counts) for n in outputs], axis=1)
    return Traces(backend="float", inputs={n: s.copy() for n, s in slices.items()}, spikes=spikes,
                  voltages=voltages, scores=scores, meta={"dt": dt, "steps": steps})


def _size(node: nir.NIRNode) -> int:
    if isinstance(node, nir.Affine):
        return int(node.weight.shape[0])
    return int(node.output_type["output"][0])


def _step_neuron(node: nir.NIRNode, v: np.ndarray, i_syn: np.ndarray | None, drive: np.ndarray,
                 dt: float) -> np.ndarray:
    """Advance one neuron node in place (``v``, ``i_syn``); return its output (spikes or voltage)."""
    if isinstance(node, nir.I):
        v += dt * node.r * drive
        return v.copy()
    if isinstance(node, nir.LI):
        v += dt / node.tau * (node.v_leak - v + node.r * drive)
        return v.copy()
    if isinstance(node, nir.IF):
        v += dt * node.r * drive
    elif isinstance(node, nir.LIF):
        v += dt / node.tau * (node.v_leak - v + node.r * drive)
    else:  # CubaLIF
        i_syn += dt / node.tau_syn * (node.w_in * drive - i_syn)
        v += dt / node.tau_mem * (node.v_leak - v + node.r * i_syn)
    fired = v > node.v_threshold
    np.copyto(v, np.broadcast_to(node.v_reset, v.shape), where=fired)
    return fired.astype(np.float64)


def _score(name: str, nodes: dict, preds: dict[str, list[str]], values: dict[str, np.ndarray],
           counts: dict[str, np.ndarray]) -> np.ndarray:
    """What feeds node ``name``, looking through Flatten: spike counts or last values."""
    parts = []
    for p in preds[name]:
        if p in counts:
            parts.append(counts[p])
        elif isinstance(nodes[p], nir.Flatten):
            parts.append(_score(p, nodes, preds, values, counts))
        else:
            parts.append(values[p])
    return sum(parts)
