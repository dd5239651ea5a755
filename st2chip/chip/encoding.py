r"""The chip's number encodings, in one place: decays, weights, biases, thresholds.

Lowering (:mod:`st2chip.chip.lowering`) encodes float values with these,
:mod:`st2chip.chip.held` and :mod:`st2chip.chip.finetune` decode them. The ranges
are :class:`~st2chip.chip.chipgraph.Population`'s and
:class:`~st2chip.chip.chipgraph.SynapseGroup`'s:

- **decays** (12 bit): the voltage decays by :math:`\beta = 1 - dv/4096`, the
  current by :math:`\beta_u = (4095 - du)/4096` (Lava's ``du``);
- **weights**: 8-bit mantissas :math:`m` and one exponent :math:`e` per group stand
  for :math:`2 m\, 2^{e} / S` at a population's scale :math:`S` (its threshold ``vth = S``);
- **biases**: 13-bit mantissas, 3-bit exponents, :math:`b_m 2^{b_e}` in voltage units;
- **voltage**: the chip's voltage is :math:`2^6 S` per float threshold (``vth << 6``).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

from st2chip.chip.chipgraph import (ACT_SHIFT, BIAS_EXP_RANGE, BIAS_MANT_RANGE, DECAY_MAX, UV_MAX,
                                    WEIGHT_EXP_RANGE, WEIGHT_MANT_RANGE)

DECAY_ONE = 4096.0       # a decay's 12-bit unit: beta = 1 - dv / 4096
MANT_FULL = 254          # largest even weight value 2*m with m = 127
MAX_SCALE = 4096         # cap on vth: leaves 2^5 headroom for v below 2^23
ROUNDOFF = 1e-6          # relative slack for float32 weights at a full mantissa: lowering the weights the chip
                         # holds (st2chip.chip.held) must give the same scale and exponents back
VOLTAGE_PER_SCALE = 2.0**ACT_SHIFT  # chip voltage per float threshold, per unit of a population's scale


def dv_exact(beta: np.ndarray) -> np.ndarray:
    """The voltage decay ``beta`` on the chip's 12-bit scale, unrounded: ``4096 (1 - beta)``."""
    return DECAY_ONE * (1.0 - beta)


def du_exact(beta_u: np.ndarray) -> np.ndarray:
    """The current decay ``beta_u`` on the chip's 12-bit scale, unrounded: ``4095 - 4096 beta_u``."""
    return DECAY_MAX - DECAY_ONE * beta_u


def to_decay(exact: np.ndarray) -> np.ndarray:
    """A ``du`` or ``dv`` from :func:`dv_exact` / :func:`du_exact`: rounded and clipped to 12 bits."""
    return np.clip(np.rint(exact), 0, DECAY_MAX).astype(np.int64)


def voltage_decay(dv: np.ndarray | int) -> np.ndarray | float:
    """The factor ``1 - dv/4096`` the chip's ``dv`` decays the voltage by."""
    return 1.0 - dv / DECAY_ONE


def current_decay(du: np.ndarray | int) -> np.ndarray | float:
    """The factor ``(4095 - du)/4096`` the chip's ``du`` decays the current by (Lava's convention)."""
    return (DECAY_MAX - du) / DECAY_ONE


def rel_error(approx: np.ndarray | sp.spmatrix, exact: np.ndarray | sp.spmatrix) -> float:
    """``||approx - exact|| / ||exact||``, computed on scaled values so huge weights cannot overflow to NaN;
    for sparse matrices from their stored values (no dense copy)."""
    if sp.issparse(exact):
        diff, exact = sp.csr_matrix(approx - exact).data, sp.csr_matrix(exact).data
    else:
        diff = approx - exact
    m = float(np.max(np.abs(exact))) if exact.size else 0.0
    if m == 0:
        return float(np.linalg.norm(diff))
    return float(np.linalg.norm(diff / m) / np.linalg.norm(exact / m))


