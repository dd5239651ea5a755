r"""Pass ``fold``: per-neuron thresholds folded into the incoming weights and bias.

Lava's LIF has one threshold per process, sLIF one per neuron. Dividing neuron
:math:`i`'s incoming weights and bias by :math:`\theta_i` (and multiplying them by its
input gain) gives threshold 1 with identical spikes: exact for reset to zero, before
quantization. The Affine bias of a layer with a synaptic current (CubaLIF, CubaLI) is
kept apart: it enters the current (pass ``current_bias``), the rest of the bias ``v``.
First the layer is checked to be one the chip can hold at all.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from st2chip.chip.lowering.plan import Folded, LayerPlan, Plan
from st2chip.errors import GraphError


def fold(plan: Plan) -> Plan:
    """Every layer's :class:`~st2chip.chip.lowering.plan.Folded` weights and bias."""
    return plan.map_layers(lambda p, layer: replace(layer, folded=folded(layer, p.dt)))


def folded(layer: LayerPlan, dt: float) -> Folded:
    """``layer``'s incoming weights (scaled in place: pass ``paths`` made them fresh; its low-rank products held
    apart by a row factor) and bias over its thresholds, times its input gain."""
    name, neuron, weight, bias = layer.name, layer.neuron, layer.incoming.weight, layer.incoming.bias
    n = weight.shape[0]
    if n == 0:
        raise GraphError("the layer has no neurons", node=name, field="weight")
    if np.any(neuron.beta < 0) or np.any(neuron.beta > 1):
        raise GraphError(f"leak factor 1 - dt/tau must lie in [0, 1]; tau is shorter than dt = {dt:g} s: "
                         f"pass the dt the model was trained with (--dt), or st2chip import the file "
                         f"from its framework", node=name, field="tau")
    if np.any(neuron.threshold <= 0):
        raise GraphError("thresholds must be positive", node=name, field="v_threshold")
    with np.errstate(over="ignore", invalid="ignore"):
        factor = neuron.gain / neuron.threshold
        weight.data *= np.repeat(factor, np.diff(weight.indptr))
        deferred = {key: product.scaled(factor) for key, product in layer.incoming.deferred.items()}
        keeps_current = neuron.beta_u is not None  # NIR adds its Affine bias to the current, not to v
        current = bias * factor if keeps_current else None
        b_fold = (0.0 if keeps_current else bias * neuron.gain / neuron.threshold) + neuron.bias / neuron.threshold
        # each value array with its row pointers (None: one value per neuron); the neuron is found only for an error
        checks = [("weight", weight.data, weight.indptr),
                  *(("weight", product.row_absmax(), None) for product in deferred.values()), ("bias", b_fold, None),
                  ("bias", np.zeros(n) if current is None else current, None)]
        for field, value, rows in checks:
            bad = ~np.isfinite(value)
            if bad.any():
                at = int(np.argmax(bad))
                i = at if rows is None else int(np.searchsorted(rows, at, side="right")) - 1
                raise GraphError(f"{field}s divided by the threshold overflow (neuron {i}: threshold "
                                 f"{neuron.threshold[i]:g}, gain {neuron.gain[i]:g}); the chip cannot hold them",
                                 node=name, field=field)
    return Folded(weight, b_fold, factor, current, deferred)
