r"""Lower a canonical NIR graph to a :class:`~st2chip.chipgraph.ChipGraph`.

Steps, each measured in ``ChipGraph.report``:

1. **Discrete-time reading.** Every neuron node becomes
   :math:`v \leftarrow \beta v + g\,(W x + b) + (1-\beta) v_{leak}` with
   :math:`\beta = 1 - dt/\tau`, input gain :math:`g = (dt/\tau)\, r` (LIF, LI),
   :math:`\beta = 1, g = dt\, r` (IF, I). A ``CubaLIF`` keeps its synaptic current on
   the chip's ``u``: :math:`u \leftarrow \beta_u u + g\,W x`, :math:`v \leftarrow \beta v + u`
   with :math:`\beta_u = 1 - dt/\tau_{syn}` (Lava's ``du = 4095 - 4096 \beta_u``),
   :math:`g = (dt/\tau_{mem})\, r\, (dt/\tau_{syn})\, w_{in}`; its Affine bias becomes the
   voltage bias it settles to, :math:`g b / (1 - \beta_u)`. Every chain of linear
   nodes between two neuron layers (Affine, Scale, Conv1d/Conv2d, SumPool2d,
   AvgPool2d, Flatten; a DSP low-rank layer exported as U then V) is multiplied
   out into one matrix, biases carried through (:mod:`st2chip.graph.linear`).
   Several paths into one layer become one synapse group per (source, delay);
   shorter paths get synaptic delays so that every path arrives when the float
   graph adds it. A recurrent path (through a back edge, see
   :mod:`st2chip.graph.reading`) keeps the one-step delay every synapse has: a
   layer feeding itself sees its spikes of the step before, as NIR reads it;
   feedback to an earlier layer arrives later than that, by the pipeline depth
   between the two layers (reported, with a :class:`FeedbackLatencyWarning`).
   Reset by subtraction (``metadata["reset"]``) is kept per population.
2. **Threshold folding.** Lava's LIF has one threshold per process, sLIF one per
   neuron. Dividing neuron :math:`i`'s incoming weights and bias by
   :math:`\theta_i` gives threshold 1 with identical spikes (exact for reset to
   zero, before quantization).
3. **Decay grouping.** Lava has one ``dv`` (and ``du``) per process: the per-neuron
   :math:`dv_i = \mathrm{round}(4096(1-\beta_i))` are clustered (1-D k-means,
   ``decay_groups`` clusters), the ``du`` of a CubaLIF likewise, and each distinct
   (``du``, ``dv``) pair becomes one population.
4. **Quantization.** Per population a scale :math:`S` (threshold ``vth = S``)
   makes the largest folded weight a full 8-bit mantissa; each incoming synapse
   group gets the smallest exponent that fits; biases get 13-bit mantissas with
   per-neuron exponents. The relative error of each step is reported.
5. **Storage.** A group whose chain is one ``Conv2d`` is also kept as a
   convolution kernel (:mod:`st2chip.chip.conv_storage`) when its quantized
   matrix is exactly one, with exponent 0, between whole layers; Lava then runs
   it as lava-nc's ``Conv``. Every other group is a matrix (dense or CSR). The
   report's ``storage`` says per group which, and why not a convolution.
6. **Low rank.** A path that ends in ``Affine V (r x n) -> Affine U (m x r)``
   (a DSP layer; a permutation or other linear node before ``V`` is multiplied
   into ``V``) is either multiplied out (``product``: one ``m x n`` group) or
   kept ``factored``: a :class:`~st2chip.chip.chipgraph.Relay` of ``r`` graded
   neurons, a group V from the source into it and a group U (graded input,
   MACs) from it into the layer; the relay adds one pipeline step, which the
   other paths into the layer absorb as synaptic delay. ``lowrank="auto"``
   decides per path by the cost model of :func:`_lowrank_costs`; the layer's
   report ``lowrank`` gives both costs, the choice and why. An Affine that only
   reorders (a permutation matrix, e.g. a bundle's token reshape) is not a factor.
7. **Partitions.** An Input with ``metadata["levels"]`` is an analog port (integer
   levels, e.g. a direct-encoded image); a :class:`~st2chip.graph.product.SpikeProduct`
   (a spiking Transformer's attention, composed from a bundle) becomes a
   :class:`~st2chip.chip.chipgraph.HostProduct` (the host partition), whose graded
   counts reach the next layer through an ordinary quantized group.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

import nir
import numpy as np
import scipy.sparse as sp

from st2chip.chip.chipgraph import (ACT_SHIFT, BIAS_EXP_RANGE, BIAS_MANT_RANGE, DECAY_MAX, DELAY_MAX, VTH_MAX,
                                    WEIGHT_EXP_RANGE, UV_MAX, GRADED_ACC_MAX, GRADED_INPUT_MAX, MESSAGE_BITS, ChipGraph,
                                    HostProduct, InputPort, Population, Relay, SynapseGroup)
from st2chip.chip.conv_storage import conv_kernel
from st2chip.errors import GraphError, St2chipWarning
from st2chip import limits
from st2chip.graph import linear
from st2chip.graph.product import SpikeProduct
from st2chip.graph.reading import back_edges, delay_steps, reset_mode

SPIKING = (nir.LIF, nir.IF, nir.CubaLIF)
READOUT = (nir.LI, nir.CubaLI, nir.I)
NEURONS = SPIKING + READOUT
MANT_FULL = 254          # largest even weight value 2*m with m = 127
MAX_SCALE = 4096         # cap on vth: leaves 2^5 headroom for v below 2^23
HEADROOM = 512.0         # thresholds a spiking population's u and v may reach before they wrap or saturate
DEFAULT_DECAY_GROUPS = 4  # the commands' default decay groups per layer (map, verify, energy, demo, quantize)
SPARSE_BELOW = 0.5       # store as CSR when fewer than this fraction of weights are non-zero
OUTLIER_FACTOR = 64.0    # a neuron whose folded weights exceed 64x its group's median gets its own population
WEIGHT_ERROR_WARN = 0.05 # a layer whose relative weight error exceeds 5 % is reported with a warning
BYTES_PER_WEIGHT = 48    # budget per stored weight while lowering: a few CSR copies (8-byte value, 4-byte index)
LOWRANK_MODES = ("product", "factored", "auto")
SPIKE_RATE = 0.1         # assumed spikes per source neuron per step for the low-rank cost model (no traces at lowering)
ROUNDOFF = 1e-6          # relative slack for float32 weights at a full mantissa: lowering the weights the chip
                         # holds (st2chip.chip.held) must give the same scale and exponents back
MAC_PER_AC = 4.6 / 0.9   # a MAC's energy in accumulates: the 45 nm figures (E_MAC 4.6 pJ, E_AC 0.9 pJ, DESIGN.md)


class QuantizationWarning(St2chipWarning):
    """Lowering kept the graph but its fixed-point weights are far from the float ones."""


class FeedbackLatencyWarning(St2chipWarning):
    """A recurrent connection to an earlier layer reaches it later on the chip than in NIR's reading."""


