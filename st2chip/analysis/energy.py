r"""Synaptic-operation counts and energy estimates from real spike traces.

Counting follows DESIGN.md ("Energy conventions"): every spike of a source
neuron costs one accumulate (AC) per **non-zero** outgoing weight in each
synapse group it feeds, so pruning shows up; a graded (``analog``) input costs
one multiply-accumulate (MAC) per non-zero weight for every step in which its
value is non-zero. A spike is a non-zero entry of a (B, T, n) trace. For one
synapse group with source trace :math:`x_{btj}` and fan-out :math:`f_j`
(non-zero weights in column :math:`j`), the group costs

.. math::  \sum_j \#\{(b,t) : x_{btj} \ne 0\}\; f_j

ACs when the source sends spikes, MACs when it is an analog input port.

Neuron updates are neurons x steps x samples; spikes routed are the spike (or
graded) messages that reach each target population. Synaptic work and routing
are charged to the layer of the target population, neuron updates and emitted
spikes to the layer's own populations; all is reported per sample.

Energy comes from a profile (a JSON file in ``st2chip/analysis/profiles`` or any path):

.. math::  E = \mathrm{ACs}\,E_{AC} + \mathrm{MACs}\,E_{MAC}
             + \mathrm{updates}\,E_{NU} + \mathrm{routed}\,E_{R}
             + \mathrm{cores}\,T\,t_{step}\,P_{static}

where the last three terms are zero unless the profile defines them.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from st2chip.chip.chipgraph import ChipGraph
from st2chip.errors import InputError
from st2chip.io import atomic_path, write_json, write_text
from st2chip.traces import Traces

# ChipGraph has no partition field yet: everything it holds runs on neurocores.
NEUROCORE = "neurocore"

_REQUIRED = ("name", "source", "E_AC_pJ", "E_MAC_pJ")
_OPTIONAL_PJ = ("E_NEURON_UPDATE_pJ", "E_SPIKE_ROUTED_pJ")
_STATIC = ("P_STATIC_CORE_mW", "T_STEP_us", "NEURONS_PER_CORE")
TERMS = ("ac", "mac", "neuron", "routing", "static")
MAX_PROFILE_BYTES = 1 << 20


# --------------------------------------------------------------------------- profiles

@dataclass(frozen=True)
class Profile:
    """Energy per event for one chip or process node; see the module docstring.

    Optional terms are 0 when the profile does not define them; static power
    needs ``p_static_core_mw``, ``t_step_us`` and ``neurons_per_core`` together.
    """

    name: str
    source: str
    path: str
    e_ac_pj: float
    e_mac_pj: float
    e_neuron_update_pj: float = 0.0
    e_spike_routed_pj: float = 0.0
    p_static_core_mw: float = 0.0
    t_step_us: float = 0.0
    neurons_per_core: int = 0

    @property
    def has_static(self) -> bool:
        return self.neurons_per_core > 0


def available_profiles() -> list[str]:
    """Names of the profiles shipped with st2chip (for ``--profile`` choices)."""
    folder = resources.files("st2chip.analysis") / "profiles"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


def _profile_text(name_or_path: str | os.PathLike) -> tuple[str, str]:
    """Return (where, text): a bundled profile by name, else a file path."""
    spec = str(name_or_path)
    if spec in available_profiles():
        ref = resources.files("st2chip.analysis") / "profiles" / f"{spec}.json"
        return f"bundled profile file '{spec}.json'", ref.read_text(encoding="utf-8")
    path = Path(spec)
    if not path.suffix and os.sep not in spec:
        raise InputError(f"profile '{spec}': unknown name; available: {', '.join(available_profiles())}"
                         " (or give a path to a .json file)")
    try:
        if path.stat().st_size > MAX_PROFILE_BYTES:
            raise InputError(f"profile file '{path}': {path.stat().st_size} bytes; a profile is a small JSON "
                             f"file (at most {MAX_PROFILE_BYTES} bytes)")
        return f"profile file '{path}'", path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"profile file '{path}': cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"profile file '{path}': not UTF-8 text (byte {exc.start}); a profile is a JSON "
                         f"file") from None


def _number(where: str, data: dict, key: str) -> float:
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise InputError(f"{where}: key '{key}' must be a non-negative number, got {value!r}")
    return float(value)


def load_profile(name_or_path: str | os.PathLike) -> Profile:
    """Load an energy profile by bundled name (``45nm``, ``loihi2``) or from a JSON path.

    Raises InputError naming the file and the key when the file is missing,
    not JSON, or lacks a key, so the CLI can exit 2 with one clear line.
    """
    where, text = _profile_text(name_or_path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(data, dict):
        raise InputError(f"{where}: must hold a JSON object, got {type(data).__name__}")
    for key in _REQUIRED:
        if key not in data:
            raise InputError(f"{where}: missing key '{key}'")
    present = [k for k in _STATIC if k in data]
    if present and len(present) != len(_STATIC):
        missing = next(k for k in _STATIC if k not in data)
        raise InputError(f"{where}: missing key '{missing}' (static power needs {', '.join(_STATIC)})")
    values = {k: _number(where, data, k) for k in ("E_AC_pJ", "E_MAC_pJ", *_OPTIONAL_PJ, *present)
              if k in data}
    if present and (values["NEURONS_PER_CORE"] < 1 or not values["NEURONS_PER_CORE"].is_integer()):
        raise InputError(f"{where}: key 'NEURONS_PER_CORE' must be a positive integer")
    return Profile(
        name=str(data["name"]), source=str(data["source"]), path=where,
        e_ac_pj=values["E_AC_pJ"], e_mac_pj=values["E_MAC_pJ"],
        e_neuron_update_pj=values.get("E_NEURON_UPDATE_pJ", 0.0),
        e_spike_routed_pj=values.get("E_SPIKE_ROUTED_pJ", 0.0),
        p_static_core_mw=values.get("P_STATIC_CORE_mW", 0.0),
        t_step_us=values.get("T_STEP_us", 0.0),
        neurons_per_core=int(values.get("NEURONS_PER_CORE", 0)))


# --------------------------------------------------------------------------- counting

@dataclass
class GroupCounts:
    """Operations of one synapse group over the whole batch (integers, not averaged)."""

    name: str
    source: str
    target: str
    layer: str
    partition: str
    source_kind: str  # "spike" or "analog" input port, or "population"
    nnz: int
    acs: int
    macs: int
    routed: int


@dataclass
class LayerCounts:
    """Operations charged to one layer over the whole batch (integers, not averaged)."""

    layer: str
    partition: str
    neurons: int
    nnz: int
    acs: int
    macs: int
    neuron_updates: int
    spikes: int
    routed: int


@dataclass
class OpCounts:
    """Per synapse group and per layer counts for ``samples`` samples of ``steps`` steps."""

    samples: int
    steps: int
    groups: list[GroupCounts]
    layers: list[LayerCounts]


def _batch_shape(traces: Traces) -> tuple[int, int]:
    """(samples, steps) shared by every trace array; InputError names the one that differs."""
    arrays = {f"input '{k}'": v for k, v in traces.inputs.items()} | \
             {f"layer '{k}'": v for k, v in traces.spikes.items()}
    if not arrays:
        raise InputError(f"traces from '{traces.backend}': no input or spike arrays")
    shapes = {k: np.shape(v) for k, v in arrays.items()}
    first, shape = next(iter(shapes.items()))
    for key, other in shapes.items():
        if len(other) != 3 or other[:2] != shape[:2]:
            raise InputError(f"traces from '{traces.backend}': {key} has shape {other}, "
                             f"expected (samples, steps, n) matching {first} {shape}")
    return int(shape[0]), int(shape[1])


def _layer_spikes(chip: ChipGraph, traces: Traces, layer: str) -> np.ndarray:
    if layer not in traces.spikes:
        raise InputError(f"traces from '{traces.backend}': no spikes for layer '{layer}'")
    arr = np.asarray(traces.spikes[layer])
    if arr.shape[2] != chip.layer_size(layer):
        raise InputError(f"traces from '{traces.backend}': layer '{layer}' has {arr.shape[2]} neurons, "
                         f"the chip graph {chip.layer_size(layer)}")
    return arr


def _source_activity(chip: ChipGraph, traces: Traces, source: str) -> tuple[str, np.ndarray]:
    """Source kind and events per source neuron over the batch (non-zero entries: spikes or graded values)."""
    port = next((i for i in chip.inputs if i.name == source), None)
    if port is None:
        pop = chip.population(source)
        values = _layer_spikes(chip, traces, pop.layer)[:, :, pop.index]
        return "population", np.count_nonzero(values, axis=(0, 1)).astype(np.int64)
    if source not in traces.inputs:
        raise InputError(f"traces from '{traces.backend}': no values for input '{source}'")
    values = np.asarray(traces.inputs[source])
    if values.shape[2] != port.size:
        raise InputError(f"traces from '{traces.backend}': input '{source}' has {values.shape[2]} "
                         f"elements, the chip graph {port.size}")
    return port.kind, np.count_nonzero(values, axis=(0, 1)).astype(np.int64)


def count_sops(chip: ChipGraph, traces: Traces) -> OpCounts:
    """Count ACs, MACs, neuron updates and routed spikes per synapse group and per layer.

    Each group costs ``activity @ fanout``: events per source neuron (over all
    samples and steps) dotted with its non-zero outgoing weights, so a zeroed
    weight removes exactly the spikes of its source neuron.
    """
    samples, steps = _batch_shape(traces)
    groups = []
    for sg in chip.synapses:
        kind, activity = _source_activity(chip, traces, sg.source)
        ops = int(activity @ sg.fanout().astype(np.int64))
        groups.append(GroupCounts(
            name=sg.name, source=sg.source, target=sg.target, layer=chip.population(sg.target).layer,
            partition=NEUROCORE, source_kind=kind, nnz=sg.nnz,
            acs=0 if kind == "analog" else ops, macs=ops if kind == "analog" else 0,
            routed=int(activity.sum())))
    layers = []
    for layer in chip.layers():
        pops = chip.layer_populations(layer)
        senders = [p for p in pops if not p.readout]
        emitted = 0
        if senders:
            spikes = _layer_spikes(chip, traces, layer)
            emitted = sum(int(np.count_nonzero(spikes[:, :, p.index])) for p in senders)
        mine = [g for g in groups if g.layer == layer]
        neurons = chip.layer_size(layer)
        layers.append(LayerCounts(
            layer=layer, partition=NEUROCORE, neurons=neurons, nnz=sum(g.nnz for g in mine),
            acs=sum(g.acs for g in mine), macs=sum(g.macs for g in mine),
            neuron_updates=neurons * steps * samples, spikes=emitted, routed=sum(g.routed for g in mine)))
    return OpCounts(samples=samples, steps=steps, groups=groups, layers=layers)


# --------------------------------------------------------------------------- energy

@dataclass
class LayerEnergy:
    """One layer's operations and energy, averaged per sample (energy in pJ per term)."""

    layer: str
    partition: str
    neurons: int
    synapses: int
    cores: int
    acs: float
    macs: float
    neuron_updates: float
    spikes: float
    spikes_routed: float
    energy_pj: dict[str, float]

    @property
    def total_pj(self) -> float:
        return sum(self.energy_pj.values())


