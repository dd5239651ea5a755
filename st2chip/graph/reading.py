r"""The discrete-time reading of a canonical graph that the float interpreter and lowering share.

- **Recurrence.** A canonical graph's nodes are in an order where every edge
  goes forward except *back edges*: edges ``(a, b)`` with ``a`` at or after ``b``
  (a layer feeding itself or an earlier node). Normalize orders the nodes so
  that every back edge leaves a neuron node. Along a back edge the value at step
  ``t`` is the neuron's output at step ``t - 1`` (zero at the first step): NIR's
  discrete reading of a recurrent connection, and what a synapse's one-step
  delay does on the chip.
- **Reset.** NIR 1.0 neurons reset to ``v_reset``. Reset by subtraction
  (snnTorch's ``reset_mechanism="subtract"``, Loihi 2's programmable neurons) is
  marked on a spiking node as ``node.metadata["reset"] = "subtract"``: on a spike
  ``v <- v - v_threshold``, ``v_reset`` unused. ``"zero"`` or no key: ``v <- v_reset``.
- **Refractory.** ``node.metadata["refractory"] = k`` on a spiking node (whole
  steps, ``0`` or no key: none; ``0`` or ``1`` only, :data:`REFRACTORY_STEPS`):
  for the ``k`` steps after a spike ``v`` keeps its value after the reset (no
  voltage update, no spike) while a ``CubaLIF``'s current ``i`` integrates as
  usual. snnTorch's ``Synaptic``/``RSynaptic``/``RLeaky`` with
  ``reset_mechanism="zero"`` hold ``mem`` at 0 for the step after a spike: that
  is reset to 0 plus ``refractory = 1``.
- **Several spikes per step.** ``node.metadata["max_spikes"] = k`` on a spiking node that resets by
  subtraction (a whole number in :data:`MAX_SPIKES`; no key: 1): per step, while ``v > v_threshold`` and
  fewer than ``k`` spikes were sent, the node sends one more and ``v <- v - v_threshold``. Its output is
  the count (a value in ``0..k``), which flows through weights like a spike. Xylo's hidden neurons send
  up to 31 spikes per step this way.
- **Delay.** A ``Delay`` node holds each element ``delay / dt`` whole steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import nir
import numpy as np

from st2chip.errors import GraphError
from st2chip.learn.neurons import MAX_SPIKES as MOST_SPIKES

RESET_KEY = "reset"
RESET_MODES = ("zero", "subtract")
REFRACTORY_KEY = "refractory"
REFRACTORY_STEPS = (0, 1)  # steps a spiking node may be held after a spike (the chip's neuron: 0 or 1)
MAX_SPIKES_KEY = "max_spikes"
MAX_SPIKES = range(1, MOST_SPIKES + 1)  # spikes a node may send per step (counts are kept as uint8)
SPIKING = (nir.LIF, nir.CubaLIF, nir.IF)  # neurons that spike (and reset)
READOUT = (nir.LI, nir.CubaLI, nir.I)    # neurons that do not: their voltage is the output
NEURONS = (*SPIKING, *READOUT)


def back_edges(graph: nir.NIRGraph) -> set[tuple[str, str]]:
    """Edges whose source is at or after their target in the graph's node order (recurrent edges)."""
    rank = {name: i for i, name in enumerate(graph.nodes)}
    return {(a, b) for a, b in graph.edges if rank[a] >= rank[b]}


def reset_mode(name: str, node: nir.NIRNode) -> str:
    """``"zero"`` or ``"subtract"`` from the node's metadata (see the module docstring)."""
    meta = getattr(node, "metadata", None) or {}
    mode = meta.get(RESET_KEY, "zero")
    if mode not in RESET_MODES:
        raise GraphError(f"metadata reset must be one of {', '.join(RESET_MODES)}, got {mode!r}", node=name,
                         field="metadata.reset")
    return str(mode)