def lowrank_errors(u_pairs: list[tuple[sp.spmatrix, sp.spmatrix]], v_approx: sp.spmatrix, v: sp.spmatrix
                   ) -> list[float]:
    r"""``||U_a V_a - U V|| / ||U V||`` (Frobenius) for each ``(U_a, U)`` of ``u_pairs``, without forming a product.

    With :math:`X = [U_a, -U]` and :math:`Y = [V_a; V]`, :math:`U_a V_a - U V = X Y` and
    :math:`\|X Y\|^2 = \sum (X^\top X) \circ (Y Y^\top)`: Gram matrices of side :math:`2r` cost
    :math:`O((m + n) r^2)` where the products cost :math:`O(m n r)` (a CIFAR-size DSP layer: 15 billion
    multiply-adds, most of pass ``lowrank``). The squared error is a difference of sums of the size of
    :math:`\|U V\|^2`, so it is exact to about :math:`10^{-16} \|U V\|^2`: the ratio to about
    :math:`10^{-8}` (a quantization error is :math:`10^{-4}` to :math:`10^{-1}`). ``U`` and ``V`` are
    scaled by their largest magnitudes first, so huge weights cannot overflow.
    """
    v_approx, v = sp.csr_matrix(v_approx, dtype=np.float64), sp.csr_matrix(v, dtype=np.float64)
    sv = _largest(v) or 1.0
    rank = v.shape[0]
    y = sp.vstack([v_approx / sv, v / sv], format="csr")
    gy = sp.csr_matrix(y @ y.T)  # sparse: a bundle's factors are block-diagonal over tokens, and so are these
    gy_exact = gy[rank:, rank:]
    out = []
    for u_approx, u in u_pairs:
        u_approx, u = sp.csr_matrix(u_approx, dtype=np.float64), sp.csr_matrix(u, dtype=np.float64)
        su = _largest(u) or 1.0
        x = sp.hstack([u_approx / su, -u / su], format="csc")
        gx = sp.csr_matrix(x.T @ x)
        err2 = max(float(gx.multiply(gy).sum()), 0.0)
        exact2 = float(gx[rank:, rank:].multiply(gy_exact).sum())
        out.append(math.sqrt(err2 / exact2) if exact2 > 0 else math.sqrt(err2) * su * sv)
    return out


def row_absmax(matrix: sp.csr_matrix) -> np.ndarray:
    """Largest ``|w|`` of each row of a CSR matrix (0 for an empty row), from its stored values only."""
    out = np.zeros(matrix.shape[0])
    filled = np.diff(matrix.indptr) > 0
    if matrix.nnz:
        out[filled] = np.maximum.reduceat(np.abs(matrix.data), matrix.indptr[:-1][filled])
    return out


def _largest(m: sp.csr_matrix) -> float:
    return float(np.abs(m.data).max(initial=0.0))


def weight_scale(wmax: float) -> int:
    """The scale that makes a population's largest folded weight ``wmax`` a full mantissa at exponent 0."""
    return int(np.clip(np.floor(MANT_FULL / wmax * (1 + ROUNDOFF)), 1, MAX_SCALE)) if wmax > 0 else MAX_SCALE


def refined_scale(scale: int, headroom: float) -> int:
    """A spiking population's scale ``scale · 2^k``: the finest that keeps ``headroom`` thresholds of range.

    ``scale`` makes the largest folded weight a full mantissa at exponent 0, so a
    synapse group of smaller weights gets a negative exponent, and Lava floors each
    step's input sum ``Σ 2 m s`` shifted right by it: a downward bias of up to one unit,
    ``1/vth`` of a threshold, per step, which a recurrent network integrates over its
    whole run. Multiplying the scale by ``2^k`` moves every exponent up by ``k``
    (mantissas unchanged) until ``u`` and ``v``, 24 bits with the voltage ``vth << 6``
    at threshold, would wrap or saturate within ``headroom`` thresholds; ``k`` stops at
    the largest weight exponent.
    """
    top = min(MAX_SCALE, UV_MAX / 2.0**ACT_SHIFT / headroom)
    k = int(np.floor(np.log2(top / scale))) if top >= 2 * scale else 0
    return scale << min(k, WEIGHT_EXP_RANGE[1])


