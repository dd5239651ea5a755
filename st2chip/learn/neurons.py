r"""The sLIF neuron: leaky integrate-and-fire with learnable per-neuron threshold and leak.

st2chip's sLIF ("synergistic LIF", after arXiv 2508.01992, which learns synaptic
weights and intrinsic neuron parameters together) is this discrete-time update,
for neuron :math:`i` at step :math:`t` with input current :math:`I_i[t]`:

.. math::

    v_i[t] &= \beta_i \, v_i[t-1] + I_i[t]                     \\
    s_i[t] &= \Theta\big(v_i[t] - \theta_i\big)                  \\
    v_i[t] &\leftarrow v_i[t]\,(1 - s_i[t])            \quad\text{(reset to zero)} \\
    v_i[t] &\leftarrow v_i[t] - \theta_i\, s_i[t]      \quad\text{(reset by subtraction)}

with :math:`v_i[-1] = 0`, :math:`\Theta(x) = 1` iff :math:`x > 0` (strict, as on
Loihi), leak :math:`\beta_i = \sigma(\rho_i) \in (0, 1)` and threshold
:math:`\theta_i > 0`. :math:`\rho_i` and :math:`\theta_i` are trained with the
weights; the backward pass replaces :math:`\Theta'` by the arctan surrogate
:math:`\alpha / (2\,(1 + (\tfrac{\pi}{2}\alpha x)^2))`.

A plain LIF is the same module with one shared, frozen threshold and leak
(:meth:`SLIF.plain`). Lowering to the chip preserves exactly these equations.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

ResetMode = Literal["zero", "subtract"]


class _ArctanSpike(torch.autograd.Function):
    """Heaviside forward (strict ``x > 0``), arctan surrogate backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: float) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.alpha = alpha
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        alpha = ctx.alpha
        grad = alpha / 2 / (1 + (math.pi / 2 * alpha * x) ** 2)
        return grad_out * grad, None


def spike_fn(x: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
    """Spike where ``x > 0``; differentiable through the arctan surrogate."""
    return _ArctanSpike.apply(x, alpha)


class SLIF(nn.Module):
    """Synergistic LIF neurons over a sequence (time-first input ``(T, *batch, *shape)``).

    Args:
        shape: shape of the per-neuron parameters; it broadcasts against the
            trailing dimensions of the input (``(C,)`` for tokens ``(T, B, N, C)``,
            ``(C, 1, 1)`` for feature maps ``(T, B, C, H, W)``).
        threshold: initial threshold :math:`\\theta`.
        leak: initial leak :math:`\\beta` in (0, 1).
        learn_threshold / learn_leak: train :math:`\\theta` / :math:`\\rho`.
        reset: ``"zero"`` (as on Loihi) or ``"subtract"``.
        alpha: surrogate sharpness.
        detach_reset: stop gradients through the reset (more stable training).
    """

    def __init__(self, shape: int | tuple[int, ...], threshold: float = 1.0, leak: float = 0.9,
                 learn_threshold: bool = True, learn_leak: bool = True,
                 reset: ResetMode = "zero", alpha: float = 2.0, detach_reset: bool = True) -> None:
        super().__init__()
        if reset not in ("zero", "subtract"):
            raise ValueError(f"reset must be 'zero' or 'subtract', not {reset!r}")
        if not 0.0 < leak < 1.0:
            raise ValueError(f"leak must lie in (0, 1), got {leak}")
        if threshold <= 0:
            raise ValueError(f"threshold must be positive, got {threshold}")
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.shape = shape
        self.reset = reset
        self.alpha = alpha
        self.detach_reset = detach_reset
        self.threshold = nn.Parameter(torch.full(shape, float(threshold)), requires_grad=learn_threshold)
        self.leak_logit = nn.Parameter(torch.full(shape, math.log(leak / (1 - leak))), requires_grad=learn_leak)
        self.record_v = False
        self.last_v: torch.Tensor | None = None

    @classmethod
    def plain(cls, threshold: float = 1.0, leak: float = 0.9, reset: ResetMode = "zero",
              alpha: float = 2.0) -> "SLIF":
        """A plain LIF: one shared threshold and leak, both frozen."""
        return cls((), threshold, leak, learn_threshold=False, learn_leak=False, reset=reset, alpha=alpha)

    @property
    def beta(self) -> torch.Tensor:
        """Leak factor :math:`\\beta = \\sigma(\\rho)`."""
        return torch.sigmoid(self.leak_logit)

    @property
    def theta(self) -> torch.Tensor:
        """Threshold, kept positive."""
        return self.threshold.clamp_min(1e-3)

    @property
    def is_plain(self) -> bool:
        """True when threshold and leak are shared and frozen (plain LIF)."""
        return self.shape == () and not self.threshold.requires_grad and not self.leak_logit.requires_grad

    def forward(self, current: torch.Tensor) -> torch.Tensor:
        """Integrate input currents ``(T, ...)`` and return spikes of the same shape."""
        beta, theta = self.beta, self.theta
        v = torch.zeros_like(current[0])
        spikes, volts = [], []
        for i_t in current:
            v = beta * v + i_t
            s = spike_fn(v - theta, self.alpha)
            s_reset = s.detach() if self.detach_reset else s
            v = v * (1 - s_reset) if self.reset == "zero" else v - theta * s_reset
            spikes.append(s)
            if self.record_v:
                volts.append(v.detach())
        self.last_v = torch.stack(volts) if self.record_v else None
        return torch.stack(spikes)

    def extra_repr(self) -> str:
        kind = "LIF" if self.is_plain else "sLIF"
        return f"{kind}, shape={self.shape}, reset={self.reset}"
