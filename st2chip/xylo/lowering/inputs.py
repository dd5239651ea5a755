"""Pass ``inputs``: the graph's Input nodes as consecutive runs of the chip's input channels, in graph order.

Several Input nodes take consecutive channels, as the float interpreter slices its inputs
(:func:`st2chip.graph.simulate.simulate`). An Input whose ``metadata["levels"]`` says it takes integer
levels (up to that many events per step) is noted: Xylo counts at most 15 per channel and step
(design rule ``input-levels``).
"""

from __future__ import annotations

from dataclasses import replace

import nir
import numpy as np

from st2chip.xylo.lowering.plan import InputChannels, XyloPlan


def inputs(plan: XyloPlan) -> XyloPlan:
    """Every Input node's channel run."""
    runs, offset = [], 0
    for name, node in plan.graph.nodes.items():
        if isinstance(node, nir.Input):
            size = int(np.prod(next(iter(node.input_type.values()))))
            levels = (node.metadata or {}).get("levels")
            runs.append(InputChannels(name, offset, size, None if levels is None else int(levels)))
            offset += size
    return replace(plan, inputs=runs)
