r"""Synapse pruning of spiking Transformer blocks: L1P (unstructured) and DSP (low rank).

st2chip's reading of arXiv 2508.01992 (ideas only; equations and numbers are ours).
The pruned matrices are the ST block weight matrices :math:`\mathcal{W}` (q, k, v,
proj, fc1, fc2 of every block; :meth:`SpikingTransformer.block_matrices`); models
without that method (the MLP) expose all their ``nn.Linear`` layers.

**L1P** (unstructured): train with :math:`\mathcal{L} + \lambda_1 \sum_{W\in\mathcal{W}} \|W\|_1`,
then keep the largest-magnitude weights, :math:`M = \mathbb{1}[|W| \ge \tau]`, with
:math:`\tau` chosen so that a fraction ``sparsity`` of the weights is zero, over all
matrices together (``scope="global"``) or per matrix (``scope="layer"``); fine-tune
:math:`W \odot M` with the masks kept (``torch.nn.utils.prune``); finally
:func:`make_permanent` writes :math:`W \odot M` so masked weights are exactly zero.

**DSP** (structured, low rank): every matrix becomes :math:`W = U V`,
:math:`U \in \mathbb{R}^{m\times r}, V \in \mathbb{R}^{r\times n}` (:class:`LowRankLinear`,
initialized from the SVD, :math:`U = U_s\sqrt{S}`, :math:`V = \sqrt{S}V_s^\top`);
training adds the group penalty :math:`\lambda_* \sum_W \sum_k \|U_{:,k}\|_2\,\|V_{k,:}\|_2`
(whose minimum over factorizations of one product is its nuclear norm, so it drives
singular values to zero); :func:`truncate` then keeps the rank components with
:math:`\sigma_k \ge \text{threshold}\cdot\sigma_1` and at most ``rank`` of them, and
fine-tuning trains the kept factors. U and V are stored, never only their product.
"""

from __future__ import annotations

import copy
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

Scope = Literal["global", "layer"]


class LowRankLinear(nn.Module):
    """A linear map :math:`y = x (U V)^\\top (+ b)` that stores the factors U and V.

    ``U``: ``(out_features, rank)``; ``V``: ``(rank, in_features)``. The input first
    meets ``V`` (giving ``rank`` graded values), then ``U``. Bias-free unless
    ``bias`` (chip-faithful models, where a folded batch norm leaves a bias after ``U``).
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = False) -> None:
        super().__init__()
        if not 1 <= rank <= min(in_features, out_features):
            raise ValueError(f"rank must lie in [1, {min(in_features, out_features)}], got {rank}")
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        # Var(U V) = rank * scale^4 = 1 / (3 n_in), the variance of nn.Linear's default init.
        scale = (3.0 * in_features * rank) ** -0.25
        self.U = nn.Parameter(torch.randn(out_features, rank) * scale)
        self.V = nn.Parameter(torch.randn(rank, in_features) * scale)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @classmethod
    def from_weight(cls, weight: torch.Tensor, rank: int | None = None,
                    bias: torch.Tensor | None = None) -> "LowRankLinear":
        """Best rank-``rank`` factorization of ``weight`` (truncated SVD, balanced factors); ``bias`` is copied."""
        u, s, vh = torch.linalg.svd(weight.detach(), full_matrices=False)
        r = len(s) if rank is None else rank
        m = cls(weight.shape[1], weight.shape[0], r, bias=bias is not None).to(weight.device, weight.dtype)
        root = s[:r].sqrt()
        with torch.no_grad():
            m.U.copy_(u[:, :r] * root)
            m.V.copy_(root[:, None] * vh[:r])
            if bias is not None:
                m.bias.copy_(bias)
        return m

    def product(self) -> torch.Tensor:
        """The dense matrix ``U @ V`` (for checks and lowering that multiplies out)."""
        return self.U @ self.V

    def component_norms(self) -> torch.Tensor:
        """:math:`\\|U_{:,k}\\|\\,\\|V_{k,:}\\|` for every rank component ``k``."""
        return self.U.norm(dim=0) * self.V.norm(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.V), self.U, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"bias={self.bias is not None}")


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The weight matrices that pruning acts on, by module name."""
    if hasattr(model, "block_matrices"):
        return model.block_matrices()
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def _dense_layers(model: nn.Module) -> dict[str, nn.Linear]:
    layers = prunable_layers(model)
    low = [n for n, m in layers.items() if not isinstance(m, nn.Linear)]
    if low:
        raise ValueError(f"L1P acts on dense matrices; these are factored: {low}")
    return layers  # type: ignore[return-value]


# ---------------------------------------------------------------- L1P

def l1_penalty(strength: float) -> Callable[[nn.Module], torch.Tensor]:
    """``penalty(model) = strength * sum |W|`` over the prunable matrices (for ``train_classifier``)."""

    def penalty(model: nn.Module) -> torch.Tensor:
        return strength * sum(m.weight.abs().sum() for m in _dense_layers(model).values())

    return penalty


