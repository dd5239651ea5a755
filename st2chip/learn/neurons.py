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

With reset by subtraction a neuron may send up to :math:`k` spikes per step
(``max_spikes``, as Xylo's hidden neurons do with :math:`k = 31`): while
:math:`v > \theta` and fewer than :math:`k` were sent, one more and
:math:`v \leftarrow v - \theta` (:func:`spike_count`). The count flows on like a
spike; its gradient is the staircase of :math:`k` arctan surrogates at
:math:`v = j\theta`, :math:`j = 1..k` (:func:`count_fn`). NIR writes :math:`k` as
``metadata["max_spikes"]``; st2chip's float interpreters read it with this same
:func:`spike_count`.
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


MAX_SPIKES = 255  # spikes a neuron may send per step (NIR's metadata max_spikes allows 1..255)


def spike_count(v: torch.Tensor, theta: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Spikes per neuron (a count ``0..k`` in ``v``'s dtype) and ``v`` after them: while ``v > theta`` and fewer
    than ``k`` were sent, one more, ``v <- v - theta``. The one definition of a multi-spike step: the float
    interpreter, the trainable one and the training neurons all call it, so they agree bit for bit."""
    count = torch.zeros_like(v)
    for _ in range(k):
        fire = v > theta
        if not bool(fire.any()):
            break
        count = count + fire.to(v.dtype)
        v = torch.where(fire, v - theta, v)
    return count, v


class _ArctanCount(torch.autograd.Function):
    """Forward: :func:`spike_count` (the count, and ``v`` after it, not differentiated); backward: the arctan
    surrogate of :func:`spike_fn` at ``(v - j theta) / scale`` summed over ``j = 1..k``, per unit of ``scale``
    (to ``v``, and ``-j`` times it to ``theta``)."""

    @staticmethod
    def forward(ctx, v: torch.Tensor, theta: torch.Tensor, scale: torch.Tensor, k: int,  # type: ignore[override]
                alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.save_for_backward(v, theta, scale)
        ctx.k, ctx.alpha = k, alpha
        count, after = spike_count(v, theta, k)
        ctx.mark_non_differentiable(after)
        return count, after

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor, _grad_after: torch.Tensor | None):  # type: ignore[override]
        v, theta, scale = ctx.saved_tensors
        slope, weighted = torch.zeros_like(v), torch.zeros_like(v)
        for j in range(1, ctx.k + 1):
            x = (v - j * theta) / scale
            bump = ctx.alpha / 2 / (1 + (math.pi / 2 * ctx.alpha * x) ** 2)
            slope, weighted = slope + bump, weighted + j * bump
        grad_v = grad_out * slope / scale
        grad_theta = (-grad_out * weighted / scale).sum_to_size(theta.shape) if ctx.needs_input_grad[1] else None
        return grad_v, grad_theta, None, None, None


def count_fn(v: torch.Tensor, theta: torch.Tensor, k: int, alpha: float = 2.0,
             scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``k`` spikes per step where ``v`` crosses ``theta``, ``2 theta``, ...: the count and ``v`` after the
    subtractions (:func:`spike_count`), differentiable through a staircase of ``k`` arctan surrogates of
    ``(v - j theta) / scale`` (``scale`` 1 when None; ``k = 1`` is :func:`spike_fn`'s gradient). ``v`` after
    is not differentiated: a caller adds the reset's gradient itself."""
    scale = torch.ones((), dtype=v.dtype, device=v.device) if scale is None else scale
    return _ArctanCount.apply(v, theta, scale, k, alpha)


def check_max_spikes(k: object, reset: str) -> int:
    """``k`` as spikes per step (a whole number in 1..:data:`MAX_SPIKES`; above 1 only with reset by
    subtraction); a ValueError otherwise."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_SPIKES:
        raise ValueError(f"max_spikes must be a whole number in 1..{MAX_SPIKES}, got {k!r}")
    if k > 1 and reset != "subtract":
        raise ValueError(f"max_spikes = {k} needs reset 'subtract' (a reset to zero leaves nothing for a second "
                         f"spike)")
    return k


def subtract_counts(v: torch.Tensor, after: torch.Tensor, theta: torch.Tensor, count: torch.Tensor,
                    detach_reset: bool = True) -> torch.Tensor:
    """``v`` after sending ``count`` spikes by subtraction: ``after``'s values (:func:`spike_count`'s, exactly),
    with the gradient of ``v - theta * count`` (``count`` detached when ``detach_reset``)."""
    reset = theta * (count.detach() if detach_reset else count)
    return after + (v - v.detach()) - (reset - reset.detach())


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
        max_spikes: spikes a neuron may send per step (1..255; above 1 needs ``reset="subtract"``): the
            output is then a count (:func:`count_fn`).
    """

    def __init__(self, shape: int | tuple[int, ...], threshold: float = 1.0, leak: float = 0.9,
                 learn_threshold: bool = True, learn_leak: bool = True,
                 reset: ResetMode = "zero", alpha: float = 2.0, detach_reset: bool = True,
                 max_spikes: int = 1) -> None:
        super().__init__()
        if reset not in ("zero", "subtract"):
            raise ValueError(f"reset must be 'zero' or 'subtract', not {reset!r}")
        if not 0.0 < leak < 1.0:
            raise ValueError(f"leak must lie in (0, 1), got {leak}")
        if threshold <= 0:
            raise ValueError(f"threshold must be positive, got {threshold}")
        self.max_spikes = check_max_spikes(max_spikes, reset)
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
              alpha: float = 2.0, max_spikes: int = 1) -> "SLIF":
        """A plain LIF: one shared threshold and leak, both frozen."""
        return cls((), threshold, leak, learn_threshold=False, learn_leak=False, reset=reset, alpha=alpha,
                   max_spikes=max_spikes)

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
            if self.max_spikes > 1:
                s, after = count_fn(v, theta, self.max_spikes, self.alpha)
                v = subtract_counts(v, after, theta, s, self.detach_reset)
            else:
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
        most = f", max_spikes={self.max_spikes}" if self.max_spikes > 1 else ""
        return f"{kind}, shape={self.shape}, reset={self.reset}{most}"
