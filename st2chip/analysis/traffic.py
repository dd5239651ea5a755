r"""Operations and spike traffic of a placed ChipGraph, counted from real traces, per layer and per core.

Conventions (docs/energy.md): a spike of source neuron :math:`j` costs one
accumulate (AC) per **non-zero** outgoing weight in each synapse group it feeds; a graded
(``analog``) input costs one MAC per non-zero weight in every step where its value is non-zero.
An event is a non-zero entry of a ``(samples, steps, n)`` trace.

Routing follows the placement (:func:`st2chip.chip.placement.place`): a spike travels once to
every **destination core** that holds a target neuron it has a non-zero weight onto (the axon
fan-out the placement counts). Each message is classed by where it comes from:

- ``local``: source neuron on the same core;
- ``core``: another core of the same chip;
- ``chip``: a core of another chip;
- ``host``: an input port (the host injects it: boundary traffic).

Each message between cores also takes the mesh path between them (:mod:`st2chip.chip.mesh`, dimension-order
routing over the placement's ``(chip, x, y)`` positions): its on-chip hops east-west (``hops_x``) and
north-south (``hops_y``) and its chip-to-chip links (``chip_links``) are counted with it.

Synaptic ops and messages are charged to the core (and layer) of the target neurons, neuron
updates (every neuron, every step) and emitted spikes to the neuron's own core. Everything is
kept per ``(layer, core)`` so that sums over cores and sums over layers agree exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Callable

import numpy as np
import scipy.sparse as sp
import torch

from st2chip.attention import attention_ops
from st2chip.chip.chipgraph import ChipGraph, SynapseGroup
from st2chip.chip.placement import Placement
from st2chip.errors import InputError
from st2chip.graph.product import SpikeProduct
from st2chip.traces import Traces

ROUTES = ("local", "core", "chip", "host")
HOPS = ("hops_x", "hops_y", "chip_links")
QUANTITIES = ("acs", "macs", "neuron_updates", "spikes", *(f"routed_{r}" for r in ROUTES), *HOPS)


@dataclass
class GroupCounts:
    """Operations of one synapse group over the whole batch (integers, not averaged)."""

    name: str
    source: str
    target: str
    layer: str
    source_kind: str  # "spike" or "analog" input port, or "population"
    nnz: int
    acs: int
    macs: int
    routed: int


@dataclass
class HostCounts:
    r"""A host partition's own work over the whole batch: the attention product's accumulates.

    Per step and head, forming :math:`S = Q K^\top` costs one accumulate per coincident spike pair
    (:math:`\sum S`), and :math:`S V` one per spike of V meeting a non-zero score
    (:math:`\sum_{i,j} [S_{ij} > 0] \sum_d V_{jd}`); the spikes it reads are routed to the host from
    the input layers' cores.
    """

    name: str
    ops: int
    spikes_in: int


@dataclass
class BoundaryCounts:
    """Values crossing one host <-> neurocore boundary per time step (mean over samples), counted from traces:
    an input port's non-zero values into the chip, or a host partition's spikes read off the chip
    (``from_chip``) and non-zero counts sent back (``to_chip``)."""

    name: str
    kind: str  # "spike" or "analog" input port, or "host"
    to_chip: np.ndarray  # (steps,)
    from_chip: np.ndarray  # (steps,)


@dataclass
class OpCounts:
    """Integer counts over ``samples`` x ``steps``: ``table[q]`` is ``(layers, cores)`` for each of :data:`QUANTITIES`.

    ``neurons`` is ``(layers, cores)`` too: how many of each layer's neurons sit on each core.
    """

    samples: int
    steps: int
    layers: list[str]
    placement: Placement
    table: dict[str, np.ndarray]
    neurons: np.ndarray
    groups: list[GroupCounts]
    hosts: list[HostCounts]
    boundaries: list[BoundaryCounts]

    def by_layer(self, quantity: str) -> np.ndarray:
        return self.table[quantity].sum(axis=1)

    def by_core(self, quantity: str) -> np.ndarray:
        return self.table[quantity].sum(axis=0)


def batch_shape(traces: Traces) -> tuple[int, int]:
    """(samples, steps) shared by every trace array; InputError names the one that differs."""
    arrays = {f"input '{k}'": v for k, v in traces.inputs.items()} | \
             {f"layer '{k}'": v for k, v in traces.spikes.items()}
    if not arrays:
        raise InputError(f"traces from '{traces.backend}': no input or spike arrays")
    shapes = {k: np.shape(v) for k, v in arrays.items()}
    first, shape = next(iter(shapes.items()))
    for key, other in shapes.items():
        if len(other) != 3 or other[:2] != shape[:2]:
            raise InputError(f"traces from '{traces.backend}': {key} has shape {other}, "
                             f"expected (samples, steps, n) matching {first} {shape}")
    return int(shape[0]), int(shape[1])


def _layer_spikes(chip: ChipGraph, traces: Traces, layer: str) -> np.ndarray:
    if layer not in traces.spikes:
        raise InputError(f"traces from '{traces.backend}': no spikes for layer '{layer}'")
    arr = np.asarray(traces.spikes[layer])
    if arr.shape[2] != chip.layer_size(layer):
        raise InputError(f"traces from '{traces.backend}': layer '{layer}' has {arr.shape[2]} neurons, "
                         f"the chip graph {chip.layer_size(layer)}")
    return arr


def _source_values(chip: ChipGraph, traces: Traces, source: str) -> tuple[str, np.ndarray]:
    """Source kind and what it sends, ``(samples, steps, n)``: spikes, or graded values (an analog port, a
    relay, a host product's counts, recomputed from its input layers' spikes)."""
    host = next((h for h in chip.hosts if h.name == source), None)
    if host is not None:
        q, k, v = (torch.from_numpy(_layer_spikes(chip, traces, layer).astype(np.float64)) for layer in host.inputs)
        return "analog", SpikeProduct(host.heads, host.tokens, host.dim, 1.0, host.inputs).counts(q, k, v).numpy()
    port = next((i for i in chip.inputs if i.name == source), None)
    if port is None:
        pop = chip.population(source)
        return "analog" if pop.graded else "population", _layer_spikes(chip, traces, pop.layer)[:, :, pop.index]
    if source not in traces.inputs:
        raise InputError(f"traces from '{traces.backend}': no values for input '{source}'")
    values = np.asarray(traces.inputs[source])
    if values.shape[2] != port.size:
        raise InputError(f"traces from '{traces.backend}': input '{source}' has {values.shape[2]} "
                         f"elements, the chip graph {port.size}")
    return port.kind, values


def _per_step(values: np.ndarray) -> np.ndarray:
    """Non-zero entries of ``(samples, steps, n)`` per step, mean over samples."""
    return np.count_nonzero(values, axis=(0, 2)) / values.shape[0]


def _boundaries(chip: ChipGraph, traces: Traces, source_values: Callable[[str], tuple[str, np.ndarray]]
                ) -> list[BoundaryCounts]:
    """What crosses each host <-> neurocore boundary per step: every input port (values in) and every host
    partition (its input layers' spikes out to the host, its non-zero counts back in);
    ``source_values`` is :func:`_source_values` for this batch."""
    out = []
    for port in chip.inputs:
        kind, values = source_values(port.name)
        out.append(BoundaryCounts(port.name, kind, _per_step(values), np.zeros(values.shape[1])))
    for h in chip.hosts:
        spikes = sum(_per_step(_layer_spikes(chip, traces, layer)) for layer in h.inputs)
        out.append(BoundaryCounts(h.name, "host", _per_step(source_values(h.name)[1]), spikes))
    return out


def _route_class(src_core: np.ndarray | None, dst_core: np.ndarray, chip_of: np.ndarray) -> np.ndarray:
    """Index into :data:`ROUTES` of each (source core, destination core) message (``chip_of``: each core's chip)."""
    if src_core is None:
        return np.full(dst_core.shape, ROUTES.index("host"))
    same_chip = chip_of[src_core] == chip_of[dst_core]
    return np.where(src_core == dst_core, ROUTES.index("local"),
                    np.where(same_chip, ROUTES.index("core"), ROUTES.index("chip")))


def _group_traffic(group: SynapseGroup, activity: np.ndarray, dst: np.ndarray, src: np.ndarray | None,
                   placement: Placement) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per destination core: synaptic ops ``(n_cores,)``, messages by route ``(len(ROUTES), n_cores)`` and their
    hops and chip links ``(len(HOPS), n_cores)``.

    ``dst`` is the core of each target neuron, ``src`` of each source neuron (None: an input port).
    """
    n_cores = placement.n_cores
    w = sp.coo_matrix(group.mantissa)
    keep = w.data != 0
    rows, cols = w.row[keep], w.col[keep]
    cores = dst[rows]
    ops = np.bincount(cores, weights=activity[cols], minlength=n_cores)
    pairs = np.unique(cores.astype(np.int64) * group.shape[1] + cols)  # one message per (core, source neuron)
    pair_core, pair_src = pairs // group.shape[1], pairs % group.shape[1]
    slots = placement.slots()
    chip_of = slots // placement.resources.cores_per_chip
    route = _route_class(None if src is None else src[pair_src], pair_core, chip_of)
    flat = np.bincount(route * n_cores + pair_core, weights=activity[pair_src], minlength=len(ROUTES) * n_cores)
    hops = np.zeros((len(HOPS), n_cores))
    if src is not None:
        for i, count in enumerate(placement.mesh.hops(slots[src[pair_src]], slots[pair_core])):
            hops[i] = np.bincount(pair_core, weights=count * activity[pair_src], minlength=n_cores)
    return (np.rint(ops).astype(np.int64), np.rint(flat).astype(np.int64).reshape(len(ROUTES), n_cores),
            np.rint(hops).astype(np.int64))


def count_ops(chip: ChipGraph, traces: Traces, placement: Placement) -> OpCounts:
    """Count synaptic ops, neuron updates, emitted spikes and routed messages per (layer, core)."""
    samples, steps = batch_shape(traces)
    layers = chip.layers()
    row = {layer: i for i, layer in enumerate(layers)}
    n_cores = placement.n_cores
    core_of = placement.assignment()
    table = {q: np.zeros((len(layers), n_cores), dtype=np.int64) for q in QUANTITIES}
    neurons = np.zeros((len(layers), n_cores), dtype=np.int64)
    for pop in chip.populations:
        neurons[row[pop.layer]] += np.bincount(core_of[pop.name], minlength=n_cores)
    table["neuron_updates"] = neurons * steps * samples
    for pop in chip.populations:
        if not pop.readout:
            spikes = np.count_nonzero(_layer_spikes(chip, traces, pop.layer)[:, :, pop.index], axis=(0, 1))
            table["spikes"][row[pop.layer]] += np.bincount(core_of[pop.name], weights=spikes,
                                                           minlength=n_cores).astype(np.int64)
    # what each source sends, read (a host's counts computed) once, however many groups it feeds
    source_values = cache(lambda source: _source_values(chip, traces, source))
    groups = []
    for sg in chip.synapses:
        kind, values = source_values(sg.source)
        activity = np.count_nonzero(values, axis=(0, 1))
        target = chip.population(sg.target)
        ops, routed, hops = _group_traffic(sg, activity.astype(np.float64), core_of[sg.target],
                                           core_of.get(sg.source), placement)
        r = row[target.layer]
        table["macs" if kind == "analog" else "acs"][r] += ops
        for i, route in enumerate(ROUTES):
            table[f"routed_{route}"][r] += routed[i]
        for i, quantity in enumerate(HOPS):
            table[quantity][r] += hops[i]
        total = int(ops.sum())
        groups.append(GroupCounts(name=sg.name, source=sg.source, target=sg.target, layer=target.layer,
                                  source_kind=kind, nnz=sg.nnz, acs=0 if kind == "analog" else total,
                                  macs=total if kind == "analog" else 0, routed=int(routed.sum())))
    hosts = []
    for h in chip.hosts:
        qkv = [_layer_spikes(chip, traces, layer) for layer in h.inputs]
        hosts.append(HostCounts(h.name, _product_ops(h, *qkv), int(sum(x.sum() for x in qkv))))
        for layer, spikes in zip(h.inputs, qkv):  # every spike of Q, K and V also travels to the host
            for pop in chip.layer_populations(layer):
                sent = np.count_nonzero(spikes[:, :, pop.index], axis=(0, 1))
                table["routed_host"][row[layer]] += np.bincount(core_of[pop.name], weights=sent,
                                                                minlength=n_cores).astype(np.int64)
    return OpCounts(samples=samples, steps=steps, layers=layers, placement=placement, table=table,
                    neurons=neurons, groups=groups, hosts=hosts, boundaries=_boundaries(chip, traces, source_values))


def measured_activity(chip: ChipGraph, traces: Traces) -> dict[str, np.ndarray]:
    """Per population: how many non-zero values each neuron sent in ``traces`` (spikes, or a relay's graded
    values), for :func:`~st2chip.chip.placement.place`'s ``activity``; a readout sends nothing."""
    return {p.name: np.zeros(p.size) if p.readout else
            np.count_nonzero(_source_values(chip, traces, p.name)[1], axis=(0, 1)).astype(np.float64)
            for p in chip.populations}


def _product_ops(host, q: np.ndarray, k: np.ndarray, v: np.ndarray) -> int:
    """Accumulates of the attention product over a batch of ``(B, T, tokens * dim)`` spikes (see :class:`HostCounts`)."""
    flat = (torch.from_numpy(x.astype(np.float64)) for x in (q, k, v))
    return int(round(attention_ops(*flat, tokens=host.tokens, heads=host.heads)))
