"""What the chip holds, read back in the float units of the NIR graph it was lowered from.

Lowering folds thresholds into weights, groups decays and rounds weights to 8-bit
mantissas with one exponent per synapse group (:mod:`st2chip.chip.lower`). This
module undoes the folding, not the rounding: :func:`held_parameters` gives, per
weighted node that trains (``Affine``, ``Conv1d``, ``Conv2d``), the weights whose
float simulation computes what the chip's mantissas compute, and per neuron node
the decays the chip applies. Training against these values
(:mod:`st2chip.chip.finetune`) makes a float model that the chip holds exactly.

A path into a neuron layer (:func:`~st2chip.chip.lowering.paths.chains`) is one
matrix on the chip: each of its synapses carries one weight of the path's trained
node times a fixed coefficient (Flatten, pooling before the node, Scale), or a sum
of several. Which weight each synapse carries is found by lowering's own path walk
on probe copies of the graph, whose trained weights are numbered (:class:`_Probes`).
A weight is read back where every synapse that carries it holds the same value;
refused, with the node named, where one synapse sums several weights (pooling after a
convolution, a low-rank ``U·V`` product), where a shared weight is held differently
at different neurons (a convolution whose neurons differ in threshold, gain or decay
population within a channel), and for factored low-rank paths (relays).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import nir
import numpy as np
import scipy.sparse as sp

from st2chip.chip import encoding
from st2chip.chip.chipgraph import ChipGraph, Relay
from st2chip.chip.encoding import VOLTAGE_PER_SCALE
from st2chip.chip.lowering.neurons import read_neuron
from st2chip.chip.lowering.paths import Chain, chains
from st2chip.chip.lowering.plan import PathKey
from st2chip.errors import GraphError
from st2chip.graph.reading import back_edges

TRAINED = (nir.Affine, nir.Conv1d, nir.Conv2d)  # the weighted nodes whose weights train and are read back
SAME = 1e-12  # relative: two synapses hold one weight alike (the same mantissa, unfolded the same way)


@dataclass
class Held:
    """The chip's parameters in float: ``weights`` per trained node on a path into a neuron layer (the node's
    own shape: ``(out, in)``, or a convolution's kernel), ``decays`` (voltage, ``1 - dv/4096``) per neuron node,
    ``current_decays`` (``(4095 - du)/4096``) per CubaLIF node."""

    weights: dict[str, np.ndarray] = field(default_factory=dict)
    decays: dict[str, np.ndarray] = field(default_factory=dict)
    current_decays: dict[str, np.ndarray] = field(default_factory=dict)


def held_parameters(graph: nir.NIRGraph, chip: ChipGraph) -> Held:
    """The weights and decays ``chip`` holds for ``graph`` (the canonical graph it was lowered from)."""
    dt = float(graph.metadata.get("dt", 1e-3))
    held = Held()
    layers = _decays(graph, chip, held, dt)
    matrices = _chip_matrices(chip, layers)
    probes = _Probes(graph)
    preds: dict[str, list[str]] = {}
    for src, dst in graph.edges:
        preds.setdefault(dst, []).append(src)
    back = back_edges(graph)
    found = {name: np.full(np.size(graph.nodes[name].weight), np.nan) for name in probes.offsets}
    for target in layers:
        for key, paths in _paths_by_key(probes, target, preds, back, dt).items():
            shape = (chip.layer_size(target), paths[0][0].weight.shape[1])
            chip_matrix = matrices.get((target, key), sp.csr_matrix(shape))
            _read_key(graph, probes, key, target, paths, chip_matrix, found)
    for name, values in found.items():
        if not np.all(np.isnan(values)):
            weight = np.array(graph.nodes[name].weight, dtype=np.float64).reshape(-1)  # unreached: as they are
            seen = ~np.isnan(values)
            weight[seen] = values[seen]
            held.weights[name] = weight.reshape(np.shape(graph.nodes[name].weight))
    return held


def _decays(graph: nir.NIRGraph, chip: ChipGraph, held: Held, dt: float) -> dict:
    """Fill ``held``'s decays; every neuron layer read in discrete time (name -> its reading)."""
    layers = {}
    for pop in chip.populations:
        if pop.always_on:  # carries biases into currents, not weights: not read back
            continue
        if isinstance(pop, Relay):
            raise GraphError("a factored low-rank path (a relay) is not read back; lower with lowrank='product'",
                             node=pop.layer)
        node = graph.nodes[pop.layer]
        if pop.layer not in layers:
            layers[pop.layer] = read_neuron(pop.layer, node, dt)
            held.decays[pop.layer] = np.empty(chip.layer_size(pop.layer))
            if isinstance(node, nir.CubaLIF):
                held.current_decays[pop.layer] = np.empty(chip.layer_size(pop.layer))
        held.decays[pop.layer][pop.index] = encoding.voltage_decay(pop.dv)
        if pop.layer in held.current_decays:
            held.current_decays[pop.layer][pop.index] = encoding.current_decay(pop.du)
    return layers


