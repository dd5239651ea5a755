"""The typed plan that lowering's passes hand on: the graph, the options, and one :class:`LayerPlan` per neuron
layer that each pass fills in further (see :mod:`st2chip.chip.lower` for the order)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Callable

import nir
import numpy as np
import scipy.sparse as sp

from st2chip.chip.chipgraph import AlwaysOn, HostProduct, InputPort, Population, Relay, SynapseGroup
from st2chip.chip.lowering.lowrank_product import LowrankProduct
from st2chip.chip.lowering.neurons import FloatLayer
from st2chip.chip.lowering.report import FaninReport, LowrankChoice, PrecisionChoice
from st2chip.chip.placement import Resources
from st2chip.errors import GraphError, St2chipWarning

HEADROOM = 512.0          # thresholds a spiking population's u and v may reach before they wrap or saturate
DEFAULT_DECAY_GROUPS = 4  # the commands' default decay groups per layer (map, verify, energy, demo, quantize)
LOWRANK_MODES = ("product", "factored", "auto")
PRECISION_MODES = ("8", "16", "auto")  # weight bits: one 8-bit group, a residual group too, or per layer


class QuantizationWarning(St2chipWarning):
    """Lowering kept the graph but its fixed-point weights are far from the float ones."""


class FeedbackLatencyWarning(St2chipWarning):
    """A recurrent connection to an earlier layer reaches it later on the chip than in NIR's reading."""


@dataclass(frozen=True)
class Options:
    """What the caller chose: at most ``decay_groups`` decays per layer, what becomes of a low-rank path
    (one of :data:`LOWRANK_MODES`), the ``headroom`` (thresholds) a spiking population's state keeps,
    the weight ``precision`` (one of :data:`PRECISION_MODES`; see :mod:`st2chip.chip.lowering.precision`),
    and the chip ``resources`` whose per-core limits fan-in trees split against (None: no fan-in trees; see
    :mod:`st2chip.chip.lowering.fanin`)."""

    decay_groups: int = 1
    lowrank: str = "product"
    headroom: float = HEADROOM
    precision: str = "8"
    resources: Resources | None = None

    def __post_init__(self) -> None:
        if self.decay_groups < 1:
            raise GraphError("decay_groups must be at least 1", field="decay_groups")
        if self.lowrank not in LOWRANK_MODES:
            raise GraphError(f"lowrank must be one of {', '.join(LOWRANK_MODES)}, got {self.lowrank!r}",
                             field="lowrank")
        if not self.headroom > 0:
            raise GraphError(f"headroom must be a positive number of thresholds, got {self.headroom!r}",
                             field="headroom")
        if self.precision not in PRECISION_MODES:
            raise GraphError(f"--precision must be one of {', '.join(PRECISION_MODES)}, got {self.precision!r}",
                             field="precision")


@dataclass(frozen=True)
class PathKey:
    """A block of a layer's incoming columns: from ``source``, held ``lag`` steps by Delay nodes, and whether
    the path crosses a back edge (``recurrent``)."""

    source: str
    lag: int
    recurrent: bool


@dataclass
class Factors:
    """The float factors of a low-rank path ``W = U V`` and the V node (the relay's name)."""

    u: sp.csr_matrix  # (m, r)
    v: sp.csr_matrix  # (r, n): V times whatever lies between it and this path's source
    relay: str
    nodes: tuple[str, ...] = ()  # the weighted nodes on the path


@dataclass
class Refused:
    """Why a low-rank path stays multiplied out, and the weighted nodes it passes (a relay it would share)."""

    why: str
    nodes: tuple[str, ...]


@dataclass
class Incoming:
    """Every path into one layer (pass ``paths``), multiplied out into one matrix over its keys side by side.

    ``weight`` ``(n, Σ widths)`` is CSR (lowering works from the non-zeros) and a
    fresh matrix: pass ``fold`` scales it in place. ``bias`` sums the paths' biases;
    ``affines`` is the most Affines on one path, ``chains`` the distinct chains of
    node types; ``convs`` names, per key whose one path is a lone Conv2d, that node;
    ``lowrank`` per key with a low-rank path its factors or why it has none. Pass
    ``lowrank`` drops the columns of the paths it keeps factored (their U·V was needed
    only to set the scales; it would otherwise be held through every later pass).
    ``deferred``: the U·V of the paths pass ``lowrank`` may keep factored, held as their
    factors (each its key's columns only), with their columns of ``weight`` empty,
    until it decides: multiplying out, stacking, scaling and then dropping them was
    most of lowering a DSP model, and most of its memory.
    """

    keys: list[PathKey]
    widths: list[int]
    weight: sp.csr_matrix
    bias: np.ndarray
    affines: int
    chains: list[str]
    convs: dict[PathKey, str]
    lowrank: dict[PathKey, Factors | Refused]
    deferred: dict[PathKey, LowrankProduct] = field(default_factory=dict)


@dataclass
class Folded:
    """A layer's weights and bias divided by its thresholds (pass ``fold``): threshold 1, same spikes.
    ``factor`` is each neuron's multiplier of its incoming weights (input gain / threshold). ``bias`` enters
    the voltage; ``current_bias``, of a layer with a synaptic current, the current (pass ``current_bias``)."""

    weight: sp.csr_matrix
    bias: np.ndarray
    factor: np.ndarray
    current_bias: np.ndarray | None = None
    deferred: dict[PathKey, LowrankProduct] = field(default_factory=dict)  # Incoming.deferred, scaled alike