@dataclass
class FloatLayer:
    """A neuron node read as a discrete-time layer, in float."""

    name: str
    beta: np.ndarray
    gain: np.ndarray
    bias: np.ndarray
    threshold: np.ndarray
    spiking: bool
    beta_u: np.ndarray | None = None  # synaptic-current decay (CubaLIF); None: the current forgets at once
    bias_gain: np.ndarray | None = None  # how an Affine bias reaches v (CubaLIF: its steady state)
    reset: str = "zero"


def read_neuron(name: str, node: nir.NIRNode, dt: float) -> FloatLayer:
    """Neuron node ``name`` as a discrete-time layer (decays, input gain, bias, thresholds) at step ``dt``."""
    reset = reset_mode(name, node) if isinstance(node, SPIKING) else "zero"
    if isinstance(node, SPIKING) and reset == "zero" and np.any(node.v_reset != 0):
        raise GraphError("the chip resets to 0 (or by subtraction, metadata reset = 'subtract'); nonzero v_reset "
                         "cannot be lowered", node=name, field="v_reset")
    if isinstance(node, nir.LIF):
        ratio = dt / node.tau
        return FloatLayer(name, 1 - ratio, ratio * node.r, (ratio * node.v_leak), node.v_threshold, True, reset=reset)
    if isinstance(node, nir.IF):
        n = node.r.size
        return FloatLayer(name, np.ones(n), dt * node.r, np.zeros(n), node.v_threshold, True, reset=reset)
    if isinstance(node, (nir.CubaLIF, nir.CubaLI)):
        g_syn, g_mem = dt / node.tau_syn, dt / node.tau_mem
        gain = g_mem * node.r * g_syn * node.w_in  # input -> chip current u (which the chip adds to v)
        spiking = isinstance(node, nir.CubaLIF)
        return FloatLayer(name, 1 - g_mem, gain, g_mem * node.v_leak,
                      node.v_threshold if spiking else np.ones(node.r.size), spiking, beta_u=1 - g_syn,
                      bias_gain=gain / g_syn, reset=reset)
    if isinstance(node, nir.LI):
        ratio = dt / node.tau
        return FloatLayer(name, 1 - ratio, ratio * node.r, ratio * node.v_leak, np.ones(node.r.size), False)
    if isinstance(node, nir.I):
        n = node.r.size
        return FloatLayer(name, np.ones(n), dt * node.r, np.zeros(n), np.ones(n), False)
    raise _not_lowered(name, node)


def _not_lowered(name: str, node: nir.NIRNode) -> GraphError:
    return GraphError(f"cannot lower node type {type(node).__name__}: only LIF, CubaLIF, IF, LI, CubaLI and I "
                      f"neurons are mapped to the chip (the float simulation runs it)", node=name)


def _decay_groups(dv: np.ndarray, groups: int) -> np.ndarray:
    """Cluster 12-bit decays into at most ``groups`` values (deterministic 1-D k-means)."""
    values = np.unique(dv)
    if values.size <= groups:
        return dv.copy()
    centers = np.quantile(dv, (np.arange(groups) + 0.5) / groups)
    for _ in range(100):
        label = np.argmin(np.abs(dv[:, None] - centers[None, :]), axis=1)
        new = np.array([dv[label == k].mean() if np.any(label == k) else centers[k] for k in range(groups)])
        if np.allclose(new, centers):
            break
        centers = new
    return np.rint(centers[label]).astype(np.int64)