def _layer_energy(chip: ChipGraph, counts: LayerCounts, samples: int, steps: int,
                  profile: Profile) -> LayerEnergy:
    per = 1.0 / samples
    cores = (sum(math.ceil(p.size / profile.neurons_per_core) for p in chip.layer_populations(counts.layer))
             if profile.has_static else 0)
    row = LayerEnergy(
        layer=counts.layer, partition=counts.partition, neurons=counts.neurons, synapses=counts.nnz,
        cores=cores, acs=counts.acs * per, macs=counts.macs * per,
        neuron_updates=counts.neuron_updates * per, spikes=counts.spikes * per,
        spikes_routed=counts.routed * per, energy_pj={})
    row.energy_pj = {
        "ac": row.acs * profile.e_ac_pj,
        "mac": row.macs * profile.e_mac_pj,
        "neuron": row.neuron_updates * profile.e_neuron_update_pj,
        "routing": row.spikes_routed * profile.e_spike_routed_pj,
        # mW x us = nJ = 1e3 pJ
        "static": cores * steps * profile.t_step_us * profile.p_static_core_mw * 1e3,
    }
    return row


def _nj(pj: float) -> str:
    """pJ as nJ for tables: three decimals, or four significant digits below 1 nJ."""
    nj = pj / 1e3
    return f"{nj:,.3f}" if abs(nj) >= 1 or nj == 0 else f"{nj:.4g}"


