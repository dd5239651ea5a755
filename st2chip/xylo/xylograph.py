r"""XyloGraph: the chip-level IR of a Xylo network, what st2chip's Xylo engine and xylosim both run.

Xylo holds one network shape: input channels -> one hidden population of integrate-and-fire
neurons with recurrent weights -> output neurons read from the hidden population. Every
value is an integer as the chip holds it (xylosim 0.1.3, ``xylosim.v2``):

- weights: signed 8 bit, one left shift per matrix (``shift_in``, ``shift_rec``, ``shift_out``);
  a delivered weight is ``w << shift``.
- state: synaptic current ``i`` and membrane ``v``, signed 16 bit, every addition saturating.
- leaks as bit shifts per neuron (``dash_syn``, ``dash_mem``):
  :math:`x \leftarrow x - \max(|x \gg d|, 1)\,\mathrm{sign}(x)` (decay :math:`\beta \approx 1 - 2^{-d}`).
- per step: input counts (at most 15 per channel) add ``n * (w_in << shift_in)`` to ``i`` of the
  hidden neurons, hidden spike counts of the step before (at most 31) add through ``w_rec`` to
  the hidden neurons and through ``w_out`` to the output neurons; then every hidden neuron
  decays ``i``, :math:`v \leftarrow v - \mathrm{decay}(v) + i + b`, and spikes while
  ``v >= threshold`` (up to 31 times, subtracting ``threshold`` each time); then the output
  neurons do the same with at most one spike.

A layer of the NIR graph is a slice of the hidden population (``layers``) that sees a
sample's step ``t`` at chip step ``t + depth``; the outputs see it at ``t + latency``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

from st2chip.errors import ChipRangeError

WEIGHT_RANGE = (-128, 127)        # signed 8 bit
SHIFT_RANGE = (0, 7)              # left shift of a weight matrix (w << shift stays within int16)
STATE_RANGE = (-2**15, 2**15 - 1)  # i, v, threshold and bias: signed 16 bit
DASH_RANGE = (0, 15)              # leak shifts of a 16-bit state
MAX_INPUT_SPIKES = 15             # counts per input channel and step that reach the chip
MAX_HIDDEN_SPIKES = 31            # spikes a hidden neuron emits per step
MAX_OUTPUT_SPIKES = 1             # spikes an output neuron emits per step
READOUT_THRESHOLD = STATE_RANGE[1]  # an output neuron that never spikes (lowering keeps its v below): read by v


def _ints(record: str, name: str, value, shape: tuple[int, ...], lo: int, hi: int) -> np.ndarray:
    arr = np.asarray(value)
    if arr.shape != shape:
        raise ChipRangeError(f"{record}: field '{name}' must have shape {shape}, got {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ChipRangeError(f"{record}: field '{name}' must hold integers, got dtype {arr.dtype}")
    if arr.size and (arr.min() < lo or arr.max() > hi):
        raise ChipRangeError(f"{record}: field '{name}' must lie in [{lo}, {hi}], got [{arr.min()}, {arr.max()}]")
    return arr.astype(np.int64)


@dataclass
class XyloNeurons:
    """Per-neuron integers of one Xylo population (hidden or output): leaks, threshold, bias."""

    dash_syn: np.ndarray
    dash_mem: np.ndarray
    threshold: np.ndarray
    bias: np.ndarray

    def __post_init__(self) -> None:
        n = (int(np.asarray(self.threshold).size),)
        self.dash_syn = _ints("xylo neurons", "dash_syn", self.dash_syn, n, *DASH_RANGE)
        self.dash_mem = _ints("xylo neurons", "dash_mem", self.dash_mem, n, *DASH_RANGE)
        self.threshold = _ints("xylo neurons", "threshold", self.threshold, n, 1, STATE_RANGE[1])
        self.bias = _ints("xylo neurons", "bias", self.bias, n, *STATE_RANGE)

    @property
    def size(self) -> int:
        return int(self.threshold.size)


@dataclass
class XyloLayer:
    """Where one NIR neuron layer lies on the chip: ``hidden[start:stop]`` (or the outputs), seen at ``depth``."""

    name: str
    start: int
    stop: int
    depth: int
    output: bool = False

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclass
class XyloGraph:
    """One Xylo network as the chip holds it (see the module docstring for the arithmetic)."""

    w_in: np.ndarray      # (inputs, hidden)
    w_rec: np.ndarray     # (hidden, hidden): source row, target column
    w_out: np.ndarray     # (hidden, outputs)
    shift_in: int
    shift_rec: int
    shift_out: int
    hidden: XyloNeurons
    outputs: XyloNeurons
    layers: list[XyloLayer] = field(default_factory=list)
    input_names: list[str] = field(default_factory=list)  # the NIR Input node of each channel run
    report: dict = field(default_factory=dict)           # the lowering's per-layer errors (see st2chip.xylo.lower)

    def __post_init__(self) -> None:
        n_in = int(np.asarray(self.w_in).shape[0]) if np.asarray(self.w_in).ndim == 2 else -1
        n_hid, n_out = self.hidden.size, self.outputs.size
        self.w_in = _ints("xylo graph", "w_in", self.w_in, (n_in, n_hid), *WEIGHT_RANGE)
        self.w_rec = _ints("xylo graph", "w_rec", self.w_rec, (n_hid, n_hid), *WEIGHT_RANGE)
        self.w_out = _ints("xylo graph", "w_out", self.w_out, (n_hid, n_out), *WEIGHT_RANGE)
        for name in ("shift_in", "shift_rec", "shift_out"):
            setattr(self, name, int(_ints("xylo graph", name, getattr(self, name), (), *SHIFT_RANGE)))

    @property
    def n_inputs(self) -> int:
        return int(self.w_in.shape[0])

    @property
    def n_hidden(self) -> int:
        return self.hidden.size

    @property
    def n_outputs(self) -> int:
        return self.outputs.size

    @property
    def latency(self) -> int:
        """Chip steps between a sample's step and the outputs' view of it (the output layer's depth)."""
        return max((layer.depth for layer in self.layers if layer.output), default=0)


@dataclass
class XyloRun:
    """What a Xylo network did on a batch, per chip step, as xylosim records it: arrays ``(batch, steps, n)``.

    ``*_spikes`` are spike counts; ``*_v`` and ``*_i`` the membrane (after the spikes' subtraction) and
    synaptic current at the end of each step (None when not recorded). Chip step ``t + graph.latency`` holds
    the outputs' view of a sample's step ``t``: :meth:`aligned` cuts that window out.
    """

    hidden_spikes: np.ndarray
    output_spikes: np.ndarray
    hidden_v: np.ndarray | None = None
    hidden_i: np.ndarray | None = None
    output_v: np.ndarray | None = None
    output_i: np.ndarray | None = None

    def aligned(self, latency: int, steps: int) -> "XyloRun":
        """The ``steps`` chip steps from ``latency`` on: the sample's own steps as the outputs saw them."""
        cut = lambda a: None if a is None else a[:, latency:latency + steps]  # noqa: E731
        return XyloRun(*(cut(getattr(self, name)) for name in RUN_FIELDS))


RUN_FIELDS = tuple(f.name for f in fields(XyloRun))  # spikes first (what a run without records fills), then v, i
