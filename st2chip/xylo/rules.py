"""Xylo's design rules: every way a canonical graph breaks them, all at once, each naming the layer.

Like Rockpool's Xylo mapper (``xylo_mapper.xylo_drc``: outputs from neurons only, weights before every
neuron layer, at most so many inputs / outputs, no recurrent output neurons), but collected rather than
raised one by one. The rules (``Violation.rule``):

- ``inputs``, ``hidden``, ``outputs``: more input channels, hidden or output neurons than the chip holds;
- ``input-levels``: an Input that takes more than 15 events per channel and step (Xylo clips there);
- ``input-expansion``, ``output-expansion``: on chips that publish them (Xylo Audio 3, Xylo IMU: 128), input
  weights reach only the first hidden neurons and output weights read only the last ones;
- ``output-source``: no output layer, an output layer reading the inputs directly (Xylo needs a hidden
  population in between) or feeding other layers (Xylo's output neurons feed nothing);
- ``output-recurrent``: an output layer with recurrent weights;
- ``graded-hidden``: a non-spiking layer (LI, I, CubaLI) that feeds other layers;
- ``reset``: a spiking layer that resets to zero (Xylo subtracts the threshold);
- ``refractory``: a refractory step (Xylo has none);
- ``delay``: a Delay node; ``node-type``: a node Xylo cannot hold (convolution, pooling, a host product);
- ``depth``: paths of different depth into a layer (a skip connection), recurrence from another depth, or
  output layers at different depths: on Xylo each layer sees a sample one step after the one it reads;
- ``threshold``: a negative threshold;
- ``max-spikes``: ``metadata["max_spikes"]`` other than Xylo's: above 31 on a hidden layer, above 1 on an
  output layer (a hidden layer without the key spikes up to 31 times on the chip, once in float: a note);
- ``weights``: a layer whose weights cannot be held by 8 bits with one shift per matrix. Criterion: after
  pass ``weights`` (:mod:`st2chip.xylo.lowering.weights`) chose the scales and shifts, the layer's weight
  error (RMS of the chip's minus the float weights over the RMS of the float weights) or its threshold error
  (the largest relative move of a threshold) exceeds :data:`WEIGHT_ERROR_LIMIT`.
"""

from __future__ import annotations

from dataclasses import dataclass

import nir
import numpy as np

from st2chip.errors import St2chipError
from st2chip.graph.reading import NEURONS, SPIKING, max_spikes, refractory_steps, reset_mode
from st2chip.xylo.lowering.passes import plan_xylo
from st2chip.xylo.lowering.plan import XyloPlan
from st2chip.xylo.spec import XyloSpec
from st2chip.xylo.xylograph import MAX_HIDDEN_SPIKES, MAX_INPUT_SPIKES, MAX_OUTPUT_SPIKES

WEIGHT_ERROR_LIMIT = 0.25  # a layer's relative weight (or threshold) error beyond which it breaks rule "weights"
HELD = (nir.Input, nir.Output, nir.Affine, nir.Scale, nir.Flatten, *NEURONS)

HINTS = {
    "inputs": "fewer input channels (st2chip train --model rnn --levels N)",
    "input-levels": "inputs of at most 15 events per step",
    "hidden": "fewer hidden neurons (st2chip train --hidden N)",
    "outputs": "fewer outputs, or a Xylo chip with more (--target xylo-audio3: 32, xylo-imu: 16, xylo-audio2: 8)",
    "input-expansion": "at most 128 neurons in the layers that read the inputs and in those the outputs read "
                       "(st2chip train --hidden 128), or --target xylo-audio2",
    "output-source": "an Input -> hidden layers -> readout stack (st2chip train --model mlp or --model rnn)",
    "output-recurrent": "a non-recurrent readout after the recurrent layer (st2chip train --model rnn has one)",
    "graded-hidden": "spiking hidden layers (or --target loihi2, whose neurons send graded values)",
    "reset": "reset by subtraction (st2chip train --reset subtract)",
    "refractory": "no refractory step (st2chip train --reset subtract)",
    "node-type": "only Affine -> LIF/CubaLIF/IF layers (st2chip train --model mlp or --model rnn), or --target loihi2",
    "depth": "every layer fed from one depth only, no skip connections (or --target loihi2)",
    "threshold": "thresholds >= 0",
    "max-spikes": "metadata max_spikes of at most 31 on hidden layers and 1 on output layers "
                  "(st2chip quantize --target xylo-... writes them)",
    "weights": "weights and thresholds of a common scale in each layer (or --target loihi2: a mantissa and "
               "exponent per synapse group)",
}
HINTS["output-expansion"] = HINTS["input-expansion"]
HINTS["delay"] = HINTS["node-type"]