_SUMMED = ("neurons", "synapses", "cores", "acs", "macs", "neuron_updates", "spikes", "spikes_routed")


def _summary(rows: list[LayerEnergy]) -> dict:
    out: dict = {k: sum(getattr(r, k) for r in rows) for k in _SUMMED}
    out["energy_pj"] = {t: sum(r.energy_pj[t] for r in rows) for t in TERMS}
    out["energy_pj"]["total"] = sum(r.total_pj for r in rows)
    return out


@dataclass
class EnergyReport:
    """Per-layer, per-partition and total operations and energy, averaged per sample."""

    profile: Profile
    samples: int
    steps: int
    backend: str
    layers: list[LayerEnergy]
    groups: list[GroupCounts]

    @property
    def total_pj(self) -> float:
        return sum(r.total_pj for r in self.layers)

    def partitions(self) -> dict[str, dict]:
        """Layer sums per partition (``neurocore`` for now; host partitions later)."""
        names = dict.fromkeys(r.partition for r in self.layers)
        return {p: _summary([r for r in self.layers if r.partition == p]) for p in names}

    def totals(self) -> dict:
        return _summary(self.layers)

    def to_dict(self) -> dict:
        """JSON-ready: per-sample layers, partitions and totals; group counts over the batch."""
        total = self.total_pj
        return {
            "profile": asdict(self.profile),
            "backend": self.backend,
            "samples": self.samples,
            "steps": self.steps,
            "units": {"energy": "pJ per sample", "counts": "per sample", "groups": "whole batch"},
            "layers": [asdict(r) | {"energy_pj": r.energy_pj | {"total": r.total_pj},
                                    "share": r.total_pj / total if total else 0.0}
                       for r in self.layers],
            "partitions": self.partitions(),
            "total": self.totals(),
            "groups": [asdict(g) for g in self.groups],
        }

    def to_markdown(self) -> str:
        """A per-layer table that fits an 80-column terminal, then the terms and the profile's source."""
        total = self.total_pj
        header = ("layer", "synapses (nnz)", "ACs/sample", "MACs/sample", "nJ/sample", "share %")
        rows = [(r.layer, f"{r.synapses:,}", f"{r.acs:,.1f}", f"{r.macs:,.1f}", _nj(r.total_pj),
                 f"{100.0 * r.total_pj / total if total else 0.0:.1f}") for r in self.layers]
        t = self.totals()
        rows.append(("total", f"{t['synapses']:,}", f"{t['acs']:,.1f}", f"{t['macs']:,.1f}",
                     _nj(total), "100.0" if total else "0.0"))
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

        def line(cells: tuple[str, ...]) -> str:
            return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                     for i, (c, w) in enumerate(zip(cells, widths))) + " |"

        rule = "|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|"
        terms = ", ".join(f"{k} {_nj(v)}" for k, v in t["energy_pj"].items() if k != "total" and v)
        return "\n".join([
            f"Energy per sample, profile `{self.profile.name}`: {self.samples} samples x {self.steps} steps "
            f"of traces from {self.backend}, partition(s) {', '.join(self.partitions())}.", "",
            line(header), rule, *(line(r) for r in rows), "",
            f"By term (nJ/sample): {terms or 'none'}.", "", f"Source: {self.profile.source}", ""])


