r"""Pass ``weights``: one voltage scale per layer, 8-bit weights and ONE shift per matrix (input, recurrent, output).

A layer's float ``v`` becomes integers at its scale :math:`s` (LSBs per float unit). A chain's float weight
into the layer, as ``v`` sees it, is :math:`E = f \odot W` with the layer's input factor :math:`f`: its
gain :math:`g` for a neuron without a current (the added filter, ``dash_syn = 1``, passes the whole input to
``v``: half at once, the rest over the next steps) and :math:`g / \alpha` for a CubaLIF (Xylo decays the
current by :math:`\alpha = 1 - 2^{-d}` after adding the input, so the input is divided by it). On the chip
that weight is :math:`w_8 \ll \sigma` with :math:`w_8 = \mathrm{clip}(\mathrm{round}(s E / 2^\sigma), -128, 127)`
and :math:`\sigma` the shift of the matrix the chain lies in: ``in`` (Input -> hidden), ``rec``
(hidden -> hidden: the blocks between stacked layers and the recurrent ones) or ``out`` (hidden -> outputs).

The scale of a layer is as fine as three limits allow: its largest threshold at most :data:`THETA_TOP`
(``v`` then holds :data:`HEADROOM` thresholds before it saturates at 16 bits), its largest weight in each
matrix at most :math:`127 \cdot 2^\sigma`, and, for a readout that never spikes (LI, I, CubaLI), the largest
``|v|`` it can reach at most :data:`V_TOP`: every neuron it reads spiking once per step over the graph's
``steps`` (metadata; :data:`READOUT_STEPS` where none is recorded), its bias added each step, its leak
applied. The shifts: every combination of ``shift_in`` and ``shift_rec`` in 0..7 is tried (``shift_out``
apart, it touches only the outputs); of those whose worst layer error lies within 10 % of the least, the
one with the finest scales is kept (Xylo rounds every leak and bias by an LSB: the finer the scale, the
less that weighs against the thresholds). A layer's error is the larger of its weight error
(RMS of the chip's minus the float weights over the RMS of the float weights, all chains together) and its
threshold error (pass ``thresholds``: the largest relative move of a threshold).
"""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np

from st2chip.xylo.lowering.leaks import chip_decay
from st2chip.xylo.lowering.plan import Chain, Layer, Quantized, XyloPlan
from st2chip.xylo.xylograph import SHIFT_RANGE, STATE_RANGE, WEIGHT_RANGE

HEADROOM = 8                             # thresholds v holds before it saturates
THETA_TOP = STATE_RANGE[1] // HEADROOM   # a layer's largest threshold: 4095 LSBs
V_TOP = 32000                            # a readout's largest reachable |v|, below the 16-bit top
READOUT_STEPS = 100                      # steps a readout's bound assumes when the graph records none
SHIFTS = range(SHIFT_RANGE[0], SHIFT_RANGE[1] + 1)
ERROR_TOLERANCE = 0.1                    # worst-layer errors this close to the least count as equal


def weights(plan: XyloPlan) -> XyloPlan:
    """Each layer's scale and 8-bit weights; the three matrices' shifts."""
    blocks = {layer.name: _blocks(plan, layer) for layer in plan.layers}
    caps = {layer.name: _cap(plan, layer, blocks[layer.name]) for layer in plan.layers}
    hidden = [layer for layer in plan.layers if not layer.output]
    shifts_h = _best(hidden, blocks, caps, ("in", "rec"))
    shifts_o = _best(plan.outputs(), blocks, caps, ("out",))
    shifts = {**shifts_h, **shifts_o}
    quantized = {layer.name: quantize(layer, blocks[layer.name], caps[layer.name], shifts) for layer in plan.layers}
    return replace(plan, quantized=quantized, shifts={"in": 0, "rec": 0, "out": 0, **shifts})


def input_factor(layer: Layer, dash_syn: np.ndarray) -> np.ndarray:
    """Per neuron, what a unit of the layer's input is worth on ``v`` before the scale (see the module docstring)."""
    d = layer.dynamics
    return d.gain if d.beta_u is None else d.gain / chip_decay(dash_syn)


def matrix_of(plan: XyloPlan, chain: Chain, layer: Layer) -> str | None:
    """The chip matrix a chain lies in; None where Xylo has none (the design rules name it)."""
    kinds = {other.name: other.output for other in plan.layers}
    if chain.source not in kinds:
        return None if layer.output else "in"
    if kinds[chain.source]:
        return None
    return "out" if layer.output else "rec"


def _blocks(plan: XyloPlan, layer: Layer) -> list[tuple[str, Chain, np.ndarray]]:
    """(matrix, chain, float weight E as v sees it) for each chain the chip holds."""
    f = input_factor(layer, plan.leaks[layer.name].dash_syn)
    found = []
    for chain in layer.chains:
        matrix = matrix_of(plan, chain, layer)
        if matrix is not None:
            found.append((matrix, chain, f[:, None] * chain.weight))
    return found


