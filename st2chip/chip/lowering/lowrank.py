r"""Pass ``lowrank``: a DSP low-rank path ``W = U V`` multiplied out, or kept factored through a relay.

A path that ends in ``Affine V (r x n) -> Affine U (m x r)`` (pass ``paths`` found its
factors) is either multiplied out (``product``: one ``m x n`` group, pass ``synapses``)
or kept ``factored``: a :class:`~st2chip.chip.chipgraph.Relay` of ``r`` graded neurons,
a group V from each source population into it and a group U (graded input, MACs) from
it into each population of the layer; the relay adds one pipeline step, which the other
paths into the layer absorb as synaptic delay (pass ``depths``). ``lowrank="auto"``
decides per path by the cost model of :func:`costs`; the layer's report gives both
costs, the choice and why. Paths through the same V node (branches of a residual sum
into it) share one relay, fed by a V group from each; the U groups go with the first
path's key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from importlib import resources

import nir
import numpy as np
import scipy.sparse as sp

from st2chip.chip import encoding
from st2chip.chip.chipgraph import (GRADED_ACC_MAX, GRADED_INPUT_MAX, MESSAGE_BITS, WEIGHT_EXP_RANGE, Population,
                                    Relay, SynapseGroup)
from st2chip.chip.lowering.plan import Block, Factors, LayerPlan, Lowrank, PathKey, Plan, Refused
from st2chip.chip.lowering.report import FactoredErrors, LowrankChoice, LowrankCosts
from st2chip.chip.lowering.synapses import stored, take
from st2chip.errors import GraphError

SPIKE_RATE = 0.1         # assumed spikes per source neuron per step for the low-rank cost model (no traces at lowering)


def _mac_per_ac(profile: str = "45nm") -> float:
    """A MAC's energy in accumulates, from a bundled energy profile (``st2chip/analysis/profiles``)."""
    data = json.loads((resources.files("st2chip.analysis") / "profiles" / f"{profile}.json").read_text("utf-8"))
    return data["E_MAC_pJ"] / data["E_AC_pJ"]


MAC_PER_AC = _mac_per_ac()


def lowrank(plan: Plan) -> Plan:
    """Every layer's :class:`~st2chip.chip.lowering.plan.Lowrank`: its relays, factored groups and choices."""
    return plan.map_layers(lambda p, layer: without_factored(settled(replace(layer, lowrank=chosen(p, layer)))))


def settled(layer: LayerPlan) -> LayerPlan:
    """``layer`` whose deferred low-rank products (:class:`~st2chip.chip.lowering.plan.Incoming`) are placed in
    their columns of the folded weight where they stay multiplied out, and dropped where kept factored.

    Each is multiplied out, folded and canonical, and its columns of the weight are empty: the sum places
    its entries, values unchanged, as pass ``paths`` would have stacked them.
    """
    deferred = layer.folded.deferred
    if not deferred:
        return layer
    weight = layer.folded.weight
    offsets = dict(zip(layer.incoming.keys, np.cumsum([0, *layer.incoming.widths[:-1]])))
    for key, product in deferred.items():
        if key in layer.lowrank.factored:
            continue
        product = product.multiplied_out(key.source, layer.name)
        placed = sp.csr_matrix((product.data, product.indices + int(offsets[key]), product.indptr),
                               shape=weight.shape)
        weight = sp.csr_matrix(weight + placed)
    return replace(layer, incoming=replace(layer.incoming, weight=weight, deferred={}),
                   folded=replace(layer.folded, weight=weight, deferred={}))


def without_factored(layer: LayerPlan) -> LayerPlan:
    """``layer`` whose folded weight no longer stores the columns of the paths kept factored.

    Their multiplied-out ``U V`` set the populations' scales (pass ``populations``) and nothing reads it
    after this pass (the relay's groups carry the path), yet it is most of a DSP model's weights (the
    CIFAR-size DSP ST: 241 M of its 392 M folded floats): dropping it here keeps it out of every later
    pass's peak.
    The other columns, and the shape, stay as they were.
    """
    if not layer.lowrank.factored:
        return layer
    weight = layer.folded.weight
    keep = np.ones(weight.shape[1], dtype=bool)
    offset = 0
    for key, width in zip(layer.incoming.keys, layer.incoming.widths):
        if key in layer.lowrank.factored:
            keep[offset:offset + width] = False
        offset += width
    kept = np.flatnonzero(keep[weight.indices])
    indptr = np.searchsorted(kept, weight.indptr)  # entries kept before each row's start
    rest = sp.csr_matrix((weight.data[kept], weight.indices[kept], indptr), shape=weight.shape)
    rest.indices, rest.indptr = rest.indices.astype(weight.indices.dtype), rest.indptr.astype(weight.indptr.dtype)
    return replace(layer, incoming=replace(layer.incoming, weight=rest), folded=replace(layer.folded, weight=rest))


