r"""Pass ``thresholds``: thresholds and biases as the 16-bit integers Xylo holds, at each layer's scale.

Threshold: st2chip's float neuron spikes when :math:`v > \theta` and subtracts :math:`\theta`, Xylo's when
:math:`v \ge \theta_{int}` and subtracts :math:`\theta_{int}`. With :math:`\theta_{int} = \operatorname{round}(s\theta)`
a graph whose :math:`s\theta` is a whole number (what ``quantize --target xylo-…`` writes) subtracts exactly
what the chip does, and the two tests differ only where ``v`` lands on the threshold exactly
(:math:`\lfloor s\theta \rfloor + 1` would make the test exact but every subtraction one LSB too large). The
float threshold the chip applies is :math:`\theta_{int} / s`, the threshold error of pass ``weights``. A readout that never spikes (LI, I, CubaLI) gets
:math:`\theta_{int} = 32767`, the top of the range, which pass ``weights`` keeps ``|v|`` below.

Bias: Xylo adds one bias per neuron to ``v`` every step. It carries the neuron's leak offset
(:math:`dt\,v_{leak}/\tau`) and the bias of the Affine chains into it: exactly for a neuron without a current
(NIR adds :math:`g\,b` to ``v`` each step), and as its steady state :math:`g\,b / (1 - \beta_u)` for a CubaLIF,
whose float current charges up to it over the first steps (the report says so where such a bias exists).
Biases beyond 16 bits are clipped and counted.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from st2chip.xylo.lowering.plan import Layer, XyloPlan
from st2chip.xylo.lowering.weights import chip_thresholds
from st2chip.xylo.xylograph import READOUT_THRESHOLD, STATE_RANGE



def thresholds(plan: XyloPlan) -> XyloPlan:
    """Each layer's integer thresholds and biases."""
    found, biases, clipped = {}, {}, {}
    for layer in plan.layers:
        scale = plan.quantized[layer.name].scale
        found[layer.name] = integer_thresholds(layer, scale)
        raw = np.rint(scale * (layer.bias_drive() + layer.dynamics.offset))
        biases[layer.name] = np.clip(raw, *STATE_RANGE).astype(np.int64)
        clipped[layer.name] = int(np.count_nonzero(raw != biases[layer.name]))
    return replace(plan, thresholds=found, biases=biases, bias_clipped=clipped)


def integer_thresholds(layer: Layer, scale: float) -> np.ndarray:
    """``round(s theta)`` in 1..32767 for a spiking layer; 32767 for a readout."""
    theta = layer.dynamics.threshold
    if theta is None:
        return np.full(layer.size, READOUT_THRESHOLD, dtype=np.int64)
    return chip_thresholds(theta, scale)


def has_current_bias(layer: Layer) -> bool:
    """A CubaLIF whose Affine chains carry a bias (moved from the current to ``v``: steady state only)."""
    return layer.dynamics.beta_u is not None and any(np.any(c.bias != 0) for c in layer.chains)
