r"""Operations and energy of a Xylo run: synaptic operations per layer from the real spike counts, priced by power.

Counts (per sample, one inference), from a :class:`~st2chip.xylo.xylograph.XyloRun` of ``S`` chip steps:

- synaptic operations into a layer: every input count ``n`` (clipped to 15, as the chip does) on channel
  ``c`` costs ``n`` times the non-zero weights of row ``c`` of ``w_in`` into the layer; every hidden spike
  count of a step the chip ran after it costs the count times the non-zero weights of its ``w_rec`` row
  (hidden layers) or ``w_out`` row (output layer) into the layer (a spike of the last step is never
  delivered);
- neuron updates: every neuron, every step.

Pricing: Xylo publishes no energy per operation, only the power of a chip running an application in
real time (one step per ``dt``). So an inference costs :math:`E = P \cdot S \cdot dt` and a step
:math:`P \cdot dt`: the operations are counted, and priced inside :math:`P`, which was measured on
another network; the energy does not grow with activity. Profiles (``st2chip/analysis/profiles/
xylo-*.json``) give :math:`P` with its source and status (``published`` or ``estimate``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field

import numpy as np

from st2chip.analysis.energy import (MAX_PROFILE_DEPTH, STATUSES, available_profiles, json_nesting, markdown_table,
                                     profile_text)
from st2chip.errors import InputError
from st2chip.xylo.spec import XYLO_TARGETS
from st2chip.xylo.xylograph import MAX_INPUT_SPIKES, XyloGraph, XyloLayer, XyloRun

POWER = "P_RUN_uW"
_KEYS = ("name", "chip", "description", "source", POWER, "sources")


@dataclass(frozen=True)
class XyloProfile:
    """The power of one Xylo chip running a network in real time, with where that figure comes from."""

    name: str
    chip: str
    source: str
    path: str
    p_run_uw: float
    description: str = ""
    sources: dict = field(default_factory=dict, compare=False)

    def uncertain(self) -> list[str]:
        """Figures the profile marks ``estimate`` (not published for this chip)."""
        return [key for key, entry in self.sources.items() if entry["status"] != "published"]


def load_xylo_profile(name_or_path: str | os.PathLike) -> XyloProfile:
    """A Xylo energy profile by bundled name (``xylo-audio2``, ``xylo-audio3``) or from a JSON path.

    Raises InputError naming the file and key: not JSON, a missing or unknown key, a figure that is not a
    finite non-negative number, a ``sources`` entry without status and source, a chip that is not Xylo.
    """
    if str(name_or_path) in XYLO_TARGETS and str(name_or_path) not in _bundled():
        raise InputError(f"--target {name_or_path}: SynSense publishes no energy figure for {name_or_path} (bundled "
                         f"Xylo profiles: {', '.join(_bundled())}); give one with --profile FILE.json")
    where, text = profile_text(name_or_path)
    if json_nesting(text) > MAX_PROFILE_DEPTH:
        raise InputError(f"{where}: JSON nested too deep; a profile nests at most {MAX_PROFILE_DEPTH} levels")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict) or POWER not in data:
        raise InputError(f"{where}: not a Xylo energy profile (no key '{POWER}'); Xylo profiles: "
                         f"{', '.join(_bundled())}")
    unknown = [k for k in data if k not in _KEYS]
    missing = [k for k in ("name", "chip", "source") if not isinstance(data.get(k), str) or not data[k].strip()]
    if unknown or missing:
        raise InputError(f"{where}: " + (f"unknown key '{unknown[0]}' (known: {', '.join(_KEYS)})" if unknown
                                         else f"key '{missing[0]}' must be a non-empty string"))
    if data["chip"] not in XYLO_TARGETS:
        raise InputError(f"{where}: key 'chip' must be one of {', '.join(XYLO_TARGETS)}, got {data['chip']!r:.40}")
    power = data[POWER]
    if isinstance(power, bool) or not isinstance(power, (int, float)) or not math.isfinite(power) or power < 0:
        raise InputError(f"{where}: key '{POWER}' must be a finite non-negative number, got {power!r:.40}")
    return XyloProfile(name=data["name"], chip=data["chip"], source=data["source"], path=where,
                       p_run_uw=float(power), description=str(data.get("description", "")),
                       sources=_sources(where, data.get("sources", {})))


def _sources(where: str, sources: object) -> dict:
    """Each entry names the profile's figure and carries a status and a non-empty source."""
    if not isinstance(sources, dict) or set(sources) != {POWER}:
        raise InputError(f"{where}: key 'sources' must hold one entry, '{POWER}'")
    entry = sources[POWER]
    if not isinstance(entry, dict) or entry.get("status") not in STATUSES \
            or not isinstance(entry.get("source"), str) or not entry["source"].strip():
        raise InputError(f"{where}: key 'sources.{POWER}' must be an object with 'status' "
                         f"({' or '.join(STATUSES)}) and a non-empty 'source'")
    return sources