def costs(u: sp.csr_matrix, v: sp.csr_matrix, product_nnz: int) -> LowrankCosts:
    r"""Synapse memory and synaptic operations per step of a path ``W = U V``, multiplied out or factored.

    Weights stored: ``nnz(U V)`` (product) against ``nnz(U) + nnz(V)`` (at most
    :math:`r(m+n)`). Operations per step, with every source neuron spiking at
    rate :math:`\rho` = :data:`SPIKE_RATE`: product :math:`\rho\,\mathrm{nnz}(W)`
    accumulates; factored :math:`\rho\,\mathrm{nnz}(V)` accumulates into the relay
    plus :math:`\rho_r\,\mathrm{nnz}(U)` MACs out of it, where a relay neuron with
    mean fan-in :math:`k = \mathrm{nnz}(V)/r` sends whenever one of its inputs
    spiked, :math:`\rho_r = 1-(1-\rho)^k`; a MAC counts :data:`MAC_PER_AC`
    accumulates (``ops``: accumulate-equivalents per step).
    """
    rank = max(v.shape[0], 1)
    relay_rate = 1.0 - (1.0 - SPIKE_RATE) ** (v.nnz / rank)
    acs, macs = SPIKE_RATE * v.nnz, relay_rate * u.nnz
    return LowrankCosts(int(product_nnz), SPIKE_RATE * product_nnz, int(u.nnz + v.nnz), acs, macs,
                        acs + MAC_PER_AC * macs)


def choose(mode: str, cost: LowrankCosts) -> tuple[bool, str]:
    """Factored or not, and why: ``auto`` keeps the factors when the ratio of stored weights times the ratio
    of operations (factored / product) is below 1, i.e. memory saved outweighs operations added."""
    if mode != "auto":
        return mode == "factored", f"lowrank={mode}"
    mem = cost.factored_weights / max(cost.product_weights, 1)
    ops = cost.factored_ops / max(cost.product_ops, 1e-12)
    verdict = "factored" if mem * ops < 1 else "product"
    return verdict == "factored", (f"{verdict}: factored stores {mem:.2f}x the weights at {ops:.2f}x the "
                                   f"synaptic-op energy (product of ratios {mem * ops:.2f} "
                                   f"{'<' if verdict == 'factored' else '>='} 1)")


def chosen(plan: Plan, layer: LayerPlan) -> Lowrank:
    """Decide and build the factored form of each low-rank path into ``layer``; ``lowrank="factored"``
    raises where a path cannot be factored."""
    name, mode, paths = layer.name, plan.options.lowrank, layer.incoming.lowrank
    out = Lowrank()
    by_relay: dict[str, dict[PathKey, Factors]] = {}
    for key, found in paths.items():
        if isinstance(found, Refused):
            if mode == "factored":
                raise GraphError(f"the low-rank path from '{key.source}' cannot be kept factored: {found.why}",
                                 node=name)
            out.choices[key.source] = LowrankChoice("product", f"not factorable: {found.why}")
        else:
            by_relay.setdefault(found.relay, {})[key] = found
    stored = _stored_per_key(layer) if by_relay else {}
    for relay_name, found in by_relay.items():
        keys = list(found)
        blocked = [k.source for k, p in paths.items() if k not in found and relay_name in p.nodes]
        twice = len({k.source for k in keys}) < len(keys)
        if blocked or twice:
            why = (f"a path from {', '.join(blocked)} through it cannot be factored" if blocked
                   else "two paths from one source (different lags) reach it")
            if mode == "factored":
                raise GraphError(f"the low-rank path through '{relay_name}' cannot be kept factored: {why}",
                                 node=name)
            out.choices[relay_name] = LowrankChoice("product", f"not factorable: {why}")
            continue
        out.choices[relay_name] = _relay_choice(plan, layer, relay_name, found, stored, out)
    return out


