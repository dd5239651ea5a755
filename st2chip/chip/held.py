"""What the chip holds, read back in the float units of the NIR graph it was lowered from.

Lowering folds thresholds into weights, groups decays and rounds weights to 8-bit
mantissas with one exponent per synapse group (:mod:`st2chip.chip.lower`). This
module undoes the folding, not the rounding: :func:`held_parameters` gives, per
``Affine`` node, the weight matrix whose float simulation computes what the chip's
mantissas compute, and per neuron node the decays the chip applies. Training against
these values (:mod:`st2chip.chip.finetune`) makes a float model that the chip
holds exactly.

Only graphs whose every path into a neuron layer is one ``Affine`` node (MLPs,
recurrent networks) are read back; convolutions, pooling chains and factored
low-rank paths are refused with the layer named.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import nir
import numpy as np
import scipy.sparse as sp

from st2chip.chip import encoding
from st2chip.chip.chipgraph import ChipGraph, Relay
from st2chip.chip.encoding import VOLTAGE_PER_SCALE
from st2chip.chip.lowering.neurons import read_neuron
from st2chip.errors import GraphError


@dataclass
class Held:
    """The chip's parameters in float: ``weights`` per Affine node (dense, the node's shape), ``decays``
    (voltage, ``1 - dv/4096``) per neuron node, ``current_decays`` (``(4095 - du)/4096``) per CubaLIF node."""

    weights: dict[str, np.ndarray] = field(default_factory=dict)
    decays: dict[str, np.ndarray] = field(default_factory=dict)
    current_decays: dict[str, np.ndarray] = field(default_factory=dict)


def _affine_between(graph: nir.NIRGraph, source: str, target: str) -> str:
    """The one Affine node on the edges ``source -> A -> target``."""
    found = [a for s, a in graph.edges if s == source and isinstance(graph.nodes[a], nir.Affine)
             and (a, target) in graph.edges]
    if len(found) != 1:
        raise GraphError(f"the chip's weights from '{source}' are read back only along one Affine node between "
                         f"the two layers; found {len(found)}", node=target)
    return found[0]


def held_parameters(graph: nir.NIRGraph, chip: ChipGraph) -> Held:
    """The weights and decays ``chip`` holds for ``graph`` (the canonical graph it was lowered from)."""
    dt = float(graph.metadata.get("dt", 1e-3))
    where: dict[str, tuple[str, np.ndarray]] = {p.name: (p.layer, p.index) for p in chip.populations}
    where |= {i.name: (i.name, np.arange(i.size)) for i in chip.inputs}
    held = Held()
    layers = {}
    always_on = {p.name for p in chip.populations if p.always_on}  # carries biases, not weights: not read back
    for pop in chip.populations:
        if pop.name in always_on:
            continue
        if isinstance(pop, Relay):
            raise GraphError("a factored low-rank path (a relay) is not read back; lower with lowrank='product'",
                             node=pop.layer)
        node = graph.nodes[pop.layer]
        if pop.layer not in layers:
            layers[pop.layer] = read_neuron(pop.layer, node, dt)
            held.decays[pop.layer] = np.empty(chip.layer_size(pop.layer))
            if isinstance(node, nir.CubaLIF):
                held.current_decays[pop.layer] = np.empty(chip.layer_size(pop.layer))
        held.decays[pop.layer][pop.index] = encoding.voltage_decay(pop.dv)
        if pop.layer in held.current_decays:
            held.current_decays[pop.layer][pop.index] = encoding.current_decay(pop.du)
    scales = {layer: chip.voltage_units(layer) / VOLTAGE_PER_SCALE for layer in layers}  # per neuron: its scale
    for group in chip.synapses:
        if group.source in always_on:
            continue
        source_layer, cols = where[group.source]
        target_layer, rows = where[group.target]
        affine = _affine_between(graph, source_layer, target_layer)
        if affine not in held.weights:
            held.weights[affine] = np.zeros(np.shape(graph.nodes[affine].weight))
        layer = layers[target_layer]
        m = sp.coo_matrix(group.mantissa)
        r, c = rows[m.row], cols[m.col]
        held.weights[affine][r, c] += (encoding.weight_value(m.data, group.exp, scales[target_layer][r])
                                      * layer.threshold[r] / layer.gain[r])
    return held
