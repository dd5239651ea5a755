"""What lowering measured, as typed records: per low-rank path, per layer, per graph (``ChipGraph.lowering``).

Each record's ``to_dict()`` is its JSON form (``st2chip map --json``, ``--report``,
the demo's ``report.json``): keys in a fixed order, optional entries left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True)
class LowrankCosts:
    """Stored weights and accumulate-equivalent operations per step of a path ``W = U V``, multiplied out
    (``product_*``) or factored through a relay (``acs`` into it, ``macs`` out of it)."""

    product_weights: int
    product_ops: float
    factored_weights: int
    acs: float
    macs: float
    factored_ops: float

    def to_dict(self) -> dict[str, dict[str, float]]:
        return {"product": {"weights": self.product_weights, "ops": self.product_ops},
                "factored": {"weights": self.factored_weights, "acs": self.acs, "macs": self.macs,
                             "ops": self.factored_ops}}


@dataclass(frozen=True)
class FactoredErrors:
    """A factored path's relay unit and quantization errors: of V, of U and of their product (against the
    float ``U V``), and the relay's exponent ``e_V``."""

    relay_scale: float
    v_error: float
    u_error: float
    product_error: float
    v_exp: int


@dataclass(frozen=True)
class LowrankChoice:
    """What became of one low-rank path (or the paths sharing one V node): ``chosen`` and ``why``; for a
    factorable path also its relay, rank, shape ``(m, n)``, both costs, the sources of a shared relay and,
    when kept factored, its :class:`FactoredErrors`."""

    chosen: Literal["product", "factored"]
    why: str
    relay: str | None = None
    rank: int | None = None
    shape: tuple[int, int] | None = None
    cost: LowrankCosts | None = None
    sources: list[str] | None = None
    factored: FactoredErrors | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.cost is None:
            return {"chosen": self.chosen, "why": self.why}
        out: dict[str, Any] = {"relay": self.relay, "rank": self.rank, "shape": list(self.shape),
                               "cost": self.cost.to_dict(), "chosen": self.chosen, "why": self.why}
        if self.sources is not None:
            out["sources"] = self.sources
        if self.factored is not None:
            f = self.factored
            out |= {"relay_scale": f.relay_scale, "v_error": f.v_error, "u_error": f.u_error,
                    "product_error": f.product_error, "v_exp": f.v_exp}
        return out


@dataclass(frozen=True)
class CurrentBiasReport:
    """A layer whose Affine bias enters its synaptic current through the always-on neuron ``source``: the
    groups' weight exponents and the bias's relative quantization error (8-bit mantissas)."""

    source: str
    exp: list[int]
    error: float

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "exp": self.exp, "error": self.error}


@dataclass(frozen=True)
class PrecisionCosts:
    """A layer's stored weights (non-zero mantissas) and synaptic operations per step (accumulate-equivalents
    at the low-rank cost model's spike rate), with 8-bit weights alone and with the residual groups too."""

    weights_8: int
    weights_16: int
    ops_8: float
    ops_16: float

    def to_dict(self) -> dict[str, dict[str, float]]:
        return {"8": {"weights": self.weights_8, "ops": self.ops_8},
                "16": {"weights": self.weights_16, "ops": self.ops_16}}


