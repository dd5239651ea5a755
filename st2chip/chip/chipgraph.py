r"""ChipGraph: the one chip-level IR that every backend consumes.

A ChipGraph holds integer, chip-ready records: input ports, populations of
fixed-point CUBA-LIF neurons (one Lava ``LIF`` process each) and synapse groups
with 8-bit weight mantissas. Each record checks the chip's ranges at
construction and names the field it refuses. Backends never read NIR.

Timing: every synapse group delays spikes by one step (Lava's ``Dense`` sends at
step ``t`` what it accumulated at ``t-1``), plus its own ``delay``. A population at
depth ``d`` (the longest such chain of delays from an input) sees a sample's first
input at the sample's step ``d + 1``; its state is reset to zero right then.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import scipy.sparse as sp

from st2chip.errors import ChipRangeError

DECAY_MAX = 4095          # du, dv: unsigned 12 bit
VTH_MAX = 2**17 - 1       # vth: unsigned 17 bit
BIAS_MANT_RANGE = (-4096, 4095)  # signed 13 bit
BIAS_EXP_RANGE = (0, 7)   # unsigned 3 bit
WEIGHT_MANT_RANGE = (-128, 127)  # 8-bit signed mantissa (Lava stores it as 2*m, mixed sign)
WEIGHT_EXP_RANGE = (-8, 7)
UV_MAX = 2**23            # u and v are 24-bit signed
ACT_SHIFT = 6             # synaptic input and threshold are left-shifted by 6 bits
DECAY_SHIFT = 12
DELAY_MAX = 61            # extra synaptic delay in steps (Loihi 2: 6 bits; netx clamps whole delays at 62)


def _check_int_range(record: str, name: str, value, lo: int, hi: int) -> None:
    arr = np.asarray(value)
    if arr.size == 0:
        return
    if not np.issubdtype(arr.dtype, np.integer):
        raise ChipRangeError(f"{record}: field '{name}' must hold integers, got dtype {arr.dtype}")
    if arr.min() < lo or arr.max() > hi:
        raise ChipRangeError(
            f"{record}: field '{name}' must lie in [{lo}, {hi}], got [{arr.min()}, {arr.max()}]")


@dataclass
class InputPort:
    """Where spikes (or graded values) enter the chip from the host.

    ``kind="spike"``: binary events, each costing one accumulate per non-zero
    outgoing weight; ``kind="analog"``: graded inputs, each costing a MAC.
    """

    name: str
    size: int
    kind: Literal["spike", "analog"] = "spike"

    def __post_init__(self) -> None:
        if self.size <= 0:
            raise ChipRangeError(f"input '{self.name}': field 'size' must be positive, got {self.size}")


@dataclass
class Population:
    r"""A group of Loihi fixed-point CUBA-LIF neurons sharing decays and threshold.

    Per step, with synaptic input :math:`a` (integer) and 24-bit state:

    .. math::

        u &\leftarrow \operatorname{trunc}\big(u\,(4096 - du - 1) / 2^{12}\big) + (a \ll 6) \\
        v &\leftarrow \operatorname{clip}\big(\operatorname{trunc}(v\,(4096 - dv) / 2^{12}) + u
              + (b_m \ll b_e),\ \pm(2^{23}-1)\big) \\
        s &= [\,v > (v_{th} \ll 6)\,], \qquad v \leftarrow 0 \text{ where } s
            \quad (\texttt{reset="subtract"}:\ v \leftarrow v - (v_{th} \ll 6))

    ``du``, ``dv`` are unsigned 12 bit, ``vth`` unsigned 17 bit, ``bias_mant``
    signed 13 bit and ``bias_exp`` unsigned 3 bit per neuron (trunc rounds
    toward zero; u wraps modulo 2^24). ``layer`` names the NIR node it came from
    and ``index`` the positions of its neurons in that layer. A ``readout``
    population never sends spikes; its voltage is the layer's output. Lava's own
    ``LIF`` resets to zero; a ``reset="subtract"`` population needs st2chip's
    neuron model (:mod:`st2chip.targets.lava_neuron`, Loihi 2's programmable neuron).
    """

    name: str
    layer: str
    index: np.ndarray
    du: int
    dv: int
    vth: int
    bias_mant: np.ndarray
    bias_exp: np.ndarray
    readout: bool = False
    reset: Literal["zero", "subtract"] = "zero"

    def __post_init__(self) -> None:
        rec = f"population '{self.name}'"
        self.index = np.asarray(self.index, dtype=np.int64)
        self.bias_mant = np.broadcast_to(np.asarray(self.bias_mant), self.index.shape).astype(np.int64)
        self.bias_exp = np.broadcast_to(np.asarray(self.bias_exp), self.index.shape).astype(np.int64)
        for name, value, lo, hi in (("du", self.du, 0, DECAY_MAX), ("dv", self.dv, 0, DECAY_MAX),
                                    ("vth", self.vth, 0, VTH_MAX),
                                    ("bias_mant", self.bias_mant, *BIAS_MANT_RANGE),
                                    ("bias_exp", self.bias_exp, *BIAS_EXP_RANGE)):
            _check_int_range(rec, name, value, lo, hi)
        self.du, self.dv, self.vth = int(self.du), int(self.dv), int(self.vth)
        if self.reset not in ("zero", "subtract"):
            raise ChipRangeError(f"{rec}: field 'reset' must be 'zero' or 'subtract', got {self.reset!r}")

    @property
    def size(self) -> int:
        return int(self.index.size)

    @property
    def bias(self) -> np.ndarray:
        """Effective bias ``bias_mant << bias_exp`` in voltage units."""
        return self.bias_mant << self.bias_exp


@dataclass(frozen=True)
class ConvKernel:
    r"""A synapse group's weights as one 2-D convolution, the form lava-nc's ``Conv`` process stores.

    ``kernel`` ``(C_out, C_in / groups, k_h, k_w)`` holds the group's 8-bit
    mantissas, one per kernel tap (torch's cross-correlation on NIR's
    ``(C, H, W)`` maps, flattened in C order): the group's matrix is exactly this
    convolution of the source's spikes, so the chip stores ``C_out C_in k_h k_w / groups``
    weights instead of one per synapse. Padding is symmetric; there is no
    weight exponent (lava's fixed-point ``Conv`` applies none), so only groups
    with ``exp = 0`` get one.
    """

    kernel: np.ndarray
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int

    def __post_init__(self) -> None:
        rec = "convolution kernel"
        _check_int_range(rec, "kernel", self.kernel, *WEIGHT_MANT_RANGE)
        c_out, c_in_group = self.kernel.shape[:2]
        if self.kernel.ndim != 4 or c_out != self.out_shape[0] or c_in_group * self.groups != self.in_shape[0]:
            raise ChipRangeError(f"{rec}: field 'kernel' of shape {list(self.kernel.shape)} with groups "
                                 f"{self.groups} does not map {list(self.in_shape)} to {list(self.out_shape)}")

    @property
    def size(self) -> int:
        """Weights the kernel stores."""
        return int(self.kernel.size)


@dataclass
class SynapseGroup:
    r"""Weights from one source (input port or population) to one population.

    Synaptic input to the target: :math:`a = (\sum_j 2 m_{ij} s_j) \ll e` (an
    arithmetic right shift when :math:`e < 0`), with 8-bit signed mantissas
    :math:`m` and one exponent :math:`e` per group. ``form`` records where the
    weights came from: ``dense``, ``sparse`` (CSR; unstructured pruning) or
    ``lowrank`` (a multiplied-out U·V). ``error`` is the relative quantization
    error ``||W_q - W|| / ||W||`` against the folded float weights. ``delay``
    holds a spike that many steps longer than the one step every group takes
    (Lava's ``DelayDense`` / ``DelaySparse``; 0 to :data:`DELAY_MAX`): to align
    paths of different depth into one population, and ``lag`` of it because the
    graph itself delays the signal (``nir.Delay``). Only ``delay - lag`` counts
    towards the pipeline depth. A ``feedback`` group is a recurrent connection (a layer to
    itself or to an earlier layer): it does not count towards depths, and its
    source reaches the target one step later (plus the depth between them).
    ``conv``, when set, is the same weights as one convolution (see
    :class:`ConvKernel`): how Lava stores them; the matrix stays for every
    other backend.
    """

    name: str
    source: str
    target: str
    mantissa: np.ndarray | sp.csr_matrix
    exp: int
    form: Literal["dense", "sparse", "lowrank"] = "dense"
    error: float = 0.0
    delay: int = 0
    lag: int = 0
    feedback: bool = False
    conv: ConvKernel | None = None

    def __post_init__(self) -> None:
        rec = f"synapse group '{self.name}'"
        values = self.mantissa.data if sp.issparse(self.mantissa) else self.mantissa
        _check_int_range(rec, "mantissa", values, *WEIGHT_MANT_RANGE)
        _check_int_range(rec, "exp", self.exp, *WEIGHT_EXP_RANGE)
        if self.mantissa.ndim != 2:
            raise ChipRangeError(f"{rec}: field 'mantissa' must be 2-D (targets x sources)")
        self.exp = int(self.exp)
        _check_int_range(rec, "delay", self.delay, 0, DELAY_MAX)
        _check_int_range(rec, "lag", self.lag, 0, self.delay)
        self.delay, self.lag = int(self.delay), int(self.lag)
        if self.feedback and self.delay:
            raise ChipRangeError(f"{rec}: a feedback group takes no extra delay (got delay {self.delay})")
        if self.conv is not None:
            if self.exp or self.delay or self.feedback:
                raise ChipRangeError(f"{rec}: field 'conv': a convolution takes no weight exponent, delay or "
                                     f"feedback (exp {self.exp}, delay {self.delay}, feedback {self.feedback})")
            if self.mantissa.shape != (int(np.prod(self.conv.out_shape)), int(np.prod(self.conv.in_shape))):
                raise ChipRangeError(f"{rec}: field 'conv' maps {list(self.conv.in_shape)} to "
                                     f"{list(self.conv.out_shape)}, the matrix is {list(self.mantissa.shape)}")

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.mantissa.shape)  # type: ignore[return-value]

    @property
    def nnz(self) -> int:
        """Non-zero weights: what the chip stores and what each spike costs."""
        if sp.issparse(self.mantissa):
            return int(self.mantissa.count_nonzero())
        return int(np.count_nonzero(self.mantissa))

    def dense(self) -> np.ndarray:
        """Mantissas as a dense int64 array ``(targets, sources)``."""
        m = self.mantissa.toarray() if sp.issparse(self.mantissa) else self.mantissa
        return np.asarray(m, dtype=np.int64)

    def fanout(self) -> np.ndarray:
        """Non-zero outgoing weights per source neuron."""
        return np.asarray((self.dense() != 0).sum(axis=0)).ravel()


@dataclass
class ChipGraph:
    """Inputs, populations and synapse groups, plus how to read the result.

    ``report`` holds what lowering measured (dt, quantization and decay-grouping
    errors per layer). A mapping does not depend on run length: the number of
    time steps comes with the inputs of each run.
    """

    inputs: list[InputPort]
    populations: list[Population]
    synapses: list[SynapseGroup]
    report: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = [i.name for i in self.inputs] + [p.name for p in self.populations]
        if len(set(names)) != len(names):
            raise ChipRangeError("ChipGraph: input and population names must be unique")
        sizes = {i.name: i.size for i in self.inputs} | {p.name: p.size for p in self.populations}
        pops = {p.name for p in self.populations}
        for s in self.synapses:
            if s.source not in sizes:
                raise ChipRangeError(f"synapse group '{s.name}': field 'source' names unknown '{s.source}'")
            if s.target not in pops:
                raise ChipRangeError(f"synapse group '{s.name}': field 'target' names unknown population '{s.target}'")
            if s.shape != (sizes[s.target], sizes[s.source]):
                raise ChipRangeError(
                    f"synapse group '{s.name}': field 'mantissa' has shape {s.shape}, "
                    f"expected {(sizes[s.target], sizes[s.source])}")

    def population(self, name: str) -> Population:
        return next(p for p in self.populations if p.name == name)

    def incoming(self, name: str) -> list[SynapseGroup]:
        return [s for s in self.synapses if s.target == name]

    def depths(self) -> dict[str, int]:
        """Longest chain of synapse groups from any input to each population."""
        depth = {i.name: 0 for i in self.inputs}
        remaining = list(self.populations)
        while remaining:
            progressed = False
            for pop in list(remaining):
                groups = [s for s in self.incoming(pop.name) if not s.feedback]
                if all(s.source in depth for s in groups):
                    depth[pop.name] = max((depth[s.source] + 1 + s.delay - s.lag for s in groups), default=1)
                    remaining.remove(pop)
                    progressed = True
            if not progressed:
                raise ChipRangeError("ChipGraph: a cycle of synapse groups not marked feedback through "
                                     + ", ".join(p.name for p in remaining))
        return {p.name: depth[p.name] for p in self.populations}

    def quiet_steps(self) -> dict[str, int]:
        """Steps at the end of each sample in which a population must not send spikes, when samples run
        back to back (as on Lava): those that a feedback group or a lag would carry into the next sample.

        A population at depth ``d_t`` starts a sample at its window's first step
        and reads a feedback source (depth ``d_s >= d_t``) of ``1 + d_s - d_t``
        steps before, and a lagged source ``lag`` steps before its aligned step.
        """
        depths = self.depths()
        quiet: dict[str, int] = {}
        for s in self.synapses:
            need = 1 + depths[s.source] - depths[s.target] if s.feedback else s.lag
            if need > 0 and s.source in depths:
                quiet[s.source] = max(quiet.get(s.source, 0), need)
        return quiet

    @property
    def depth(self) -> int:
        """Steps from input to the deepest population; a sample needs ``steps + depth`` steps."""
        return max(self.depths().values(), default=0)

    def layers(self) -> list[str]:
        """Layer names in the order their populations appear."""
        return list(dict.fromkeys(p.layer for p in self.populations))

    def layer_populations(self, layer: str) -> list[Population]:
        return [p for p in self.populations if p.layer == layer]

    def layer_size(self, layer: str) -> int:
        return sum(p.size for p in self.layer_populations(layer))

    def readout_layers(self) -> list[str]:
        return list(dict.fromkeys(p.layer for p in self.populations if p.readout))

    def voltage_units(self, layer: str) -> np.ndarray:
        """Per neuron of ``layer``: chip voltage per unit of the float voltage divided by its threshold
        (``64 x`` its population's scale; lowering records it). A readout's float voltage is chip / unit."""
        units = self.report.get("layers", {}).get(layer, {}).get("voltage_unit", {})
        out = np.ones(self.layer_size(layer))
        for p in self.layer_populations(layer):
            out[p.index] = units.get(p.name, 1.0)
        return out
