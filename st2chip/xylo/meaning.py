r"""What a Xylo chip computes, written back as a float NIR graph: :func:`xylo_meaning`.

Lowering a graph to Xylo (:mod:`st2chip.xylo.lower`) changes what it computes: every layer's input passes
through a synaptic current (a LIF gets ``dash_syn = 1``: half an input reaches ``v`` at once, the rest
over the next steps), leaks move to the :math:`1 - 2^{-d}` grid, weights to 8 bits with one shift per
matrix, thresholds and biases to integers, and hidden neurons send up to 31 spikes per step. The
*meaning graph* is the same network with exactly those numbers, in float units of each layer's voltage
scale :math:`s` (LSBs per unit):

- every neuron layer becomes a ``CubaLIF`` (a readout a ``CubaLI``) with current decay
  :math:`\alpha = 1 - 2^{-d_{syn}}` and voltage decay :math:`\beta = 1 - 2^{-d_{mem}}` as the lowering
  rounds them, gains such that :math:`i \leftarrow \alpha (i + W x)` and :math:`v \leftarrow \beta v + i + b`
  (Xylo's order: the input is added, then the current decays), reset by subtraction;
- each Affine into a layer holds the chip's weight :math:`w_8 2^{\sigma} / s` and no bias; the chip's bias
  :math:`b / s` is the neuron's leak offset (Xylo adds it to ``v`` every step);
- a threshold :math:`\theta_{int}` becomes :math:`(\theta_{int} - \delta)/s`: :math:`v > \theta` on
  integers is the chip's :math:`v \ge \theta_{int}`, and the subtraction differs by :math:`\delta` LSB
  (:data:`THRESHOLD_MARGIN`); the neurons with the layer's largest threshold keep it, so that the
  lowering finds the same scale;
- hidden layers send up to 31 spikes per step (``metadata["max_spikes"]``), output layers one.

What remains between the float interpreter on this graph and the chip is integer arithmetic: the chip
rounds each decay to whole LSBs (at least one per step), saturates at 16 bits, and subtracts
:math:`\theta_{int}` rather than the float threshold. Lowering the meaning graph gives the same chip
(:func:`same_chip`): the rewrite is a fixed point of the rounding. Where the lowering's scale of a layer
depends on its float weights (a readout's scale keeps its reachable ``|v|`` in 16 bits), the rewrite is
repeated until it is (:data:`MEANING_ROUNDS`).

Covered: graphs whose neuron layers are fed by one Affine node per source (through Flatten), each Affine
feeding one layer: st2chip's MLP and RNN, and such graphs from other frameworks.
"""

from __future__ import annotations

import copy

import nir
import numpy as np

from st2chip.errors import GraphError
from st2chip.graph.reading import NEURONS, back_edges
from st2chip.xylo.lower import lower_xylo
from st2chip.xylo.lowering.leaks import chip_decay
from st2chip.xylo.lowering.passes import plan_xylo
from st2chip.xylo.lowering.plan import Layer, XyloPlan
from st2chip.xylo.lowering.weights import matrix_of
from st2chip.xylo.spec import XyloSpec
from st2chip.xylo.xylograph import MAX_HIDDEN_SPIKES, XyloGraph

THRESHOLD_MARGIN = 2.0 ** -8  # LSBs a float threshold lies below the chip's integer one
WEIGHT_MARGIN = 1e-9          # relative: held weights a hair inside the grid, so no weight bounds the scale anew
MEANING_ROUNDS = 5            # rewrites tried until lowering the meaning graph gives the chip it was read from
TARGET_KEY = "xylo_meaning"   # graph metadata: the Xylo chip whose arithmetic the graph holds


def xylo_meaning(graph: nir.NIRGraph, spec: XyloSpec) -> nir.NIRGraph:
    """``graph`` (canonical) rewritten so that its float meaning is what Xylo chip ``spec`` computes, up to
    integer rounding (module docstring); lowering it gives the chip it describes."""
    meaning, chip = rewrite(graph, spec)
    for _ in range(MEANING_ROUNDS - 1):
        again, lowered = rewrite(meaning, spec)
        if same_chip(lowered, chip):
            return meaning
        meaning, chip = again, lowered
    return meaning


def rewrite(graph: nir.NIRGraph, spec: XyloSpec) -> tuple[nir.NIRGraph, XyloGraph]:
    """One rewrite: lower ``graph`` (design rules first) and write what the chip holds as a float graph; returns
    it and the chip it was read from."""
    chip = lower_xylo(graph, spec)
    plan = plan_xylo(graph, spec)
    dt = float(graph.metadata["dt"])
    meaning = copy.deepcopy(graph)
    for layer in plan.layers:
        for name, weight in held_weights(plan, layer).items():
            node = meaning.nodes[name]
            meaning.nodes[name] = nir.Affine(weight * (1 - WEIGHT_MARGIN), np.zeros(weight.shape[0]),
                                             metadata=dict(node.metadata or {}))
        meaning.nodes[layer.name] = _neuron(plan, layer, dt)
    meaning.metadata = {**graph.metadata, TARGET_KEY: spec.name}
    return meaning, chip