def _bias_fixed(bias_v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split voltage-unit biases into 13-bit mantissas and 3-bit exponents (smallest that fits)."""
    lo, hi = BIAS_MANT_RANGE
    with np.errstate(divide="ignore"):
        need = np.ceil(np.log2(np.abs(bias_v) / (hi + 0.5)))
    exp = np.clip(np.nan_to_num(need, neginf=0.0), *BIAS_EXP_RANGE).astype(np.int64)
    mant = np.clip(np.rint(bias_v / 2.0**exp), lo, hi).astype(np.int64)
    return mant, exp


def _rel_error(approx: np.ndarray | sp.spmatrix, exact: np.ndarray | sp.spmatrix) -> float:
    """``||approx - exact|| / ||exact||``, computed on scaled values so huge weights cannot overflow to NaN;
    for sparse matrices from their stored values (no dense copy)."""
    if sp.issparse(exact):
        diff, exact = sp.csr_matrix(approx - exact).data, sp.csr_matrix(exact).data
    else:
        diff = approx - exact
    m = float(np.max(np.abs(exact))) if exact.size else 0.0
    if m == 0:
        return float(np.linalg.norm(diff))
    return float(np.linalg.norm(diff / m) / np.linalg.norm(exact / m))


def _row_absmax(matrix: sp.csr_matrix) -> np.ndarray:
    """Largest ``|w|`` of each row of a CSR matrix (0 for an empty row), from its stored values only."""
    out = np.zeros(matrix.shape[0])
    filled = np.diff(matrix.indptr) > 0
    if matrix.nnz:
        out[filled] = np.maximum.reduceat(np.abs(matrix.data), matrix.indptr[:-1][filled])
    return out


def _scale_parts(index: np.ndarray, row_max: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split one decay group's neurons into the bulk and outliers whose folded weights dwarf the rest.

    A population shares one scale (``vth``), set by its largest weight: one neuron with
    weights :data:`OUTLIER_FACTOR` times the group's median row maximum would cost every
    other neuron that many quantization steps, so it gets a population (and scale) of its own.
    """
    row_max = row_max[index]
    live = row_max[row_max > 0]
    if live.size < 2:
        return index, index[:0]
    outlier = row_max > OUTLIER_FACTOR * np.median(live)
    return index[~outlier], index[outlier]


@dataclass
class _Path:
    """One chain of linear nodes from a source (Input or neuron) into a neuron layer, multiplied out."""

    source: str
    weight: sp.csr_matrix | None  # None: the chain holds no weights (only Flatten / Delay)
    bias: np.ndarray | None
    affines: int  # Affine nodes on the chain (more than one: a low-rank U·V product)
    lag: int  # steps the chain's Delay nodes hold the signal
    recurrent: bool  # the chain crosses a back edge
    kinds: tuple[str, ...]  # node types on the chain, source side first
    conv: str | None = None  # the chain's one weighted node, when that is a Conv2d
    factors: _Factors | None = None  # the chain ends in Affine V -> Affine U: the two factors (see _path)
    nodes: tuple[str, ...] = ()  # the weighted nodes on the chain


@dataclass
class _Factors:
    """The float factors of a low-rank path ``W = U V`` and the V node (the relay's name)."""

    u: sp.csr_matrix  # (m, r)
    v: sp.csr_matrix  # (r, n): V times whatever lies between it and this path's source
    relay: str
    nodes: tuple[str, ...] = ()  # the weighted nodes on the path


@dataclass
class _Refused:
    """Why a low-rank path stays multiplied out, and the weighted nodes it passes (a relay it would share)."""

    why: str
    nodes: tuple[str, ...]


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


def _chains(graph: nir.NIRGraph, start: str, target: str, preds: dict[str, list[str]], back: set,
            dt: float) -> list[_Path]:
    """Walk back from node ``start`` (which feeds ``target``) through linear nodes to neurons or Inputs.

    A linear node with several input edges (NIR adds a node's inputs: a residual sum)
    splits the walk into one path per branch; the part they share is in every
    path's weight, its bias only in the first path's.
    """
    return _walk(graph, start, preds, back, dt, _Trail(recurrent=(start, target) in back))


def _walk(graph: nir.NIRGraph, name: str, preds: dict[str, list[str]], back: set, dt: float,
          trail: _Trail) -> list[_Path]:
    while True:
        node = graph.nodes[name]
        if isinstance(node, (nir.Affine, nir.Scale, *linear.SPATIAL)):
            if isinstance(node, nir.Affine):
                w, b = sp.csr_matrix(node.weight, copy=True), node.bias  # folded in place later: never the graph's
            elif isinstance(node, nir.Scale):
                w, b = sp.diags(node.scale, format="csr"), np.zeros(node.scale.size)
            else:
                w, b = linear.as_matrix(name, node, tuple(int(d) for d in node.input_type["input"]))
            weight, bias = ((w, b.copy()) if trail.weight is None
                            else (trail.weight @ w, trail.bias + trail.weight @ b))
            affine = isinstance(node, nir.Affine) and not _is_permutation(w)
            trail = replace(
                trail, weight=weight, bias=bias, affines=trail.affines + affine,
                kinds=(*trail.kinds, type(node).__name__ if affine or not isinstance(node, nir.Affine)
                       else "Permutation"), weighted=(*trail.weighted, name), mats=(*trail.mats, w),
                affines_at=(*trail.affines_at, len(trail.weighted)) if affine else trail.affines_at)
        elif isinstance(node, nir.Delay):
            steps = np.unique(delay_steps(name, node, dt))
            if steps.size > 1:
                raise GraphError(f"per-element delays differ ({steps.tolist()} steps); a synapse group on the "
                                 f"chip delays all its synapses alike so far", node=name, field="delay")
            trail = replace(trail, lag=trail.lag + int(steps[0]))
        elif not isinstance(node, nir.Flatten):
            return [_path(graph, name, trail)]
        sources = preds.get(name, [])
        if not sources:
            raise GraphError("a linear node between neuron layers needs an input edge", node=name)
        if len(sources) == 1:
            trail = replace(trail, recurrent=trail.recurrent or (sources[0], name) in back)
            name = sources[0]
            continue
        paths = []
        for i, src in enumerate(sources):
            bias = trail.bias if i == 0 or trail.bias is None else np.zeros_like(trail.bias)
            paths += _walk(graph, src, preds, back, dt, replace(
                trail, bias=bias, recurrent=trail.recurrent or (src, name) in back,
                branched_at=len(trail.weighted) if trail.branched_at is None else trail.branched_at))
        return paths


def _is_permutation(w: sp.csr_matrix) -> bool:
    """A square 0/1 matrix with one 1 in every row and every column: it only reorders."""
    n = w.shape[0]
    return (w.shape[1] == n and w.nnz == n and bool(np.all(w.data == 1))
            and np.array_equal(np.diff(w.indptr), np.ones(n, np.int64)) and np.unique(w.indices).size == n)


def _path(graph: nir.NIRGraph, source: str, trail: _Trail) -> _Path:
    """The finished path from ``source``: a lone Conv2d, or low-rank factors, is noted.

    Factors: a chain whose two Affines (permutations aside) are its last two
    weighted nodes, ``U`` feeding the layer and ``V`` right before it, unbranched
    between them; whatever reorders or scales on the source side of ``V`` (a
    bundle's token permutation) is multiplied into ``V``, so the relay still has
    ``rank`` neurons. Paths that branch before ``V`` (a residual sum into it) share
    its relay (see :func:`_lowrank`).
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
        factors = _Factors(trail.mats[0], v, weighted[1], weighted)
    return _Path(source, trail.weight, trail.bias, trail.affines, trail.lag, trail.recurrent,
                 tuple(reversed(trail.kinds)), conv, factors, weighted)


def _incoming(graph: nir.NIRGraph, name: str, preds: dict[str, list[str]], back: set, dt: float
              ) -> tuple[list[tuple[str, int, bool]], np.ndarray, np.ndarray, int, list[str], dict, dict]:
    """Every path into neuron node ``name`` as one matrix over its (source, lag, recurrent) keys, side by side.

    Paths with the same key add up. Returns the keys in order, the weight
    ``(n, Σ n_source)`` (CSR: lowering works from the non-zeros, never a dense
    copy), the summed bias, the most Affines on one path, the distinct chains
    of node types (for the report) and, per key whose one path is a single
    Conv2d, that node's name; last, per key with a low-rank path (more than one
    Affine), its :class:`_Factors` or why it cannot be factored (:class:`_Refused`).
    """
    by_key: dict[tuple[str, int, bool], tuple[sp.csr_matrix, np.ndarray]] = {}
    affines = 0
    chains: list[str] = []
    convs: dict[tuple[str, int, bool], str | None] = {}
    lowrank: dict[tuple[str, int, bool], _Factors | _Refused] = {}
    for path in (p for start in preds.get(name, []) for p in _chains(graph, start, name, preds, back, dt)):
        if path.weight is None:
            raise GraphError(f"input from '{path.source}' must pass through an Affine, Linear, convolution or "
                             f"pooling node", node=name)
        if not isinstance(graph.nodes[path.source], (nir.Input, SpikeProduct, *SPIKING)):
            raise GraphError(f"input comes from '{path.source}', which does not emit spikes", node=name)
        if path.recurrent and path.lag:
            raise GraphError(f"a Delay node on the recurrent path from '{path.source}' is not lowered yet",
                             node=name)
        key = (path.source, path.lag, path.recurrent)
        old = by_key.get(key)
        by_key[key] = (path.weight, path.bias) if old is None else (old[0] + path.weight, old[1] + path.bias)
        convs[key] = path.conv if old is None else None
        if old is not None and (key in lowrank or path.affines > 1):
            nodes = (*lowrank[key].nodes, *path.nodes) if key in lowrank else path.nodes
            lowrank[key] = _Refused("another path from the same source adds to it", nodes)
        elif path.affines > 1:
            found = _factorable(graph, path)
            lowrank[key] = _Refused(found, path.nodes) if isinstance(found, str) else found
        affines = max(affines, path.affines)
        chains.append(" -> ".join(path.kinds))
    if not by_key:
        raise GraphError("a neuron layer must be fed through an Affine or Linear node", node=name)
    keys = list(by_key)
    nnz = sum(by_key[k][0].nnz for k in keys)
    limits.check_alloc(f"the folded weights of layer '{name}'", nnz, BYTES_PER_WEIGHT)
    weight = sp.csr_matrix(sp.hstack([by_key[k][0] for k in keys], format="csr")) if len(keys) > 1 \
        else sp.csr_matrix(by_key[keys[0]][0])
    weight.sum_duplicates()
    weight.eliminate_zeros()
    return (keys, weight, sum(by_key[k][1] for k in keys), affines, list(dict.fromkeys(chains)),
            {k: c for k, c in convs.items() if c is not None}, lowrank)


def _factorable(graph: nir.NIRGraph, path: _Path) -> _Factors | str:
    """The path's factors when it can be kept factored through a relay, else why not."""
    if path.factors is None:
        return (f"the chain {' -> '.join(path.kinds)} does not end in Affine V -> Affine U on one branch"
                if path.affines == 2 else f"the chain {' -> '.join(path.kinds)} has {path.affines} Affines")
    if path.recurrent:
        return "a recurrent path (a relay would add a step to the feedback)"
    if sum(src == path.factors.relay for src, _ in graph.edges) != 1:
        return f"the V node '{path.factors.relay}' feeds more than one node"
    return path.factors


