"""Pass ``layout``: the hidden layers flattened into Xylo's one hidden population, the output layers into its outputs.

Hidden layers lie one after the other by depth (graph order within a depth, the layers that the outputs
read last), so that the layer reading the inputs comes first and the layers the outputs read come last:
Xylo Audio 3 and Xylo IMU take input weights only to their first 128 hidden neurons and output weights only
from their last 128 (``input_expansion`` / ``output_expansion`` in the chip's resource file). Each layer
becomes a :class:`~st2chip.xylo.xylograph.XyloLayer` (a slice of the hidden population or of the outputs,
with its depth); the outputs' depth is the network's latency.
"""

from __future__ import annotations

from dataclasses import replace

from st2chip.xylo.lowering.plan import XyloPlan
from st2chip.xylo.xylograph import XyloLayer


def layout(plan: XyloPlan) -> XyloPlan:
    """Where each layer lies on the chip."""
    read_by_outputs = {c.source for layer in plan.outputs() for c in layer.chains}
    order = {layer.name: i for i, layer in enumerate(plan.layers)}
    hidden = sorted(plan.hidden(), key=lambda l: (l.depth, l.name in read_by_outputs, order[l.name]))  # noqa: E741
    placed, start = [], 0
    for layer in hidden:
        placed.append(XyloLayer(layer.name, start, start + layer.size, layer.depth))
        start += layer.size
    start = 0
    for layer in plan.outputs():
        placed.append(XyloLayer(layer.name, start, start + layer.size, layer.depth, output=True))
        start += layer.size
    return replace(plan, placed=placed)