def refractory_steps(name: str, node: nir.NIRNode) -> int:
    """Steps ``v`` is held after a spike, from the node's metadata (see the module docstring); 0 without the key."""
    meta = getattr(node, "metadata", None) or {}
    steps = meta.get(REFRACTORY_KEY, 0)
    if isinstance(steps, (bool, np.bool_)) or not isinstance(steps, (int, np.integer)) \
            or int(steps) not in REFRACTORY_STEPS:
        raise GraphError(f"metadata refractory must be a whole number of steps in {REFRACTORY_STEPS}, got {steps!r}",
                         node=name, field="metadata.refractory")
    if steps and not isinstance(node, SPIKING):
        raise GraphError(f"metadata refractory applies to spiking neurons ({', '.join(t.__name__ for t in SPIKING)}), "
                         f"not to {type(node).__name__}", node=name, field="metadata.refractory")
    return int(steps)


def max_spikes(name: str, node: nir.NIRNode) -> int:
    """Spikes the node may send per step, from its metadata (see the module docstring); 1 without the key."""
    meta = getattr(node, "metadata", None) or {}
    k = meta.get(MAX_SPIKES_KEY, 1)
    field = f"metadata.{MAX_SPIKES_KEY}"
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or int(k) not in MAX_SPIKES:
        raise GraphError(f"metadata max_spikes must be a whole number in 1..{MAX_SPIKES[-1]}, got {k!r}",
                         node=name, field=field)
    if k == 1:
        return 1
    if not isinstance(node, SPIKING):
        raise GraphError(f"metadata max_spikes applies to spiking neurons ({', '.join(t.__name__ for t in SPIKING)}), "
                         f"not to {type(node).__name__}", node=name, field=field)
    if reset_mode(name, node) != "subtract":
        raise GraphError(f"metadata max_spikes = {int(k)} needs reset by subtraction (metadata reset = 'subtract'): "
                         f"a reset to v_reset leaves nothing for a second spike", node=name, field=field)
    return int(k)


def delay_steps(name: str, node: nir.Delay, dt: float) -> np.ndarray:
    """A Delay node's per-element delays in whole steps; a delay that is not a multiple of dt is an error."""
    steps = np.asarray(node.delay, dtype=np.float64).reshape(-1) / dt
    whole = np.rint(steps)
    if np.any(np.abs(steps - whole) > 1e-6):
        raise GraphError(f"delays must be whole multiples of dt = {dt:g} s, got {np.asarray(node.delay).ravel()[:4]}",
                         node=name, field="delay")
    return whole.astype(np.int64)


@dataclass(frozen=True)
class Coefficients:
    """A neuron node's forward-Euler step at ``dt``, in float64: ``i <- syn_decay i + syn_gain x`` (CubaLIF,
    CubaLI; ``syn_decay`` None: no current, ``x`` drives ``v`` directly), then ``v <- decay v + gain x + offset``."""

    decay: np.ndarray
    gain: np.ndarray
    offset: np.ndarray
    syn_decay: np.ndarray | None = None
    syn_gain: np.ndarray | None = None


def coefficients(node: nir.NIRNode, dt: float) -> Coefficients:
    """The discrete-time step of neuron ``node`` (one of :data:`NEURONS`) at ``dt``: the float interpreter's and
    the trainable one's."""
    f64 = lambda a: np.asarray(a, dtype=np.float64)  # noqa: E731
    if isinstance(node, (nir.LIF, nir.LI)):
        g = dt / f64(node.tau)
        return Coefficients(1 - g, g * f64(node.r), g * f64(node.v_leak))
    if isinstance(node, (nir.CubaLIF, nir.CubaLI)):
        g_syn, g_mem = dt / f64(node.tau_syn), dt / f64(node.tau_mem)
        return Coefficients(1 - g_mem, g_mem * f64(node.r), g_mem * f64(node.v_leak), 1 - g_syn, g_syn * f64(node.w_in))
    r = f64(node.r)  # IF, I: no leak
    return Coefficients(np.ones_like(r), dt * r, np.zeros_like(r))