@dataclass(frozen=True)
class PrecisionChoice:
    """A layer's weight precision (pass ``precision``): ``chosen`` and ``why``; the relative error of its
    matrix groups' weights, pooled (``||W_q - W|| / ||W||`` over all of them), with 8-bit mantissas
    (``error_8``) and with the residual groups (``error_16``, as the chip adds them; also where 8 is
    chosen), both costs, the exponent of each residual group added, and why each other matrix group has none."""

    chosen: Literal["8", "16"]
    why: str
    error_8: float
    error_16: float
    cost: PrecisionCosts
    residuals: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"chosen": self.chosen, "why": self.why, "error_8": self.error_8,
                               "error_16": self.error_16, "cost": self.cost.to_dict()}
        for key in ("residuals", "skipped"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        return out


@dataclass(frozen=True)
class FaninReport:
    """A layer whose neurons take more incoming synapses than one core holds, split into fan-in trees (pass
    ``fanin``): the per-core limits split against (``axons`` in, synapse memory in bits), the worst neuron's
    fan-in and synapse memory before and after, per split synapse group its tree's ``levels``, and the cost:
    relay neurons per relay population (one per group and level), the cores they take at the least (from the
    per-core limits; placement counts them), graded MACs per step out of the relays and their
    accumulate-equivalents (at the low-rank cost model's spike rate; the accumulates into the relays are the
    split groups' own), and the steps of ``latency`` the trees add to the layer."""

    axons: int
    memory_bits: int
    fan_in: tuple[int, int]
    memory: tuple[int, int]
    levels: dict[str, int]
    relays: dict[str, int]
    cores: int
    macs: float
    ops: float
    latency: int

    def to_dict(self) -> dict[str, Any]:
        return {"limits": {"axons": self.axons, "memory_bits": self.memory_bits},
                "fan_in": {"before": self.fan_in[0], "after": self.fan_in[1]},
                "memory_bits": {"before": self.memory[0], "after": self.memory[1]},
                "levels": self.levels, "relays": self.relays, "relay_neurons": sum(self.relays.values()),
                "cores_at_least": self.cores, "macs_per_step": self.macs, "ops_per_step": self.ops,
                "latency_steps": self.latency}


@dataclass
class LayerReport:
    """One neuron layer's lowering: what it is, where its inputs come from and the error each step added.

    ``leak_error`` (``current_leak_error``): largest change of a neuron's voltage
    (current) decay by grouping and rounding; ``bias_error``, ``weight_error``
    (``outlier_weight_error``: of populations split off as outliers): relative
    quantization errors; ``current_bias``: how an Affine bias enters the synaptic
    current (None: it has none); ``voltage_unit``/``headroom`` per population: chip voltage
    per float threshold, and thresholds ``u`` and ``v`` can reach before they wrap;
    ``delays`` per source, ``feedback_latency`` (steps) per late feedback source,
    ``storage`` per synapse group kept as a convolution or why not; ``precision``: 8-bit weights or a
    residual group too (None: ``precision="8"``, nothing considered); ``fanin``: its fan-in trees (None: every
    neuron's incoming synapses fit one core); ``reset``, ``refractory``: the neuron's
    reset mode and the steps it is held after a spike (shown when not the default).
    """

    kind: str
    neurons: int
    affines: int
    source: str | list[str]
    chains: list[str]
    decay_groups: int
    leak_error: float
    threshold_range: list[float]
    bias_error: float
    voltage_unit: dict[str, float]
    weight_error: float
    reset: Literal["zero", "subtract"] = "zero"
    refractory: int = 0
    current_leak_error: float | None = None
    current_bias: CurrentBiasReport | None = None
    outliers: list[int] | None = None
    headroom: dict[str, float] | None = None
    lowrank: dict[str, LowrankChoice] = field(default_factory=dict)
    delays: dict[str, int] = field(default_factory=dict)
    feedback_latency: dict[str, int] = field(default_factory=dict)
    recurrent: list[str] = field(default_factory=list)
    storage: dict[str, str] = field(default_factory=dict)
    outlier_weight_error: float | None = None
    precision: PrecisionChoice | None = None
    fanin: FaninReport | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "neurons": self.neurons, "affines": self.affines,
                               "source": self.source, "chains": self.chains}
        if self.reset != "zero":
            out["reset"] = self.reset
        if self.refractory:
            out["refractory"] = self.refractory
        out |= {"decay_groups": self.decay_groups, "leak_error": self.leak_error,
                "threshold_range": self.threshold_range}
        for key in ("current_leak_error", "outliers"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out["bias_error"] = self.bias_error
        if self.current_bias is not None:
            out["current_bias"] = self.current_bias.to_dict()
        out["voltage_unit"] = self.voltage_unit
        if self.headroom is not None:
            out["headroom"] = self.headroom
        if self.lowrank:
            out["lowrank"] = {name: choice.to_dict() for name, choice in self.lowrank.items()}
        for key in ("delays", "feedback_latency", "recurrent", "storage"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        out["weight_error"] = self.weight_error
        if self.outlier_weight_error is not None:
            out["outlier_weight_error"] = self.outlier_weight_error
        if self.precision is not None:
            out["precision"] = self.precision.to_dict()
        if self.fanin is not None:
            out["fanin"] = self.fanin.to_dict()
        return out


@dataclass
class LoweringReport:
    """A whole graph's lowering: its time step ``dt`` (seconds) and a :class:`LayerReport` per neuron layer."""

    dt: float
    layers: dict[str, LayerReport] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"dt": self.dt, "layers": {name: layer.to_dict() for name, layer in self.layers.items()}}