def _bundled() -> list[str]:
    """The Xylo chips with a bundled energy profile (a chip absent here has no published figure)."""
    return [name for name in available_profiles() if name in XYLO_TARGETS]


def has_profile(chip: str) -> bool:
    """Whether st2chip ships an energy profile for Xylo chip ``chip``."""
    return chip in _bundled()


@dataclass
class XyloLayerOps:
    """One layer's operations per sample: synaptic operations into it, neuron updates, spikes it emitted."""

    layer: str
    output: bool
    neurons: int
    synapses: int
    synaptic_ops: float
    neuron_updates: float
    spikes: float


@dataclass
class XyloEnergyReport:
    """Operations per layer and energy per sample (one inference) of a Xylo run; see the module docstring."""

    profile: XyloProfile
    samples: int
    steps: int
    dt: float
    layers: list[XyloLayerOps]
    inputs_counted: bool

    @property
    def synaptic_ops(self) -> float:
        return sum(r.synaptic_ops for r in self.layers)

    @property
    def energy_per_step_pj(self) -> float:
        return self.profile.p_run_uw * self.dt * 1e6  # uW x s = uJ = 1e6 pJ

    @property
    def total_pj(self) -> float:
        """Energy per inference: the chip's power over the run's ``steps`` steps of ``dt``."""
        return self.energy_per_step_pj * self.steps

    def totals(self) -> dict:
        return {"synaptic_ops": self.synaptic_ops, "neuron_updates": sum(r.neuron_updates for r in self.layers),
                "spikes": sum(r.spikes for r in self.layers), "energy_per_inference_pj": self.total_pj,
                "energy_per_step_pj": self.energy_per_step_pj}

    def notes(self) -> list[str]:
        """What the figures leave out or assume, one line each."""
        out = [f"energy = {self.profile.p_run_uw:g} uW x {self.steps} steps x dt {self.dt:g} s: Xylo publishes no "
               f"energy per operation; the power was measured on another network and does not follow activity"]
        if not self.inputs_counted:
            out.append("input synaptic operations not counted (no input counts given)")
        if self.profile.uncertain():
            out.append(f"estimate, not published for {self.profile.chip}: {', '.join(self.profile.uncertain())}")
        return out

    def to_dict(self) -> dict:
        return {"profile": asdict(self.profile), "samples": self.samples, "steps": self.steps, "dt": self.dt,
                "units": {"energy": "pJ per sample", "counts": "per sample"},
                "layers": [asdict(r) for r in self.layers], "total": self.totals(), "notes": self.notes()}

    def to_markdown(self) -> str:
        rows = [(r.layer, f"{r.neurons:,}", f"{r.synapses:,}", f"{r.synaptic_ops:,.1f}", f"{r.neuron_updates:,.0f}",
                 f"{r.spikes:,.1f}") for r in self.layers]
        t = self.totals()
        rows.append(("total", f"{sum(r.neurons for r in self.layers):,}", f"{sum(r.synapses for r in self.layers):,}",
                     f"{t['synaptic_ops']:,.1f}", f"{t['neuron_updates']:,.0f}", f"{t['spikes']:,.1f}"))
        return "\n".join([
            f"Xylo operations per sample (one inference), profile `{self.profile.name}`: {self.samples} samples x "
            f"{self.steps} chip steps.", "",
            *markdown_table(("layer", "neurons", "synapses (nnz)", "syn. ops/sample", "updates/sample",
                             "spikes/sample"), rows),
            "", f"Per inference {self.total_pj / 1e3:,.3f} nJ; per time step {self.energy_per_step_pj / 1e3:,.4g} nJ.",
            "", *(f"- {line}" for line in self.notes()), "", f"Source: {self.profile.source}", ""])


