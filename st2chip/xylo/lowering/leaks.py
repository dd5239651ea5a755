r"""Pass ``leaks``: every neuron's decays as Xylo's bit shifts, the nearest ones, with the error per layer.

Xylo decays a state :math:`x` by :math:`x \gg d` per step (at least one LSB toward 0), i.e.
:math:`\beta \approx 1 - 2^{-d}`. Per neuron (sLIF's leaks differ), ``dash_mem`` is the ``d`` in 0..15
whose :math:`1 - 2^{-d}` lies nearest to the float :math:`\beta` (``d = 0`` clears ``v`` every step; IF and I,
:math:`\beta = 1`, get 15: one LSB per step toward 0). The current: Xylo always filters a neuron's input
through a synaptic current that decays *before* it reaches ``v``. A CubaLIF's :math:`\beta_u` becomes the
nearest ``dash_syn`` in 1..15 (0 would zero the current before ``v`` sees it); a neuron without a current
(LIF, IF, LI, I) gets ``dash_syn = 1``, the shortest filter that passes input: half of an input reaches ``v``
at once, the rest over the next steps (the total kept, see pass ``weights``), which the report states.
``leak_error`` is :math:`\max |\beta - (1 - 2^{-d})|` over the layer (``syn_leak_error`` for the current).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from st2chip.xylo.lowering.plan import Leak, XyloPlan
from st2chip.xylo.xylograph import DASH_RANGE

LIF_DASH_SYN = 1  # the synaptic filter given to neurons without a current


def chip_decay(dash: np.ndarray) -> np.ndarray:
    """The decay :math:`1 - 2^{-d}` a shift ``d`` stands for."""
    return 1.0 - 2.0 ** -np.asarray(dash, dtype=np.float64)


def nearest_dash(beta: np.ndarray, lowest: int) -> np.ndarray:
    """Per value, the shift in ``lowest``..15 whose decay lies nearest to ``beta`` (ties: the longer shift)."""
    dashes = np.arange(lowest, DASH_RANGE[1] + 1)
    distance = np.abs(np.asarray(beta, dtype=np.float64)[:, None] - chip_decay(dashes)[None, :])
    best = distance.shape[1] - 1 - np.argmin(distance[:, ::-1], axis=1)
    return dashes[best]


def leaks(plan: XyloPlan) -> XyloPlan:
    """Each layer's ``dash_mem``, ``dash_syn`` and leak errors."""
    found = {}
    for layer in plan.layers:
        d = layer.dynamics
        dash_mem = nearest_dash(d.beta, DASH_RANGE[0])
        error = float(np.max(np.abs(d.beta - chip_decay(dash_mem)), initial=0.0))
        if d.beta_u is None:
            found[layer.name] = Leak(np.full(layer.size, LIF_DASH_SYN), dash_mem, error, None)
            continue
        dash_syn = nearest_dash(d.beta_u, 1)
        syn_error = float(np.max(np.abs(d.beta_u - chip_decay(dash_syn)), initial=0.0))
        found[layer.name] = Leak(dash_syn, dash_mem, error, syn_error)
    return replace(plan, leaks=found)