def held_weights(plan: XyloPlan, layer: Layer) -> dict[str, np.ndarray]:
    """Per Affine node into ``layer``: the weight the chip holds, :math:`w_8 2^{\\sigma} / s`, as ``v`` sees it
    (the node's shape: layer size x source size)."""
    affines = layer_affines(plan.graph, layer.name)
    held = iter(plan.quantized[layer.name].chains)
    scale = plan.quantized[layer.name].scale
    found = {}
    for chain in layer.chains:
        matrix = matrix_of(plan, chain, layer)
        if matrix is None:
            continue
        _, w8 = next(held)
        found[affines[(chain.source, chain.recurrent)]] = w8.T * 2.0 ** plan.shifts[matrix] / scale
    return found


def layer_affines(graph: nir.NIRGraph, layer: str) -> dict[tuple[str, bool], str]:
    """``(source, recurrent)`` -> the one Affine node that feeds ``layer`` from ``source`` (through Flatten);
    a :class:`GraphError` naming the node where a layer is fed otherwise."""
    preds: dict[str, list[str]] = {}
    succs: dict[str, list[str]] = {}
    for a, b in graph.edges:
        preds.setdefault(b, []).append(a)
        succs.setdefault(a, []).append(b)
    back = back_edges(graph)
    found: dict[tuple[str, bool], str] = {}
    for name, crossed in _through_flatten(graph, preds, back, layer):
        node = graph.nodes[name]
        if not isinstance(node, nir.Affine):
            raise GraphError(f"feeds layer '{layer}' as a {type(node).__name__}: quantize --target xylo-… fine-tunes "
                             f"layers fed by one Affine node per source", node=name)
        if len(succs.get(name, [])) != 1:
            raise GraphError(f"feeds {len(succs.get(name, []))} nodes: quantize --target xylo-… needs each Affine "
                             f"to feed one layer", node=name)
        sources = _through_flatten(graph, preds, back, name)
        if len(sources) != 1 or not isinstance(graph.nodes[sources[0][0]], (nir.Input, *NEURONS)):
            raise GraphError(f"reads {[s for s, _ in sources]}: quantize --target xylo-… needs each Affine to read "
                             f"one Input or neuron node", node=name)
        key = (sources[0][0], crossed or sources[0][1])
        if key in found:
            raise GraphError(f"layer '{layer}' reads '{key[0]}' through two Affine nodes ('{found[key]}' and "
                             f"'{name}'): quantize --target xylo-… needs one", node=name)
        found[key] = name
    return found


def _through_flatten(graph: nir.NIRGraph, preds: dict[str, list[str]], back: set[tuple[str, str]],
                     name: str) -> list[tuple[str, bool]]:
    """The nodes feeding ``name``, looking through Flatten, each with whether a back edge lies on the way."""
    found = []
    for p in preds.get(name, []):
        crossed = (p, name) in back
        if isinstance(graph.nodes[p], nir.Flatten):
            found += [(q, c or crossed) for q, c in _through_flatten(graph, preds, back, p)]
        else:
            found.append((p, crossed))
    return found


def _neuron(plan: XyloPlan, layer: Layer, dt: float) -> nir.NIRNode:
    """The layer as the chip runs it: a CubaLIF (a CubaLI for a readout) with the chip's decays, bias and
    threshold at the layer's scale."""
    leak, scale = plan.leaks[layer.name], plan.quantized[layer.name].scale
    alpha, beta = chip_decay(leak.dash_syn), chip_decay(leak.dash_mem)
    g_syn, g_mem = 1 - alpha, 1 - beta
    tau_syn, tau_mem = dt / g_syn, dt / g_mem
    w_in, r = alpha / g_syn, 1 / g_mem               # i <- alpha (i + x), v <- beta v + i + b
    v_leak = plan.biases[layer.name] / scale / g_mem
    meta = {k: v for k, v in (layer.node.metadata or {}).items() if k not in ("reset", "refractory", "max_spikes")}
    if not layer.spiking:
        return nir.CubaLI(tau_syn, tau_mem, r, v_leak, w_in, metadata=meta)
    meta["reset"] = "subtract"
    if not layer.output:
        meta["max_spikes"] = MAX_HIDDEN_SPIKES
    theta = chip_thresholds(layer.dynamics.threshold, plan.thresholds[layer.name], scale)
    return nir.CubaLIF(tau_syn, tau_mem, r, v_leak, theta, np.zeros(layer.size), w_in, metadata=meta)


def chip_thresholds(theta: np.ndarray, integer: np.ndarray, scale: float) -> np.ndarray:
    """Float thresholds the chip's integer ones stand for: :math:`(\\theta_{int} - \\delta)/s`, never above the
    layer's largest float threshold, which its neurons keep (the lowering's scale depends on it)."""
    top = float(np.max(theta))
    return np.where(theta == top, theta, np.minimum((integer - THRESHOLD_MARGIN) / scale, top))


def same_chip(a: XyloGraph, b: XyloGraph) -> bool:
    """Whether two XyloGraphs hold the same network: weights, shifts, neurons and layout (not the report)."""
    arrays = ("w_in", "w_rec", "w_out")
    neurons = ("dash_syn", "dash_mem", "threshold", "bias")
    return (all(np.array_equal(getattr(a, k), getattr(b, k)) for k in arrays)
            and (a.shift_in, a.shift_rec, a.shift_out) == (b.shift_in, b.shift_rec, b.shift_out)
            and all(np.array_equal(getattr(x, k), getattr(y, k)) for x, y in ((a.hidden, b.hidden),
                                                                             (a.outputs, b.outputs))
                    for k in neurons)
            and a.layers == b.layers and a.input_names == b.input_names)
