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

``dropout`` (training only) drops hidden spikes on their way to the readout and
to the recurrence; evaluation and the exported graph never drop anything.
``noise`` (training only) adds Gaussian noise of standard deviation ``noise`` times
:math:`\theta_i` to every voltage at every step, so that the network learns to
tolerate the small differences of the chip's fixed-point arithmetic (rounded
weights, decays and the floor of a negative weight exponent), which a recurrent
layer otherwise amplifies. It draws from torch's global generator, which
:func:`~st2chip.learn.training.train_classifier` seeds.

``qat`` (quantization-aware training) makes the forward pass, in training and
evaluation, and the export use what :mod:`st2chip.chip.lower` keeps of the hidden
layer with one decay group: the weights, divided row-wise by :math:`\theta_i`,
on one population scale :math:`S = \lfloor 254 / \max |W/\theta| \rfloor` with
8-bit mantissas and the smallest exponent that fits per synapse group (input and
recurrent), and the decays on their 12-bit grids (:math:`\beta = 1 - dv/4096`,
:math:`\alpha = (4095 - du)/4096`). Gradients pass the rounding unchanged
(straight-through estimator).

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
from torch.nn import functional as F

from st2chip.chip.chipgraph import DECAY_MAX, WEIGHT_EXP_RANGE, WEIGHT_MANT_RANGE
from st2chip.chip.lower import MANT_FULL, MAX_SCALE
from st2chip.learn.data import DIGITS_SIDE, rows_encode, sequence_encode
from st2chip.learn.neurons import ResetMode, spike_fn

ENCODINGS = ("rows", "sequence")
DECAY_ONE = DECAY_MAX + 1  # 4096: a decay of 1 on the chip's 12-bit grid
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
    noise: float = 0.0  # training only: std of Gaussian voltage noise per step, in units of the threshold
    qat: bool = False  # forward and export use the chip's 8-bit weight and 12-bit decay grids
    leak_groups: int = 0  # > 0: neuron i shares its decays alpha, beta with group i % leak_groups (slif)
    max_weight: float = 0.0  # > 0: the forward pass bounds |w_in|, |w_rec| to max_weight * threshold (softly, tanh)

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


