r"""Spike-driven self-attention without softmax: the one implementation of its arithmetic.

The spiking Transformer's attention, the composed bundle's ``SpikeProduct`` node,
the engine's host partition, Lava's host process and the operation counters all
compute on the same layout: a signal of ``tokens * dim`` values per step, flat and
token-major (element ``n * dim + d`` is feature ``d`` of token ``n``), with head
:math:`h` holding features :math:`h d_h .. (h + 1) d_h - 1`, :math:`d_h = dim / heads`.
Per step and head, with spike matrices :math:`Q_h, K_h, V_h \in \{0, 1\}^{tokens \times d_h}`,

.. math::  C_h = (Q_h K_h^\top)\, V_h

are integer counts; forming them costs one accumulate per coincident spike pair
(:math:`\sum Q_h K_h^\top`) and one per spike of :math:`V_h` meeting a non-zero score.
"""

from __future__ import annotations

import torch


def split_heads(x: torch.Tensor, tokens: int, heads: int) -> torch.Tensor:
    """Flat token-major ``(..., tokens * dim)`` as ``(..., heads, tokens, dim / heads)``."""
    return x.reshape(*x.shape[:-1], tokens, heads, x.shape[-1] // (tokens * heads)).transpose(-3, -2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`split_heads`: ``(..., heads, tokens, d_h)`` back to flat ``(..., tokens * dim)``."""
    return x.transpose(-3, -2).reshape(*x.shape[:-3], -1)


def attention_counts(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tokens: int, heads: int) -> torch.Tensor:
    """``(Q K^T) V`` per head of flat ``(..., tokens * dim)`` signals, in the same layout."""
    qh, kh, vh = (split_heads(x, tokens, heads) for x in (q, k, v))
    return merge_heads((qh @ kh.transpose(-2, -1)) @ vh)


def attention_ops(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tokens: int, heads: int) -> float:
    """Accumulates that forming :func:`attention_counts` of 0/1 spikes takes, summed over every leading axis."""
    qh, kh, vh = (split_heads(x, tokens, heads) for x in (q, k, v))
    scores = qh @ kh.transpose(-2, -1)
    return float(scores.sum() + ((scores != 0).to(vh.dtype) @ vh).sum())