@dataclass
class _Planned:
    """A neuron layer after pass 1: its float weights folded, its populations made; synapses still to come."""

    name: str
    keys: list[tuple[str, int, bool]]  # (source, lag, recurrent) per block of columns in w_fold
    widths: list[int]
    w_fold: sp.csr_matrix
    parts: list[tuple[Population, np.ndarray]]  # population, its rows in w_fold
    scales: dict[str, int]
    form: str
    report: dict
    convs: dict[tuple[str, int, bool], tuple[str, nir.Conv2d]]  # keys whose path is one Conv2d: its node
    relays: list[Relay]  # relays of the factored keys (populations before the layer's own)
    factored: dict[tuple[str, int, bool], list[SynapseGroup]]  # keys kept factored: their V and U groups


def lower(graph: nir.NIRGraph, *, decay_groups: int = 1, lowrank: str = "product",
          headroom: float = HEADROOM) -> ChipGraph:
    """Map a canonical NIR graph (see :mod:`st2chip.graph.normalize`) onto the chip.

    ``decay_groups`` bounds the number of populations (distinct ``dv``) per layer.
    ``lowrank`` is what becomes of a DSP ``U·V`` path: ``product`` (multiplied
    out, the default here), ``factored`` (through a graded relay; a
    :class:`GraphError` where that cannot be done) or ``auto`` (per path, the
    cheaper by :func:`_lowrank_costs`; the CLI's default).
    ``headroom`` is how many thresholds a spiking population's ``u`` and ``v`` may
    reach before they wrap or saturate; the scale is made as fine as it allows
    (see :func:`_refined`; each population's ``headroom`` is in the layer report).
    Pass 1 reads, folds, groups and scales every neuron layer into populations;
    pass 2 quantizes the synapse groups between them (a recurrent group may come
    from a layer that pass 1 reaches later).
    """
    if decay_groups < 1:
        raise GraphError("decay_groups must be at least 1", field="decay_groups")
    if lowrank not in LOWRANK_MODES:
        raise GraphError(f"lowrank must be one of {', '.join(LOWRANK_MODES)}, got {lowrank!r}", field="lowrank")
    if not headroom > 0:
        raise GraphError(f"headroom must be a positive number of thresholds, got {headroom!r}", field="headroom")
    dt = float(graph.metadata.get("dt", 1e-3))
    preds: dict[str, list[str]] = {}
    for src, dst in graph.edges:
        preds.setdefault(dst, []).append(src)
    back = back_edges(graph)
    inputs: list[InputPort] = []
    hosts: list[HostProduct] = []
    depth: dict[str, int] = {}
    planned: list[_Planned] = []
    report: dict = {"dt": dt, "layers": {}}
    sources: dict[str, list[tuple[str, np.ndarray]]] = {}  # planned layer or input -> (population, its neurons)
    for name, node in graph.nodes.items():
        if isinstance(node, nir.Input):
            inputs.append(_input_port(name, node))
            depth[name] = 0
            sources[name] = [(name, np.arange(inputs[-1].size))]
        elif isinstance(node, SpikeProduct):
            hosts.append(HostProduct(name, node.inputs, node.heads, node.tokens, node.dim))
            depth[name] = max(depth[layer] for layer in node.inputs)  # it sends the step its inputs spike
            sources[name] = [(name, np.arange(node.size))]
        elif isinstance(node, NEURONS):
            planned.append(_plan(graph, name, node, preds, back, dt, decay_groups, depth, lowrank, sources,
                                 headroom))
            sources[name] = [(pop.name, pop.index) for pop, _ in planned[-1].parts]
        elif not isinstance(node, (nir.Affine, nir.Flatten, nir.Scale, nir.Delay, nir.Output, *linear.SPATIAL)):
            raise _not_lowered(name, node)
    layer_pops = ({p.name: [pop for pop, _ in p.parts] for p in planned} | {i.name: [] for i in inputs}
                  | {h.name: [] for h in hosts})
    synapses: list[SynapseGroup] = []
    for plan in planned:
        synapses += _synapse_groups(plan, layer_pops, depth)
        report["layers"][plan.name] = plan.report
    populations = [pop for plan in planned for pop in [*plan.relays, *(p for p, _ in plan.parts)]]
    return ChipGraph(inputs, populations, synapses, report, hosts)