def energy_report(chip: ChipGraph, traces: Traces, profile: Profile | str | os.PathLike = "45nm") -> EnergyReport:
    """Count operations in ``traces`` and price them with ``profile`` (a Profile, name or path)."""
    prof = profile if isinstance(profile, Profile) else load_profile(profile)
    counts = count_sops(chip, traces)
    rows = [_layer_energy(chip, c, counts.samples, counts.steps, prof) for c in counts.layers]
    return EnergyReport(profile=prof, samples=counts.samples, steps=counts.steps, backend=traces.backend,
                        layers=rows, groups=counts.groups)


def plot_energy(report: EnergyReport, target: str | os.PathLike) -> Path:
    """Write a per-layer stacked bar plot (nJ/sample by term) as PNG, atomically, with Agg."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(4.0, 1.2 * len(report.layers) + 2.0), 3.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    names = [r.layer for r in report.layers]
    bottom = np.zeros(len(names))
    for term in TERMS:
        heights = np.array([r.energy_pj[term] / 1e3 for r in report.layers])
        if heights.any():
            ax.bar(names, heights, bottom=bottom, label=term)
            bottom += heights
    ax.set_ylabel("energy per sample (nJ)")
    ax.set_title(f"Energy per layer, profile {report.profile.name}")
    if bottom.any():
        ax.legend(fontsize="small")
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return Path(target)


def write_energy_report(report: EnergyReport, folder: str | os.PathLike, stem: str = "energy") -> dict[str, Path]:
    """Write ``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` into ``folder``, each atomically."""
    folder = Path(folder)
    return {
        "json": write_json(folder / f"{stem}.json", report.to_dict()),
        "markdown": write_text(folder / f"{stem}.md", report.to_markdown()),
        "plot": plot_energy(report, folder / f"{stem}.png"),
    }
