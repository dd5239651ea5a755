"""Pass ``synapses``: one quantized synapse group per (source population, target population, path key).

Several paths into one layer become one group per (source, delay); shorter paths
get synaptic delays so that every path arrives when the float graph adds it (a
factored path's V groups one step less: the relay is a step). A recurrent path keeps
the one-step delay every synapse has: a layer feeding itself sees its spikes of the
step before, as NIR reads it; feedback to an earlier layer arrives later than that,
by the pipeline depth between the two layers (reported, with a
:class:`~st2chip.chip.lowering.plan.FeedbackLatencyWarning`). Each group gets the
smallest weight exponent that fits its population's scale. A group whose chain is
one ``Conv2d`` is also kept as a convolution kernel (:mod:`st2chip.chip.conv_storage`)
when its quantized matrix is exactly one, with exponent 0, between whole layers;
Lava then runs it as lava-nc's ``Conv``. Every other group is a matrix: CSR where
the layer's weights are sparse (below :data:`SPARSE_BELOW` non-zeros), else dense.
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import nir
import numpy as np
import scipy.sparse as sp

from st2chip.chip import encoding
from st2chip.chip.chipgraph import DELAY_MAX, ConvKernel, SynapseGroup
from st2chip.chip.conv_storage import conv_kernel
from st2chip.chip.lowering.plan import FeedbackLatencyWarning, LayerPlan, PathKey, Plan, QuantizationWarning, Synapses
from st2chip.errors import GraphError

SPARSE_BELOW = 0.5       # store as CSR when fewer than this fraction of weights are non-zero
WEIGHT_ERROR_WARN = 0.05 # a layer whose relative weight error exceeds 5 % is reported with a warning


def synapses(plan: Plan) -> Plan:
    """Every layer's :class:`~st2chip.chip.lowering.plan.Synapses`."""
    return plan.map_layers(lambda p, layer: replace(layer, synapses=quantized(p, layer)))


def take(matrix: sp.csr_matrix, index: np.ndarray, axis: int) -> sp.csr_matrix:
    """Rows (``axis=0``) or columns (``axis=1``) ``index`` of a CSR matrix; a contiguous run is a slice, the
    whole matrix itself."""
    n = matrix.shape[axis]
    if index.size == n and np.array_equal(index, np.arange(n)):
        return matrix
    if index.size and np.array_equal(index, np.arange(index[0], index[0] + index.size)):
        run = slice(int(index[0]), int(index[0]) + index.size)
        return matrix[run] if axis == 0 else matrix[:, run]
    return matrix[index] if axis == 0 else matrix[:, index]


def dense(mant: sp.csr_matrix) -> np.ndarray:
    """Mantissas as a dense int64 array written only where they are non-zero: the zeros stay untouched pages
    of a fresh zero allocation, which take no memory until written (a bundle's multiplied-out U·V is
    block-diagonal over tokens, so a dense group holds mostly zeros: 4.4 of the CIFAR-size DSP ST's 11 GB)."""
    return sp.csr_matrix(mant, dtype=np.int64).toarray()


def stored(mant: sp.csr_matrix) -> sp.csr_matrix | np.ndarray:
    """CSR below :data:`SPARSE_BELOW` non-zeros (pruned factors), else dense, as for every other group."""
    return mant if mant.nnz < SPARSE_BELOW * mant.shape[0] * mant.shape[1] else dense(mant)


def form_of(layer: LayerPlan) -> str:
    """The form of the layer's matrix groups: ``lowrank`` (a multiplied-out U·V), ``dense`` or ``sparse``."""
    weight = layer.folded.weight
    dense = weight.nnz >= SPARSE_BELOW * weight.shape[0] * weight.shape[1]
    return "lowrank" if layer.incoming.affines > 1 else ("dense" if dense else "sparse")


def delays(plan: Plan, layer: LayerPlan) -> dict[PathKey, int]:
    """The extra synaptic delay of each key into ``layer`` that aligns it with the layer's deepest path."""
    depth, name = plan.depth, layer.name
    out = {k: 0 if k.recurrent else depth[name] - 1 - (k in layer.lowrank.factored) - depth[k.source] + k.lag
           for k in layer.incoming.keys}
    too_long = {k.source: d for k, d in out.items() if d > DELAY_MAX}
    if too_long:
        raise GraphError(f"the path from {', '.join(too_long)} needs a delay of {max(too_long.values())} "
                         f"steps; synapses delay at most {DELAY_MAX}", node=name)
    return out


def feedback_latency(plan: Plan, layer: LayerPlan) -> dict[str, int]:
    """Per recurrent source deeper than ``layer``: the steps its feedback takes on the chip (NIR: one)."""
    depth, name = plan.depth, layer.name
    late = {k.source: depth[k.source] - depth[name] for k in layer.incoming.keys
            if k.recurrent and depth[k.source] > depth[name]}
    if late:
        warnings.warn(f"layer '{name}': feedback from {', '.join(f'{s!r}' for s in late)} reaches it "
                      f"{', '.join(str(1 + k) for k in late.values())} steps later on the chip (one step per synapse "
                      f"on the way) instead of NIR's one step; float and chip differ by that delay",
                      FeedbackLatencyWarning)
    return {s: 1 + k for s, k in late.items()}