def _input_port(name: str, node: nir.Input) -> InputPort:
    """A spike port, or an analog one when the Input's ``metadata["levels"]`` says it takes integer levels."""
    size = int(np.prod(next(iter(node.input_type.values()))))
    levels = (node.metadata or {}).get("levels")
    if levels is None:
        return InputPort(name, size)
    if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or levels < 1:
        raise GraphError(f"metadata 'levels' must be a positive integer, got {levels!r}", node=name, field="metadata")
    return InputPort(name, size, "analog", int(levels))


def _plan(graph: nir.NIRGraph, name: str, node: nir.NIRNode, preds: dict[str, list[str]], back: set, dt: float,
          decay_groups: int, depth: dict[str, int], lowrank: str,
          source_pops: dict[str, list[tuple[str, np.ndarray]]], headroom: float) -> _Planned:
    """Pass 1 for one neuron layer: read, fold thresholds, group decays, split outliers, scale, keep low-rank
    paths factored where chosen; sets its depth."""
    layer = read_neuron(name, node, dt)
    keys, weight, bias, affines, chains, convs, lowrank_paths = _incoming(graph, name, preds, back, dt)
    n = weight.shape[0]
    if n == 0:
        raise GraphError("the layer has no neurons", node=name, field="weight")
    if np.any(layer.beta < 0) or np.any(layer.beta > 1):
        raise GraphError(f"leak factor 1 - dt/tau must lie in [0, 1]; tau is shorter than dt = {dt:g} s: "
                         f"pass the dt the model was trained with (--dt), or st2chip import the file "
                         f"from its framework", node=name, field="tau")
    if np.any(layer.threshold <= 0):
        raise GraphError("thresholds must be positive", node=name, field="v_threshold")
    # 2. fold per-neuron thresholds into weights and bias (threshold becomes 1)
    with np.errstate(over="ignore", invalid="ignore"):
        scale = layer.gain / layer.threshold
        w_fold = weight  # a fresh matrix from _incoming: scaled in place, row by row
        w_fold.data *= np.repeat(scale, np.diff(w_fold.indptr))
        bias_gain = layer.gain if layer.bias_gain is None else layer.bias_gain
        b_fold = bias * bias_gain / layer.threshold + layer.bias / layer.threshold
        rows = np.repeat(np.arange(n), np.diff(w_fold.indptr))
        for field, value, where in (("weight", w_fold.data, rows), ("bias", b_fold, np.arange(n))):
            bad = ~np.isfinite(value)
            if bad.any():
                i = int(where[np.argmax(bad)])
                raise GraphError(f"{field}s divided by the threshold overflow (neuron {i}: threshold "
                                 f"{layer.threshold[i]:g}, gain {layer.gain[i]:g}); the chip cannot hold them",
                                 node=name, field=field)
    # 3. decay groups
    dv_exact = 4096.0 * (1.0 - layer.beta)
    dv = np.clip(np.rint(dv_exact), 0, DECAY_MAX).astype(np.int64)
    dv_grouped = _decay_groups(dv, decay_groups)
    beta_chip = 1.0 - dv_grouped / 4096.0
    if layer.beta_u is None:
        du_grouped = np.full(n, DECAY_MAX)
    else:  # Lava decays u by (4095 - du) / 4096
        if np.any(layer.beta_u < 0) or np.any(layer.beta_u > 1):
            raise GraphError(f"current decay 1 - dt/tau_syn must lie in [0, 1]; tau_syn is shorter than "
                             f"dt = {dt:g} s (--dt)", node=name, field="tau_syn")
        du = np.clip(np.rint(4095.0 - 4096.0 * layer.beta_u), 0, DECAY_MAX).astype(np.int64)
        du_grouped = _decay_groups(du, decay_groups)
    pairs = sorted(set(zip(du_grouped.tolist(), dv_grouped.tolist())), key=lambda d: (d[1], d[0]))
    sources = list(dict.fromkeys(s for s, _, _ in keys))
    layer_report = {
        "kind": type(node).__name__, "neurons": n, "affines": affines,
        "source": sources[0] if len(sources) == 1 else sources,
        "chains": chains,
        **({"reset": layer.reset} if layer.reset != "zero" else {}),
        "decay_groups": len(pairs),
        "leak_error": float(np.max(np.abs(beta_chip - layer.beta))) if n else 0.0,
        "threshold_range": [float(layer.threshold.min()), float(layer.threshold.max())],
    }
    if layer.beta_u is not None:
        layer_report["current_leak_error"] = float(np.max(np.abs((4095 - du_grouped) / 4096.0 - layer.beta_u)))
        if np.any(bias != 0):  # NIR filters an Affine bias through the current; the chip adds it to v
            layer_report["bias_note"] = ("Affine bias enters as its steady-state voltage bias: exact once the "
                                         "synaptic current has settled (a few tau_syn)")
    dense = w_fold.nnz >= SPARSE_BELOW * w_fold.shape[0] * w_fold.shape[1]
    row_max = _row_absmax(w_fold)
    form = "lowrank" if affines > 1 else ("dense" if dense else "sparse")
    groups, outliers = [], []
    for g, (du_g, dv_g) in enumerate(pairs):
        bulk, odd = _scale_parts(np.flatnonzero((dv_grouped == dv_g) & (du_grouped == du_g)), row_max)
        pname = name if len(pairs) == 1 else f"{name}/g{g}"
        groups.append((pname, (int(du_g), int(dv_g)), bulk))
        if odd.size:
            groups.append((f"{pname}/outliers", (int(du_g), int(dv_g)), odd))
            outliers += odd.tolist()
    if outliers:
        layer_report["outliers"] = sorted(outliers)
        warnings.warn(f"layer '{name}': neuron(s) {sorted(outliers)[:8]}{' ...' if len(outliers) > 8 else ''} "
                      f"have weights over {OUTLIER_FACTOR:g}x their group's (tiny thresholds?); each group's "
                      f"outliers get their own population so the rest keep their precision (their own weight "
                      f"error is reported as outlier_weight_error)", QuantizationWarning)
    parts, scales, bias_errors = [], {}, []
    for pname, (du_g, dv_g), index in groups:
        if index.size == 0:
            continue
        wmax = float(row_max[index].max(initial=0.0))
        s_scale = int(np.clip(np.floor(MANT_FULL / wmax * (1 + ROUNDOFF)), 1, MAX_SCALE)) if wmax > 0 else MAX_SCALE
        if layer.spiking:
            s_scale = _refined(s_scale, headroom)
        bias_v = b_fold[index] * s_scale * 64.0
        mant_b, exp_b = _bias_fixed(bias_v)
        bias_errors.append(_rel_error((mant_b << exp_b) / (s_scale * 64.0), b_fold[index]))
        pop = Population(pname, name, index, du=du_g, dv=dv_g, vth=s_scale if layer.spiking else VTH_MAX,
                         bias_mant=mant_b, bias_exp=exp_b, readout=not layer.spiking, reset=layer.reset)
        parts.append((pop, index))
        scales[pname] = s_scale
    layer_report["bias_error"] = float(max(bias_errors, default=0.0))
    # chip voltage per float unit of v (after folding): readouts are compared with float through it
    layer_report["voltage_unit"] = {pop.name: 64.0 * scales[pop.name] for pop, _ in parts}
    if layer.spiking:  # thresholds u and v can reach before they wrap or saturate
        layer_report["headroom"] = {pop.name: UV_MAX / 64.0 / scales[pop.name] for pop, _ in parts}
    relays, factored = _lowrank(name, lowrank, lowrank_paths, scale, parts, scales, source_pops, layer_report)
    # paths of different depth are aligned with synaptic delays, so that the chip adds what float adds;
    # a relay is one more step
    depth[name] = 1 + max(depth[s] + ((s, lag, rec) in factored) for s, lag, rec in keys if not rec)
    return _Planned(name, keys, _widths(graph, keys), w_fold, parts, scales, form, layer_report,
                    {k: (c, graph.nodes[c]) for k, c in convs.items()}, relays, factored)


