"""Data sets and spike encoding.

The embedded default is scikit-learn's bundled ``load_digits`` (8x8 images,
1,797 samples), split once with a fixed seed so that every command sees the same
test set. Nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2


@dataclass(frozen=True)
class Split:
    """Images scaled to [0, 1] (``N x 64`` for digits) with integer labels."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


def load_digits_split(seed: int = DIGITS_SPLIT_SEED) -> tuple[Split, Split]:
    """Train and test splits of the digits data, stratified, fixed by ``seed``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=DIGITS_TEST_FRACTION, random_state=seed, stratify=y)
    return Split(x_tr, y_tr), Split(x_te, y_te)


def rate_encode(x: np.ndarray | torch.Tensor, steps: int) -> torch.Tensor:
    """Deterministic rate code: intensity ``p`` in [0, 1] spikes ``floor(p * t)`` times by step ``t``.

    Returns binary spikes of shape ``(steps, *x.shape)``. Deterministic, so the
    float model, the fixed-point reference and Lava see the same input spikes.
    """
    x = torch.as_tensor(x, dtype=torch.float32).clamp(0.0, 1.0)
    t = torch.arange(1, steps + 1, dtype=torch.float32).view(-1, *([1] * x.dim()))
    counts = torch.floor(x.unsqueeze(0) * t + 1e-6)
    previous = torch.cat([torch.zeros_like(counts[:1]), counts[:-1]])
    return (counts - previous).clamp(0, 1)
