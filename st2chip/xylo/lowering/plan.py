"""The typed plan that Xylo's lowering passes hand on, one record per thing a pass works out."""

from __future__ import annotations

from dataclasses import dataclass, field

import nir
import numpy as np

from st2chip.xylo.spec import XyloSpec
from st2chip.xylo.xylograph import XyloLayer

MATRICES = ("in", "rec", "out")  # Xylo's three weight matrices, each with one shift


@dataclass(frozen=True)
class InputChannels:
    """One Input node: its channels ``offset .. offset + size`` of the chip's inputs, and its levels (None: spikes)."""

    name: str
    offset: int
    size: int
    levels: int | None = None


@dataclass(frozen=True)
class Chain:
    """The linear nodes (Affine, Scale, Flatten) from ``source`` (an Input or a neuron node) into a layer, multiplied
    out: the layer's input is ``weight @ x + bias``; ``recurrent``: it crosses a back edge (the step before's value)."""

    source: str
    weight: np.ndarray  # (layer size, source size)
    bias: np.ndarray    # (layer size,)
    recurrent: bool


@dataclass(frozen=True)
class Dynamics:
    r"""A neuron node's float step at ``dt`` as Xylo reads it: a current :math:`u \leftarrow \beta_u u + g\,x`
    (``beta_u`` None: no current, :math:`g\,x` reaches ``v`` at once), then
    :math:`v \leftarrow \beta v + u + \mathrm{offset}`; ``threshold`` None: the node does not spike."""

    beta: np.ndarray
    gain: np.ndarray
    offset: np.ndarray
    beta_u: np.ndarray | None
    threshold: np.ndarray | None


@dataclass
class Layer:
    """One neuron node of the graph: what feeds it, how deep in the stack it sits, whether it is an output."""

    name: str
    node: nir.NIRNode
    size: int
    dynamics: Dynamics
    chains: list[Chain]
    output: bool            # feeds an Output node: Xylo's output neurons
    depth: int = 0          # 0: reads the inputs; k: reads layers at depth k - 1
    mixed_depths: list[str] = field(default_factory=list)  # forward sources not at depth - 1 ("input" for Inputs)
    late_recurrence: list[str] = field(default_factory=list)  # recurrent sources at another depth
    feeds: list[str] = field(default_factory=list)  # other neuron layers it feeds (forward or back)

    @property
    def spiking(self) -> bool:
        return self.dynamics.threshold is not None

    def bias_drive(self) -> np.ndarray:
        """The chains' bias as it drives ``v`` per step: :math:`g\\,b`, or its steady state
        :math:`g\\,b / (1 - \\beta_u)` through a CubaLIF's current."""
        d = self.dynamics
        drive = d.gain * sum((chain.bias for chain in self.chains), np.zeros(self.size))
        return drive if d.beta_u is None else drive / np.maximum(1 - d.beta_u, 1e-12)


@dataclass(frozen=True)
class Leak:
    """A layer's leaks as Xylo's shifts (per neuron) and how far the chip's decays lie from the float ones."""

    dash_syn: np.ndarray
    dash_mem: np.ndarray
    leak_error: float            # max |beta - (1 - 2^-dash_mem)|
    syn_leak_error: float | None  # the same for the current (None: the float layer has none, a filter is added)


@dataclass(frozen=True)
class Quantized:
    """A layer's voltage scale (integer LSBs per float unit of ``v``), its incoming weights on the chip (per chain,
    ``w8`` in [-128, 127] delivered as ``w8 << shift``), the shift of each matrix it uses and the relative error."""

    scale: float
    chains: list[tuple[str, np.ndarray]]  # (source, w8 (source size, layer size)) per chain on the chip
    shifts: dict[str, int]         # matrix ("in", "rec", "out") -> shift
    weight_error: float            # RMS of (chip - float) weights over RMS of the float weights
    threshold_error: float         # max relative move of a threshold (0 for a readout)


@dataclass
class XyloPlan:
    """What the passes have worked out so far (each pass fills its fields, see :data:`st2chip.xylo.lower.PASSES`)."""

    graph: nir.NIRGraph
    spec: XyloSpec
    dt: float
    steps: int | None                                   # the graph's run length (metadata "steps"), if recorded
    inputs: list[InputChannels] = field(default_factory=list)
    layers: list[Layer] = field(default_factory=list)
    placed: list[XyloLayer] = field(default_factory=list)
    leaks: dict[str, Leak] = field(default_factory=dict)
    quantized: dict[str, Quantized] = field(default_factory=dict)
    shifts: dict[str, int] = field(default_factory=lambda: {m: 0 for m in MATRICES})
    thresholds: dict[str, np.ndarray] = field(default_factory=dict)
    biases: dict[str, np.ndarray] = field(default_factory=dict)
    bias_clipped: dict[str, int] = field(default_factory=dict)  # per layer: biases cut to the 16-bit range

    @property
    def n_inputs(self) -> int:
        return sum(c.size for c in self.inputs)

    def layer(self, name: str) -> Layer:
        return next(layer for layer in self.layers if layer.name == name)

    def hidden(self) -> list[Layer]:
        return [layer for layer in self.layers if not layer.output]

    def outputs(self) -> list[Layer]:
        return [layer for layer in self.layers if layer.output]