def _lowrank_costs(u: sp.csr_matrix, v: sp.csr_matrix, product_nnz: int) -> dict:
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
    return {"product": {"weights": int(product_nnz), "ops": SPIKE_RATE * product_nnz},
            "factored": {"weights": int(u.nnz + v.nnz), "acs": acs, "macs": macs, "ops": acs + MAC_PER_AC * macs}}


def _choose(mode: str, costs: dict) -> tuple[bool, str]:
    """Factored or not, and why: ``auto`` keeps the factors when the ratio of stored weights times the ratio
    of operations (factored / product) is below 1, i.e. memory saved outweighs operations added."""
    if mode != "auto":
        return mode == "factored", f"lowrank={mode}"
    prod, fact = costs["product"], costs["factored"]
    mem = fact["weights"] / max(prod["weights"], 1)
    ops = fact["ops"] / max(prod["ops"], 1e-12)
    verdict = "factored" if mem * ops < 1 else "product"
    return verdict == "factored", (f"{verdict}: factored stores {mem:.2f}x the weights at {ops:.2f}x the "
                                   f"synaptic-op energy (product of ratios {mem * ops:.2f} "
                                   f"{'<' if verdict == 'factored' else '>='} 1)")


def _lowrank(name: str, mode: str, paths: dict, fold: np.ndarray, parts: list[tuple[Population, np.ndarray]],
             scales: dict[str, int], sources: dict[str, list[tuple[str, np.ndarray]]], report: dict
             ) -> tuple[list[Relay], dict[tuple[str, int, bool], list[SynapseGroup]]]:
    """Decide and build the factored form of each low-rank path into layer ``name`` (``fold``: per-neuron
    factor of the threshold folding). Paths through the same V node (branches of a residual sum into it)
    share one relay, fed by a V group from each; the U groups go with the first path's key. Fills
    ``report["lowrank"]`` per V node; ``mode="factored"`` raises where a path cannot be factored."""
    relays, factored, entries = [], {}, {}
    by_relay: dict[str, dict[tuple[str, int, bool], _Factors]] = {}
    for key, found in paths.items():
        if isinstance(found, _Refused):
            if mode == "factored":
                raise GraphError(f"the low-rank path from '{key[0]}' cannot be kept factored: {found.why}", node=name)
            entries[key[0]] = {"chosen": "product", "why": f"not factorable: {found.why}"}
        else:
            by_relay.setdefault(found.relay, {})[key] = found
    for relay_name, found in by_relay.items():
        keys = list(found)
        blocked = [k[0] for k, p in paths.items() if k not in found and relay_name in p.nodes]
        twice = len({k[0] for k in keys}) < len(keys)
        if blocked or twice:
            why = (f"a path from {', '.join(blocked)} through it cannot be factored" if blocked
                   else "two paths from one source (different lags) reach it")
            if mode == "factored":
                raise GraphError(f"the low-rank path through '{relay_name}' cannot be kept factored: {why}",
                                 node=name)
            entries[relay_name] = {"chosen": "product", "why": f"not factorable: {why}"}
            continue
        u = found[keys[0]].u
        v = sp.csr_matrix(sp.hstack([found[k].v for k in keys], format="csr"))
        v.sum_duplicates()  # canonical: sorted indices (products leave them unsorted)
        source_pops, owner, offset = [], {}, 0
        for k in keys:
            for pop, cols in sources[k[0]]:
                source_pops.append((pop, offset + cols))
                owner[pop] = k
            offset += found[k].v.shape[1]
        u_fold = sp.csr_matrix(sp.diags(fold) @ u)
        u_fold.sum_duplicates()  # canonical: sorted indices
        costs = _lowrank_costs(u, v, sp.csr_matrix(u @ v).count_nonzero())
        keep, why = _choose(mode, costs)
        entry = {"relay": relay_name, "rank": int(v.shape[0]), "shape": [int(u_fold.shape[0]), int(v.shape[1])],
                 "cost": costs, "chosen": "product", "why": why}
        if len(keys) > 1:
            entry["sources"] = [k[0] for k in keys]
        if keep:
            built = _factored_groups(name, relay_name, v, u_fold, parts, scales, source_pops)
            if isinstance(built, str):
                if mode == "factored":
                    raise GraphError(f"the low-rank path through '{relay_name}' cannot be kept factored: {built}",
                                     node=name)
                entry["why"] = f"product: {built}"
            else:
                relay, groups, errors = built
                relays.append(relay)
                for k in keys:
                    factored[k] = [g for g in groups if g.target == relay_name and owner[g.source] == k]
                factored[keys[0]] += [g for g in groups if g.source == relay_name]
                entry.update(chosen="factored", relay_scale=relay.scale, **errors)
        entries[relay_name] = entry
    if entries:
        report["lowrank"] = entries
    return relays, factored


