r"""Lower a canonical NIR graph to a :class:`~st2chip.xylo.xylograph.XyloGraph`: the design rules, then the passes.

:data:`PASSES` (one module each under :mod:`st2chip.xylo.lowering`) read the graph as a stack of layers
(``Input -> Affine -> LIF/CubaLIF/IF -> ... -> Affine -> readout``, recurrent Affine edges on hidden layers
allowed), flatten the hidden layers into Xylo's one hidden population (layer ``k`` at depth ``k``: a
sample's step ``t`` reaches it at chip step ``t + k``, the outputs at ``t + latency``), and turn leaks,
weights, thresholds and biases into the chip's integers. What maps how:

- **Leaks**: per neuron the nearest shift, :math:`\beta \approx 1 - 2^{-d}` (sLIF's per-neuron leaks too);
  the largest :math:`|\Delta\beta|` per layer is ``leak_error`` in the report.
- **Synaptic filter**: Xylo filters every input through a current. A CubaLIF's current maps to ``dash_syn``;
  a LIF/IF (no current) gets ``dash_syn = 1``, half an input reaching ``v`` at once and the rest over the
  next steps (the total kept): an approximation the report states.
- **Weights**: one voltage scale per layer (as fine as its largest threshold at 4095 LSBs and its weights in
  8 bits allow), 8-bit weights and one shift per matrix (input, recurrent, output), the shifts chosen for
  the smallest worst-layer error; ``weight_error`` per layer.
- **Thresholds**: :math:`v > \theta` becomes :math:`v \ge \lfloor s\theta \rfloor + 1`; reset by
  subtraction (Xylo's only reset); biases (leak offsets, Affine biases) added to ``v`` each step.
- **Readout**: st2chip's MLP and RNN end in a non-spiking integrating layer (``I``; ``LI`` for the RNN's
  leaky readout). It maps to Xylo's output neurons with threshold 32767, never spiking, scored by their
  ``v`` after the last step (as the float model scores the readout's voltage); its scale keeps ``|v|`` below
  32000 when every hidden neuron it reads spikes once per step over the graph's ``steps``. A spiking output
  layer (LIF) maps to output neurons that spike (at most once per step), scored by their spike counts.

:func:`lower_xylo` checks every design rule first (:mod:`st2chip.xylo.rules`) and raises one
:class:`~st2chip.xylo.rules.DesignRuleError` naming all that are broken. ``XyloGraph.report`` holds, per
layer: kind, neurons, depth, scale, shifts, ``leak_error``, ``syn_leak_error``, ``weight_error``,
``threshold_error``, ``bias_clipped``, ``synaptic_filter`` and the list of ``approximations``.
"""

from __future__ import annotations

import nir

from st2chip.xylo.lowering.assemble import xylo_graph
from st2chip.xylo.lowering.passes import PASSES, plan_xylo
from st2chip.xylo.rules import DesignRuleError, violations
from st2chip.xylo.spec import XyloSpec
from st2chip.xylo.xylograph import XyloGraph

__all__ = ["PASSES", "lower_xylo"]


def lower_xylo(graph: nir.NIRGraph, spec: XyloSpec) -> XyloGraph:
    """Map a canonical NIR graph (``st2chip.load``) onto Xylo chip ``spec``; :class:`DesignRuleError` lists every
    design rule it breaks."""
    plan = plan_xylo(graph, spec)
    broken = violations(plan)
    if broken:
        raise DesignRuleError(broken, spec.name)
    return xylo_graph(plan)
