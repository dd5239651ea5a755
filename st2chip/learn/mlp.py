r"""Spiking networks that st2chip trains and deploys.

:class:`SpikingMLP` is a stack of ``Linear -> sLIF`` layers and a non-spiking
readout that integrates its input current over the ``T`` steps:

.. math::  y = \frac{1}{T}\sum_{t} \big(W_{out}\, s[t] + b_{out}\big)

Its input is a spike train ``(T, B, features)`` (see :func:`st2chip.data.rate_encode`).
With ``max_spikes = k > 1`` (reset by subtraction) each hidden neuron sends up to ``k``
spikes per step and the next layer weighs the count (:func:`~st2chip.learn.neurons.count_fn`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from st2chip.learn.data import rate_encode, sequence_encode
from st2chip.learn.neurons import SLIF


@dataclass
class MLPConfig:
    """Everything needed to rebuild a :class:`SpikingMLP` from a checkpoint."""

    sizes: list[int] = field(default_factory=lambda: [64, 128, 10])
    steps: int = 16
    neuron: str = "slif"  # "slif" or "lif"
    threshold: float = 1.0
    leak: float = 0.9
    reset: str = "zero"
    encoding: str = "rate"  # "rate": images rate-coded over T steps; "sequence": one value per step (MNIST-1D)
    max_spikes: int = 1  # spikes a hidden neuron may send per step (above 1: reset "subtract"; Xylo sends 31)

    def to_dict(self) -> dict:
        return asdict(self)


class SpikingMLP(nn.Module):
    """Fully connected sLIF (or LIF) network with an integrating readout."""

    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        if config.neuron not in ("slif", "lif"):
            raise ValueError(f"neuron must be 'slif' or 'lif', not {config.neuron!r}")
        if len(config.sizes) < 2:
            raise ValueError("sizes needs at least an input and an output size")
        if config.encoding not in ("rate", "sequence"):
            raise ValueError(f"encoding must be 'rate' or 'sequence', not {config.encoding!r}")
        self.config = config
        self.linears = nn.ModuleList(nn.Linear(a, b) for a, b in zip(config.sizes[:-1], config.sizes[1:]))
        self.neurons = nn.ModuleList(self._neuron(n) for n in config.sizes[1:-1])

    def _neuron(self, n: int) -> SLIF:
        c = self.config
        if c.neuron == "lif":
            return SLIF.plain(c.threshold, c.leak, reset=c.reset, max_spikes=c.max_spikes)  # type: ignore[arg-type]
        return SLIF(n, c.threshold, c.leak, reset=c.reset, max_spikes=c.max_spikes)  # type: ignore[arg-type]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Spikes ``(T, B, sizes[0])``: rate-coded images ``(B, features)`` in [0, 1], or thermometer-coded
        sequences ``(B, T)`` (:func:`~st2chip.learn.data.sequence_encode`) for ``encoding="sequence"``."""
        if self.config.encoding == "sequence":
            return sequence_encode(x, self.config.sizes[0])
        return rate_encode(x, self.config.steps).to(x.device if torch.is_tensor(x) else "cpu")

    def forward(self, spikes: torch.Tensor) -> torch.Tensor:
        """Map input spikes ``(T, B, in)`` to class scores ``(B, out)``."""
        x = spikes
        for linear, neuron in zip(self.linears[:-1], self.neurons):
            x = neuron(linear(x))
        return self.linears[-1](x).mean(0)

    def hidden_spikes(self, spikes: torch.Tensor) -> list[torch.Tensor]:
        """Spike trains ``(T, B, n)`` of every hidden layer, for verification."""
        out, x = [], spikes
        for linear, neuron in zip(self.linears[:-1], self.neurons):
            x = neuron(linear(x))
            out.append(x)
        return out
