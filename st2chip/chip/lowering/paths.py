"""Pass ``paths``: every chain of linear nodes into a neuron layer, multiplied out.

A chain between two neuron layers (Affine, Scale, Conv1d/Conv2d, SumPool2d,
AvgPool2d, Flatten, Delay; a DSP low-rank layer exported as U then V) becomes one
matrix, biases carried through (:mod:`st2chip.graph.linear`). A linear node with
several input edges (NIR adds a node's inputs: a residual sum) splits the walk into
one path per branch. Paths with the same source, lag and recurrence
(:class:`~st2chip.chip.lowering.plan.PathKey`) add up; the layer's incoming weight is
their matrices side by side (:class:`~st2chip.chip.lowering.plan.Incoming`). A path
through a back edge (:mod:`st2chip.graph.reading`) is recurrent. A path that is one
Conv2d is noted (pass ``synapses`` may store it as a convolution), and so is a
low-rank path: its factors ``U``, ``V`` for pass ``lowrank``, or why it has none.
An Affine that only reorders (a permutation matrix, e.g. a bundle's token reshape)
is not a factor. A path that pass ``lowrank`` may keep factored is not multiplied
out here: it is handed on as a :class:`~st2chip.chip.lowering.lowrank_product.LowrankProduct`
of its factors, and its columns of the layer's weight stay empty.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import nir
import numpy as np
import scipy.sparse as sp

from st2chip import limits
from st2chip.chip.lowering.lowrank_product import BYTES_PER_WEIGHT, LowrankProduct, canonical
from st2chip.chip.lowering.plan import Factors, Incoming, PathKey, Plan, Refused
from st2chip.errors import GraphError
from st2chip.graph import linear
from st2chip.graph.product import SpikeProduct
from st2chip.graph.reading import SPIKING, delay_steps

def paths(plan: Plan) -> Plan:
    """Every layer's :class:`~st2chip.chip.lowering.plan.Incoming`."""
    return plan.map_layers(lambda p, layer: replace(layer, incoming=incoming(p, layer.name)))


@dataclass
class Chain:
    """One chain of linear nodes from a source (Input or neuron) into a neuron layer, multiplied out."""

    source: str
    weight: sp.csr_matrix | LowrankProduct | None  # None: the chain holds no weights (only Flatten / Delay)
    bias: np.ndarray | None
    affines: int  # Affine nodes on the chain (more than one: a low-rank U·V product)
    lag: int  # steps the chain's Delay nodes hold the signal
    recurrent: bool  # the chain crosses a back edge
    kinds: tuple[str, ...]  # node types on the chain, source side first
    conv: str | None = None  # the chain's one weighted node, when that is a Conv2d
    factors: Factors | None = None  # the chain ends in Affine V -> Affine U: the two factors (see _chain)
    nodes: tuple[str, ...] = ()  # the weighted nodes on the chain


@dataclass(frozen=True)
class _Trail:
    """What a walk back from a neuron layer has collected so far (target side first)."""

    recurrent: bool
    weight: sp.csr_matrix | None = None
    bias: np.ndarray | None = None
    affines: int = 0
    lag: int = 0
    kinds: tuple[str, ...] = ()
    weighted: tuple[str, ...] = ()
    mats: tuple[sp.csr_matrix, ...] = ()  # each weighted node's matrix, in the order of ``weighted``
    affines_at: tuple[int, ...] = ()  # positions in ``weighted`` of the Affines that are not permutations
    branched_at: int | None = None  # weighted nodes collected when the walk first split (a residual sum)
    pending: tuple[sp.csr_matrix, ...] = ()  # V, then what only reorders: ``weight`` (U) not yet multiplied by them
    statistics: list | None = None  # of U times the pending V, shared by the branches below V (LowrankProduct)


def chains(graph: nir.NIRGraph, start: str, target: str, preds: dict[str, list[str]], back: set,
           dt: float) -> list[Chain]:
    """Walk back from node ``start`` (which feeds ``target``) through linear nodes to neurons or Inputs.

    A linear node with several input edges (NIR adds a node's inputs: a residual sum)
    splits the walk into one path per branch; the part they share is in every
    path's weight, its bias only in the first path's.
    """
    return _walk(graph, start, preds, back, dt, _Trail(recurrent=(start, target) in back))