def _chip_matrices(chip: ChipGraph, layers: dict) -> dict[tuple[str, PathKey], sp.csr_matrix]:
    """Per (target layer, path key): the chip's synapses as one float matrix over the layer's neurons and the
    source's values, thresholds and gains unfolded (residual 16-bit groups add to their 8-bit group)."""
    where: dict[str, tuple[str, np.ndarray]] = {p.name: (p.layer, p.index) for p in chip.populations}
    where |= {i.name: (i.name, np.arange(i.size)) for i in chip.inputs}
    always_on = {p.name for p in chip.populations if p.always_on}
    scales = {layer: chip.voltage_units(layer) / VOLTAGE_PER_SCALE for layer in layers}  # per neuron: its scale
    parts: dict[tuple[str, PathKey], list] = {}
    for group in chip.synapses:
        if group.source in always_on:
            continue
        source_layer, cols = where[group.source]
        target_layer, rows = where[group.target]
        layer = layers[target_layer]
        m = sp.coo_matrix(group.mantissa)
        r = rows[m.row]
        value = encoding.weight_value(m.data, group.exp, scales[target_layer][r]) * layer.threshold[r] / layer.gain[r]
        key = PathKey(source_layer, group.lag, group.feedback)
        parts.setdefault((target_layer, key), []).append((r, cols[m.col], value))
    out = {}
    for (target, key), found in parts.items():
        width = chip.layer_size(key.source) if key.source in layers else where[key.source][1].size
        rows, cols, values = (np.concatenate(x) for x in zip(*found))
        out[(target, key)] = sp.csr_matrix((values, (rows, cols)), shape=(chip.layer_size(target), width))
    return out


class _Probes:
    """Copies of the graph whose trained weights say which weight a synapse carries: ``count`` (every trained
    weight 1, pooling summed, Scale 1: how many weights a synapse adds, each route once), ``ids`` and ``squares``
    (weight ``k`` of all numbered from 1 by :attr:`offsets`, and its square) and ``unit`` (every trained weight
    1, fixed maps as they are: the coefficient a synapse multiplies its weight by)."""

    def __init__(self, graph: nir.NIRGraph) -> None:
        self.offsets: dict[str, int] = {}
        total = 0
        for name, node in graph.nodes.items():
            if isinstance(node, TRAINED):
                self.offsets[name] = total
                total += int(np.size(node.weight))
        ids = {n: o + 1 + np.arange(np.size(graph.nodes[n].weight), dtype=np.float64) for n, o in self.offsets.items()}
        self.graphs = {"count": _probe(graph, {n: np.ones_like(v) for n, v in ids.items()}, counting=True),
                       "ids": _probe(graph, ids, counting=True),
                       "squares": _probe(graph, {n: v * v for n, v in ids.items()}, counting=True),
                       "unit": _probe(graph, {n: np.ones_like(v) for n, v in ids.items()}, counting=False)}

    def owner(self, ids: np.ndarray) -> tuple[str, np.ndarray]:
        """The trained node weight id ``ids[0]`` belongs to, and the positions ``ids`` have in its flat weight."""
        name = max((n for n, o in self.offsets.items() if o < ids[0]), key=self.offsets.__getitem__)
        return name, ids - 1 - self.offsets[name]


