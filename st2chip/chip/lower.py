"""Lower a canonical NIR graph to a :class:`~st2chip.chip.chipgraph.ChipGraph`: the passes, in order.

Each pass is a function from one :class:`~st2chip.chip.lowering.plan.Plan` to the
next, in a module of its own under :mod:`st2chip.chip.lowering` (its docstring says
what it does and what it measures); the chip's number encodings are
:mod:`st2chip.chip.encoding`. What the passes measured is ``ChipGraph.lowering``,
one :class:`~st2chip.chip.lowering.report.LayerReport` per neuron layer.
"""

from __future__ import annotations

import os
from typing import Callable

import nir

from st2chip.chip.chipgraph import ChipGraph
from st2chip.chip.lowering.assemble import chip_graph
from st2chip.chip.lowering.current_bias import current_bias
from st2chip.chip.lowering.decays import decays
from st2chip.chip.lowering.depths import depths
from st2chip.chip.lowering.fanin import fanin
from st2chip.chip.lowering.fold import fold
from st2chip.chip.lowering.lowrank import MAC_PER_AC, SPIKE_RATE, lowrank
from st2chip.chip.lowering.neurons import read_neuron
from st2chip.chip.lowering.paths import paths
from st2chip.chip.lowering.plan import (DEFAULT_DECAY_GROUPS, HEADROOM, LOWRANK_MODES, PRECISION_MODES,
                                        FeedbackLatencyWarning, Options, Plan, QuantizationWarning)
from st2chip.chip.lowering.populations import populations
from st2chip.chip.lowering.precision import precision
from st2chip.chip.lowering.read import read
from st2chip.chip.lowering.synapses import synapses
from st2chip.chip.placement import Resources, load_resources
from st2chip.graph.reading import back_edges

__all__ = ["DEFAULT_DECAY_GROUPS", "HEADROOM", "LOWRANK_MODES", "MAC_PER_AC", "PASSES", "PRECISION_MODES",
           "SPIKE_RATE", "FeedbackLatencyWarning", "QuantizationWarning", "lower", "read_neuron"]

PASSES: list[tuple[str, Callable[[Plan], Plan]]] = [
    ("read", read),                # Inputs, host products, neuron nodes read in discrete time
    ("paths", paths),              # every linear chain into a layer multiplied out, per (source, lag, recurrent)
    ("fold", fold),                # per-neuron thresholds folded into weights and bias
    ("decays", decays),            # decays clustered into at most `decay_groups` per layer
    ("populations", populations),  # one population per decay pair (outliers apart): scale, headroom, biases
    ("lowrank", lowrank),          # DSP U·V paths multiplied out or kept factored through a relay
    ("depths", depths),            # each source's pipeline depth
    ("synapses", synapses),        # delays aligned, weights quantized to 8-bit mantissas, convolutions kept
    ("precision", precision),      # per layer: a residual group (W - Q8(W), smaller exponent) where 8 bits lose
    ("current_bias", current_bias),  # Affine biases into a current: from an always-on neuron into u
    ("fanin", fanin),              # synapses no core holds split into trees of graded partial sums; delays realigned
]


def lower(graph: nir.NIRGraph, *, decay_groups: int = 1, lowrank: str = "product",
          headroom: float = HEADROOM, precision: str = "8",
          resources: str | os.PathLike | Resources | None = "loihi2") -> ChipGraph:
    """Map a canonical NIR graph (see :mod:`st2chip.graph.normalize`) onto the chip by running :data:`PASSES`.

    ``decay_groups`` bounds the number of populations (distinct ``dv``) per layer.
    ``lowrank`` is what becomes of a DSP ``U·V`` path: ``product`` (multiplied
    out, the default here), ``factored`` (through a graded relay; a
    :class:`~st2chip.errors.GraphError` where that cannot be done) or ``auto``
    (per path, the cheaper by :func:`~st2chip.chip.lowering.lowrank.costs`).
    ``headroom`` is how many thresholds a spiking population's ``u`` and ``v`` may
    reach before they wrap or saturate; the scale is made as fine as it allows
    (each population's ``headroom`` is in the layer report). ``precision`` is ``8`` (one 8-bit group per
    path: the default here), ``16`` (a residual group too, wherever it adds precision on the chip) or
    ``auto`` (per layer, by :func:`~st2chip.chip.lowering.precision.choose`). ``resources`` (a resource
    model's name, file or :class:`~st2chip.chip.placement.Resources`; None: none) gives the per-core limits
    that fan-in trees split a neuron's incoming synapses against (:mod:`st2chip.chip.lowering.fanin`).
    """
    limits = None if resources is None else load_resources(resources)
    plan = start(graph, Options(decay_groups, lowrank, headroom, precision, limits))
    for _, run in PASSES:
        plan = run(plan)
    return chip_graph(plan)


def start(graph: nir.NIRGraph, options: Options) -> Plan:
    """The plan before any pass: the graph, the options, its time step, predecessors and back edges."""
    preds: dict[str, list[str]] = {}
    for src, dst in graph.edges:
        preds.setdefault(dst, []).append(src)
    return Plan(graph, options, float(graph.metadata.get("dt", 1e-3)), preds, back_edges(graph))