def _refined(scale: int, headroom: float) -> int:
    """A spiking population's scale ``scale · 2^k``: the finest that keeps ``headroom`` thresholds of range.

    ``scale`` makes the largest folded weight a full mantissa at exponent 0, so a
    synapse group of smaller weights gets a negative exponent, and Lava floors each
    step's input sum ``Σ 2 m s`` shifted right by it: a downward bias of up to one unit,
    ``1/vth`` of a threshold, per step. A recurrent network integrates that bias over
    its whole run (one MNIST-1D RNN lost 1.7 to 3.3 points to it at 4 to 16 decay
    groups; README). Multiplying the scale by
    ``2^k`` moves every exponent up by ``k`` (mantissas unchanged) until ``u`` and
    ``v``, 24 bits with the voltage ``vth << 6`` at threshold, would wrap or saturate
    within ``headroom`` thresholds; ``k`` stops at the largest weight exponent.
    """
    top = min(MAX_SCALE, UV_MAX / 2.0**ACT_SHIFT / headroom)
    k = int(np.floor(np.log2(top / scale))) if top >= 2 * scale else 0
    return scale << min(k, WEIGHT_EXP_RANGE[1])


def _quantize(w: sp.csr_matrix, scale: float, exp: int | None = None) -> tuple[sp.csr_matrix, int, float]:
    """8-bit mantissas ``m`` with ``2 m 2^exp ≈ w · scale`` (``exp``: the smallest that fits, unless given),
    CSR with pruned zeros dropped, and the relative error."""
    smax = float(np.abs(w.data).max(initial=0.0))
    if exp is None:
        exp = 0 if smax == 0 else int(np.ceil(np.log2(smax * scale / MANT_FULL / (1 + ROUNDOFF))))
        exp = int(np.clip(exp, *WEIGHT_EXP_RANGE))
    values = np.clip(np.rint(w.data * scale / 2.0**exp / 2), -128, 127).astype(np.int16)
    err = _rel_error(2 * values * 2.0**exp / scale, w.data)
    mant = sp.csr_matrix((values, w.indices.copy(), w.indptr.copy()), shape=w.shape)
    mant.eliminate_zeros()  # in place: on copies, so that ``w`` (maybe the caller's matrix) keeps its structure
    return mant, exp, err


def _exp_needed(w: sp.csr_matrix, scale: float) -> int:
    """The exponent :func:`_quantize` would pick, unclipped."""
    smax = float(np.abs(w.data).max(initial=0.0))
    return 0 if smax == 0 else int(np.ceil(np.log2(smax * scale / MANT_FULL / (1 + ROUNDOFF))))


def _factored_groups(name: str, relay_name: str, v: sp.csr_matrix, u_fold: sp.csr_matrix,
                     parts: list[tuple[Population, np.ndarray]], scales: dict[str, int],
                     source_pops: list[tuple[str, np.ndarray]]):
    """The relay, its V groups (one per source population; delay set later) and U groups (one per target
    population) with their errors, or why the chip's ranges do not allow it.

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
    rank = v.shape[0]
    lo, hi = WEIGHT_EXP_RANGE
    for e_v in (*range(0, lo - 1, -1), *range(1, hi + 1)):
        r_scale = 2.0**e_v * MANT_FULL / vmax
        u_parts = [(pop, _take(u_fold, index, axis=0)) for pop, index in parts]
        needs = [_exp_needed(sp.csr_matrix(w / r_scale), scales[pop.name]) for pop, w in u_parts]
        if min(needs) < lo or max(needs) > hi:
            continue
        relay = Relay(relay_name, relay_name, np.arange(rank), scale=r_scale)
        groups, v_errors, u_errors = [], [], []
        for src, cols in source_pops:
            mant, exp, err = _quantize(sp.csr_matrix(_take(v, cols, axis=1)), r_scale)
            groups.append(SynapseGroup(f"{src}->{relay_name}", src, relay_name, _stored(mant), exp, "factored", err))
            v_errors.append(err)
        bound = sum(g.input_bound()[1] for g in groups)
        if bound.max(initial=0) >= 2 ** (MESSAGE_BITS - 1):
            continue
        v_eff = _dequantized(groups, v.shape, [c for _, c in source_pops], r_scale)
        ok, product_errors = True, []
        for pop, w in u_parts:
            mant, exp, err = _quantize(sp.csr_matrix(w / r_scale), scales[pop.name])
            group = SynapseGroup(f"{relay_name}->{pop.name}", relay_name, pop.name, _stored(mant), exp, "factored",
                                 err)
            acc, shifted = group.input_bound(bound)
            if acc.max(initial=0) > GRADED_ACC_MAX or shifted.max(initial=0) > GRADED_INPUT_MAX:
                ok = False
                break
            groups.append(group)
            u_errors.append(err)
            u_eff = sp.csr_matrix(mant, dtype=np.float64) * (2.0 * 2.0**exp / scales[pop.name] * r_scale)
            product_errors.append(_rel_error(u_eff @ v_eff, w @ v))
        if ok:
            return relay, groups, {"v_error": max(v_errors), "u_error": max(u_errors),
                                   "product_error": max(product_errors), "v_exp": e_v}
    return (f"no relay exponent keeps U's exponent within {list(WEIGHT_EXP_RANGE)} and the graded messages "
            f"within {MESSAGE_BITS} bits and int32 sums")


def _stored(mant: sp.csr_matrix) -> sp.csr_matrix | np.ndarray:
    """CSR below :data:`SPARSE_BELOW` non-zeros (pruned factors), else dense, as for every other group."""
    return mant if mant.nnz < SPARSE_BELOW * mant.shape[0] * mant.shape[1] else mant.toarray().astype(np.int64)


def _dequantized(groups: list[SynapseGroup], shape: tuple[int, int], cols: list[np.ndarray], scale: float
                 ) -> sp.csr_matrix:
    """The float V the relay's groups stand for (CSR ``(r, n)``): ``2 m 2^e / scale`` per source block."""
    rows, columns, values = [], [], []
    for g, c in zip(groups, cols):
        m = sp.coo_matrix(g.mantissa)
        rows.append(m.row)
        columns.append(np.asarray(c)[m.col])
        values.append(2.0 * m.data * 2.0**g.exp / scale)
    return sp.csr_matrix((np.concatenate(values), (np.concatenate(rows), np.concatenate(columns))), shape=shape)