def _probe(graph: nir.NIRGraph, weights: dict[str, np.ndarray], counting: bool) -> nir.NIRGraph:
    """A shallow copy of ``graph`` with ``weights`` (flat) in its trained nodes; ``counting``: AvgPool2d as
    SumPool2d and Scale as 1, so that every route of a weight to a synapse counts once."""
    nodes = {}
    for name, node in graph.nodes.items():
        if name in weights:
            node = copy.copy(node)
            node.weight = weights[name].reshape(np.shape(node.weight))
        elif counting and isinstance(node, nir.AvgPool2d):
            pool = nir.SumPool2d(kernel_size=node.kernel_size, stride=node.stride, padding=node.padding)
            pool.input_type, pool.output_type = node.input_type, node.output_type
            node = pool
        elif counting and isinstance(node, nir.Scale):
            node = copy.copy(node)
            node.scale = np.ones_like(np.asarray(node.scale, dtype=np.float64))
        nodes[name] = node
    probe = copy.copy(graph)
    probe.nodes = nodes
    return probe


def _paths_by_key(probes: _Probes, target: str, preds: dict[str, list[str]], back: set, dt: float
                  ) -> dict[PathKey, list[tuple[Chain, ...]]]:
    """Every path into ``target`` as lowering walks it, grouped by key (paths with one key add up on the chip):
    on the ``ids`` probe alone where each key is one path through one trained node and nothing else weighted
    (:func:`_read_plain`), else on every probe (``(count, ids, squares, unit)`` per path)."""
    starts = preds.get(target, [])
    walks = {s: chains(probes.graphs["ids"], s, target, preds, back, dt) for s in starts}
    keys = [PathKey(p.source, p.lag, p.recurrent) for s in starts for p in walks[s]]
    plain = len(set(keys)) == len(keys) and all(len(p.nodes) == 1 and p.nodes[0] in probes.offsets
                                                for s in starts for p in walks[s])
    out: dict[PathKey, list[tuple[Chain, ...]]] = {}
    for start in starts:
        every = [walks[start]] if plain else [chains(probes.graphs[k], start, target, preds, back, dt)
                                              for k in ("count", "ids", "squares", "unit")]
        for path in zip(*every):
            out.setdefault(PathKey(path[0].source, path[0].lag, path[0].recurrent), []).append(path)
    return out