def _stored_per_key(layer: LayerPlan) -> dict[PathKey, int]:
    """How many weights the layer's multiplied-out weight stores in each key's columns (a deferred product's,
    for a key held apart)."""
    weight = layer.folded.weight
    indices = weight.indices[:weight.nnz]
    ends = np.cumsum(layer.incoming.widths)
    below = [0, *(int(np.count_nonzero(indices < end)) for end in ends[:-1]), indices.size]
    return {key: below[i + 1] - below[i] + (layer.folded.deferred[key].nnz if key in layer.folded.deferred else 0)
            for i, key in enumerate(layer.incoming.keys)}


def product_nnz(graph: nir.NIRGraph, found: dict[PathKey, Factors], stored: dict[PathKey, int],
                u: sp.csr_matrix) -> int:
    """``count_nonzero(U V)`` of the paths through one relay (``V`` their factors side by side), without
    multiplying it out again where pass ``paths`` did.

    Pass ``paths`` multiplied each path out as ``(U V) P``, ``P`` whatever lies between V and the source.
    Where that is only permutations (any Affine after V is one: a factorable path's only other Affines are
    U and V), each sum is the one ``U (V P)`` forms, term by term in the same order (a permutation's
    products are copies), and both drop the zeros: the path's columns of the multiplied-out weight store
    exactly the non-zeros of ``U (V P)`` (pass ``fold`` scales them in place, dropping none). A path through
    anything else (a Scale, a pooling) is multiplied out again here, since its sums may round differently.
    """
    total = 0
    for key, factors in found.items():
        if all(isinstance(graph.nodes[node], nir.Affine) for node in factors.nodes[2:]):
            total += stored[key]
        else:
            total += sp.csr_matrix(u @ factors.v).count_nonzero()
    return total


def _relay_choice(plan: Plan, layer: LayerPlan, relay_name: str, found: dict[PathKey, Factors],
                  stored: dict[PathKey, int], out: Lowrank) -> LowrankChoice:
    """The choice for the factorable paths through V node ``relay_name``; a relay kept factored goes into
    ``out`` with its groups."""
    keys = list(found)
    u = found[keys[0]].u
    v = sp.csr_matrix(sp.hstack([found[k].v for k in keys], format="csr"))
    v.sum_duplicates()  # canonical: sorted indices (products leave them unsorted)
    blocks, owner, offset = [], {}, 0
    for k in keys:
        for block in plan.blocks(k.source):
            blocks.append(Block(block.source, offset + block.index))
            owner[block.source] = k
        offset += found[k].v.shape[1]
    u_fold = sp.csr_matrix(sp.diags(layer.folded.factor) @ u)
    u_fold.sum_duplicates()  # canonical: sorted indices
    cost = costs(u, v, product_nnz(plan.graph, found, stored, u))
    keep, why = choose(plan.options.lowrank, cost)
    choice = LowrankChoice("product", why, relay_name, int(v.shape[0]), (int(u_fold.shape[0]), int(v.shape[1])),
                           cost, [k.source for k in keys] if len(keys) > 1 else None)
    if not keep:
        return choice
    built = factored_groups(relay_name, v, u_fold, layer.populations.members, layer.populations.scales, blocks)
    if isinstance(built, str):
        if plan.options.lowrank == "factored":
            raise GraphError(f"the low-rank path through '{relay_name}' cannot be kept factored: {built}",
                             node=layer.name)
        return replace(choice, why=f"product: {built}")
    out.relays.append(built.relay)
    for k in keys:
        out.factored[k] = [g for g in built.groups if g.target == relay_name and owner[g.source] == k]
    out.factored[keys[0]] += [g for g in built.groups if g.source == relay_name]
    return replace(choice, chosen="factored", factored=built.errors)


@dataclass
class Built:
    """A relay kept factored: the relay, its V groups (one per source population; delay set by pass
    ``synapses``) and U groups (one per target population), and their errors."""

    relay: Relay
    groups: list[SynapseGroup]
    errors: FactoredErrors