def _straight_through(x: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``value`` in the forward pass, the gradient of ``x`` in the backward pass."""
    return x + (value - x).detach()


def _quantize_group(folded: torch.Tensor, scale: int) -> torch.Tensor:
    """One synapse group's folded weights on the chip's grid, as lowering quantizes them: 8-bit mantissas
    ``m`` with ``2 m 2^e / scale`` and the smallest exponent ``e`` that fits the group's largest weight."""
    gmax = float(folded.abs().max())
    exp = 0 if gmax == 0 else math.ceil(math.log2(gmax * scale / MANT_FULL) - 1e-12)
    exp = min(max(exp, WEIGHT_EXP_RANGE[0]), WEIGHT_EXP_RANGE[1])
    step = 2.0 * 2.0**exp / scale
    lo, hi = WEIGHT_MANT_RANGE
    return torch.round(folded / step).clamp(lo, hi) * step


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
        if isinstance(c.noise, bool) or not isinstance(c.noise, (int, float)) or not 0.0 <= c.noise < 1.0:
            raise ValueError(f"noise must be a number in [0, 1), got {c.noise!r}")
        if isinstance(c.leak_groups, bool) or not isinstance(c.leak_groups, int) \
                or not 0 <= c.leak_groups <= c.hidden:
            raise ValueError(f"leak_groups must be an integer from 0 (one per neuron) to hidden = {c.hidden}, "
                             f"got {c.leak_groups!r}")
        if isinstance(c.max_weight, bool) or not isinstance(c.max_weight, (int, float)) or not c.max_weight >= 0:
            raise ValueError(f"max_weight must be 0 (unbounded) or positive, got {c.max_weight!r}")
        if not isinstance(c.qat, bool):
            raise ValueError(f"qat must be true or false, got {c.qat!r}")
        if c.encoding == "rows" and (c.inputs != DIGITS_SIDE * c.levels or c.steps != DIGITS_SIDE * c.hold):
            raise ValueError(f"encoding 'rows' needs inputs = {DIGITS_SIDE} * levels and steps = {DIGITS_SIDE} * "
                             f"hold; got inputs {c.inputs}, levels {c.levels}, steps {c.steps}, hold {c.hold}")
        if c.encoding == "sequence" and c.inputs != c.levels:
            raise ValueError(f"encoding 'sequence' needs inputs = levels; got {c.inputs} and {c.levels}")
        self.config = c
        learn = c.neuron == "slif"
        shape = (c.hidden,) if learn else ()
        leak_shape = (c.leak_groups,) if learn and c.leak_groups else shape
        self.fc_in = nn.Linear(c.inputs, c.hidden, bias=False)
        self.rec = nn.Linear(c.hidden, c.hidden, bias=False)
        self.fc_out = nn.Linear(c.hidden, c.classes)
        self.bias = nn.Parameter(torch.zeros(c.hidden), requires_grad=learn)
        self.threshold = nn.Parameter(torch.full(shape, float(c.threshold)), requires_grad=learn)
        self.leak_logit = nn.Parameter(torch.full(leak_shape, _logit(c.leak)), requires_grad=learn)
        self.syn_leak_logit = nn.Parameter(torch.full(leak_shape, _logit(c.syn_leak)), requires_grad=learn)
        self.reset: ResetMode = c.reset  # type: ignore[assignment]
        self.alpha_surrogate = float(c.surrogate)
        self.drop = nn.Dropout(c.dropout)

    def _per_neuron(self, leak: torch.Tensor) -> torch.Tensor:
        """One decay per neuron from one per leak group (neuron ``i`` in group ``i % leak_groups``)."""
        groups = self.config.leak_groups
        if not groups or leak.dim() == 0:
            return leak
        return leak[torch.arange(self.config.hidden, device=leak.device) % groups]

    @property
    def beta(self) -> torch.Tensor:
        """Voltage decay per neuron (or shared), in (0, 1); with ``qat`` on the chip's grid ``1 - dv/4096``
        (``dv`` of at least 1: NIR's ``tau_mem = dt / (1 - beta)`` needs a leak)."""
        beta = self._per_neuron(torch.sigmoid(self.leak_logit))
        if not self.config.qat:
            return beta
        return _straight_through(beta, 1 - torch.round(DECAY_ONE * (1 - beta)).clamp(1, DECAY_MAX) / DECAY_ONE)

    @property
    def alpha(self) -> torch.Tensor:
        """Current decay per neuron (or shared), in (0, 1); with ``qat`` on the chip's grid ``(4095 - du)/4096``."""
        alpha = self._per_neuron(torch.sigmoid(self.syn_leak_logit))
        if not self.config.qat:
            return alpha
        du = torch.round(DECAY_MAX - DECAY_ONE * alpha).clamp(0, DECAY_MAX)
        return _straight_through(alpha, (DECAY_MAX - du) / DECAY_ONE)

    @property
    def theta(self) -> torch.Tensor:
        """Threshold, kept positive."""
        return self.threshold.clamp_min(self.config.min_threshold)

    def weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The input and recurrent weights the forward pass uses (and the export writes): ``fc_in.weight`` and
        ``rec.weight``, bounded by ``max_weight`` times the threshold where set, on the chip's grid with ``qat``."""
        w_in, w_rec = self.fc_in.weight, self.rec.weight
        if self.config.max_weight:
            bound = self.config.max_weight * self.theta.expand(self.config.hidden)[:, None]
            w_in, w_rec = (bound * torch.tanh(w / bound) for w in (w_in, w_rec))
        if not self.config.qat:
            return w_in, w_rec
        fold = self.theta.detach().expand(self.config.hidden)[:, None]
        with torch.no_grad():
            folded = (w_in / fold, w_rec / fold)
            wmax = max(float(f.abs().max()) for f in folded)
            scale = min(max(math.floor(MANT_FULL / wmax), 1), MAX_SCALE) if wmax > 0 else MAX_SCALE
            grid = [_quantize_group(f, scale) * fold for f in folded]
        return _straight_through(w_in, grid[0]), _straight_through(w_rec, grid[1])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Spikes ``(T, B, inputs)`` of images ``(B, 64)`` (``rows``) or sequences ``(B, T)`` (``sequence``)."""
        c = self.config
        x = torch.as_tensor(x)
        if c.encoding == "rows":
            return rows_encode(x, c.levels, c.hold).to(x.device)
        return sequence_encode(x, c.levels).to(x.device)

    def run(self, spikes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden spikes ``(T, B, hidden)`` and readout inputs ``W_out s[t] + b_out`` ``(T, B, classes)``."""
        w_in, w_rec = self.weights()
        drive = F.linear(spikes, w_in)
        alpha, beta, theta = self.alpha, self.beta, self.theta
        noise = self.config.noise if self.training else 0.0
        i = torch.zeros_like(drive[0])
        v = torch.zeros_like(drive[0])
        s = torch.zeros_like(drive[0])
        out = []
        for x_t in drive:
            i = alpha * i + x_t + F.linear(self.drop(s) if self.training else s, w_rec)
            v = beta * v + i + self.bias
            if noise:
                v = v + noise * theta * torch.randn_like(v)
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
