"""Pass ``populations``: each decay group of a layer becomes populations with a fixed-point scale and biases.

A population shares one scale ``S`` (threshold ``vth = S`` for a spiking one), which
makes its largest folded weight a full 8-bit mantissa; a spiking population's scale
is then refined as far as ``headroom`` allows (:func:`~st2chip.chip.encoding.refined_scale`).
A neuron whose folded weights exceed :data:`OUTLIER_FACTOR` times its group's median
would cost every other neuron that many quantization steps: it gets a population
(and scale) of its own. Biases get 13-bit mantissas with per-neuron exponents. Each
population carries its voltage unit (``64 S``: chip voltage per float threshold).
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np

from st2chip.chip import encoding
from st2chip.chip.chipgraph import UV_MAX, VTH_MAX, Population
from st2chip.chip.lowering.plan import LayerPlan, Plan, Populations, QuantizationWarning

OUTLIER_FACTOR = 64.0    # a neuron whose folded weights exceed 64x its group's median gets its own population


def populations(plan: Plan) -> Plan:
    """Every layer's :class:`~st2chip.chip.lowering.plan.Populations`."""
    return plan.map_layers(lambda p, layer: replace(layer, populations=made(layer, p.options.headroom)))


def scale_parts(index: np.ndarray, row_max: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split one decay group's neurons ``index`` into the bulk and the outliers whose folded weights (row
    maxima ``row_max``) dwarf the rest."""
    row_max = row_max[index]
    live = row_max[row_max > 0]
    if live.size < 2:
        return index, index[:0]
    outlier = row_max / OUTLIER_FACTOR > np.median(live)  # divided: times the factor may pass float's largest
    return index[~outlier], index[outlier]


def made(layer: LayerPlan, headroom: float) -> Populations:
    """``layer``'s populations: one per decay pair, outliers split off, each scaled, biases encoded."""
    name, neuron, decay = layer.name, layer.neuron, layer.decays
    row_max = encoding.row_absmax(layer.folded.weight)
    for product in layer.folded.deferred.values():  # the low-rank paths pass lowrank decides on
        row_max = np.maximum(row_max, product.row_absmax())
    groups, outliers = [], []
    for g, pair in enumerate(decay.pairs):
        bulk, odd = scale_parts(np.flatnonzero((decay.dv == pair.dv) & (decay.du == pair.du)), row_max)
        pname = name if len(decay.pairs) == 1 else f"{name}/g{g}"
        groups.append((pname, pair, bulk))
        if odd.size:
            groups.append((f"{pname}/outliers", pair, odd))
            outliers += odd.tolist()
    if outliers:
        warnings.warn(f"layer '{name}': neuron(s) {sorted(outliers)[:8]}{' ...' if len(outliers) > 8 else ''} "
                      f"have weights over {OUTLIER_FACTOR:g}x their group's (tiny thresholds?); each group's "
                      f"outliers get their own population so the rest keep their precision (their own weight "
                      f"error is reported as outlier_weight_error)", QuantizationWarning)
    members, scales, bias_errors = [], {}, []
    for pname, pair, index in groups:
        if index.size == 0:
            continue
        scale = encoding.weight_scale(float(row_max[index].max(initial=0.0)))
        if neuron.spiking:
            scale = encoding.refined_scale(scale, headroom)
        b_fold = layer.folded.bias[index]
        with np.errstate(over="ignore"):  # a bias beyond float's range clips to the largest mantissa
            mant, exp = encoding.bias_fixed(b_fold * scale * encoding.VOLTAGE_PER_SCALE)
        bias_errors.append(encoding.rel_error((mant << exp) / (scale * encoding.VOLTAGE_PER_SCALE), b_fold))
        members.append(Population(pname, name, index, du=pair.du, dv=pair.dv, vth=scale if neuron.spiking else VTH_MAX,
                                  bias_mant=mant, bias_exp=exp, readout=not neuron.spiking, reset=neuron.reset,
                                  voltage_unit=encoding.voltage_unit(scale), refractory=neuron.refractory))
        scales[pname] = scale
    headroom_of = ({pop.name: UV_MAX / encoding.VOLTAGE_PER_SCALE / scales[pop.name] for pop in members}
                   if neuron.spiking else None)
    return Populations(members, scales, sorted(outliers), float(max(bias_errors, default=0.0)), headroom_of)
