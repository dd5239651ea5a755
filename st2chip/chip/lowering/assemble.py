"""The last step: a finished plan as a :class:`~st2chip.chip.chipgraph.ChipGraph` with its lowering report."""

from __future__ import annotations

import numpy as np

from st2chip.chip.chipgraph import ChipGraph
from st2chip.chip.lowering.plan import LayerPlan, Plan
from st2chip.chip.lowering.report import LayerReport, LoweringReport


def chip_graph(plan: Plan) -> ChipGraph:
    """Inputs, populations (each layer's relays before its own), synapse groups, report and host products."""
    populations = [pop for layer in plan.layers for pop in [*layer.lowrank.relays, *layer.populations.members]]
    synapses = [group for layer in plan.layers for group in layer.synapses.groups]
    report = LoweringReport(plan.dt, {layer.name: layer_report(layer) for layer in plan.layers})
    return ChipGraph(plan.inputs, populations, synapses, report, plan.hosts)


def layer_report(layer: LayerPlan) -> LayerReport:
    """What each pass measured of ``layer``."""
    neuron, incoming, pops, syn = layer.neuron, layer.incoming, layer.populations, layer.synapses
    sources = list(dict.fromkeys(k.source for k in incoming.keys))
    bias_note = None
    if neuron.beta_u is not None and np.any(incoming.bias != 0):  # NIR filters an Affine bias through the current
        bias_note = ("Affine bias enters as its steady-state voltage bias: exact once the synaptic current has "
                     "settled (a few tau_syn)")
    return LayerReport(
        kind=type(layer.node).__name__, neurons=incoming.weight.shape[0], affines=incoming.affines,
        source=sources[0] if len(sources) == 1 else sources, chains=incoming.chains,
        decay_groups=len(layer.decays.pairs), leak_error=layer.decays.leak_error,
        threshold_range=[float(neuron.threshold.min()), float(neuron.threshold.max())],
        bias_error=pops.bias_error, voltage_unit={pop.name: pop.voltage_unit for pop in pops.members},
        weight_error=syn.weight_error, reset=neuron.reset, current_leak_error=layer.decays.current_leak_error,
        bias_note=bias_note, outliers=pops.outliers or None, headroom=pops.headroom, lowrank=layer.lowrank.choices,
        delays=syn.delays, feedback_latency=syn.feedback_latency, recurrent=syn.recurrent, storage=syn.storage,
        outlier_weight_error=syn.outlier_weight_error)
