"""The finished plan as a :class:`~st2chip.xylo.xylograph.XyloGraph` and its per-layer report."""

from __future__ import annotations

import numpy as np

from st2chip.graph.reading import max_spikes
from st2chip.xylo.lowering.leaks import LIF_DASH_SYN
from st2chip.xylo.lowering.plan import Layer, XyloPlan
from st2chip.xylo.lowering.thresholds import has_current_bias
from st2chip.xylo.lowering.weights import READOUT_STEPS
from st2chip.xylo.xylograph import MAX_HIDDEN_SPIKES, XyloGraph, XyloNeurons


def xylo_graph(plan: XyloPlan) -> XyloGraph:
    """The chip's matrices and neurons, laid out as pass ``layout`` placed the layers."""
    where = {p.name: p for p in plan.placed}
    offsets = {c.name: c.offset for c in plan.inputs}
    hidden = [p for p in plan.placed if not p.output]
    n_hid = sum(p.size for p in hidden)
    n_out = sum(p.size for p in plan.placed if p.output)
    w_in = np.zeros((plan.n_inputs, n_hid), dtype=np.int64)
    w_rec = np.zeros((n_hid, n_hid), dtype=np.int64)
    w_out = np.zeros((n_hid, n_out), dtype=np.int64)
    for layer in plan.layers:
        to = where[layer.name]
        target = w_out if layer.output else None
        for source, w8 in plan.quantized[layer.name].chains:
            if source in offsets:
                w_in[offsets[source]:offsets[source] + w8.shape[0], to.start:to.stop] += w8
            else:
                rows = slice(where[source].start, where[source].stop)
                (w_rec if target is None else w_out)[rows, to.start:to.stop] += w8
    return XyloGraph(w_in, w_rec, w_out, plan.shifts["in"], plan.shifts["rec"], plan.shifts["out"],
                     _neurons(plan, hidden), _neurons(plan, [p for p in plan.placed if p.output]),
                     layers=list(plan.placed), input_names=[c.name for c in plan.inputs], report=report(plan))


def _neurons(plan: XyloPlan, placed: list) -> XyloNeurons:
    cat = lambda per: np.concatenate([per(p.name) for p in placed]) if placed else np.zeros(0, np.int64)  # noqa: E731
    return XyloNeurons(cat(lambda n: plan.leaks[n].dash_syn), cat(lambda n: plan.leaks[n].dash_mem),
                       cat(lambda n: plan.thresholds[n]), cat(lambda n: plan.biases[n]))


def report(plan: XyloPlan) -> dict:
    """Per layer: where it lies, its scale and shifts, the leak, weight and threshold errors, what is approximated."""
    out = {}
    for placed in plan.placed:
        layer = plan.layer(placed.name)
        leak, q = plan.leaks[layer.name], plan.quantized[layer.name]
        entry = {"kind": type(layer.node).__name__, "neurons": layer.size, "depth": layer.depth,
                 "output": layer.output, "scale": q.scale, "shifts": dict(q.shifts),
                 "leak_error": leak.leak_error, "syn_leak_error": leak.syn_leak_error,
                 "weight_error": q.weight_error, "threshold_error": q.threshold_error,
                 "bias_clipped": plan.bias_clipped[layer.name],
                 "synaptic_filter": _filter(layer), "approximations": _approximations(plan, layer)}
        out[layer.name] = entry
    return out


def _filter(layer: Layer) -> str:
    if layer.dynamics.beta_u is None:
        return f"added: dash_syn = {LIF_DASH_SYN} (the layer has no current; half of an input reaches v at once, " \
               f"the rest over the next steps)"
    return "the layer's current: dash_syn nearest to its decay"


def _approximations(plan: XyloPlan, layer: Layer) -> list[str]:
    notes = []
    if layer.dynamics.beta_u is None:
        notes.append("input filtered by a synaptic current (dash_syn = 1)")
    if np.any(layer.dynamics.beta >= 1.0):
        notes.append("no leak in float: v decays by one LSB per step toward 0 (dash_mem = 15)")
    if layer.spiking and not layer.output and max_spikes(layer.name, layer.node) < MAX_HIDDEN_SPIKES:
        notes.append(f"up to {MAX_HIDDEN_SPIKES} spikes per step where v reaches several thresholds (float: "
                     f"{max_spikes(layer.name, layer.node)})")
    if not layer.spiking:
        steps = plan.steps or READOUT_STEPS
        notes.append(f"readout: output neurons that never spike (threshold 32767), scored by v; scale keeps |v| "
                     f"below 32000 over {steps} steps with every source spiking once per step")
    if has_current_bias(layer):
        notes.append("Affine bias into the current moved to v as its steady state (the first steps differ)")
    if plan.bias_clipped[layer.name]:
        notes.append(f"{plan.bias_clipped[layer.name]} bias(es) clipped to 16 bits")
    return notes