def _walk(graph: nir.NIRGraph, name: str, preds: dict[str, list[str]], back: set, dt: float,
          trail: _Trail) -> list[Chain]:
    while True:
        node = graph.nodes[name]
        if isinstance(node, (nir.Affine, nir.Scale, *linear.SPATIAL)):
            trail = _weighted(name, node, trail)
        elif isinstance(node, nir.Delay):
            steps = np.unique(delay_steps(name, node, dt))
            if steps.size > 1:
                raise GraphError(f"per-element delays differ ({steps.tolist()} steps); a synapse group on the "
                                 f"chip delays all its synapses alike so far", node=name, field="delay")
            trail = replace(trail, lag=trail.lag + int(steps[0]))
        elif not isinstance(node, nir.Flatten):
            return [_chain(graph, name, trail)]
        sources = preds.get(name, [])
        if not sources:
            raise GraphError("a linear node between neuron layers needs an input edge", node=name)
        if len(sources) == 1:
            trail = replace(trail, recurrent=trail.recurrent or (sources[0], name) in back)
            name = sources[0]
            continue
        found = []
        for i, src in enumerate(sources):
            bias = trail.bias if i == 0 or trail.bias is None else np.zeros_like(trail.bias)
            found += _walk(graph, src, preds, back, dt, replace(
                trail, bias=bias, recurrent=trail.recurrent or (src, name) in back,
                branched_at=len(trail.weighted) if trail.branched_at is None else trail.branched_at))
        return found


def _weighted(name: str, node: nir.NIRNode, trail: _Trail) -> _Trail:
    """The trail with a weighted node's matrix and bias multiplied in (source side of what it holds).

    A low-rank ``U V`` stays apart while only permutations without bias follow V
    (``pending``): the first node that does more multiplies it out as it would have
    been, product after product.
    """
    if isinstance(node, nir.Affine):
        w, b = sp.csr_matrix(node.weight, copy=True), node.bias  # folded in place later: never the graph's
    elif isinstance(node, nir.Scale):
        w, b = sp.diags(node.scale, format="csr"), np.zeros(node.scale.size)
    else:
        w, b = linear.as_matrix(name, node, tuple(int(d) for d in node.input_type["input"]))
    permutation = isinstance(node, nir.Affine) and _is_permutation(w)
    affine = isinstance(node, nir.Affine) and not permutation
    if trail.pending and permutation and not np.any(b):
        # its zero bias through U V adds +0.0 to the bias, as multiplying out would
        return replace(trail, bias=trail.bias + 0.0, kinds=(*trail.kinds, "Permutation"),
                       weighted=(*trail.weighted, name), mats=(*trail.mats, w), pending=(*trail.pending, w))
    trail = _multiplied(trail)
    if affine and trail.affines_at == (0,) and len(trail.weighted) == 1 and trail.branched_at is None:
        return replace(trail, bias=trail.bias + trail.weight @ b, affines=trail.affines + 1,
                       kinds=(*trail.kinds, "Affine"), weighted=(*trail.weighted, name), mats=(*trail.mats, w),
                       affines_at=(0, 1), pending=(w,), statistics=[])
    if trail.weight is None:
        weight, bias = w, b.copy()
    else:
        weight = _times_permutation(trail.weight, w) if permutation else trail.weight @ w
        bias = trail.bias + trail.weight @ b
    return replace(
        trail, weight=weight, bias=bias, affines=trail.affines + affine,
        kinds=(*trail.kinds, type(node).__name__ if affine or not isinstance(node, nir.Affine)
               else "Permutation"), weighted=(*trail.weighted, name), mats=(*trail.mats, w),
        affines_at=(*trail.affines_at, len(trail.weighted)) if affine else trail.affines_at)


def _multiplied(trail: _Trail) -> _Trail:
    """``trail`` with its pending ``U V`` and permutations multiplied out, in the order the walk met them."""
    if not trail.pending:
        return trail
    weight = trail.weight @ trail.pending[0]
    for perm in trail.pending[1:]:
        weight = _times_permutation(weight, perm)
    return replace(trail, weight=weight, pending=(), statistics=None)


def _times_permutation(weight: sp.csr_matrix, perm: sp.csr_matrix) -> sp.csr_matrix:
    """``weight @ perm`` for a permutation matrix ``perm``, by renaming columns: the arrays scipy's product
    gives (each row's entries in reverse order, zeros dropped), without its pass over every weight.

    A bundle's token reshape is such a permutation after each low-rank ``U V``: on the CIFAR-size DSP
    spiking Transformer the product through it cost as much as ``U V`` itself.
    """
    weight = sp.csr_matrix(weight)
    lengths = np.diff(weight.indptr)
    # position p of a row [s, e) takes the entry at s + e - 1 - p: scipy's product lists a row's columns
    # in reverse order of first use
    source = np.repeat(weight.indptr[:-1] + weight.indptr[1:] - 1, lengths) - np.arange(weight.nnz)
    data, columns = weight.data[source], perm.indices[weight.indices[source]]
    indptr = weight.indptr
    if not np.all(data):
        keep = data != 0
        data, columns = data[keep], columns[keep]
        indptr = np.concatenate([[0], np.cumsum(keep)])[indptr]
    return sp.csr_matrix((data, columns.astype(weight.indices.dtype), indptr), shape=(weight.shape[0], perm.shape[1]))


