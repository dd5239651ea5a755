"""Pass ``read``: every node of the graph read as what the chip makes of it.

A neuron node becomes a :class:`~st2chip.chip.lowering.plan.LayerPlan` holding its
:class:`~st2chip.chip.lowering.neurons.FloatLayer`. An Input becomes an
:class:`~st2chip.chip.chipgraph.InputPort`: an analog one when its ``metadata["levels"]``
says it takes integer levels (e.g. a direct-encoded image). A
:class:`~st2chip.graph.product.SpikeProduct` (a spiking Transformer's attention)
becomes a :class:`~st2chip.chip.chipgraph.HostProduct`, the host partition, whose
graded counts reach the next layer through an ordinary quantized group. Linear
nodes are pass ``paths``' to read; any other node cannot be lowered.
"""

from __future__ import annotations

from dataclasses import replace

import nir
import numpy as np

from st2chip.chip.chipgraph import HostProduct, InputPort
from st2chip.chip.lowering.neurons import not_lowered, read_neuron
from st2chip.chip.lowering.plan import LayerPlan, Plan
from st2chip.errors import GraphError
from st2chip.graph import linear
from st2chip.graph.product import SpikeProduct
from st2chip.graph.reading import NEURONS

LINEAR = (nir.Affine, nir.Flatten, nir.Scale, nir.Delay, nir.Output, *linear.SPATIAL)


def read(plan: Plan) -> Plan:
    """The graph's input ports, host products and neuron layers, in graph order."""
    inputs, hosts, layers = [], [], []
    for name, node in plan.graph.nodes.items():
        if isinstance(node, nir.Input):
            inputs.append(input_port(name, node))
        elif isinstance(node, SpikeProduct):
            hosts.append(HostProduct(name, node.inputs, node.heads, node.tokens, node.dim))
        elif isinstance(node, NEURONS):
            layers.append(LayerPlan(name, node, read_neuron(name, node, plan.dt)))
        elif not isinstance(node, LINEAR):
            raise not_lowered(name, node)
    return replace(plan, inputs=inputs, hosts=hosts, layers=layers)


def input_port(name: str, node: nir.Input) -> InputPort:
    """A spike port, or an analog one when the Input's ``metadata["levels"]`` says it takes integer levels."""
    size = int(np.prod(next(iter(node.input_type.values()))))
    levels = (node.metadata or {}).get("levels")
    if levels is None:
        return InputPort(name, size)
    if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or levels < 1:
        raise GraphError(f"metadata 'levels' must be a positive integer, got {levels!r}", node=name, field="metadata")
    return InputPort(name, size, "analog", int(levels))
