"""Pass ``stack``: the graph read as Xylo's stack of layers, each with its incoming chains and its depth.

Every neuron node is a :class:`~st2chip.xylo.lowering.plan.Layer`. Walking back from it through
``Affine``, ``Scale`` and ``Flatten`` nodes to an Input or a neuron node gives its
:class:`~st2chip.xylo.lowering.plan.Chain`\\ s, multiplied out (chains from the same source that are both
recurrent or both not add up, as NIR adds a node's inputs). A chain that crosses a back edge
(:func:`st2chip.graph.reading.back_edges`) is recurrent. Any other node on the way (Delay, convolution,
pooling, a host product) ends the walk: the design rules name it. A layer that feeds an Output node is
an output layer. Its float dynamics come from :func:`st2chip.graph.reading.coefficients`.

Depth: a layer that reads the inputs is at depth 0, one that reads layers at depth ``k`` at depth
``k + 1``: on Xylo a hidden spike reaches the next layer one step later, so layer ``k`` sees a sample's
step ``t`` at chip step ``t + k``. Forward sources at another depth, and recurrent sources at a depth other
than the layer's own (their spikes would arrive late), are recorded for the design rules.
"""

from __future__ import annotations

from dataclasses import replace

import nir
import numpy as np
import scipy.sparse as sp

from st2chip.graph.reading import NEURONS, SPIKING, back_edges, coefficients
from st2chip.xylo.lowering.plan import Chain, Dynamics, Layer, XyloPlan

PASS_THROUGH = (nir.Flatten, nir.Output)


def stack(plan: XyloPlan) -> XyloPlan:
    """Every neuron node as a layer, with chains, output flag and depth."""
    graph = plan.graph
    preds: dict[str, list[str]] = {}
    for src, dst in graph.edges:
        preds.setdefault(dst, []).append(src)
    back = back_edges(graph)
    outputs = _output_layers(graph, preds)
    layers = [Layer(name, node, _size(node), dynamics(node, plan.dt, _size(node)),
                    _chains(graph, preds, back, name), name in outputs)
              for name, node in graph.nodes.items() if isinstance(node, NEURONS)]
    for layer in layers:
        for chain in layer.chains:
            source = next((s for s in layers if s.name == chain.source), None)
            if source is not None and source is not layer:
                source.feeds.append(layer.name)
    _depths(layers)
    return replace(plan, layers=layers)


def dynamics(node: nir.NIRNode, dt: float, n: int) -> Dynamics:
    """A neuron node's float step (see :class:`~st2chip.xylo.lowering.plan.Dynamics`), per neuron of its ``n``."""
    c = coefficients(node, dt)
    flat = lambda a: np.broadcast_to(np.asarray(a, dtype=np.float64).reshape(-1), (n,)).copy()  # noqa: E731
    gain = flat(c.gain) if c.syn_gain is None else flat(c.gain) * flat(c.syn_gain)
    threshold = flat(node.v_threshold) if isinstance(node, SPIKING) else None
    return Dynamics(flat(c.decay), gain, flat(c.offset), None if c.syn_decay is None else flat(c.syn_decay),
                    threshold)


def _size(node: nir.NIRNode) -> int:
    return int(np.prod(next(iter(node.output_type.values()))))


def _output_layers(graph: nir.NIRGraph, preds: dict[str, list[str]]) -> set[str]:
    """Neuron nodes that feed an Output node (through Flatten)."""
    found: set[str] = set()
    todo = [name for name, node in graph.nodes.items() if isinstance(node, nir.Output)]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        for p in preds.get(name, []):
            if isinstance(graph.nodes[p], NEURONS):
                found.add(p)
            elif isinstance(graph.nodes[p], PASS_THROUGH) and p not in seen:
                seen.add(p)
                todo.append(p)
    return found


def _chains(graph: nir.NIRGraph, preds: dict[str, list[str]], back: set[tuple[str, str]], target: str) -> list[Chain]:
    """The chains into ``target``, those with the same source and recurrence added up."""
    found: list[Chain] = []
    _walk(graph, preds, back, target, None, None, False, found)
    merged: dict[tuple[str, bool], Chain] = {}
    for chain in found:
        key = (chain.source, chain.recurrent)
        if key in merged:
            old = merged[key]
            chain = Chain(chain.source, old.weight + chain.weight, old.bias + chain.bias, chain.recurrent)
        merged[key] = chain
    return list(merged.values())


def _walk(graph: nir.NIRGraph, preds: dict[str, list[str]], back: set[tuple[str, str]], name: str,
          weight: np.ndarray | None, bias: np.ndarray | None, recurrent: bool, found: list[Chain]) -> None:
    """Walk back from node ``name`` whose output reaches the target as ``weight @ y + bias`` (None: identity, 0)."""
    for p in preds.get(name, []):
        node = graph.nodes[p]
        rec = recurrent or (p, name) in back
        if isinstance(node, (nir.Input, *NEURONS)):
            size = _size(node) if isinstance(node, NEURONS) else int(np.prod(next(iter(node.input_type.values()))))
            w = np.eye(size) if weight is None else weight
            found.append(Chain(p, w, np.zeros(w.shape[0]) if bias is None else bias, rec))
        elif isinstance(node, nir.Affine):
            a = node.weight.toarray() if sp.issparse(node.weight) else np.asarray(node.weight, dtype=np.float64)
            b = np.asarray(node.bias, dtype=np.float64).reshape(-1) if node.bias is not None else np.zeros(a.shape[0])
            w = a if weight is None else weight @ a
            down = b if weight is None else weight @ b
            _walk(graph, preds, back, p, w, down if bias is None else down + bias, rec, found)
        elif isinstance(node, nir.Scale):
            s = np.asarray(node.scale, dtype=np.float64).reshape(-1)
            w = np.diag(s) if weight is None else weight * s[None, :]
            _walk(graph, preds, back, p, w, bias, rec, found)
        elif isinstance(node, PASS_THROUGH):
            _walk(graph, preds, back, p, weight, bias, rec, found)


def _depths(layers: list[Layer]) -> None:
    """Each layer's depth (graph order is topological for forward chains) and the sources at another depth."""
    depth = {"input": -1}
    by_name = {layer.name: layer for layer in layers}
    for layer in layers:
        forward = [_source(c, by_name) for c in layer.chains if not c.recurrent]
        known = [depth[s] for s in forward if s in depth]
        layer.depth = 1 + max(known, default=-1)
        depth[layer.name] = layer.depth
        layer.mixed_depths = sorted({s for s in forward if depth.get(s, layer.depth - 1) != layer.depth - 1})
    for layer in layers:
        recurrent = [_source(c, by_name) for c in layer.chains if c.recurrent]
        layer.late_recurrence = sorted({s for s in recurrent if depth.get(s, layer.depth) != layer.depth})


def _source(chain: Chain, layers: dict[str, Layer]) -> str:
    return chain.source if chain.source in layers else "input"
