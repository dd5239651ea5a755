"""Pass ``depths``: each source's pipeline depth, the steps from the inputs to where it sends.

Every synapse group takes one step; paths of different depth into one layer are
aligned with synaptic delays (pass ``synapses``) so that the chip adds what the float
graph adds, and a relay (a low-rank path kept factored) is one more step. A host
product sends the step its inputs spike. Recurrent paths do not count.
"""

from __future__ import annotations

from dataclasses import replace

from st2chip.chip.lowering.plan import Plan


def depths(plan: Plan) -> Plan:
    """The plan with ``depth`` per input, host product and neuron layer."""
    depth: dict[str, int] = {port.name: 0 for port in plan.inputs}
    hosts = {host.name: host for host in plan.hosts}
    for name in plan.graph.nodes:
        layer = plan.layer(name)
        if name in hosts:
            depth[name] = max(depth[source] for source in hosts[name].inputs)
        elif layer is not None:
            factored = layer.lowrank.factored
            depth[name] = 1 + max(depth[k.source] + (k in factored) for k in layer.incoming.keys if not k.recurrent)
    return replace(plan, depth=depth)
