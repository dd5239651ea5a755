r"""A neuron node read as a discrete-time layer in float (:class:`FloatLayer`): what lowering maps.

:math:`v \leftarrow \beta v + g\,(W x + b) + (1-\beta) v_{leak}` with
:math:`\beta = 1 - dt/\tau`, input gain :math:`g = (dt/\tau)\, r` (LIF, LI),
:math:`\beta = 1, g = dt\, r` (IF, I). A ``CubaLIF`` keeps its synaptic current on
the chip's ``u``: :math:`u \leftarrow \beta_u u + g\,W x`, :math:`v \leftarrow \beta v + u`
with :math:`\beta_u = 1 - dt/\tau_{syn}`,
:math:`g = (dt/\tau_{mem})\, r\, (dt/\tau_{syn})\, w_{in}`; its Affine bias enters ``u``
as NIR adds it, :math:`u \leftarrow \beta_u u + g\,(W x + b)` (pass ``current_bias``).
Reset by subtraction (``metadata["reset"]``) and the refractory step after a spike
(``metadata["refractory"]``) are kept per layer; several spikes per step (``metadata["max_spikes"]``
above 1, Xylo's neurons) are refused: Loihi's neurons spike at most once per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import nir
import numpy as np

from st2chip.errors import GraphError
from st2chip.graph.reading import SPIKING, max_spikes, refractory_steps, reset_mode


@dataclass
class FloatLayer:
    """A neuron node read as a discrete-time layer, in float."""

    name: str
    beta: np.ndarray
    gain: np.ndarray
    bias: np.ndarray
    threshold: np.ndarray
    spiking: bool
    beta_u: np.ndarray | None = None  # synaptic-current decay (CubaLIF); None: the current forgets at once
    reset: str = "zero"
    refractory: int = 0  # steps v is held after a spike (graph metadata "refractory")


def read_neuron(name: str, node: nir.NIRNode, dt: float) -> FloatLayer:
    """Neuron node ``name`` as a discrete-time layer (decays, input gain, bias, thresholds, reset) at step ``dt``."""
    layer = _read_dynamics(name, node, dt)
    if layer.spiking:
        layer.refractory = refractory_steps(name, node)
        k = max_spikes(name, node)
        if k > 1:
            raise GraphError(f"metadata max_spikes = {k}: Loihi's neurons spike at most once per step; lower it "
                             f"with --target xylo-audio2|xylo-audio3|xylo-imu, or drop the key for Loihi 2",
                             node=name, field="metadata.max_spikes")
    return layer


def _read_dynamics(name: str, node: nir.NIRNode, dt: float) -> FloatLayer:
    """The node's decays, input gain, bias, thresholds and reset mode (refractory: 0)."""
    reset = reset_mode(name, node) if isinstance(node, SPIKING) else "zero"
    if isinstance(node, SPIKING) and reset == "zero" and np.any(node.v_reset != 0):
        raise GraphError("the chip resets to 0 (or by subtraction, metadata reset = 'subtract'); nonzero v_reset "
                         "cannot be lowered", node=name, field="v_reset")
    if isinstance(node, nir.LIF):
        ratio = dt / node.tau
        return FloatLayer(name, 1 - ratio, ratio * node.r, (ratio * node.v_leak), node.v_threshold, True, reset=reset)
    if isinstance(node, nir.IF):
        n = node.r.size
        return FloatLayer(name, np.ones(n), dt * node.r, np.zeros(n), node.v_threshold, True, reset=reset)
    if isinstance(node, (nir.CubaLIF, nir.CubaLI)):
        g_syn, g_mem = dt / node.tau_syn, dt / node.tau_mem
        gain = g_mem * node.r * g_syn * node.w_in  # input -> chip current u (which the chip adds to v)
        spiking = isinstance(node, nir.CubaLIF)
        return FloatLayer(name, 1 - g_mem, gain, g_mem * node.v_leak,
                          node.v_threshold if spiking else np.ones(node.r.size), spiking, beta_u=1 - g_syn,
                          reset=reset)
    if isinstance(node, nir.LI):
        ratio = dt / node.tau
        return FloatLayer(name, 1 - ratio, ratio * node.r, ratio * node.v_leak, np.ones(node.r.size), False)
    if isinstance(node, nir.I):
        n = node.r.size
        return FloatLayer(name, np.ones(n), dt * node.r, np.zeros(n), np.ones(n), False)
    raise not_lowered(name, node)


def not_lowered(name: str, node: nir.NIRNode) -> GraphError:
    """The error for a node that the chip cannot run."""
    return GraphError(f"cannot lower node type {type(node).__name__}: only LIF, CubaLIF, IF, LI, CubaLI and I "
                      f"neurons are mapped to the chip (the float simulation runs it)", node=name)