def exp_needed(w: sp.csr_matrix, scale: float) -> int:
    """The smallest weight exponent that holds ``w · scale`` in 8-bit mantissas, unclipped (in logarithms, so
    that a weight near float's largest, which the chip clips anyway, does not overflow the product)."""
    smax = float(np.abs(w.data).max(initial=0.0))
    return 0 if smax == 0 else int(np.ceil(np.log2(smax) + np.log2(scale) - np.log2(MANT_FULL * (1 + ROUNDOFF))))


def quantize(w: sp.csr_matrix, scale: float, exp: int | None = None) -> tuple[sp.csr_matrix, int, float]:
    """8-bit mantissas ``m`` with ``2 m 2^exp ≈ w · scale`` (``exp``: the smallest that fits, unless given),
    CSR with pruned zeros dropped, and the relative error."""
    if exp is None:
        exp = int(np.clip(exp_needed(w, scale), *WEIGHT_EXP_RANGE))
    with np.errstate(over="ignore"):  # a product beyond float's range clips like any weight too large
        values = np.clip(np.rint(w.data * scale / 2.0**exp / 2), -128, 127).astype(np.int16)
    err = rel_error(weight_value(values, exp, scale), w.data)
    mant = sp.csr_matrix((values, w.indices.copy(), w.indptr.copy()), shape=w.shape)
    mant.eliminate_zeros()  # in place: on copies, so that ``w`` (maybe the caller's matrix) keeps its structure
    return mant, exp, err


def weight_value(mant: np.ndarray, exp: int, scale: float | np.ndarray) -> np.ndarray:
    """The float weights that mantissas ``mant`` with exponent ``exp`` stand for at scale ``scale``."""
    return 2.0 * mant * 2.0**exp / scale


def bias_fixed(bias_v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split voltage-unit biases into 13-bit mantissas and 3-bit exponents (smallest that fits)."""
    lo, hi = BIAS_MANT_RANGE
    with np.errstate(divide="ignore"):
        need = np.ceil(np.log2(np.abs(bias_v) / (hi + 0.5)))
    exp = np.clip(np.nan_to_num(need, neginf=0.0), *BIAS_EXP_RANGE).astype(np.int64)
    mant = np.clip(np.rint(bias_v / 2.0**exp), lo, hi).astype(np.int64)
    return mant, exp


def voltage_unit(scale: float) -> float:
    """Chip voltage per unit of a folded float voltage (a threshold) at a population's scale: ``64 · scale``."""
    return VOLTAGE_PER_SCALE * scale


def per_spike(target: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
    """8-bit mantissas ``m`` and one exponent ``e`` whose input per spike ``a`` is nearest ``target`` (in
    units of ``a``), and ``a``: at ``e = -1``, ``a = (2 m) >> 1 = m`` exactly (every integer up to 127: the
    finest the chip's integer input holds; a lower exponent floors away bits), else ``a = 2 m << e``."""
    top = float(np.abs(target).max(initial=0.0))
    if top < WEIGHT_MANT_RANGE[1] + 0.5:
        mant = np.clip(np.rint(target), *WEIGHT_MANT_RANGE).astype(np.int64)
        return mant, -1, mant
    exp = int(min(np.ceil(np.log2(top / MANT_FULL)), WEIGHT_EXP_RANGE[1]))
    mant = np.clip(np.rint(target / 2.0 ** (exp + 1)), *WEIGHT_MANT_RANGE).astype(np.int64)
    return mant, exp, (2 * mant) << exp
