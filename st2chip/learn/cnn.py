r"""A small convolutional sLIF network for images (the 8x8 digits by default).

:class:`SpikingCNN` is, for the default :class:`CNNConfig`,

.. code-block:: text

    spikes (T, B, 64) -> (1, 8, 8) maps
    -> Conv2d(1, 8, 3, padding=1)  -> sLIF (per channel) -> SumPool2d(2)   (8, 4, 4)
    -> Conv2d(8, 16, 3, padding=1) -> sLIF (per channel) -> SumPool2d(2)   (16, 2, 2)
    -> Flatten (C order, 64) -> Linear(64, 10) -> integrating readout

with scores :math:`y = \frac{1}{T}\sum_t (W_{out}\, s[t] + b_{out})`, as the MLP's.
Every convolution is ``same``-padded (odd kernel, stride 1, ``padding = k // 2``)
with a bias; a pooling stage sums ``pool x pool`` windows (stride ``pool``, no
padding), so its outputs are spike counts ``0 .. pool**2``. Each sLIF layer has one
learnable threshold and leak per channel (shape ``(C, 1, 1)``; the NIR export
broadcasts them to ``(C, H, W)``), or one shared frozen pair for ``neuron="lif"``.
There is no batch norm, so the exported graph is the model. The input is
rate-coded like the MLP's (:func:`~st2chip.learn.data.rate_encode`, ``encoding = "rate"``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from st2chip.learn.data import rate_encode
from st2chip.learn.neurons import SLIF


@dataclass
class CNNConfig:
    """Everything needed to rebuild a :class:`SpikingCNN` from a checkpoint."""

    image: list[int] = field(default_factory=lambda: [1, 8, 8])  # (C, H, W) of one input frame
    channels: list[int] = field(default_factory=lambda: [8, 16])  # output channels of each conv stage
    kernel: int = 3  # odd: 'same' padding k // 2
    pool: int = 2  # SumPool2d kernel and stride after every stage
    classes: int = 10
    steps: int = 16
    neuron: str = "slif"  # "slif" (per-channel learnable threshold and leak) or "lif" (shared, frozen)
    threshold: float = 1.0
    leak: float = 0.9
    reset: str = "zero"
    encoding: str = "rate"

    def to_dict(self) -> dict:
        return asdict(self)

    def stage_shapes(self) -> list[tuple[int, int, int]]:
        """``(C, H, W)`` after each conv stage (before its pooling), then the pooled shape that is flattened."""
        _, h, w = self.image
        shapes = []
        for c in self.channels:
            shapes.append((c, h, w))
            h, w = h // self.pool, w // self.pool
        shapes.append((self.channels[-1], h, w))
        return shapes


class SpikingCNN(nn.Module):
    """Convolutional sLIF (or LIF) network with sum pooling and an integrating readout."""

    def __init__(self, config: CNNConfig) -> None:
        super().__init__()
        c = config
        for name, value in [("classes", c.classes), ("steps", c.steps),
                            *((f"channels[{i}]", ch) for i, ch in enumerate(c.channels))]:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if c.neuron not in ("slif", "lif"):
            raise ValueError(f"neuron must be 'slif' or 'lif', not {c.neuron!r}")
        if c.encoding != "rate":
            raise ValueError(f"the CNN reads rate-coded images: encoding must be 'rate', not {c.encoding!r}")
        if len(c.image) != 3 or min(c.image) < 1:
            raise ValueError(f"image must be (C, H, W) with positive sizes, got {c.image}")
        if not c.channels:
            raise ValueError("channels needs at least one conv stage")
        if c.kernel < 1 or c.kernel % 2 == 0:
            raise ValueError(f"kernel must be odd (same padding), got {c.kernel}")
        if c.pool < 1:
            raise ValueError(f"pool must be positive, got {c.pool}")
        flat = c.stage_shapes()[-1]
        if min(flat[1:]) < 1:
            raise ValueError(f"{len(c.channels)} pooling stages of {c.pool} shrink the {c.image[1]}x{c.image[2]} "
                             f"image to nothing")
        self.config = c
        widths = [c.image[0], *c.channels]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, c.kernel, padding=c.kernel // 2)
                                   for a, b in zip(widths[:-1], widths[1:]))
        self.neurons = nn.ModuleList(self._neuron(ch) for ch in c.channels)
        self.fc = nn.Linear(flat[0] * flat[1] * flat[2], c.classes)

    def _neuron(self, channels: int) -> SLIF:
        c = self.config
        if c.neuron == "lif":
            return SLIF.plain(c.threshold, c.leak, reset=c.reset)  # type: ignore[arg-type]
        return SLIF((channels, 1, 1), c.threshold, c.leak, reset=c.reset)  # type: ignore[arg-type]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Rate-coded spikes ``(T, B, C*H*W)`` of images ``(B, C*H*W)`` (or ``(B, C, H, W)``) in [0, 1]."""
        x = torch.as_tensor(x)
        return rate_encode(x.reshape(x.shape[0], -1), self.config.steps).to(x.device)

    def _stages(self, spikes: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Spikes ``(T, B, C, H, W)`` of each sLIF layer and the flattened last pooling ``(T, B, n)``."""
        t, b = spikes.shape[:2]
        x = spikes.reshape(t * b, *self.config.image)
        p = self.config.pool
        out = []
        for conv, neuron in zip(self.convs, self.neurons):
            current = conv(x)
            s = neuron(current.reshape(t, b, *current.shape[1:]))
            out.append(s)
            x = F.avg_pool2d(s.reshape(t * b, *s.shape[2:]), p, p, divisor_override=1)  # window sums
        return out, x.reshape(t, b, -1)

    def forward(self, spikes: torch.Tensor) -> torch.Tensor:
        """Map input spikes ``(T, B, C*H*W)`` to class scores ``(B, classes)``."""
        return self.fc(self._stages(spikes)[1]).mean(0)

    def hidden_spikes(self, spikes: torch.Tensor) -> list[torch.Tensor]:
        """Spike trains ``(T, B, C*H*W)`` of every sLIF layer, flattened in C order, for verification."""
        return [s.flatten(2) for s in self._stages(spikes)[0]]