def matrix_blocks(plan: Plan, layer: LayerPlan) -> list[tuple[str, np.ndarray, PathKey]]:
    """Per source block of a path kept as a matrix (not factored): the source input or population, its
    columns in the folded weight, and the path's key."""
    blocks, offset = [], 0
    for key, width in zip(layer.incoming.keys, layer.incoming.widths):
        if key not in layer.lowrank.factored:
            blocks += [(b.source, offset + b.index, key) for b in plan.blocks(key.source)]
        offset += width
    return blocks


def group_name(source: str, target: str, key: PathKey) -> str:
    """A matrix group's name: ``source->target``, ``+lag`` for a lagged path, ``~`` for a recurrent one."""
    return f"{source}->{target}" + (f"+{key.lag}" if key.lag else "") + ("~" if key.recurrent else "")


def quantized(plan: Plan, layer: LayerPlan) -> Synapses:
    """``layer``'s synapse groups: the matrix groups per population and source block, then the factored ones."""
    name, incoming, pops = layer.name, layer.incoming, layer.populations
    delay = delays(plan, layer)
    late = feedback_latency(plan, layer)
    blocks = matrix_blocks(plan, layer)
    form, whole_layer = form_of(layer), len(pops.members) == 1
    groups, errors, outlier_errors, storage = [], [], [], {}
    for pop in pops.members:
        w_rows = take(layer.folded.weight, pop.index, axis=0)
        for source, cols, key in blocks:
            mant, exp, err = encoding.quantize(sp.csr_matrix(take(w_rows, cols, axis=1)), pops.scales[pop.name])
            (outlier_errors if pop.name.endswith("/outliers") else errors).append(err)
            gname = group_name(source, pop.name, key)
            conv = None
            if key in incoming.convs:
                whole = whole_layer and len(plan.blocks(key.source)) <= 1  # one population each: natural order
                conv = as_conv(plan.graph, incoming.convs[key], mant, exp, delay[key], key.recurrent, whole)
                storage[gname] = conv if isinstance(conv, str) else "convolution"
                conv = None if isinstance(conv, str) else conv
            groups.append(SynapseGroup(gname, source, pop.name, mant if form == "sparse" else dense(mant),
                                       exp, form, err, delay=delay[key],
                                       lag=key.lag, feedback=key.recurrent, conv=conv))
    relays = {r.name for r in layer.lowrank.relays}
    for key, of_key in layer.lowrank.factored.items():
        groups += [replace(g, delay=delay[key], lag=key.lag) if g.target in relays else g for g in of_key]
    errors += [c.factored.product_error for c in layer.lowrank.choices.values() if c.chosen == "factored"]
    out = Synapses(groups, {(f"{k.source} (+{k.lag} lag)" if k.lag else k.source): d for k, d in delay.items() if d},
                   late, list(dict.fromkeys(k.source for k in incoming.keys if k.recurrent)), storage,
                   float(max(errors, default=0.0)), float(max(outlier_errors)) if outlier_errors else None)
    _check_errors(name, out, pops.bias_error)
    return out


def _check_errors(name: str, out: Synapses, bias_error: float) -> None:
    """Refuse a layer whose quantization error is not finite; warn about one far from its float weights."""
    for field, value in (("weight_error", out.weight_error), ("bias_error", bias_error),
                         ("outlier_weight_error", out.outlier_weight_error)):
        if value is not None and not np.isfinite(value):
            raise GraphError(f"the quantization error is not finite ({value})", node=name,
                             field="weight" if "weight" in field else "bias")
    if out.weight_error > WEIGHT_ERROR_WARN:
        warnings.warn(f"layer '{name}': relative weight error {100 * out.weight_error:.1f} % "
                      f"after quantization (over {100 * WEIGHT_ERROR_WARN:g} %); expect the chip to differ from "
                      f"float (st2chip verify measures it)", QuantizationWarning)


def as_conv(graph: nir.NIRGraph, node_name: str, mant: sp.csr_matrix, exp: int, delay: int, recurrent: bool,
            whole: bool) -> ConvKernel | str:
    """The group's :class:`~st2chip.chip.chipgraph.ConvKernel`, or why it stays a matrix."""
    if recurrent or delay:
        return "matrix: a delayed or feedback group (lava's Conv has no delay)"
    if exp:
        return f"matrix: weight exponent {exp} (lava's fixed-point Conv applies none)"
    if not whole:
        return "matrix: a layer split into several populations (decay groups or outliers)"
    node = graph.nodes[node_name]
    found = conv_kernel(node_name, node, tuple(int(d) for d in node.input_type["input"]), mant)
    return f"matrix: {found}" if isinstance(found, str) else found