def _is_permutation(w: sp.csr_matrix) -> bool:
    """A square 0/1 matrix with one 1 in every row and every column: it only reorders."""
    n = w.shape[0]
    return (w.shape[1] == n and w.nnz == n and bool(np.all(w.data == 1))
            and np.array_equal(np.diff(w.indptr), np.ones(n, np.int64)) and np.unique(w.indices).size == n)


def _chain(graph: nir.NIRGraph, source: str, trail: _Trail) -> Chain:
    """The finished path from ``source``: a lone Conv2d, or low-rank factors, is noted.

    Factors: a chain whose two Affines (permutations aside) are its last two
    weighted nodes, ``U`` feeding the layer and ``V`` right before it, unbranched
    between them; whatever reorders or scales on the source side of ``V`` (a
    bundle's token permutation) is multiplied into ``V``, so the relay still has
    ``rank`` neurons. Paths that branch before ``V`` (a residual sum into it) share
    its relay (see :mod:`st2chip.chip.lowering.lowrank`). Its weight is then the
    factors held apart, unless something that is not a permutation was multiplied in.
    """
    weighted = trail.weighted
    conv = weighted[0] if len(weighted) == 1 and isinstance(graph.nodes[weighted[0]], nir.Conv2d) else None
    factors = None
    if trail.affines_at == (0, 1) and (trail.branched_at is None or trail.branched_at >= 2):
        v = trail.mats[1]
        for w in trail.mats[2:]:
            v = v @ w
        v = sp.csr_matrix(v)
        v.sum_duplicates()  # canonical: sorted indices (products leave them unsorted)
        factors = Factors(trail.mats[0], v, weighted[1], weighted)
    weight = (LowrankProduct(factors.u, factors.v, unpermuted=trail.pending[0], shared=trail.statistics)
              if trail.pending else trail.weight)
    return Chain(source, weight, trail.bias, trail.affines, trail.lag, trail.recurrent,
                 tuple(reversed(trail.kinds)), conv, factors, weighted)


def incoming(plan: Plan, name: str) -> Incoming:
    """Every path into neuron layer ``name`` as one matrix over its keys, side by side (paths with the same
    key add up)."""
    graph = plan.graph
    by_key: dict[PathKey, tuple[sp.csr_matrix | LowrankProduct, np.ndarray]] = {}
    affines = 0
    kinds: list[str] = []
    convs: dict[PathKey, str | None] = {}
    lowrank: dict[PathKey, Factors | Refused] = {}
    for path in (p for start in plan.preds.get(name, [])
                 for p in chains(graph, start, name, plan.preds, plan.back, plan.dt)):
        _check(graph, name, path)
        key = PathKey(path.source, path.lag, path.recurrent)
        old = by_key.get(key)
        by_key[key] = ((path.weight, path.bias) if old is None else
                       (_stored(old[0], key, name) + _stored(path.weight, key, name), old[1] + path.bias))
        convs[key] = path.conv if old is None else None
        if old is not None and (key in lowrank or path.affines > 1):
            nodes = (*lowrank[key].nodes, *path.nodes) if key in lowrank else path.nodes
            lowrank[key] = Refused("another path from the same source adds to it", nodes)
        elif path.affines > 1:
            found = _factorable(graph, path)
            lowrank[key] = Refused(found, path.nodes) if isinstance(found, str) else found
        affines = max(affines, path.affines)
        kinds.append(" -> ".join(path.kinds))
    if not by_key:
        raise GraphError("a neuron layer must be fed through an Affine or Linear node", node=name)
    keys = list(by_key)
    deferred: dict[PathKey, LowrankProduct] = {}
    for k in keys:
        weight, bias = by_key[k]
        if plan.options.lowrank != "product" and isinstance(weight, LowrankProduct) \
                and _deferrable(graph, lowrank.get(k)):
            deferred[k] = weight
        else:
            by_key[k] = (_stored(weight, k, name), bias)
    nnz = sum(by_key[k][0].nnz for k in keys if k not in deferred)
    limits.check_alloc(f"the folded weights of layer '{name}'", nnz, BYTES_PER_WEIGHT)
    weight = side_by_side([sp.csr_matrix(by_key[k][0].shape) if k in deferred else by_key[k][0] for k in keys])
    return Incoming(keys, _widths(graph, keys), weight, sum(by_key[k][1] for k in keys), affines,
                    list(dict.fromkeys(kinds)), {k: c for k, c in convs.items() if c is not None}, lowrank,
                    deferred)


def _stored(weight: sp.csr_matrix | LowrankProduct, key: PathKey, name: str) -> sp.csr_matrix:
    """A path's weight as a matrix: a low-rank product held apart is multiplied out."""
    if isinstance(weight, LowrankProduct):
        return weight.multiplied_out(key.source, name)
    return weight