@dataclass(frozen=True)
class DecayPair:
    """One population's decays: current ``du`` and voltage ``dv`` (12 bit each)."""

    du: int
    dv: int


@dataclass
class Decays:
    """Each neuron's decays after grouping (pass ``decays``), the distinct pairs (one population each, by
    ``dv`` then ``du``) and the largest change grouping made to a voltage (current) decay."""

    du: np.ndarray
    dv: np.ndarray
    pairs: list[DecayPair]
    leak_error: float
    current_leak_error: float | None


@dataclass
class Populations:
    """A layer's populations (pass ``populations``) with each one's fixed-point ``scales`` (threshold
    ``vth`` of a spiking one), the neurons split off as outliers, the bias error and, for a spiking layer,
    each population's headroom in thresholds."""

    members: list[Population]
    scales: dict[str, int]
    outliers: list[int]
    bias_error: float
    headroom: dict[str, float] | None


@dataclass
class Lowrank:
    """The low-rank paths into a layer (pass ``lowrank``): the relays kept, per key kept factored its V groups
    (into the relay) and, on the first key of a relay, its U groups; and the choice made per V node."""

    relays: list[Relay] = field(default_factory=list)
    factored: dict[PathKey, list[SynapseGroup]] = field(default_factory=dict)
    choices: dict[str, LowrankChoice] = field(default_factory=dict)


@dataclass
class Synapses:
    """A layer's synapse groups (pass ``synapses``), the extra delay per source that aligns its paths, the
    steps late feedback arrives per source, its recurrent sources, per group stored as a convolution why
    (not), and the largest relative weight error (of outlier populations apart)."""

    groups: list[SynapseGroup]
    delays: dict[str, int]
    feedback_latency: dict[str, int]
    recurrent: list[str]
    storage: dict[str, str]
    weight_error: float
    outlier_weight_error: float | None


@dataclass
class CurrentBias:
    """A layer's Affine bias into its current (pass ``current_bias``): one group per population from the
    always-on source, their exponents, and the bias's relative quantization error."""

    groups: list[SynapseGroup]
    exps: list[int]
    error: float


@dataclass
class Fanin:
    """A layer's fan-in trees (pass ``fanin``): the relays, one population per split synapse group and level,
    lower levels first (their groups replace the split ones in the layer's :class:`Synapses`); per split
    group, the name of its first group (spikes into the lowest relays) and the tree's levels, the steps it
    reaches the layer's neurons late; and the layer's :class:`~st2chip.chip.lowering.report.FaninReport`."""

    relays: list[Relay]
    first: dict[str, int]
    report: FaninReport


@dataclass
class LayerPlan:
    """One neuron layer on its way to the chip: each pass fills in one more field (None until then)."""

    name: str
    node: nir.NIRNode
    neuron: FloatLayer
    incoming: Incoming | None = None
    folded: Folded | None = None
    decays: Decays | None = None
    populations: Populations | None = None
    lowrank: Lowrank | None = None
    synapses: Synapses | None = None
    current_bias: CurrentBias | None = None  # None: no Affine bias into a current
    precision: PrecisionChoice | None = None  # pass ``precision``; None with precision "8" (nothing added)
    fanin: Fanin | None = None  # pass ``fanin``; None: every neuron's incoming synapses fit one core


@dataclass(frozen=True)
class Block:
    """Some of a source's values: a population (or the whole input port or host product) named ``source``,
    and the positions ``index`` of its neurons in its layer."""

    source: str
    index: np.ndarray


@dataclass(frozen=True)
class Plan:
    """A graph on its way to the chip: the canonical NIR graph, the options, its time step, each node's
    predecessors and the back edges; the input ports, host products and neuron layers read from it (pass
    ``read``), and each source's pipeline depth (pass ``depths``)."""

    graph: nir.NIRGraph
    options: Options
    dt: float
    preds: dict[str, list[str]]
    back: set[tuple[str, str]]
    inputs: list[InputPort] = field(default_factory=list)
    hosts: list[HostProduct] = field(default_factory=list)
    layers: list[LayerPlan] = field(default_factory=list)
    depth: dict[str, int] = field(default_factory=dict)
    always_on: AlwaysOn | None = None  # the source of biases into currents (pass ``current_bias``), if any

    def map_layers(self, step: Callable[[Plan, LayerPlan], LayerPlan]) -> Plan:
        """This plan with ``step(self, layer)`` in place of every layer, in graph order."""
        return replace(self, layers=[step(self, layer) for layer in self.layers])

    @cached_property
    def _by_name(self) -> dict[str, LayerPlan]:
        return {layer.name: layer for layer in self.layers}

    def layer(self, name: str) -> LayerPlan | None:
        """The neuron layer ``name``; None for an input or a host product."""
        return self._by_name.get(name)

    def blocks(self, source: str) -> list[Block]:
        """What ``source`` (an input, host product or neuron layer with its populations) sends, per
        population: a whole port or host product is one block."""
        layer = self.layer(source)
        if layer is not None:
            return [Block(pop.name, pop.index) for pop in layer.populations.members]
        size = next(x.size for x in (*self.inputs, *self.hosts) if x.name == source)
        return [Block(source, np.arange(size))]