def _nnz_into(graph: XyloGraph, layer: XyloLayer) -> tuple[np.ndarray, np.ndarray]:
    """Non-zero weights into ``layer``: per input channel, and per hidden source neuron."""
    into = slice(layer.start, layer.stop)
    hidden = (graph.w_out if layer.output else graph.w_rec)[:, into]
    inputs = np.zeros(graph.n_inputs, dtype=np.int64) if layer.output else np.count_nonzero(graph.w_in[:, into], 1)
    return inputs, np.count_nonzero(hidden, axis=1)


def xylo_ops(graph: XyloGraph, run: XyloRun, counts: np.ndarray | None = None) -> list[XyloLayerOps]:
    """Operations per sample of each layer of ``graph`` in ``run`` (the whole chip run, ``(batch, S, n)``, not
    :meth:`XyloRun.aligned`), with input operations from ``counts`` ``(batch, S, n_inputs)`` when given."""
    samples, steps = run.hidden_spikes.shape[:2]
    per_channel = (np.zeros(graph.n_inputs) if counts is None
                   else np.minimum(np.asarray(counts, dtype=np.int64), MAX_INPUT_SPIKES).sum(axis=(0, 1)))
    delivered = run.hidden_spikes[:, :-1].sum(axis=(0, 1), dtype=np.int64)  # the last step's are never delivered
    rows = []
    for layer in graph.layers:
        from_inputs, from_hidden = _nnz_into(graph, layer)
        emitted = (run.output_spikes if layer.output else run.hidden_spikes)[..., layer.start:layer.stop]
        ops = float(per_channel @ from_inputs + delivered @ from_hidden)
        rows.append(XyloLayerOps(layer=layer.name, output=layer.output, neurons=layer.size,
                                 synapses=int(from_inputs.sum() + from_hidden.sum()), synaptic_ops=ops / samples,
                                 neuron_updates=float(layer.size * steps), spikes=float(emitted.sum()) / samples))
    return rows


def xylo_energy(graph: XyloGraph, run: XyloRun, profile: XyloProfile | str | os.PathLike, *, dt: float,
                counts: np.ndarray | None = None) -> XyloEnergyReport:
    """Count ``run``'s operations per layer (:func:`xylo_ops`) and price the run with ``profile`` over steps of
    ``dt`` seconds (see the module docstring); without ``counts`` input operations are not counted (the
    report says so)."""
    prof = profile if isinstance(profile, XyloProfile) else load_xylo_profile(profile)
    if isinstance(dt, bool) or not isinstance(dt, (int, float)) or not math.isfinite(dt) or dt <= 0:
        raise InputError(f"--dt: Xylo's energy needs the time step in seconds (a positive number), got {dt!r}")
    samples, steps = run.hidden_spikes.shape[:2]
    return XyloEnergyReport(profile=prof, samples=samples, steps=steps, dt=float(dt),
                            layers=xylo_ops(graph, run, counts), inputs_counted=counts is not None)