@dataclass(frozen=True)
class Violation:
    """One broken design rule: which (see the module docstring), the layer (or node) it names, and the numbers."""

    rule: str
    layer: str | None
    detail: str

    def text(self) -> str:
        where = f"layer '{self.layer}': " if self.layer else ""
        return f"[{self.rule}] {where}{self.detail}"


class DesignRuleError(St2chipError):
    """The graph breaks Xylo's design rules; one line names every violation and ends with what to change."""

    def __init__(self, violations: list[Violation], chip: str = "Xylo") -> None:
        self.violations = list(violations)
        hints = list(dict.fromkeys(HINTS[v.rule] for v in self.violations))
        n = len(self.violations)
        super().__init__(f"does not fit {chip}: {n} design rule{'s' if n != 1 else ''} broken: "
                         + "; ".join(v.text() for v in self.violations) + "; to fit: " + "; ".join(hints))


def check_rules(graph: nir.NIRGraph, spec: XyloSpec) -> list[Violation]:
    """Every design rule of chip ``spec`` that the canonical graph breaks (an empty list: it fits)."""
    return violations(plan_xylo(graph, spec))


def violations(plan: XyloPlan) -> list[Violation]:
    """The broken rules of a plan that has run every lowering pass."""
    found: list[Violation] = []
    for check in (_nodes, _sizes, _expansion, _outputs, _neurons, _depths, _weights):
        found += check(plan)
    return found


def _nodes(plan: XyloPlan) -> list[Violation]:
    found = []
    for name, node in plan.graph.nodes.items():
        if isinstance(node, nir.Delay):
            found.append(Violation("delay", name, "a Delay node: Xylo delays nothing (one step per layer only)"))
        elif not isinstance(node, HELD):
            found.append(Violation("node-type", name, f"a {type(node).__name__} node: Xylo holds dense Affine "
                                                      f"weights between neuron layers only"))
    return found


def _sizes(plan: XyloPlan) -> list[Violation]:
    spec, found = plan.spec, []
    if plan.n_inputs > spec.inputs:
        found.append(Violation("inputs", ", ".join(c.name for c in plan.inputs),
                               f"{plan.n_inputs} input channels, {spec.name} has {spec.inputs}"))
    for c in plan.inputs:
        if c.levels is not None and c.levels > MAX_INPUT_SPIKES:
            found.append(Violation("input-levels", c.name, f"takes up to {c.levels} events per channel and step, "
                                                           f"Xylo counts at most {MAX_INPUT_SPIKES}"))
    for kind, layers, limit in (("hidden", plan.hidden(), spec.hidden), ("outputs", plan.outputs(), spec.outputs)):
        total = sum(layer.size for layer in layers)
        if total > limit:
            sizes = ", ".join(f"{layer.name} {layer.size}" for layer in layers)
            found.append(Violation(kind, ", ".join(layer.name for layer in layers),
                                   f"{total} {kind if kind == 'hidden' else 'output'} neurons ({sizes}), "
                                   f"{spec.name} holds {limit}"))
    return found


def _expansion(plan: XyloPlan) -> list[Violation]:
    """Input weights into the first ``input_expansion`` hidden neurons only; output weights from the last
    ``output_expansion`` only (where the chip publishes such limits)."""
    spec, found = plan.spec, []
    where = {p.name: p for p in plan.placed if not p.output}
    n_hid = sum(p.size for p in where.values())
    inputs = {c.name for c in plan.inputs}
    if spec.input_expansion is not None:
        fed = [layer.name for layer in plan.hidden() if any(c.source in inputs for c in layer.chains)]
        late = [n for n in fed if where[n].stop > spec.input_expansion]
        for name in late:
            found.append(Violation("input-expansion", name, f"reads the inputs with hidden neurons "
                                   f"{where[name].start}..{where[name].stop - 1}; {spec.name}'s input weights "
                                   f"reach only the first {spec.input_expansion}"))
    if spec.output_expansion is not None:
        read = sorted({c.source for layer in plan.outputs() for c in layer.chains if c.source in where})
        first = n_hid - spec.output_expansion
        for name in read:
            if where[name].start < first:
                found.append(Violation("output-expansion", name, f"is read by the outputs from hidden neurons "
                                       f"{where[name].start}..{where[name].stop - 1}; {spec.name}'s output weights "
                                       f"read only the last {spec.output_expansion} ({max(first, 0)}..{n_hid - 1})"))
    return found


