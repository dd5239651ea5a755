r"""st2chip's one node beyond NIR 1.0: the spike x spike attention product of a spiking Transformer.

NIR has no node for a product of two signals. A spiking Transformer's
self-attention is, per head :math:`h` and step :math:`t`, with the spike
matrices :math:`Q_h, K_h, V_h \in \{0, 1\}^{N \times d_h}` of ``N`` tokens,

.. math::  A_h[t] = s\,(Q_h[t]\, K_h[t]^\top)\, V_h[t]

(no softmax): :math:`Q_h K_h^\top` counts coincident spikes and the result is a
graded value, :math:`s` times a non-negative integer. Neurons and synapses
cannot form it; it runs on a host partition. :class:`SpikeProduct` carries it
in st2chip's in-memory graphs (a bundle composed by
:mod:`st2chip.graph.bundle_graph`), so that the float interpreter and lowering
see the whole model; it is never written to a ``.nir`` file.

Signals are flat in token-major order: element ``n * D + d`` is feature ``d`` of
token ``n``, and head ``h`` holds features ``h * d_h`` to ``(h + 1) d_h - 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import nir
import numpy as np
import torch

from st2chip.attention import attention_counts
from st2chip.errors import GraphError


@dataclass(eq=False)
class SpikeProduct(nir.NIRNode):
    """``A = s (Q K^T) V`` per head over ``tokens`` tokens of width ``dim``; ``inputs`` names the nodes
    whose outputs are Q, K and V (in that order): the graph's edges into this node say only that they feed it."""

    heads: int
    tokens: int
    dim: int
    scale: float
    inputs: tuple[str, str, str]

    def __post_init__(self) -> None:
        if self.heads < 1 or self.tokens < 1 or self.dim < 1 or self.dim % self.heads:
            raise GraphError(f"needs positive heads, tokens, dim with dim divisible by heads; got heads "
                             f"{self.heads}, tokens {self.tokens}, dim {self.dim}", field="heads")
        if not np.isfinite(self.scale):
            raise GraphError(f"scale must be finite, got {self.scale}", field="scale")
        if len(self.inputs) != 3:
            raise GraphError(f"needs three inputs (Q, K, V), got {list(self.inputs)}", field="inputs")
        size = np.array([self.tokens * self.dim])
        self.input_type = {"input": size}
        self.output_type = {"output": size}

    @property
    def size(self) -> int:
        """Values per step (all tokens)."""
        return self.tokens * self.dim

    def counts(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The integer part ``(Q K^T) V`` per head of flat spikes ``(..., tokens * dim)``; same shape."""
        return attention_counts(q, k, v, self.tokens, self.heads)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``s (Q K^T) V`` per head of flat spikes ``(..., tokens * dim)``."""
        return self.counts(q, k, v) * self.scale