def _at(matrix: sp.spmatrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    return np.asarray(sp.csr_matrix(matrix)[rows, cols]).reshape(-1)


def _read_key(graph: nir.NIRGraph, probes: _Probes, key: PathKey, target: str, paths: list[tuple[Chain, ...]],
              chip_matrix: sp.csr_matrix, found: dict[str, np.ndarray]) -> None:
    """Read the weights the paths of ``key`` into ``target`` carry from ``chip_matrix`` into ``found`` (per
    trained node, its flat weights; NaN: not read yet), refusing what no weight values reproduce."""
    if len(paths[0]) == 1:
        _read_plain(graph, probes, paths[0][0], chip_matrix, found)
        return
    for path in paths:
        trained = [n for n in path[0].nodes if n in probes.offsets]
        if len(trained) > 1:
            raise GraphError(f"the path from '{key.source}' into '{target}' multiplies {' and '.join(trained)} with "
                             f"no neuron between (a low-rank U·V or stacked convolutions): the chip holds their "
                             f"product, which is not read back into either", node=trained[-1])
    if not any(n in probes.offsets for path in paths for n in path[0].nodes):
        return
    count, ids, squares, unit = (sum(p[k].weight for p in paths) for k in range(4))
    pattern = sp.coo_matrix(count)
    rows, cols = pattern.row, pattern.col
    n, s1, s2 = (np.rint(_at(m, rows, cols)).astype(np.int64) for m in (count, ids, squares))
    live = n > 0
    mixed = live & (n * s2 != s1 * s1)  # one weight on every route to the synapse iff mean(id^2) = mean(id)^2
    if mixed.any():
        name, _ = probes.owner(s1[mixed][:1] // n[mixed][:1])
        raise GraphError(f"a synapse from '{key.source}' into '{target}' carries the sum of several of this node's "
                         f"weights (pooling after it, or paths that overlap): the chip holds the sums, which are not "
                         f"read back into the weights", node=name)
    coefficient = _at(unit, rows, cols)
    live &= coefficient != 0
    _read_values(graph, probes, s1[live] // n[live], _at(chip_matrix, rows, cols)[live] / coefficient[live], found)


def _read_plain(graph: nir.NIRGraph, probes: _Probes, path: Chain, chip_matrix: sp.csr_matrix,
                found: dict[str, np.ndarray]) -> None:
    """One trained node alone on the path: each synapse carries one of its weights, once (an Affine's weight
    ``(i, j)`` is synapse ``(i, j)``)."""
    name = path.nodes[0]
    if isinstance(graph.nodes[name], nir.Affine):
        weight = chip_matrix.toarray().reshape(-1)
        _read_values(graph, probes, probes.offsets[name] + 1 + np.arange(weight.size), weight, found)
        return
    synapses = sp.coo_matrix(path.weight)
    _read_values(graph, probes, np.rint(synapses.data).astype(np.int64),
                 _at(chip_matrix, synapses.row, synapses.col), found)


def _read_values(graph: nir.NIRGraph, probes: _Probes, ids: np.ndarray, values: np.ndarray,
                 found: dict[str, np.ndarray]) -> None:
    """Record ``values`` for the weights numbered ``ids`` (any order, repeats allowed), node by node."""
    order = np.argsort(ids, kind="stable")
    ids, values = ids[order], values[order]
    for start, stop in _runs_by_owner(probes, ids):
        name, index = probes.owner(ids[start:stop])
        _record(graph, name, index, values[start:stop], found[name])


def _runs_by_owner(probes: _Probes, sorted_ids: np.ndarray) -> list[tuple[int, int]]:
    """``[start, stop)`` of the ids that belong to each trained node (ids sorted)."""
    bounds = np.searchsorted(sorted_ids, sorted(o + 1 for o in probes.offsets.values()))
    edges = [*bounds.tolist(), sorted_ids.size]
    return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def _record(graph: nir.NIRGraph, name: str, index: np.ndarray, value: np.ndarray, into: np.ndarray) -> None:
    """Store the values read for weights ``index`` (sorted) of node ``name``; every synapse (and every earlier
    read) that carries one weight must hold it alike."""
    first = np.flatnonzero(np.r_[True, index[1:] != index[:-1]])
    lo, hi = ((value, value) if first.size == index.size
              else (np.minimum.reduceat(value, first), np.maximum.reduceat(value, first)))
    weights, earlier = index[first], into[index[first]]
    if not np.isnan(earlier).all():
        lo, hi = np.fmin(lo, earlier), np.fmax(hi, earlier)
    bad = hi - lo > SAME * np.maximum(np.abs(lo), np.abs(hi))
    if bad.any():
        k = int(np.argmax(bad))
        where = tuple(int(i) for i in np.unravel_index(int(weights[k]), np.shape(graph.nodes[name].weight)))
        raise GraphError(f"the chip holds weight {list(where)} as {lo[k]:.6g} at one synapse and {hi[k]:.6g} at "
                         f"another (its neurons differ in threshold, input gain or decay population within a channel): "
                         f"one shared weight cannot reproduce both", node=name)
    into[weights] = value[first]