def _outputs(plan: XyloPlan) -> list[Violation]:
    outputs = plan.outputs()
    if not outputs:
        return [Violation("output-source", None, "no neuron layer feeds an Output node: Xylo's outputs are neurons")]
    inputs = {c.name for c in plan.inputs}
    found = []
    for layer in outputs:
        if not plan.hidden() or any(c.source in inputs for c in layer.chains):
            found.append(Violation("output-source", layer.name, "an output layer reading the inputs directly: "
                                   "Xylo's output neurons read only the hidden population"))
        if layer.feeds:
            found.append(Violation("output-source", layer.name, f"an output layer feeding {', '.join(layer.feeds)}: "
                                   f"Xylo's output neurons feed nothing"))
        if any(c.recurrent for c in layer.chains):
            found.append(Violation("output-recurrent", layer.name, "an output layer with recurrent weights: Xylo's "
                                   "output neurons have none"))
    return found


def _neurons(plan: XyloPlan) -> list[Violation]:
    found = []
    for layer in plan.layers:
        node = layer.node
        if not layer.output and not layer.spiking:
            found.append(Violation("graded-hidden", layer.name, f"a non-spiking {type(node).__name__} layer feeding "
                                   f"{', '.join(layer.feeds) or 'nothing'}: Xylo's hidden neurons spike"))
        if isinstance(node, SPIKING):
            if reset_mode(layer.name, node) == "zero":
                found.append(Violation("reset", layer.name, "resets to zero: Xylo subtracts the threshold"))
            if refractory_steps(layer.name, node):
                found.append(Violation("refractory", layer.name, "a refractory step after each spike: Xylo has none"))
            if np.any(layer.dynamics.threshold < 0):
                found.append(Violation("threshold", layer.name, "negative thresholds: Xylo's are positive integers"))
            k, most = max_spikes(layer.name, node), MAX_OUTPUT_SPIKES if layer.output else MAX_HIDDEN_SPIKES
            if k > most:
                found.append(Violation("max-spikes", layer.name, f"up to {k} spikes per step: Xylo's "
                                       f"{'output' if layer.output else 'hidden'} neurons send at most {most}"))
    return found


def _depths(plan: XyloPlan) -> list[Violation]:
    found = []
    for layer in plan.layers:
        if layer.mixed_depths:
            found.append(Violation("depth", layer.name, f"paths of different depth: at depth {layer.depth} it also "
                                   f"reads {', '.join(layer.mixed_depths)} directly (a skip connection)"))
        if layer.late_recurrence:
            found.append(Violation("depth", layer.name, f"recurrent weights from {', '.join(layer.late_recurrence)} "
                                   f"at another depth: their spikes would arrive late on Xylo"))
    depths = sorted({layer.depth for layer in plan.outputs()})
    if len(depths) > 1:
        found.append(Violation("depth", ", ".join(layer.name for layer in plan.outputs()),
                               f"output layers at depths {depths}: Xylo reads every output after the same latency"))
    return found


def _weights(plan: XyloPlan) -> list[Violation]:
    found = []
    for layer in plan.layers:
        q = plan.quantized[layer.name]
        if max(q.weight_error, q.threshold_error) > WEIGHT_ERROR_LIMIT:
            found.append(Violation("weights", layer.name, f"weights lose {100 * q.weight_error:.0f} % and thresholds "
                                   f"move up to {100 * q.threshold_error:.0f} % with 8-bit weights and one shift per "
                                   f"matrix (limit {100 * WEIGHT_ERROR_LIMIT:.0f} %)"))
    return found