def _deferrable(graph: nir.NIRGraph, found: Factors | Refused | None) -> bool:
    """A path pass ``lowrank`` may keep factored, whose product it can count from the factors held apart (only
    permutations on the source side of V: see :func:`~st2chip.chip.lowering.lowrank.product_nnz`)."""
    return isinstance(found, Factors) and all(isinstance(graph.nodes[n], nir.Affine) for n in found.nodes[2:])


def side_by_side(mats: list[sp.spmatrix]) -> sp.csr_matrix:
    """The matrices side by side (one CSR matrix, indices sorted, duplicates summed, zeros dropped).

    scipy's ``hstack`` of CSR matrices goes through per-block index arithmetic in Python and a copy more
    than the result (on the CIFAR-size DSP spiking Transformer: about half of this pass). Here each row's
    sorted segments are concatenated in one copy: the same arrays, since the blocks' columns do not
    overlap. Blocks with a column twice in a row (none that this pass makes) are summed by scipy.
    """
    blocks = [sp.csr_matrix(m) for m in mats]
    if len(blocks) == 1:
        return canonical(blocks[0])
    for b in blocks:
        b.sort_indices()
    if any(_has_duplicates(b) for b in blocks):
        out = sp.csr_matrix(sp.hstack(blocks, format="csr"))
        out.sum_duplicates()
        out.eliminate_zeros()
        return out
    n_rows, total = blocks[0].shape[0], sum(b.nnz for b in blocks)
    width = sum(b.shape[1] for b in blocks)
    index = np.int64 if max(width, total) > np.iinfo(np.int32).max else np.int32
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(sum(np.diff(b.indptr).astype(np.int64) for b in blocks), out=indptr[1:])
    offsets = np.cumsum([0] + [b.shape[1] for b in blocks[:-1]])
    columns = [b.indices[:b.nnz].astype(index) + index(offset) for b, offset in zip(blocks, offsets)]
    bounds = [b.indptr.tolist() for b in blocks]
    values, where = [], []  # each row's segment of each block, in order: one copy into the result
    for row in range(n_rows):
        for b, col, at in zip(blocks, columns, bounds):
            if at[row + 1] > at[row]:
                values.append(b.data[at[row]:at[row + 1]])
                where.append(col[at[row]:at[row + 1]])
    dtype = np.result_type(*(b.dtype for b in blocks))
    data = np.concatenate(values).astype(dtype, copy=False) if values else np.empty(0, dtype)
    indices = np.concatenate(where) if where else np.empty(0, index)
    out = sp.csr_matrix((data, indices, indptr), shape=(n_rows, width))
    out.has_sorted_indices = True
    out.eliminate_zeros()
    return out


def _has_duplicates(m: sp.csr_matrix) -> bool:
    """Whether a row of ``m`` (indices sorted) holds a column twice."""
    same = m.indices[1:m.nnz] == m.indices[:m.nnz - 1]
    same[m.indptr[1:-1][(m.indptr[1:-1] > 0) & (m.indptr[1:-1] < m.nnz)] - 1] = False  # pairs across rows
    return bool(same.any())


def _check(graph: nir.NIRGraph, name: str, path: Chain) -> None:
    """A path into layer ``name`` carries weights, from a source of spikes; a recurrent one has no Delay."""
    if path.weight is None:
        raise GraphError(f"input from '{path.source}' must pass through an Affine, Linear, convolution or "
                         f"pooling node", node=name)
    if not isinstance(graph.nodes[path.source], (nir.Input, SpikeProduct, *SPIKING)):
        raise GraphError(f"input comes from '{path.source}', which does not emit spikes", node=name)
    if path.recurrent and path.lag:
        raise GraphError(f"a Delay node on the recurrent path from '{path.source}' is not lowered yet", node=name)


def _factorable(graph: nir.NIRGraph, path: Chain) -> Factors | str:
    """The path's factors when it can be kept factored through a relay, else why not."""
    if path.factors is None:
        return (f"the chain {' -> '.join(path.kinds)} does not end in Affine V -> Affine U on one branch"
                if path.affines == 2 else f"the chain {' -> '.join(path.kinds)} has {path.affines} Affines")
    if path.recurrent:
        return "a recurrent path (a relay would add a step to the feedback)"
    if sum(src == path.factors.relay for src, _ in graph.edges) != 1:
        return f"the V node '{path.factors.relay}' feeds more than one node"
    return path.factors


def _widths(graph: nir.NIRGraph, keys: list[PathKey]) -> list[int]:
    """Number of values each key's source emits."""
    out = []
    for key in keys:
        node = graph.nodes[key.source]
        out.append(int(np.prod(next(iter(node.input_type.values())))) if isinstance(node, (nir.Input, SpikeProduct))
                   else int(np.size(node.v_threshold)))
    return out