def _cap(plan: XyloPlan, layer: Layer, blocks: list) -> float:
    """The finest scale the layer's thresholds (or, for a readout, its reachable ``|v|``) allow."""
    theta = layer.dynamics.threshold
    if theta is not None:
        top = float(np.max(theta, initial=0.0))
        return THETA_TOP / top if top > 0 else np.inf
    bound = readout_bound(plan, layer, blocks)
    return V_TOP / bound if bound > 0 else np.inf


def readout_bound(plan: XyloPlan, layer: Layer, blocks: list) -> float:
    """The largest ``|v|`` a non-spiking layer reaches in float when every source spikes at most once per step
    (an Input at most its ``levels``), over the graph's steps."""
    d = layer.dynamics
    levels = {c.name: c.levels or 1 for c in plan.inputs}
    pos, neg = np.zeros(layer.size), np.zeros(layer.size)
    for _, chain, e in blocks:
        events = levels.get(chain.source, 1)
        pos += events * np.clip(e, 0, None).sum(axis=1)
        neg += events * np.clip(e, None, 0).sum(axis=1)
    bias = layer.bias_drive() + d.offset  # the Affine bias and the leak offset reach v alike, each with its sign
    drive = np.maximum(pos + np.clip(bias, 0, None), -(neg + np.clip(bias, None, 0)))
    steps = plan.steps or READOUT_STEPS
    beta = np.clip(np.abs(d.beta), 0.0, 1.0)
    reach = np.where(beta < 1.0, (1 - beta ** steps) / np.maximum(1 - beta, 1e-12), float(steps))
    return float(np.max(drive * reach, initial=0.0))


def _scale(blocks: list, cap: float, shifts: dict[str, int]) -> float:
    scale = cap
    for matrix, _, e in blocks:
        top = float(np.max(np.abs(e), initial=0.0))
        if top > 0:
            scale = min(scale, WEIGHT_RANGE[1] * 2 ** shifts[matrix] / top)
    return scale if np.isfinite(scale) else 1.0


def quantize(layer: Layer, blocks: list, cap: float, shifts: dict[str, int]) -> Quantized:
    """The layer's weights on the chip at the shifts given, its scale and its errors."""
    s = _scale(blocks, cap, shifts)
    chains, err2, norm2 = [], 0.0, 0.0
    for matrix, chain, e in blocks:
        step = 2 ** shifts[matrix]
        w8 = np.clip(np.rint(s * e / step), *WEIGHT_RANGE).astype(np.int64)
        err2 += float(np.sum((w8 * step - s * e) ** 2))
        norm2 += float(np.sum((s * e) ** 2))
        chains.append((chain.source, w8.T))
    used = {m: shifts[m] for m, _, _ in blocks}
    return Quantized(s, chains, used, float(np.sqrt(err2 / norm2)) if norm2 > 0 else 0.0,
                     threshold_error(layer, s))


def threshold_error(layer: Layer, scale: float) -> float:
    """The largest relative move of a threshold: the chip holds ``round(s theta)`` (pass ``thresholds``), the
    float threshold ``round(s theta) / s``."""
    theta = layer.dynamics.threshold
    if theta is None or not np.any(theta > 0):
        return 0.0
    t = theta[theta > 0]
    return float(np.max(np.abs(chip_thresholds(t, scale) / scale - t) / t))


def chip_thresholds(theta: np.ndarray, scale: float) -> np.ndarray:
    """``round(s theta)`` in 1..32767: the threshold Xylo tests ``v >=`` against and subtracts on a spike."""
    return np.clip(np.rint(scale * np.asarray(theta, dtype=np.float64)), 1, STATE_RANGE[1]).astype(np.int64)


def _best(layers: list[Layer], blocks: dict, caps: dict, names: tuple[str, ...]) -> dict[str, int]:
    """The shifts of the matrices ``names``: among the combinations whose worst layer error lies within
    :data:`ERROR_TOLERANCE` of the smallest, the one with the finest scales (the sum of their logarithms), which
    keeps Xylo's one-LSB rounding of leaks and biases smallest against the thresholds."""
    memo: dict[tuple, tuple[float, float]] = {}
    ranked = []
    for combo in itertools.product(SHIFTS, repeat=len(names)):
        shifts = dict(zip(names, combo))
        errors, fineness = [], 0.0
        for layer in layers:
            used = tuple(sorted({m for m, _, _ in blocks[layer.name]}))
            key = (layer.name, tuple(shifts[m] for m in used))
            if key not in memo:
                q = quantize(layer, blocks[layer.name], caps[layer.name], shifts)
                memo[key] = (max(q.weight_error, q.threshold_error), float(np.log2(q.scale)))
            errors.append(memo[key][0])
            fineness += memo[key][1]
        ranked.append((max(errors, default=0.0), -fineness, sum(combo), shifts))
    least = min(r[0] for r in ranked)
    near = [r for r in ranked if r[0] <= least * (1 + ERROR_TOLERANCE) + 1e-12]
    return min(near, key=lambda r: (r[1], r[2]))[3]