def magnitude_prune(model: nn.Module, sparsity: float, scope: Scope = "global") -> float:
    """Mask the smallest-magnitude weights so that ``sparsity`` of them are zero; return the achieved sparsity.

    Masks live as ``torch.nn.utils.prune`` buffers (``weight_mask``), so later
    fine-tuning keeps pruned weights at zero.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must lie in [0, 1), got {sparsity}")
    layers = _dense_layers(model)
    if scope == "global":
        prune.global_unstructured([(m, "weight") for m in layers.values()],
                                  pruning_method=prune.L1Unstructured, amount=sparsity)
    elif scope == "layer":
        for m in layers.values():
            prune.l1_unstructured(m, "weight", amount=sparsity)
    else:
        raise ValueError(f"scope must be 'global' or 'layer', not {scope!r}")
    return weight_sparsity(model)


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold every pruning mask into its weight (``prune.remove``): masked weights become exactly zero."""
    for m in model.modules():
        if prune.is_pruned(m) and hasattr(m, "weight_mask"):
            prune.remove(m, "weight")
    return model


def copy_model(model: nn.Module) -> nn.Module:
    """A deep copy, also of a freshly pruned model.

    Right after pruning, a masked ``weight`` is ``weight_orig * weight_mask`` with
    autograd history, which ``copy.deepcopy`` refuses; it is recomputed without
    history first (the value is the same, and the next forward recomputes it anyway).
    """
    with torch.no_grad():
        for m in model.modules():
            if prune.is_pruned(m) and hasattr(m, "weight_mask"):
                m.weight = m.weight_orig * m.weight_mask
    return copy.deepcopy(model)


def nonzero_weights(model: nn.Module) -> tuple[int, int]:
    """(non-zero, total) entries over the prunable matrices (both factors for low-rank layers)."""
    nonzero = total = 0
    for m in prunable_layers(model).values():
        for w in layer_matrices(m):
            nonzero += int((w != 0).sum())
            total += w.numel()
    return nonzero, total


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of zero entries over the prunable matrices."""
    nonzero, total = nonzero_weights(model)
    return 1.0 - nonzero / max(total, 1)


def layer_matrices(m: nn.Module) -> list[torch.Tensor]:
    """The stored weight matrices of a prunable layer: ``[weight]`` or ``[U, V]``."""
    return [m.U, m.V] if isinstance(m, LowRankLinear) else [m.weight]


# ---------------------------------------------------------------- DSP

def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def _record_ranks(model: nn.Module) -> dict[str, int]:
    ranks = {n: m.rank for n, m in prunable_layers(model).items() if isinstance(m, LowRankLinear)}
    model.config.ranks = dict(ranks)
    return ranks


def factorize(model: nn.Module, rank: int | None = None) -> dict[str, int]:
    """Replace every dense block matrix by a :class:`LowRankLinear` (SVD, full rank unless ``rank``).

    Updates ``model.config.ranks`` so a checkpoint rebuilds the factored model;
    returns the ranks.
    """
    if not hasattr(model, "block_matrices"):
        raise ValueError("DSP needs a model with ST block matrices (a SpikingTransformer)")
    for name, m in prunable_layers(model).items():
        if isinstance(m, nn.Linear):
            full = min(m.weight.shape)
            _set_module(model, name, LowRankLinear.from_weight(m.weight, None if rank is None else min(rank, full),
                                                               bias=m.bias))
    return _record_ranks(model)


def group_penalty(strength: float) -> Callable[[nn.Module], torch.Tensor]:
    """``penalty(model) = strength * sum_k ||U[:,k]|| ||V[k,:]||`` over the factored matrices."""

    def penalty(model: nn.Module) -> torch.Tensor:
        return strength * sum(m.component_norms().sum() for m in prunable_layers(model).values()
                              if isinstance(m, LowRankLinear))

    return penalty


def truncate(model: nn.Module, rank: int | None = None, threshold: float = 0.0) -> dict[str, int]:
    """Remove rank components of every factored matrix; return the new ranks.

    Re-factorizes the current product ``U @ V`` by SVD and keeps the components
    with ``sigma_k >= threshold * sigma_1``, at most ``rank`` of them (at least one),
    so the result is the best approximation of that rank. A ``rank`` below 1 is a
    ``ValueError``, not silently rank 1.
    """
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ValueError(f"rank must be a positive integer, got {rank!r}")
    for name, m in prunable_layers(model).items():
        if not isinstance(m, LowRankLinear):
            raise ValueError(f"truncate needs factored matrices; '{name}' is dense (call factorize first)")
        with torch.no_grad():
            s = torch.linalg.svdvals(m.product())
        keep = int((s >= threshold * s[0]).sum())
        if rank is not None:
            keep = min(keep, rank)
        _set_module(model, name, LowRankLinear.from_weight(m.product(), max(keep, 1), bias=m.bias))
    return _record_ranks(model)
