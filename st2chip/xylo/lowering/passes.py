"""Xylo's lowering passes in order, and the plan they leave (what :func:`st2chip.xylo.lower.lower_xylo` assembles
and :func:`st2chip.xylo.rules.check_rules` checks)."""

from __future__ import annotations

from typing import Callable

import nir

from st2chip.xylo.lowering.inputs import inputs
from st2chip.xylo.lowering.layout import layout
from st2chip.xylo.lowering.leaks import leaks
from st2chip.xylo.lowering.plan import XyloPlan
from st2chip.xylo.lowering.stack import stack
from st2chip.xylo.lowering.thresholds import thresholds
from st2chip.xylo.lowering.weights import weights
from st2chip.xylo.spec import XyloSpec

PASSES: list[tuple[str, Callable[[XyloPlan], XyloPlan]]] = [
    ("inputs", inputs),          # the Input nodes as runs of the chip's input channels
    ("stack", stack),            # neuron layers, their chains (multiplied out), output flags and depths
    ("layout", layout),          # hidden layers flattened into one population by depth; the outputs after
    ("leaks", leaks),            # per-neuron dash_mem / dash_syn nearest to the float decays
    ("weights", weights),        # a scale per layer; 8-bit weights, one shift per matrix (in, rec, out)
    ("thresholds", thresholds),  # v > theta as v >= floor(s theta) + 1; biases; readouts at 32767
]


def plan_xylo(graph: nir.NIRGraph, spec: XyloSpec) -> XyloPlan:
    """Run :data:`PASSES` on a canonical graph: every pass runs on any graph, whatever rules it breaks."""
    steps = graph.metadata.get("steps")
    plan = XyloPlan(graph, spec, float(graph.metadata.get("dt", 1e-3)), None if steps is None else int(steps))
    for _, run in PASSES:
        plan = run(plan)
    return plan
