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
from typing import TYPE_CHECKING, Literal

import numpy as np
import scipy.sparse as sp

from st2chip.errors import ChipRangeError

if TYPE_CHECKING:
    from st2chip.chip.lowering.report import LayerReport, LoweringReport

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
MESSAGE_BITS = 24         # a graded spike's payload: signed 24 bit (lava's num_message_bits)
GRADED_ACC_MAX = 2**31 - 1  # a graded group's sum before its exponent: Lava accumulates in int32
GRADED_INPUT_MAX = 2**24 - 1  # a graded group's input to a LIF: (a << 6) + u must stay within int32


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
    outgoing weight; ``kind="analog"``: graded inputs, integers ``0 .. levels``
    (e.g. an image's 8-bit levels), each non-zero value costing a MAC per weight.
    """

    name: str
    size: int
    kind: Literal["spike", "analog"] = "spike"
    levels: int = 1

    def __post_init__(self) -> None:
        if self.size <= 0:
            raise ChipRangeError(f"input '{self.name}': field 'size' must be positive, got {self.size}")
        if self.kind not in ("spike", "analog"):
            raise ChipRangeError(f"input '{self.name}': field 'kind' must be 'spike' or 'analog', got {self.kind!r}")
        top = 1 if self.kind == "spike" else 2 ** (MESSAGE_BITS - 1) - 1
        _check_int_range(f"input '{self.name}'", "levels", self.levels, 1, top)
        self.levels = int(self.levels)


@dataclass
class HostProduct:
    r"""A host partition: a spiking Transformer's attention product, computed off the neurocores.

    Each step it reads the spikes its three input layers (``Q``, ``K``, ``V``, of
    ``tokens * dim`` neurons each, token-major) sent that step and sends, per head
    :math:`h` (features :math:`h d_h .. (h+1) d_h - 1`, :math:`d_h = dim / heads`),
    the integer counts

    .. math::  C_h = (Q_h K_h^\top)\, V_h \in \{0, \dots, tokens \cdot d_h\}^{tokens \times d_h}

    as graded values to its outgoing groups, which add them one step later like
    any synapse input (a MAC per non-zero weight; the attention scale is in their
    weights). It holds no neurons or synapses: it runs on the chip's embedded
    CPUs or the host (:mod:`st2chip.graph.product` is its float meaning).
    """

    name: str
    inputs: tuple[str, str, str]
    heads: int
    tokens: int
    dim: int

    def __post_init__(self) -> None:
        rec = f"host product '{self.name}'"
        for field_name in ("heads", "tokens", "dim"):
            _check_int_range(rec, field_name, getattr(self, field_name), 1, 2**31 - 1)
        if self.dim % self.heads:
            raise ChipRangeError(f"{rec}: field 'dim' ({self.dim}) must be a multiple of 'heads' ({self.heads})")
        if len(self.inputs) != 3:
            raise ChipRangeError(f"{rec}: field 'inputs' must name three layers (Q, K, V), got {list(self.inputs)}")
        self.inputs = tuple(self.inputs)

    @property
    def size(self) -> int:
        return self.tokens * self.dim

    @property
    def max_value(self) -> int:
        """The largest count it can send: every spike of a head on."""
        return self.tokens * (self.dim // self.heads)


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
    neuron model (:mod:`st2chip.targets.lava_neuron`, Loihi 2's programmable neuron), and so
    does ``refractory=1``: a neuron that spiked at the step before keeps ``v`` (no voltage
    update, no spike) while ``u`` integrates (graph metadata ``refractory``, :mod:`st2chip.graph.reading`).
    ``voltage_unit`` is the chip voltage per unit of the float voltage divided by its
    threshold (``64 x`` the population's fixed-point scale): how its voltages compare
    with the float graph's (a readout's float voltage is chip / unit). Lowering sets
    it; a population built by hand may have none.
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
    voltage_unit: float | None = None
    refractory: int = 0

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
        if isinstance(self.refractory, bool) or self.refractory not in (0, 1):
            raise ChipRangeError(f"{rec}: field 'refractory' must be 0 or 1 (steps), got {self.refractory!r}")
        self.refractory = int(self.refractory)
        if self.voltage_unit is not None:
            if not np.isfinite(self.voltage_unit) or self.voltage_unit <= 0:
                raise ChipRangeError(f"{rec}: field 'voltage_unit' must be positive, got {self.voltage_unit}")
            self.voltage_unit = float(self.voltage_unit)

    @property
    def size(self) -> int:
        return int(self.index.size)

    @property
    def bias(self) -> np.ndarray:
        """Effective bias ``bias_mant << bias_exp`` in voltage units."""
        return self.bias_mant << self.bias_exp

    @property
    def graded(self) -> bool:
        """Whether what it sends is a multi-bit value (a :class:`Relay`) rather than a 0/1 spike."""
        return False

    @property
    def always_on(self) -> bool:
        """Whether it spikes at every step whatever its input (an :class:`AlwaysOn`)."""
        return False


@dataclass
class Relay(Population):
    r"""A graded-spike relay: the ``r`` middle values of a factored low-rank layer ``W = U V``.

    Per step it sends its integer synaptic input, unshifted, as a graded message:

    .. math::

        x_i = \Big(\sum_j 2 m_{ij} s_j\Big) \ll e_V \quad(\text{arithmetic right shift, i.e. floor, when } e_V < 0),
        \qquad \text{sent when } x_i \neq 0,

    with the 8-bit mantissas :math:`m` and exponent :math:`e_V` of its incoming
    group V (0/1 spikes; a relay of a fan-in tree, :mod:`st2chip.chip.lowering.fanin`,
    sums partial sums: graded values of the relays before it, the same formula with
    :math:`x_j` for :math:`s_j`). It keeps no state between steps and has no
    threshold: lava-nc's ``GradedVec`` with ``vth = 0`` (``v = a_in``,
    ``s_out = v * (|v| > 0)``, ``v`` cleared after each step; its ``exp`` is not
    applied by the fixed-point model). The message is signed :data:`MESSAGE_BITS`
    bit and is never saturated: :class:`ChipGraph` refuses a relay whose worst
    case :math:`\max|x_i| = \lceil \sum_j |2 m_{ij}|\, 2^{e_V} \rceil` needs more.
    Its outgoing groups (U) read ``x`` as a graded input: :math:`a_k = (\sum_i 2 u_{ki} x_i) \ll e_U`,
    a MAC per non-zero weight. ``scale`` is the relay's fixed-point unit: ``x ≈ scale · (V s)``
    in the float graph's terms (``V`` the float factor, after folding).
    A relay is recorded like a population: its "spikes" are ``x != 0``, its voltage is ``x``.
    The LIF fields are fixed (``du = 4095``, ``dv = 0``, ``vth = 0``, no bias) and unused.
    """

    du: int = DECAY_MAX
    dv: int = 0
    vth: int = 0
    bias_mant: np.ndarray = 0  # type: ignore[assignment]
    bias_exp: np.ndarray = 0  # type: ignore[assignment]
    scale: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        fixed = (self.du, self.dv, self.vth, int(np.abs(self.bias).max(initial=0)), self.readout, self.reset,
                 self.refractory)
        if fixed != (DECAY_MAX, 0, 0, 0, False, "zero", 0):
            raise ChipRangeError(f"relay '{self.name}': du, dv, vth, bias, readout, reset and refractory are fixed "
                                 f"(4095, 0, 0, 0, False, 'zero', 0), got {fixed}")
        if not np.isfinite(self.scale) or self.scale <= 0:
            raise ChipRangeError(f"relay '{self.name}': field 'scale' must be positive, got {self.scale}")

    @property
    def graded(self) -> bool:
        return True


@dataclass
class AlwaysOn(Population):
    r"""Neurons that spike at every step from the first: the source of constant drives into a current.

    A NIR ``Affine`` bias into a ``CubaLIF`` (or ``CubaLI``) enters its synaptic
    current, :math:`i \leftarrow \beta_u i + g\,(W x + b)`; on the chip it is one more
    synapse group from this population into the layer's ``u``, whose ``(n, 1)``
    weights are the biases (one spike, every step). Its LIF fields are fixed:
    ``v = bias = 1 > vth = 0`` every step (``du = 4095``, ``dv = 0``, reset to zero),
    which Lava's own LIF runs. It takes no input, so its depth is 0: it spikes at
    global step 1, and a group out of it adds at every step from step 2 on, the
    first step of the shallowest layer.
    """

    du: int = DECAY_MAX
    dv: int = 0
    vth: int = 0
    bias_mant: np.ndarray = 1  # type: ignore[assignment]
    bias_exp: np.ndarray = 0  # type: ignore[assignment]

    def __post_init__(self) -> None:
        super().__post_init__()
        fixed = (self.du, self.dv, self.vth, self.bias.tolist(), self.readout, self.reset, self.refractory)
        if fixed != (DECAY_MAX, 0, 0, [1] * self.size, False, "zero", 0):
            raise ChipRangeError(f"always-on population '{self.name}': du, dv, vth, bias, readout, reset and "
                                 f"refractory are fixed (4095, 0, 0, 1, False, 'zero', 0), got {fixed}")

    @property
    def always_on(self) -> bool:
        return True


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
    ``lowrank`` (a multiplied-out U·V) or ``factored`` (one factor of a U·V kept
through a :class:`Relay`: V into the relay, U out of it) or ``fanin`` (the sums of a fan-in tree's relays:
    mantissas 1, :mod:`st2chip.chip.lowering.fanin`). ``error`` is the relative quantization
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
    form: Literal["dense", "sparse", "lowrank", "factored", "fanin"] = "dense"
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

    def input_bound(self, source_max: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Worst-case ``|Σ_j 2 m_ij x_j|`` per target before the exponent, and ``|a|`` after it, for source
        values bounded by ``source_max`` (per source; None: 0/1 spikes). Integers, exact."""
        w = abs(sp.csr_matrix(self.mantissa, dtype=np.int64)) * 2
        x = np.ones(self.shape[1], np.int64) if source_max is None else np.asarray(source_max, np.int64)
        acc = np.asarray(w @ x, dtype=np.int64).ravel()
        shifted = acc << self.exp if self.exp >= 0 else -((-acc) >> -self.exp)  # ceil: floor of the negative
        return acc, shifted


