"""Pass ``decays``: each layer's per-neuron decays grouped into at most ``decay_groups`` values.

Lava has one ``dv`` (and ``du``) per process: the per-neuron
``dv = round(4096 (1 - beta))`` are clustered (1-D k-means, ``decay_groups``
clusters), the ``du`` of a CubaLIF likewise, and each distinct (``du``, ``dv``) pair
becomes one population (pass ``populations``). The report gives the largest change
to a decay that grouping and rounding made.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from st2chip.chip import encoding
from st2chip.chip.chipgraph import DECAY_MAX
from st2chip.chip.lowering.plan import DecayPair, Decays, LayerPlan, Plan
from st2chip.errors import GraphError


def decays(plan: Plan) -> Plan:
    """Every layer's :class:`~st2chip.chip.lowering.plan.Decays`."""
    return plan.map_layers(lambda p, layer: replace(layer, decays=grouped(layer, p.options.decay_groups, p.dt)))


def cluster(dv: np.ndarray, groups: int) -> np.ndarray:
    """Cluster 12-bit decays into at most ``groups`` values (deterministic 1-D k-means)."""
    values = np.unique(dv)
    if values.size <= groups:
        return dv.copy()
    centers = np.quantile(dv, (np.arange(groups) + 0.5) / groups)
    for _ in range(100):
        label = np.argmin(np.abs(dv[:, None] - centers[None, :]), axis=1)
        new = np.array([dv[label == k].mean() if np.any(label == k) else centers[k] for k in range(groups)])
        if np.allclose(new, centers):
            break
        centers = new
    return np.rint(centers[label]).astype(np.int64)


def grouped(layer: LayerPlan, groups: int, dt: float) -> Decays:
    """``layer``'s voltage decays (and current decays, for a CubaLIF) clustered into at most ``groups`` each."""
    neuron, n = layer.neuron, layer.incoming.weight.shape[0]
    dv = cluster(encoding.to_decay(encoding.dv_exact(neuron.beta)), groups)
    leak_error = float(np.max(np.abs(encoding.voltage_decay(dv) - neuron.beta))) if n else 0.0
    if neuron.beta_u is None:
        du, current_error = np.full(n, DECAY_MAX), None
    else:
        if np.any(neuron.beta_u < 0) or np.any(neuron.beta_u > 1):
            raise GraphError(f"current decay 1 - dt/tau_syn must lie in [0, 1]; tau_syn is shorter than "
                             f"dt = {dt:g} s (--dt)", node=layer.name, field="tau_syn")
        du = cluster(encoding.to_decay(encoding.du_exact(neuron.beta_u)), groups)
        current_error = float(np.max(np.abs(encoding.current_decay(du) - neuron.beta_u)))
    pairs = sorted(set(zip(du.tolist(), dv.tolist())), key=lambda d: (d[1], d[0]))
    return Decays(du, dv, [DecayPair(int(u), int(v)) for u, v in pairs], leak_error, current_error)
