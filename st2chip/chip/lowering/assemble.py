"""The last step: a finished plan as a :class:`~st2chip.chip.chipgraph.ChipGraph` with its lowering report."""

from __future__ import annotations

from st2chip.chip.chipgraph import ChipGraph
from st2chip.chip.lowering.plan import LayerPlan, Plan
from st2chip.chip.lowering.report import CurrentBiasReport, LayerReport, LoweringReport


def chip_graph(plan: Plan) -> ChipGraph:
    """Inputs, populations (each layer's relays before its own; the always-on source before the first layer
    it feeds), synapse groups, report and host products."""
    populations, synapses = [], []
    first_fed = next((layer.name for layer in plan.layers if layer.current_bias is not None), None)
    for layer in plan.layers:
        if layer.name == first_fed:
            populations.append(plan.always_on)
        fanin = layer.fanin.relays if layer.fanin else []
        populations += [*layer.lowrank.relays, *fanin, *layer.populations.members]
        synapses += [*layer.synapses.groups, *(layer.current_bias.groups if layer.current_bias else [])]
    source = plan.always_on.name if plan.always_on else None
    report = LoweringReport(plan.dt, {layer.name: layer_report(layer, source) for layer in plan.layers})
    return ChipGraph(plan.inputs, populations, synapses, report, plan.hosts)


def layer_report(layer: LayerPlan, always_on: str | None) -> LayerReport:
    """What each pass measured of ``layer`` (``always_on``: the name of the source of biases into currents)."""
    neuron, incoming, pops, syn, bias = (layer.neuron, layer.incoming, layer.populations, layer.synapses,
                                         layer.current_bias)
    sources = list(dict.fromkeys(k.source for k in incoming.keys))
    return LayerReport(
        kind=type(layer.node).__name__, neurons=incoming.weight.shape[0], affines=incoming.affines,
        source=sources[0] if len(sources) == 1 else sources, chains=incoming.chains,
        decay_groups=len(layer.decays.pairs), leak_error=layer.decays.leak_error,
        threshold_range=[float(neuron.threshold.min()), float(neuron.threshold.max())],
        bias_error=pops.bias_error, voltage_unit={pop.name: pop.voltage_unit for pop in pops.members},
        weight_error=syn.weight_error, reset=neuron.reset, refractory=neuron.refractory,
        current_leak_error=layer.decays.current_leak_error,
        current_bias=None if bias is None else CurrentBiasReport(always_on, bias.exps, bias.error),
        outliers=pops.outliers or None, headroom=pops.headroom, lowrank=layer.lowrank.choices,
        delays=syn.delays, feedback_latency=syn.feedback_latency, recurrent=syn.recurrent, storage=syn.storage,
        outlier_weight_error=syn.outlier_weight_error, precision=layer.precision,
        fanin=layer.fanin.report if layer.fanin else None)
