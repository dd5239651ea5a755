r"""Pass ``fanin``: a neuron's incoming synapses that no core holds, split into a tree of graded partial sums.

Placement (:mod:`st2chip.chip.placement`) puts every neuron on one core with its
incoming synapses, and a core takes at most ``axons_in_per_core`` input axons and
``synapse_memory_per_core`` bits (the resource file's figures, ``Options.resources``).
Where a population's worst neuron needs more (a readout that reads every token of a
Transformer), its largest incoming groups from 0/1 spike sources are split, largest
first, until what stays unsplit leaves room on the neuron's core for the trees' top relays:

- level 1: the group's source columns in blocks of at most ``width`` (so that a
  relay's own fan-in and memory fit a core); one
  :class:`~st2chip.chip.chipgraph.Relay` neuron per target neuron and block with a
  non-zero weight, fed the group's own mantissas at exponent -1, sends
  :math:`x = (\sum_{j \in b} 2 m_{ij} s_j) \gg 1 = \sum_{j \in b} m_{ij} s_j` (an even
  sum halved: exact);
- while a neuron still has more relays than its budget, one level more: relays that
  each sum at most ``fan`` relays of the level below (mantissa 1, exponent -1:
  :math:`(\sum 2 x) \gg 1 = \sum x`), each message within 24 bits;
- the final group, mantissa 1 with the split group's exponent :math:`e`, adds
  :math:`(\sum 2 x) \ll e = (\sum_j 2 m_{ij} s_j) \ll e`: the unsplit group's integer
  input, bit for bit, with Lava's one floor for :math:`e < 0`; ``u`` wraps the same sum.

Each level is a step: a split group reaches its neurons ``levels`` steps late, so the
layer is that much deeper, and the paths into it and into every layer after it are
aligned again with synaptic delays by the rule of passes ``depths`` and ``synapses``
(groups out of relays take no delay: a low-rank relay moves with its layer; a host
product's groups cannot wait, and feedback whose latency would change is refused).
Recorded outputs keep their timing (each population's record starts at its depth).
The layer report gives each tree and its cost (:class:`~st2chip.chip.lowering.report.FaninReport`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import scipy.sparse as sp

from st2chip.chip.chipgraph import (DELAY_MAX, GRADED_ACC_MAX, GRADED_INPUT_MAX, MESSAGE_BITS, WEIGHT_MANT_RANGE,
                                    HostProduct, Population, Relay, SynapseGroup)
from st2chip.chip.lowering.lowrank import MAC_PER_AC, SPIKE_RATE
from st2chip.chip.lowering.plan import Fanin, LayerPlan, Plan
from st2chip.chip.lowering.report import FaninReport
from st2chip.chip.placement import Resources, row_costs
from st2chip.errors import GraphError

MESSAGE_MAX = 2 ** (MESSAGE_BITS - 1) - 1  # the largest |x| a relay may send
DELAY_BITS = math.ceil(math.log2(DELAY_MAX + 1))  # what a first group's delay may cost per weight (set after)
SUFFIX = "/fanin"  # relay populations are named after the group they split: ``<group>/fanin<level>``


def fanin(plan: Plan) -> Plan:
    """Every layer's :class:`~st2chip.chip.lowering.plan.Fanin` (None where its neurons fit a core), then
    depths and delays aligned again; the plan unchanged without resources or without a tree."""
    res = plan.options.resources
    if res is None:
        return plan
    spiking = {p.name for p in plan.inputs if p.kind == "spike"} | {
        p.name for layer in plan.layers for p in layer.populations.members}
    split = replace(plan, layers=[_split(layer, res, spiking) for layer in plan.layers])
    if all(layer.fanin is None for layer in split.layers):
        return plan
    return aligned(plan, split)


@dataclass
class Tree:
    """One split group as a tree: its relays (lower levels first), its groups (the first one, named as the
    split group, holds its weights and takes the spikes), the levels, and per relay neuron the spike synapses
    under it."""

    relays: list[Relay]
    groups: list[SynapseGroup]
    levels: int
    leaves: list[np.ndarray]


def _budget(res: Resources) -> tuple[int, int, int]:
    """A level-1 block's width (spike synapses per relay), the relays one relay sums, and the bits a graded
    synapse costs: what keeps each relay neuron within one core and its messages within 24 bits."""
    sparse = res.weight_bits + res.sparse_index_bits
    width = min(res.axons_in_per_core, res.synapse_memory_per_core // (sparse + DELAY_BITS),
                MESSAGE_MAX // -WEIGHT_MANT_RANGE[0])
    return width, min(res.axons_in_per_core, res.synapse_memory_per_core // sparse), sparse


def _split(layer: LayerPlan, res: Resources, spiking: set[str]) -> LayerPlan:
    """``layer`` with its over-large groups (from the 0/1 sources ``spiking``) split into trees; unchanged
    where every neuron fits a core."""
    bias = layer.current_bias.groups if layer.current_bias else []
    into: dict[str, list[SynapseGroup]] = {pop.name: [] for pop in layer.populations.members}
    for g in layer.synapses.groups + bias:
        if g.target in into:
            into[g.target].append(g)
    width, fan, graded_bits = _budget(res)
    trees: dict[str, Tree] = {}
    for pop in layer.populations.members:
        if _surely_fits(into[pop.name], res):
            continue
        costs = {g.name: row_costs(g, res) for g in into[pop.name]}
        chosen = _chosen(into[pop.name], costs, spiking, res, graded_bits)
        if chosen is not None:
            names, top = chosen
            trees |= {g.name: tree(g, top, width, fan, layer.populations.scales[pop.name])
                      for g in into[pop.name] if g.name in names}
    if not trees:
        return layer
    groups = [h for g in layer.synapses.groups for h in (trees[g.name].groups if g.name in trees else [g])]
    first = {t.groups[0].name: t.levels for t in trees.values()}
    report = _report(trees, res, _worst(list(into.values()), trees, res))
    return replace(layer, synapses=replace(layer.synapses, groups=groups),
                   fanin=Fanin([r for t in trees.values() for r in t.relays], first, report))


def _surely_fits(into: list[SynapseGroup], res: Resources) -> bool:
    """Whether a neuron fed by ``into`` fits a core whatever its rows hold: every source an axon and a
    stored, delayed, indexed weight (a cheap bound that spares the row counts of most populations)."""
    sources = sum(g.shape[1] for g in into)
    per_weight = res.weight_bits + res.sparse_index_bits + DELAY_BITS
    return sources <= res.axons_in_per_core and sources * per_weight <= res.synapse_memory_per_core


def _worst(into: list[list[SynapseGroup]], trees: dict[str, Tree], res: Resources) -> np.ndarray:
    """The layer's largest fan-in (row 0) and synapse memory (row 1) of a neuron, before (column 0) and
    after (column 1) its trees, over its populations fed by the groups ``into``."""
    out = np.zeros((2, 2), np.int64)
    for groups in into:
        for col, kept in enumerate((groups, [trees[g.name].groups[-1] if g.name in trees else g for g in groups])):
            costs = [row_costs(g, res) for g in kept]
            for row in (0, 1):
                out[row, col] = max(out[row, col], int(sum((c[row] for c in costs), np.zeros(1, np.int64)).max()))
    return out


def _chosen(into: list[SynapseGroup], costs: dict[str, tuple[np.ndarray, np.ndarray]], spiking: set[str],
            res: Resources, graded_bits: int) -> tuple[set[str], int] | None:
    """The groups to split (names) and how many top relays each may send a neuron; None where the neuron
    fits one core, or where no split leaves room (placement then names the layer)."""
    fan_in = sum(c[0] for c in costs.values())
    bits = sum(c[1] for c in costs.values())
    if fan_in.max(initial=0) <= res.axons_in_per_core and bits.max(initial=0) <= res.synapse_memory_per_core:
        return None
    candidates = sorted((g.name for g in into if not g.feedback and g.source in spiking),
                        key=lambda name: -int(costs[name][0].max(initial=0)))
    for k in range(1, len(candidates) + 1):
        names = set(candidates[:k])
        rest_fan = fan_in - sum(costs[n][0] for n in names)
        rest_bits = bits - sum(costs[n][1] for n in names)
        top = min((res.axons_in_per_core - int(rest_fan.max(initial=0))) // k,
                  (res.synapse_memory_per_core - int(rest_bits.max(initial=0))) // (k * graded_bits))
        if top >= 1:
            return names, top
    return None


def tree(group: SynapseGroup, top: int, width: int, fan: int, scale: float) -> Tree:
    """``group`` as a tree whose neurons each take at most ``top`` top relays: level 1 in blocks of
    ``width`` source columns, each level above summing at most ``fan`` relays (see the module docstring).
    ``scale`` is the target population's: a relay's unit is ``scale / 2^(e+1)`` of the float input."""
    m = sp.csr_matrix(group.mantissa, dtype=np.int64)
    m.eliminate_zeros()
    rows = m.shape[0]
    coo = m.tocoo()
    keys, relay_of = np.unique((coo.col // width).astype(np.int64) * rows + coo.row, return_inverse=True)
    unit = scale / 2.0 ** (group.exp + 1)
    name = f"{group.name}{SUFFIX}1"
    first = sp.csr_matrix((coo.data, (relay_of, coo.col)), shape=(keys.size, m.shape[1]))
    relays = [Relay(name, name, np.arange(keys.size), scale=unit)]
    groups = [replace(group, target=name, mantissa=first, exp=-1, conv=None)]  # keeps its name: its weights
    row_of = keys % rows
    bound = np.asarray(abs(first).sum(axis=1)).ravel()
    leaves = [np.diff(first.indptr)]
    while np.bincount(row_of, minlength=rows).max(initial=0) > top:
        step = min(fan, MESSAGE_MAX // max(int(bound.max()), 1))
        if step < 2:
            raise GraphError(f"a fan-in tree for synapse group '{group.name}' cannot sum its partial sums within "
                             f"{MESSAGE_BITS}-bit graded messages", node=group.target)
        parent, row_of = _parents(row_of, rows, step)
        below, name = name, f"{group.name}{SUFFIX}{len(relays) + 1}"
        n = parent.max() + 1
        relays.append(Relay(name, name, np.arange(n), scale=unit))
        groups.append(SynapseGroup(f"{below}->{name}", below, name, _ones(parent, n), -1, "fanin"))
        bound = np.bincount(parent, weights=bound, minlength=n).astype(np.int64)
        leaves.append(np.bincount(parent, weights=leaves[-1], minlength=n).astype(np.int64))
    final = SynapseGroup(f"{name}->{group.target}", name, group.target, _ones(row_of, rows), group.exp, "fanin",
                         group.error)
    acc, shifted = final.input_bound(bound)
    if acc.max(initial=0) > GRADED_ACC_MAX or shifted.max(initial=0) > GRADED_INPUT_MAX:
        raise GraphError(f"synapse group '{group.name}' needs a fan-in tree, and its worst-case sum "
                         f"{int(shifted.max())} exceeds the {GRADED_INPUT_MAX} a graded input may add (Lava adds "
                         f"it in int32); a larger --headroom gives smaller weights", node=group.target)
    return Tree(relays, groups + [final], len(relays), leaves)


def _parents(row_of: np.ndarray, rows: int, step: int) -> tuple[np.ndarray, np.ndarray]:
    """For relays feeding neurons ``row_of``: each one's parent (chunks of ``step`` per neuron, chunk-major,
    so that a core's slice of parents reads few neurons' relays) and each parent's neuron."""
    order = np.argsort(row_of, kind="stable")
    counts = np.bincount(row_of, minlength=rows)
    rank = np.empty(row_of.size, np.int64)
    rank[order] = np.arange(row_of.size) - np.repeat(np.cumsum(counts) - counts, counts)
    keys, parent = np.unique(rank // step * rows + row_of, return_inverse=True)
    return parent, keys % rows


def _ones(target_of: np.ndarray, n_targets: int) -> sp.csr_matrix:
    """Mantissas 1 from each source ``j`` into ``target_of[j]``: a sum."""
    n = target_of.size
    return sp.csr_matrix((np.ones(n, np.int64), (target_of, np.arange(n))), shape=(n_targets, n))


def _report(trees: dict[str, Tree], res: Resources, worst: np.ndarray) -> FaninReport:
    """The layer's trees and their cost (see :class:`~st2chip.chip.lowering.report.FaninReport`)."""
    relays = {r.name: r.size for t in trees.values() for r in t.relays}
    rate = [1.0 - (1.0 - SPIKE_RATE) ** leaves for t in trees.values() for leaves in t.leaves]
    macs = float(sum(r.sum() for r in rate))  # every relay neuron feeds one synapse: its parent's or the neuron's
    cores = sum(_cores(t.relays[i], t.groups[i], res) for t in trees.values() for i in range(t.levels))
    return FaninReport(res.axons_in_per_core, res.synapse_memory_per_core, (int(worst[0, 0]), int(worst[0, 1])),
                       (int(worst[1, 0]), int(worst[1, 1])), {n: t.levels for n, t in trees.items()}, relays,
                       cores, macs, MAC_PER_AC * macs, max(t.levels for t in trees.values()))


def _cores(relay: Population, into: SynapseGroup, res: Resources) -> int:
    """The fewest cores a relay population takes: by its neurons, its synapse memory and its distinct
    source axons (each must reach some core)."""
    _, bits = row_costs(into, res)
    axons = np.unique(sp.csr_matrix(into.mantissa).indices).size
    return max(-(-relay.size // res.neurons_per_core), -(-int(bits.sum()) // res.synapse_memory_per_core),
               -(-axons // res.axons_in_per_core))


def aligned(before: Plan, plan: Plan) -> Plan:
    """``plan`` (its trees built) with every layer's depth recomputed, each path counting its tree's levels
    (a low-rank relay: one), and each timed group's delay set so that every path into a layer arrives
    together, as passes ``depths`` and ``synapses`` do; ``before``'s depths check that no feedback's
    latency changes."""
    layer_of = {p.name: layer.name for layer in plan.layers for p in layer.populations.members}
    lowrank = {r.name for layer in plan.layers for r in layer.lowrank.relays}
    hosts = {h.name: h for h in plan.hosts}
    senders = set(layer_of) | set(hosts) | {port.name for port in plan.inputs}

    def ahead(layer: LayerPlan, g: SynapseGroup) -> int:
        """Steps between ``g``'s target and the layer's neurons: a low-rank relay's one, a tree's levels."""
        if g.target in lowrank:
            return 1
        return layer.fanin.first.get(g.name, 0) if layer.fanin else 0

    def timed(layer: LayerPlan) -> list[SynapseGroup]:
        """The groups whose delay aligns a path: forward, from an input, a host product or a neuron layer."""
        return [g for g in layer.synapses.groups if not g.feedback and g.source in senders]

    depth: dict[str, int] = {port.name: 0 for port in plan.inputs}
    for name in plan.graph.nodes:
        layer = plan.layer(name)
        if name in hosts:
            depth[name] = max(depth[source] for source in hosts[name].inputs)
        elif layer is not None:
            depth[name] = max(depth[layer_of.get(g.source, g.source)] + 1 + ahead(layer, g) for g in timed(layer))
    layers = [_delayed(layer, timed(layer), depth, before.depth, layer_of, hosts, ahead) for layer in plan.layers]
    return replace(plan, layers=layers, depth=depth)


def _delayed(layer: LayerPlan, timed: list[SynapseGroup], depth: dict[str, int], old: dict[str, int],
             layer_of: dict[str, str], hosts: dict[str, HostProduct],
             ahead: Callable[[LayerPlan, SynapseGroup], int]) -> LayerPlan:
    """``layer`` with each timed group's delay for the new ``depth``; refused where a host product's group
    would need one, a delay exceeds the chip's or a feedback's latency would change."""
    name, syn = layer.name, layer.synapses
    for g in (g for g in syn.groups if g.feedback):
        source = layer_of.get(g.source, g.source)
        if depth[source] - depth[name] != old[source] - old[name]:
            raise GraphError(f"a fan-in tree would change the latency of the feedback from '{source}' from "
                             f"{1 + old[source] - old[name]} to {1 + depth[source] - depth[name]} steps", node=name)
    delay = {g.name: depth[name] - 1 - ahead(layer, g) - depth[layer_of.get(g.source, g.source)] + g.lag
             for g in timed}
    late = {g.source: delay[g.name] for g in timed
            if (g.source in hosts and delay[g.name]) or delay[g.name] > DELAY_MAX}
    if late:
        raise GraphError(f"after a fan-in tree, the path from {', '.join(late)} needs a delay of "
                         f"{max(late.values())} steps (a host product's values take none; synapses delay at most "
                         f"{DELAY_MAX})", node=name)
    storage = dict(syn.storage)
    groups = []
    for g in syn.groups:
        d = delay.get(g.name, g.delay)
        if d != g.delay:
            if g.conv is not None:
                storage[g.name] = "matrix: delayed to align a fan-in tree's path (lava's Conv has no delay)"
            g = replace(g, delay=d, conv=None)
        groups.append(g)
    labels: dict[str, int] = {}
    for g in timed:
        source = layer_of.get(g.source, g.source)
        label = f"{source} (+{g.lag} lag)" if g.lag else source
        labels[label] = max(labels.get(label, 0), delay[g.name])
    return replace(layer, synapses=replace(syn, groups=groups, storage=storage,
                                           delays={k: d for k, d in labels.items() if d}))