def port_bounds(hosts: list[HostProduct], inputs: list[InputPort]) -> dict[str, np.ndarray]:
    """The largest value each host product and analog input port sends, per source neuron (the graded sources
    that exist before any relay; 0/1 spike ports are not listed)."""
    return ({h.name: np.full(h.size, h.max_value, np.int64) for h in hosts}
            | {i.name: np.full(i.size, i.levels, np.int64) for i in inputs if i.kind == "analog"})


@dataclass
class ChipGraph:
    """Inputs, populations and synapse groups, plus how to read the result.

    ``lowering`` holds what lowering measured (dt, quantization and decay-grouping
    errors per layer; None for a ChipGraph built by hand), ``report`` the same as
    JSON data. A mapping does not depend on run length: the number of time steps
    comes with the inputs of each run.
    """

    inputs: list[InputPort]
    populations: list[Population]
    synapses: list[SynapseGroup]
    lowering: LoweringReport | None = None
    hosts: list[HostProduct] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._check_wiring()
        self._check_hosts()
        self._check_relays()

    def _check_wiring(self) -> None:
        names = [i.name for i in self.inputs] + [p.name for p in self.populations] + [h.name for h in self.hosts]
        if len(set(names)) != len(names):
            raise ChipRangeError("ChipGraph: input, population and host names must be unique")
        sizes = ({i.name: i.size for i in self.inputs} | {p.name: p.size for p in self.populations}
                 | {h.name: h.size for h in self.hosts})
        pops = {p.name for p in self.populations}
        always_on = {p.name for p in self.populations if p.always_on}
        for s in self.synapses:
            if s.source not in sizes:
                raise ChipRangeError(f"synapse group '{s.name}': field 'source' names unknown '{s.source}'")
            if s.target not in pops:
                raise ChipRangeError(f"synapse group '{s.name}': field 'target' names unknown population '{s.target}'")
            if s.target in always_on:
                raise ChipRangeError(f"synapse group '{s.name}': always-on population '{s.target}' takes no input")
            if s.shape != (sizes[s.target], sizes[s.source]):
                raise ChipRangeError(
                    f"synapse group '{s.name}': field 'mantissa' has shape {s.shape}, "
                    f"expected {(sizes[s.target], sizes[s.source])}")

    def _check_hosts(self) -> None:
        """A host product reads three spiking layers of its size; its groups are undelayed forward matrices."""
        layers = {p.layer for p in self.populations}
        for h in self.hosts:
            for layer in h.inputs:
                pops = self.layer_populations(layer) if layer in layers else []
                if not pops or any(p.readout or p.graded for p in pops) or self.layer_size(layer) != h.size:
                    raise ChipRangeError(f"host product '{h.name}': field 'inputs' names '{layer}', which is not a "
                                         f"spiking layer of {h.size} neurons")
        hosts = {h.name for h in self.hosts}
        for s in self.synapses:
            if s.source in hosts and (s.delay or s.feedback or s.conv is not None):
                raise ChipRangeError(f"synapse group '{s.name}': a host product's values go out through an "
                                     f"undelayed, non-feedback matrix group")

    def _check_relays(self) -> None:
        """Relays take 0/1 spikes (or, in a fan-in tree, another relay's values) through forward groups;
        a relay's values go out through undelayed, non-feedback matrix groups; messages stay within
        :data:`MESSAGE_BITS`; what every graded group (out of a relay, a host product or an analog input)
        adds up stays within Lava's int32 sum and a LIF's input range."""
        bounds, graded = self.relay_bounds(), self.source_bounds()
        unbounded = {i.name for i in self.inputs if i.kind == "analog"} | {h.name for h in self.hosts}
        for s in self.synapses:
            rec = f"synapse group '{s.name}'"
            if s.target in bounds and (s.source in unbounded or s.feedback):
                raise ChipRangeError(f"{rec}: a relay takes 0/1 spikes or a relay's values through a forward "
                                     f"group (source '{s.source}', feedback {s.feedback})")
            if s.source not in graded:
                continue
            if s.source in bounds and (s.delay or s.feedback or s.conv is not None):
                raise ChipRangeError(f"{rec}: a relay's graded output goes out through an undelayed, "
                                     f"non-feedback matrix group")
            acc, shifted = s.input_bound(graded[s.source])
            for what, value, limit in (("sum before the exponent", acc, GRADED_ACC_MAX),
                                       ("synaptic input", shifted, GRADED_INPUT_MAX)):
                if value.size and int(value.max()) > limit:
                    raise ChipRangeError(f"{rec}: worst-case graded {what} {int(value.max())} exceeds {limit}")
        for name, bound in bounds.items():
            if bound.size and int(bound.max()) >= 2 ** (MESSAGE_BITS - 1):
                raise ChipRangeError(f"relay '{name}': worst-case message {int(bound.max())} needs more than "
                                     f"{MESSAGE_BITS} bits")

    def source_bounds(self) -> dict[str, np.ndarray]:
        """The largest value each graded source sends, per source neuron: relays, host products and
        analog input ports (0/1 spike sources are not listed)."""
        return self.relay_bounds() | port_bounds(self.hosts, self.inputs)

    def relay_bounds(self) -> dict[str, np.ndarray]:
        """Per relay: the largest ``|x_i|`` it can send (its incoming groups with every spike on, and a relay
        that sums relays, in a fan-in tree, with theirs: those must come before it in ``populations``)."""
        into: dict[str, list[SynapseGroup]] = {p.name: [] for p in self.populations if p.graded}
        for s in self.synapses:
            if s.target in into:
                into[s.target].append(s)
        out: dict[str, np.ndarray] = {}
        for p in self.populations:
            if p.name not in into:
                continue
            late = [s.source for s in into[p.name] if s.source in into and s.source not in out]
            if late:
                raise ChipRangeError(f"relay '{p.name}': field 'populations' lists relay '{late[0]}', which "
                                     f"feeds it, after it")
            out[p.name] = sum((s.input_bound(out.get(s.source))[1] for s in into[p.name]),
                              np.zeros(p.size, np.int64))
        return out

    def population(self, name: str) -> Population:
        return next(p for p in self.populations if p.name == name)

    def incoming(self, name: str) -> list[SynapseGroup]:
        return [s for s in self.synapses if s.target == name]

    def depths(self) -> dict[str, int]:
        """Longest chain of synapse groups from any input to each population (an :class:`AlwaysOn`: 0)."""
        depth = {i.name: 0 for i in self.inputs}
        remaining = list(self.populations)
        hosts = list(self.hosts)
        while remaining:
            progressed = False
            for h in list(hosts):  # a host product sends the step its inputs spike, as their populations
                pops = [p.name for layer in h.inputs for p in self.layer_populations(layer)]
                if all(p in depth for p in pops):
                    depth[h.name] = max(depth[p] for p in pops)
                    hosts.remove(h)
            for pop in list(remaining):
                groups = [s for s in self.incoming(pop.name) if not s.feedback]
                if all(s.source in depth for s in groups):
                    depth[pop.name] = max((depth[s.source] + 1 + s.delay - s.lag for s in groups),
                                          default=0 if pop.always_on else 1)
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

    @property
    def report(self) -> dict:
        """What lowering measured as JSON data (``lowering.to_dict()``; empty for a ChipGraph built by hand)."""
        return {} if self.lowering is None else self.lowering.to_dict()

    def layer_report(self, layer: str) -> LayerReport | None:
        """Lowering's report of neuron layer ``layer``; None for a relay or a ChipGraph built by hand."""
        return None if self.lowering is None else self.lowering.layers.get(layer)

    def voltage_units(self, layer: str) -> np.ndarray:
        """Per neuron of ``layer``: its population's :attr:`Population.voltage_unit` (chip voltage per unit of
        the float voltage divided by its threshold). A readout's float voltage is chip / unit."""
        pops = self.layer_populations(layer)
        if not pops:
            raise ChipRangeError(f"ChipGraph: no layer '{layer}'")
        out = np.ones(self.layer_size(layer))
        for p in pops:
            if p.voltage_unit is None:
                raise ChipRangeError(f"layer '{layer}': population '{p.name}' has no field 'voltage_unit' (only "
                                     f"lowering from a float graph sets it)")
            out[p.index] = p.voltage_unit
        return out