def _widths(graph: nir.NIRGraph, keys: list[tuple[str, int, bool]]) -> list[int]:
    """Number of values each key's source emits."""
    out = []
    for source, _, _ in keys:
        node = graph.nodes[source]
        out.append(int(np.prod(next(iter(node.input_type.values())))) if isinstance(node, (nir.Input, SpikeProduct))
                   else int(np.size(node.v_threshold)))
    return out


def _take(matrix: sp.csr_matrix, index: np.ndarray, axis: int) -> sp.csr_matrix:
    """Rows (``axis=0``) or columns (``axis=1``) ``index`` of a CSR matrix; a contiguous run is a slice, the
    whole matrix itself."""
    n = matrix.shape[axis]
    if index.size == n and np.array_equal(index, np.arange(n)):
        return matrix
    if index.size and np.array_equal(index, np.arange(index[0], index[0] + index.size)):
        run = slice(int(index[0]), int(index[0]) + index.size)
        return matrix[run] if axis == 0 else matrix[:, run]
    return matrix[index] if axis == 0 else matrix[:, index]


def _synapse_groups(plan: _Planned, layer_pops: dict[str, list[Population]], depth: dict[str, int]
                    ) -> list[SynapseGroup]:
    """Pass 2 for one layer: quantize one synapse group per (source population, target population, key)."""
    name, report = plan.name, plan.report
    delay: dict[tuple[str, int, bool], int] = {}
    for key in plan.keys:  # a factored path's relay is one step: its V groups take one step less of delay
        source, lag, recurrent = key
        delay[key] = 0 if recurrent else depth[name] - 1 - (key in plan.factored) - depth[source] + lag
    too_long = {s: d for (s, _, _), d in delay.items() if d > DELAY_MAX}
    if too_long:
        raise GraphError(f"the path from {', '.join(too_long)} needs a delay of {max(too_long.values())} "
                         f"steps; synapses delay at most {DELAY_MAX}", node=name)
    if any(delay.values()):
        report["delays"] = {(s if not lag else f"{s} (+{lag} lag)"): d for (s, lag, _), d in delay.items() if d}
    late = {s: depth[s] - depth[name] for s, _, rec in plan.keys if rec and depth[s] > depth[name]}
    if late:
        report["feedback_latency"] = {s: 1 + k for s, k in late.items()}
        warnings.warn(f"layer '{name}': feedback from {', '.join(f'{s!r}' for s in late)} reaches it "
                      f"{', '.join(str(1 + k) for k in late.values())} steps later on the chip (one step per synapse "
                      f"on the way) instead of NIR's one step; float and chip differ by that delay",
                      FeedbackLatencyWarning)
    if any(rec for _, _, rec in plan.keys):
        report["recurrent"] = list(dict.fromkeys(s for s, _, rec in plan.keys if rec))
    src_parts, offset = [], 0  # (source input or population, its columns in w_fold, delay, key)
    for key, width in zip(plan.keys, plan.widths):
        source = key[0]
        if key in plan.factored:
            offset += width
            continue
        cols = [(source, offset + np.arange(width))] if not layer_pops[source] \
            else [(p.name, offset + p.index) for p in layer_pops[source]]
        src_parts += [(src, c, delay[key], key) for src, c in cols]
        offset += width
    groups, errors, outlier_errors = [], [], []
    storage: dict[str, str] = {}
    whole_layer = len(plan.parts) == 1
    for pop, index in plan.parts:
        w_rows = _take(plan.w_fold, index, axis=0)
        s_scale = plan.scales[pop.name]
        for src_name, cols, extra, key in src_parts:
            _, lag, recurrent = key
            mant, exp, err = _quantize(sp.csr_matrix(_take(w_rows, cols, axis=1)), s_scale)
            (outlier_errors if pop.name.endswith("/outliers") else errors).append(err)
            stored = mant if plan.form == "sparse" else mant.toarray().astype(np.int64)
            gname = f"{src_name}->{pop.name}" + (f"+{lag}" if lag else "") + ("~" if recurrent else "")
            conv = None
            if key in plan.convs:
                whole = whole_layer and len(layer_pops[key[0]]) <= 1  # one population each: natural order
                conv = _as_conv(plan.convs[key], mant, exp, extra, recurrent, whole)
                storage[gname] = conv if isinstance(conv, str) else "convolution"
                conv = None if isinstance(conv, str) else conv
            groups.append(SynapseGroup(gname, src_name, pop.name, stored, exp, plan.form, err, delay=extra, lag=lag,
                                       feedback=recurrent, conv=conv))
    if storage:
        report["storage"] = storage
    relays = {r.name for r in plan.relays}
    for key, groups_of_key in plan.factored.items():
        groups += [replace(g, delay=delay[key], lag=key[1]) if g.target in relays else g for g in groups_of_key]
    errors += [e["product_error"] for e in report.get("lowrank", {}).values() if e["chosen"] == "factored"]
    report["weight_error"] = float(max(errors, default=0.0))
    if outlier_errors:
        report["outlier_weight_error"] = float(max(outlier_errors))
    for field in ("weight_error", "bias_error", "outlier_weight_error"):
        if field in report and not np.isfinite(report[field]):
            raise GraphError(f"the quantization error is not finite ({report[field]})", node=name,
                             field="weight" if "weight" in field else "bias")
    if report["weight_error"] > WEIGHT_ERROR_WARN:
        warnings.warn(f"layer '{name}': relative weight error {100 * report['weight_error']:.1f} % "
                      f"after quantization (over {100 * WEIGHT_ERROR_WARN:g} %); expect the chip to differ from "
                      f"float (st2chip verify measures it)", QuantizationWarning)
    return groups


def _as_conv(conv: tuple[str, nir.Conv2d], mant: sp.csr_matrix, exp: int, delay: int, recurrent: bool,
             whole: bool):
    """The group's :class:`~st2chip.chip.chipgraph.ConvKernel`, or why it stays a matrix."""
    name, node = conv
    if recurrent or delay:
        return "matrix: a delayed or feedback group (lava's Conv has no delay)"
    if exp:
        return f"matrix: weight exponent {exp} (lava's fixed-point Conv applies none)"
    if not whole:
        return "matrix: a layer split into several populations (decay groups or outliers)"
    found = conv_kernel(name, node, tuple(int(d) for d in node.input_type["input"]), mant)
    return f"matrix: {found}" if isinstance(found, str) else found
