r"""A recurrent spiking network of current-based sLIF neurons (CubaLIF) for sequences.

:class:`SpikingRNN` has one recurrent hidden layer of ``hidden`` current-based
LIF neurons and a non-spiking readout. For neuron :math:`i` at step :math:`t`,
with input spikes :math:`x[t]` and the layer's own spikes :math:`s[t-1]` of the
step before (:math:`s[-1] = 0`):

.. math::

    i_i[t] &= \alpha_i\, i_i[t-1] + (W_{in} x[t])_i + (W_{rec} s[t-1])_i  \\
    v_i[t] &= \beta_i\, v_i[t-1] + i_i[t] + b_i                           \\
    s_i[t] &= \Theta(v_i[t] - \theta_i), \quad
    v_i[t] \leftarrow 0 \text{ (reset "zero") or } v_i[t] - \theta_i \text{ (reset "subtract") where } s_i[t] = 1

with zero initial state, learnable per-neuron current decay
:math:`\alpha_i = \sigma(\rho^{syn}_i)`, voltage decay :math:`\beta_i = \sigma(\rho_i)`,
threshold :math:`\theta_i > 0` and bias :math:`b_i` (sLIF-style; ``neuron="lif"``
freezes one shared :math:`\alpha, \beta, \theta`), the arctan surrogate of
:mod:`st2chip.learn.neurons` and a detached reset. ``W_in`` and ``W_rec`` have
no bias (an input bias filtered through the current would reach the chip only as
its steady state); :math:`b_i` adds to the voltage, which NIR writes as the
CubaLIF's ``v_leak`` (exact on the chip, a per-neuron bias). The readout is
non-spiking, driven by :math:`c[t] = W_{out} s[t] + b_{out}`:

- ``readout="leaky"`` (default): :math:`y[t] = \gamma\, y[t-1] + (1 - \gamma)\, c[t]`
  with a fixed decay :math:`\gamma` (``readout_leak``, default 0.7), scores
  :math:`y[T-1]`: the last rows (or values) weigh most, which suits a network that
  has read the whole input only at the end (NIR ``LI``);
- ``readout="integrate"``: scores :math:`\frac{1}{T}\sum_t c[t]`, as the MLP's (NIR ``I``).

With ``max_spikes = k > 1`` (reset "subtract") a neuron sends up to ``k`` spikes per step,
:math:`s_i[t]` the count (while :math:`v_i > \theta_i`, one more and :math:`v_i \leftarrow v_i - \theta_i`;
:func:`~st2chip.learn.neurons.count_fn`), which the recurrence and the readout weigh like a spike.

``dropout`` (training only) drops hidden spikes on their way to the readout and
to the recurrence; evaluation and the exported graph never drop anything.

Encodings (``RNNConfig.encoding``, recorded in the exported graph's metadata):

- ``"rows"``: the 8x8 digits read row by row (:func:`~st2chip.learn.data.rows_encode`):
  each row held for ``hold`` steps (``T = 8 * hold``, default 16), each pixel
  thermometer-coded into ``levels`` neurons (``8 * levels`` inputs, default 32).
- ``"sequence"``: MNIST-1D, one value per step (``T = 40``), thermometer-coded into
  ``levels = 16`` neurons (:func:`~st2chip.learn.data.sequence_encode`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from st2chip.learn.data import DIGITS_SIDE, rows_encode, sequence_encode
from st2chip.learn.neurons import ResetMode, check_max_spikes, count_fn, spike_fn, subtract_counts

ENCODINGS = ("rows", "sequence")
READOUTS = ("leaky", "integrate")


@dataclass
class RNNConfig:
    """Everything needed to rebuild a :class:`SpikingRNN` from a checkpoint (defaults: digits, ``rows``)."""

    inputs: int = 32  # input neurons: 8 * levels for "rows", levels for "sequence"
    hidden: int = 128
    classes: int = 10
    steps: int = 16  # 8 * hold for "rows"; the sequence length for "sequence"
    encoding: str = "rows"  # "rows" (digits row by row) or "sequence" (MNIST-1D)
    levels: int = 4  # thermometer levels per value
    hold: int = 2  # "rows": steps each image row is shown
    neuron: str = "slif"  # "slif" (per-neuron learnable threshold, leaks, bias) or "lif" (shared, frozen)
    threshold: float = 1.0
    leak: float = 0.9  # initial voltage decay beta
    syn_leak: float = 0.5  # initial current decay alpha
    reset: str = "zero"  # "zero" or "subtract"
    surrogate: float = 2.0  # sharpness of the arctan surrogate gradient (smaller: wider)
    min_threshold: float = 1e-3  # thresholds are clamped here: a tiny threshold leaves the chip few voltage levels
    dropout: float = 0.0  # training only: drops hidden spikes on their way to the readout and the recurrence
    readout: str = "leaky"  # "leaky" (NIR LI) or "integrate" (NIR I)
    readout_leak: float = 0.7  # "leaky": the readout voltage's decay per step
    max_spikes: int = 1  # spikes a neuron may send per step (above 1: reset "subtract"; Xylo sends 31)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def digits(cls, **overrides) -> "RNNConfig":
        """Digits read row by row (``rows``): 8 * levels inputs, 8 * hold steps."""
        c = cls(**overrides)
        c.inputs, c.steps = DIGITS_SIDE * c.levels, DIGITS_SIDE * c.hold
        return c

    @classmethod
    def mnist1d(cls, **overrides) -> "RNNConfig":
        """MNIST-1D (``sequence``): 16 thermometer levels, 40 steps, an integrating readout, a wide
        surrogate and thresholds kept at 0.25 or above (so that folding them leaves enough voltage levels)."""
        from st2chip.learn.data import MNIST1D_LEVELS, MNIST1D_STEPS
        values = {"levels": MNIST1D_LEVELS, "leak": 0.95, "syn_leak": 0.8, "surrogate": 1.0,
                  "readout": "integrate", "min_threshold": 0.25, **overrides, "encoding": "sequence"}
        c = cls(**values)
        c.inputs, c.steps, c.hold = c.levels, MNIST1D_STEPS, 1
        return c


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


class SpikingRNN(nn.Module):
    """One recurrent layer of current-based sLIF neurons and an integrating readout (see the module docstring)."""

    def __init__(self, config: RNNConfig) -> None:
        super().__init__()
        c = config
        for name in ("inputs", "hidden", "classes", "steps", "levels", "hold"):
            value = getattr(c, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if c.neuron not in ("slif", "lif"):
            raise ValueError(f"neuron must be 'slif' or 'lif', not {c.neuron!r}")
        if c.encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {', '.join(ENCODINGS)}, not {c.encoding!r}")
        if c.reset not in ("zero", "subtract"):
            raise ValueError(f"reset must be 'zero' or 'subtract', not {c.reset!r}")
        for name in ("leak", "syn_leak"):
            if not 0.0 < getattr(c, name) < 1.0:
                raise ValueError(f"{name} must lie in (0, 1), got {getattr(c, name)}")
        if not 0 < c.min_threshold <= c.threshold:
            raise ValueError(f"need 0 < min_threshold <= threshold, got {c.min_threshold} and {c.threshold}")
        if c.readout not in READOUTS:
            raise ValueError(f"readout must be one of {', '.join(READOUTS)}, not {c.readout!r}")
        if c.readout == "leaky" and not 0.0 <= c.readout_leak < 1.0:
            raise ValueError(f"readout_leak must lie in [0, 1), got {c.readout_leak}")
        if not 0.0 <= c.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {c.dropout}")
        check_max_spikes(c.max_spikes, c.reset)
        if c.encoding == "rows" and (c.inputs != DIGITS_SIDE * c.levels or c.steps != DIGITS_SIDE * c.hold):
            raise ValueError(f"encoding 'rows' needs inputs = {DIGITS_SIDE} * levels and steps = {DIGITS_SIDE} * "
                             f"hold; got inputs {c.inputs}, levels {c.levels}, steps {c.steps}, hold {c.hold}")
        if c.encoding == "sequence" and c.inputs != c.levels:
            raise ValueError(f"encoding 'sequence' needs inputs = levels; got {c.inputs} and {c.levels}")
        self.config = c
        learn = c.neuron == "slif"
        shape = (c.hidden,) if learn else ()
        self.fc_in = nn.Linear(c.inputs, c.hidden, bias=False)
        self.rec = nn.Linear(c.hidden, c.hidden, bias=False)
        self.fc_out = nn.Linear(c.hidden, c.classes)
        self.bias = nn.Parameter(torch.zeros(c.hidden), requires_grad=learn)
        self.threshold = nn.Parameter(torch.full(shape, float(c.threshold)), requires_grad=learn)
        self.leak_logit = nn.Parameter(torch.full(shape, _logit(c.leak)), requires_grad=learn)
        self.syn_leak_logit = nn.Parameter(torch.full(shape, _logit(c.syn_leak)), requires_grad=learn)
        self.reset: ResetMode = c.reset  # type: ignore[assignment]
        self.alpha_surrogate = float(c.surrogate)
        self.drop = nn.Dropout(c.dropout)

    @property
    def beta(self) -> torch.Tensor:
        """Voltage decay per neuron (or shared), in (0, 1)."""
        return torch.sigmoid(self.leak_logit)

    @property
    def alpha(self) -> torch.Tensor:
        """Current decay per neuron (or shared), in (0, 1)."""
        return torch.sigmoid(self.syn_leak_logit)

    @property
    def theta(self) -> torch.Tensor:
        """Threshold, kept positive."""
        return self.threshold.clamp_min(self.config.min_threshold)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Spikes ``(T, B, inputs)`` of images ``(B, 64)`` (``rows``) or sequences ``(B, T)`` (``sequence``)."""
        c = self.config
        x = torch.as_tensor(x)
        if c.encoding == "rows":
            return rows_encode(x, c.levels, c.hold).to(x.device)
        return sequence_encode(x, c.levels).to(x.device)

    def run(self, spikes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden spikes ``(T, B, hidden)`` and readout inputs ``W_out s[t] + b_out`` ``(T, B, classes)``."""
        c = self.config
        drive = self.fc_in(spikes)
        alpha, beta, theta = self.alpha, self.beta, self.theta
        i = torch.zeros_like(drive[0])
        v = torch.zeros_like(drive[0])
        s = torch.zeros_like(drive[0])
        out = []
        for x_t in drive:
            i = alpha * i + x_t + self.rec(self.drop(s) if self.training else s)
            v = beta * v + i + self.bias
            if c.max_spikes > 1:
                s, after = count_fn(v, theta, c.max_spikes, self.alpha_surrogate)
                v = subtract_counts(v, after, theta, s)
            else:
                s = spike_fn(v - theta, self.alpha_surrogate)
                s_reset = s.detach()
                v = v * (1 - s_reset) if self.reset == "zero" else v - theta * s_reset
            out.append(s)
        hidden = torch.stack(out)
        return hidden, self.fc_out(self.drop(hidden) if self.training else hidden)

    def forward(self, spikes: torch.Tensor) -> torch.Tensor:
        """Class scores ``(B, classes)``: the leaky readout's voltage after the last step, or the mean over
        the steps of the readout's input (``integrate``)."""
        current = self.run(spikes)[1]
        if self.config.readout == "integrate":
            return current.mean(0)
        decay = self.config.readout_leak
        y = torch.zeros_like(current[0])
        for c_t in current:
            y = decay * y + (1 - decay) * c_t
        return y

    def hidden_spikes(self, spikes: torch.Tensor) -> list[torch.Tensor]:
        """Spike trains ``(T, B, hidden)`` of the hidden layer (a list of one), for verification."""
        return [self.run(spikes)[0]]

    def extra_repr(self) -> str:
        c = self.config
        return f"{c.neuron}, encoding={c.encoding}, hidden={c.hidden}, reset={c.reset}"
