r"""Pass ``current_bias``: an Affine bias into a synaptic current enters the chip's current ``u``, exactly.

NIR adds a ``CubaLIF``'s (``CubaLI``'s) Affine bias to its current at every step,
:math:`i \leftarrow \beta_u i + g\,(W x + b)`; the chip's own bias enters ``v`` only.
So the bias becomes weights: one :class:`~st2chip.chip.chipgraph.AlwaysOn` neuron,
shared by the whole graph, spikes at every step from global step 1, and one synapse
group per population carries ``g b / \theta`` (pass ``fold``) into its ``u``, an
8-bit mantissa per neuron with one exponent per group at the population's scale, like
every other weight, but chosen for one spike: the input it adds each step is the
nearest integer (exponent -1) while the biases stay within 127 units, the chip's own
resolution; larger ones get 8 significant bits. Its spikes reach every layer from global step 2 on,
before a layer's first step (its depth + 1), with no delay: the bias enters ``u``
at every step of the sample, from the first, as in the float graph. The layer report
gives the bias's relative quantization error (warned above the weights' bound).
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np

from st2chip.chip import encoding
from st2chip.chip.chipgraph import AlwaysOn, SynapseGroup
from st2chip.chip.lowering.plan import CurrentBias, LayerPlan, Plan, QuantizationWarning
from st2chip.chip.lowering.synapses import WEIGHT_ERROR_WARN

SOURCE = "always_on"  # the always-on population's name (suffixed when a node of the graph has it)


def current_bias(plan: Plan) -> Plan:
    """The plan with the always-on source and each layer's :class:`~st2chip.chip.lowering.plan.CurrentBias`
    (None where no Affine bias enters a current); unchanged when no layer has one."""
    if not any(_needs(layer) for layer in plan.layers):
        return plan
    name = _free_name(plan)
    source = AlwaysOn(name, name, np.arange(1))
    layers = [replace(layer, current_bias=_groups(layer, source.name)) if _needs(layer) else layer
              for layer in plan.layers]
    return replace(plan, layers=layers, always_on=source)


def _needs(layer: LayerPlan) -> bool:
    bias = layer.folded.current_bias
    return bias is not None and bool(np.any(bias != 0))


def _free_name(plan: Plan) -> str:
    """:data:`SOURCE`, or ``SOURCE_k`` with the smallest ``k`` that no node is called (populations, inputs and
    relays are named after nodes)."""
    taken = set(plan.graph.nodes)
    return next(name for name in (SOURCE, *(f"{SOURCE}_{k}" for k in range(1, len(taken) + 2)))
                if name not in taken)


def _groups(layer: LayerPlan, source: str) -> CurrentBias:
    """One ``(n_pop, 1)`` group per population of ``layer`` carrying its folded current bias; the error."""
    bias = layer.folded.current_bias
    held = np.zeros_like(bias)
    groups, exps = [], []
    for pop in layer.populations.members:
        scale = layer.populations.scales[pop.name]
        mant, exp, value = encoding.per_spike(bias[pop.index] * scale)
        held[pop.index] = value / scale
        if np.any(mant):
            groups.append(SynapseGroup(f"{source}->{pop.name}", source, pop.name, mant[:, None], exp, "dense",
                                       encoding.rel_error(held[pop.index], bias[pop.index])))
            exps.append(exp)
    error = encoding.rel_error(held, bias)
    if error > WEIGHT_ERROR_WARN:
        warnings.warn(f"layer '{layer.name}': the Affine bias into the synaptic current errs by {100 * error:.1f} % "
                      f"in 8-bit mantissas (over {100 * WEIGHT_ERROR_WARN:g} %); expect the chip to differ from "
                      f"float (st2chip verify measures it)", QuantizationWarning)
    return CurrentBias(groups, sorted(set(exps)), error)
