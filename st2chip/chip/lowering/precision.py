r"""Pass ``precision``: a second 8-bit synapse group per matrix group, carrying what the first one rounds away.

A group's 8-bit mantissas ``m₁`` with exponent ``e₁`` hold ``2 m₁ 2^{e₁}`` of the folded
weight ``S w`` (``S``: the population's scale; one unit of synaptic input is ``1/S`` of a
threshold). Where ``e₁ ≥ 0`` the rounding error is up to ``2^{e₁}`` units per weight: a
**residual group** from the same source onto the same neurons (same delay, lag, feedback)
carries ``r = S w − 2 m₁ 2^{e₁}`` as mantissas ``m₂`` with a smaller exponent ``e₂``, and the
chip adds both groups' inputs.

The fixed-point detail decides ``e₂``: Lava floors each group's shifted sum
``(Σ_j 2 m_ij s_j) >> −e`` separately, so a residual finer than one unit would be floored
away (and bias every step downwards). ``e₂ = max(e_needed(r), −1)``: at ``e₂ = −1`` the sum
``Σ 2 m₂ s`` is even and the shift exact, so the two groups hold ``round(S w)`` units per
weight, exactly what the chip adds — the finest any split can give at this scale. The
gain is therefore ``e₁ + 1`` bits (the residual group's bits beyond that are the
population's scale, which ``--headroom`` bounds): a group with ``e₁ < 0`` already resolves
one unit and gets no residual, nor does one stored as a convolution kernel (lava's
fixed-point ``Conv`` applies no exponent, and as a matrix the residual would store a weight
per synapse), a factored low-rank group (its error is the relay's) or a group whose
graded input (host product, analog input) would overflow Lava's int32 sum; each reason is
reported per group. Sparse (CSR) groups keep their pruned zeros: the residual has the
main group's sparsity pattern less the weights that round to zero, and is stored the
same way.

``precision="8"`` changes nothing. ``"16"`` adds every residual there is. ``"auto"``
decides per layer (:func:`choose`): 16 bits where the layer's 8-bit weight error (its
matrix groups pooled) exceeds :data:`PRECISION_BOUND` and the residuals cut it by a
larger factor than they multiply the stored weights times the synaptic operations (the
low-rank cost model's rule: each spike costs an accumulate per non-zero weight, residual
weights too). With exponent 0 a residual gains one bit for about 1.5x the weights and
operations, which does not pay; from exponent 1 on it does. The layer report's
``precision`` gives both errors, both costs, each residual's exponent and why other groups
have none; the layer's ``weight_error`` (largest per group) is then that of the two groups.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import scipy.sparse as sp

from st2chip.chip import encoding
from st2chip.chip.chipgraph import (GRADED_ACC_MAX, GRADED_INPUT_MAX, WEIGHT_EXP_RANGE, SynapseGroup,
                                    port_bounds)
from st2chip.chip.lowering.lowrank import MAC_PER_AC, SPIKE_RATE
from st2chip.chip.lowering.plan import LayerPlan, Plan, Synapses
from st2chip.chip.lowering.report import PrecisionChoice, PrecisionCosts
from st2chip.chip.lowering.synapses import group_name, matrix_blocks, take

PRECISION_BOUND = 0.01   # auto: a layer whose 8-bit relative weight error exceeds 1 % is considered for 16 bits
RESIDUAL_SUFFIX = "/residual"  # a residual group is named after the group whose rounding it carries
RESIDUAL_EXP_MIN = -1    # the finest residual exponent Lava adds exactly: 2 m 2^-1 = m whole units, no floor


def precision(plan: Plan) -> Plan:
    """Every layer's residual groups and :class:`~st2chip.chip.lowering.report.PrecisionChoice`; nothing
    at all with ``precision="8"``."""
    if plan.options.precision == "8":
        return plan
    return plan.map_layers(refined)


@dataclass
class Refinement:
    """One matrix group's residual (None, with ``why``, where it gets none), its relative weight error with
    the residual (``error_16``), and the norms the layer's pooled errors add up: of its float weights and of
    what 8 bits alone and 8 bits plus the residual miss of them."""

    main: SynapseGroup
    residual: SynapseGroup | None
    error_16: float
    norm: float
    miss_8: float
    miss_16: float
    why: str = ""


def _held(mant: np.ndarray | sp.csr_matrix, exp: int, scale: float) -> sp.csr_matrix:
    """The folded float weights mantissas ``mant`` with exponent ``exp`` stand for at ``scale``."""
    return sp.csr_matrix(mant, dtype=np.float64) * (2.0 * 2.0**exp / scale)


def _no_residual(main: SynapseGroup) -> str:
    """Why ``main`` gets no residual whatever its weights (empty: it may get one)."""
    if main.conv is not None:
        return ("a convolution kernel: lava's Conv applies no exponent, and as a matrix the residual would store "
                "a weight per synapse")
    if main.exp < 0:
        return (f"exponent {main.exp} < 0: its mantissas already resolve one unit of synaptic input, the finest "
                f"the chip adds")
    return ""


def residual(main: SynapseGroup, w: sp.csr_matrix, scale: float, graded: np.ndarray | None) -> Refinement:
    """``main``'s residual group for its folded float weights ``w`` at the population's ``scale``
    (``graded``: the source's largest value per neuron, None for 0/1 spikes)."""
    held = _held(main.mantissa, main.exp, scale)
    norm, miss_8 = float(np.linalg.norm(w.data)), float(np.linalg.norm(sp.csr_matrix(held - w).data))
    none = Refinement(main, None, main.error, norm, miss_8, miss_8, _no_residual(main))
    if none.why:
        return none
    rest = sp.csr_matrix(w - held)
    rest.eliminate_zeros()
    exp = int(np.clip(max(encoding.exp_needed(rest, scale), RESIDUAL_EXP_MIN), *WEIGHT_EXP_RANGE))
    mant, exp, _ = encoding.quantize(rest, scale, exp)
    if mant.nnz == 0:
        return replace(none, why="exact with 8 bits: nothing left to carry")
    group = replace(main, name=f"{main.name}{RESIDUAL_SUFFIX}", mantissa=mant if sp.issparse(main.mantissa)
                    else mant.toarray().astype(np.int64), exp=exp, conv=None)
    if graded is not None:
        acc, shifted = group.input_bound(graded)
        if acc.max(initial=0) > GRADED_ACC_MAX or shifted.max(initial=0) > GRADED_INPUT_MAX:
            return replace(none, why="its graded input would overflow Lava's int32 sum with a residual")
    both = sp.csr_matrix(held + _held(mant, exp, scale))
    error = encoding.rel_error(both, w)
    return Refinement(main, replace(group, error=error), error, norm, miss_8,
                      float(np.linalg.norm(sp.csr_matrix(both - w).data)))


def refinements(plan: Plan, layer: LayerPlan) -> list[Refinement]:
    """A :class:`Refinement` per matrix group of ``layer`` (per population and source block)."""
    graded = port_bounds(plan.hosts, plan.inputs)
    groups = {g.name: g for g in layer.synapses.groups}
    out = []
    for pop in layer.populations.members:
        rows = take(layer.folded.weight, pop.index, axis=0)
        for source, cols, key in matrix_blocks(plan, layer):
            main = groups[group_name(source, pop.name, key)]
            w = sp.csr_matrix(take(rows, cols, axis=1))
            out.append(residual(main, w, layer.populations.scales[pop.name], graded.get(source)))
    return out


def costs(plan: Plan, layer: LayerPlan, residuals: list[SynapseGroup]) -> PrecisionCosts:
    """Stored non-zero weights of the layer's groups, and accumulate-equivalents per step with every source
    neuron sending at the low-rank cost model's rate (a graded source's weights cost a MAC each), without
    and with ``residuals``."""
    graded = set(port_bounds(plan.hosts, plan.inputs)) | {r.name for r in layer.lowrank.relays}

    def ops(groups: list[SynapseGroup]) -> float:
        return SPIKE_RATE * sum(g.nnz * (MAC_PER_AC if g.source in graded else 1.0) for g in groups)

    groups = layer.synapses.groups
    return PrecisionCosts(sum(g.nnz for g in groups), sum(g.nnz for g in groups + residuals), ops(groups),
                          ops(groups + residuals))


def choose(mode: str, error_8: float, error_16: float, cost: PrecisionCosts) -> tuple[bool, str]:
    """16 bits or not, and why: ``16`` wherever a residual exists; ``auto`` where the 8-bit error exceeds
    :data:`PRECISION_BOUND` and falls by a larger factor than stored weights times operations grow."""
    mem, ops = cost.weights_16 / max(cost.weights_8, 1), cost.ops_16 / max(cost.ops_8, 1e-12)
    gain = error_8 / error_16 if error_16 > 0 else float("inf")
    priced = (f"residuals cut the weight error {100 * error_8:.2f} % -> {100 * error_16:.2f} % ({gain:.1f}x) "
              f"for {mem:.2f}x the stored weights and {ops:.2f}x the synaptic ops")
    if mode == "16":
        return True, f"precision=16: {priced}"
    if error_8 <= PRECISION_BOUND:
        return False, f"8: weight error {100 * error_8:.2f} % within the bound {100 * PRECISION_BOUND:g} %"
    verdict = gain > mem * ops
    return verdict, (f"{'16' if verdict else '8'}: weight error {100 * error_8:.2f} % over the bound "
                     f"{100 * PRECISION_BOUND:g} %; {priced} (gain {'>' if verdict else '<='} {mem * ops:.2f})")


def refined(plan: Plan, layer: LayerPlan) -> LayerPlan:
    """``layer`` with its :class:`~st2chip.chip.lowering.report.PrecisionChoice` and, where 16 bits are
    chosen, a residual group after each main group that takes one (and its weight errors updated)."""
    found = refinements(plan, layer)
    residuals = [r.residual for r in found if r.residual is not None]
    norm = float(np.linalg.norm([r.norm for r in found])) or 1.0
    error_8 = float(np.linalg.norm([r.miss_8 for r in found])) / norm
    error_16 = float(np.linalg.norm([r.miss_16 for r in found])) / norm
    cost = costs(plan, layer, residuals)
    skipped = {r.main.name: r.why for r in found if r.residual is None}
    if not residuals:
        choice = PrecisionChoice("8", "8: no group can take a residual (see skipped)", error_8, error_8, cost,
                                 skipped=skipped)
        return replace(layer, precision=choice)
    keep, why = choose(plan.options.precision, error_8, error_16, cost)
    choice = PrecisionChoice("16" if keep else "8", why, error_8, error_16, cost,
                             {g.name: g.exp for g in residuals} if keep else {}, skipped)
    if not keep:
        return replace(layer, precision=choice)
    return replace(layer, synapses=_with_residuals(layer, found), precision=choice)


def _with_residuals(layer: LayerPlan, found: list[Refinement]) -> Synapses:
    """``layer``'s :class:`~st2chip.chip.lowering.plan.Synapses` with each residual after its main group and
    the weight errors those of the two groups (factored paths' product errors kept)."""
    syn = layer.synapses
    after = {r.main.name: r for r in found}
    groups = [g2 for g in syn.groups for g2 in (g, after[g.name].residual if g.name in after else None)
              if g2 is not None]
    main = [r.error_16 for r in found if not r.main.target.endswith("/outliers")]
    outliers = [r.error_16 for r in found if r.main.target.endswith("/outliers")]
    factored = [c.factored.product_error for c in layer.lowrank.choices.values() if c.chosen == "factored"]
    return replace(syn, groups=groups, weight_error=float(max(main + factored, default=0.0)),
                   outlier_weight_error=float(max(outliers)) if outliers else None)
