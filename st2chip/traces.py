"""Spike and voltage traces from any backend, in one layout.

Every backend (float NIR simulation, fixed-point reference, Lava) returns a
:class:`Traces`: per layer (NIR node name), arrays ``(samples, steps, neurons)``
with neurons in the layer's own order, plus the readout scores. verify compares
them and energy counts synaptic operations from them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Traces:
    """What one backend produced for a batch of samples.

    ``inputs``: input name -> spikes ``(B, T, n)``; ``spikes``: layer -> spikes
    ``(B, T, n)`` (uint8); ``voltages``: layer -> voltage after reset ``(B, T, n)``
    (chip units for fixed-point backends, float otherwise); ``scores``: readout
    layer values at the last step ``(B, classes)``.
    """

    backend: str
    inputs: dict[str, np.ndarray]
    spikes: dict[str, np.ndarray]
    voltages: dict[str, np.ndarray]
    scores: np.ndarray
    meta: dict = field(default_factory=dict)

    @property
    def samples(self) -> int:
        return int(self.scores.shape[0])

    def predictions(self) -> np.ndarray:
        """Class with the highest readout score per sample."""
        return np.argmax(self.scores, axis=1)

    def accuracy(self, labels: np.ndarray) -> float:
        return float(np.mean(self.predictions() == np.asarray(labels)))

    @classmethod
    def concat(cls, parts: list["Traces"]) -> "Traces":
        """Traces of consecutive sample ranges (shards) joined in order."""
        join = lambda arrays: {k: np.concatenate([a[k] for a in arrays]) for k in arrays[0]}  # noqa: E731
        first = parts[0]
        return cls(first.backend, join([p.inputs for p in parts]), join([p.spikes for p in parts]),
                   join([p.voltages for p in parts]), np.concatenate([p.scores for p in parts]), dict(first.meta))

    def head(self, samples: int) -> "Traces":
        """The first ``samples`` samples (to compare with a backend that ran only those)."""
        cut = lambda arrays: {k: v[:samples] for k, v in arrays.items()}  # noqa: E731
        return Traces(self.backend, cut(self.inputs), cut(self.spikes), cut(self.voltages), self.scores[:samples],
                      dict(self.meta))