def factored_groups(relay_name: str, v: sp.csr_matrix, u_fold: sp.csr_matrix, members: list[Population],
                    scales: dict[str, int], blocks: list[Block]) -> Built | str:
    """The relay for ``V`` and ``U_fold`` with its groups, or why the chip's ranges do not allow it.

    The relay's unit is ``R = 2^{e_V} · 254 / max|V|`` (``x ≈ R · V s``); U's groups
    carry ``U_fold / R`` at their population's scale. ``e_V`` is 0 unless U would
    then need an exponent outside [-8, 7] or a bound of
    :meth:`~st2chip.chip.chipgraph.ChipGraph._check_relays` would be broken: then the
    nearest ``e_V`` that works (below 0 the relay drops low bits: floor).
    """
    v = sp.csr_matrix(v)
    vmax = float(np.abs(v.data).max(initial=0.0))
    if vmax == 0 or u_fold.nnz == 0:
        return "a factor is all zero"
    lo, hi = WEIGHT_EXP_RANGE
    for e_v in (*range(0, lo - 1, -1), *range(1, hi + 1)):
        built = _with_relay_exponent(relay_name, v, u_fold, members, scales, blocks, e_v,
                                     2.0**e_v * encoding.MANT_FULL / vmax)
        if built is not None:
            return built
    return (f"no relay exponent keeps U's exponent within {list(WEIGHT_EXP_RANGE)} and the graded messages "
            f"within {MESSAGE_BITS} bits and int32 sums")


def _with_relay_exponent(relay_name: str, v: sp.csr_matrix, u_fold: sp.csr_matrix, members: list[Population],
                         scales: dict[str, int], blocks: list[Block], e_v: int, r_scale: float) -> Built | None:
    """The relay and its groups at relay exponent ``e_v`` (unit ``r_scale``); None where a range breaks.

    The product errors (per population, from the factors' Gram matrices: :func:`~st2chip.chip.encoding.lowrank_errors`)
    are computed only once every range holds.
    """
    u_parts = [(pop, take(u_fold, pop.index, axis=0)) for pop in members]
    needs = [encoding.exp_needed(sp.csr_matrix(w / r_scale), scales[pop.name]) for pop, w in u_parts]
    if min(needs) < WEIGHT_EXP_RANGE[0] or max(needs) > WEIGHT_EXP_RANGE[1]:
        return None
    relay = Relay(relay_name, relay_name, np.arange(v.shape[0]), scale=r_scale)
    groups, v_errors, u_errors, u_values = [], [], [], []
    for block in blocks:
        mant, exp, err = encoding.quantize(sp.csr_matrix(take(v, block.index, axis=1)), r_scale)
        groups.append(SynapseGroup(f"{block.source}->{relay_name}", block.source, relay_name, stored(mant), exp,
                                   "factored", err))
        v_errors.append(err)
    bound = sum(g.input_bound()[1] for g in groups)
    if bound.max(initial=0) >= 2 ** (MESSAGE_BITS - 1):
        return None
    for pop, w in u_parts:
        mant, exp, err = encoding.quantize(sp.csr_matrix(w / r_scale), scales[pop.name])
        group = SynapseGroup(f"{relay_name}->{pop.name}", relay_name, pop.name, stored(mant), exp, "factored", err)
        acc, shifted = group.input_bound(bound)
        if acc.max(initial=0) > GRADED_ACC_MAX or shifted.max(initial=0) > GRADED_INPUT_MAX:
            return None
        groups.append(group)
        u_errors.append(err)
        u_values.append(sp.csr_matrix(mant, dtype=np.float64) * (2.0 * 2.0**exp / scales[pop.name] * r_scale))
    v_eff = _dequantized(groups[:len(blocks)], v.shape, [b.index for b in blocks], r_scale)
    product_errors = encoding.lowrank_errors([(u_eff, w) for u_eff, (_, w) in zip(u_values, u_parts)], v_eff, v)
    return Built(relay, groups, FactoredErrors(r_scale, max(v_errors), max(u_errors), max(product_errors), e_v))


def _dequantized(groups: list[SynapseGroup], shape: tuple[int, int], cols: list[np.ndarray], scale: float
                 ) -> sp.csr_matrix:
    """The float V the relay's groups stand for (CSR ``(r, n)``): ``2 m 2^e / scale`` per source block."""
    rows, columns, values = [], [], []
    for g, c in zip(groups, cols):
        m = sp.coo_matrix(g.mantissa)
        rows.append(m.row)
        columns.append(np.asarray(c)[m.col])
        values.append(encoding.weight_value(m.data, g.exp, scale))
    return sp.csr_matrix((np.concatenate(values), (np.concatenate(rows), np.concatenate(columns))), shape=shape)
