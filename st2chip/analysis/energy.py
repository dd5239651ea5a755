r"""Energy from chip traces: profiles (data with sources), per-layer / per-partition / per-core reports, plots.

Operations are counted by :mod:`st2chip.analysis.traffic` on a placed ChipGraph (one accumulate per
spike per non-zero outgoing weight, graded inputs as MACs, neuron updates, spikes routed within a
core, between cores, across chips and in from the host). A profile prices them:

.. math::  E = \mathrm{ACs}\,E_{AC} + \mathrm{MACs}\,E_{MAC} + \mathrm{updates}\,E_{NU}
             + \sum_{r \in \{local, core, chip\}} \mathrm{routed}_r\,E_r
             + h_x E_{hop,x} + h_y E_{hop,y} + l\,E_{chip\,link}
             + \mathrm{cores}\,T\,t_{step}\,P_{static} + \mathrm{routed}_{host}\,E_{host}

where every message between cores is priced by its path on the mesh (the placement's ``(chip, x, y)``
positions): :math:`E_r` for delivering it, plus its on-chip hops east-west (:math:`h_x`) and north-south
(:math:`h_y`) and its chip-to-chip links (:math:`l`), all counted from the traces.

Terms a profile does not define cost nothing (the report says which counted events went unpriced).
Static power is charged per occupied core and shared among the layers on it by neuron count, so
per-core sums and per-layer sums of every term are equal. Everything is reported per sample
(one inference) and per time step.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from st2chip.chip.chipgraph import ChipGraph
from st2chip.chip.placement import BUILTIN, Placement, place
from st2chip.errors import InputError
from st2chip.io import write_json, write_text
from st2chip.analysis.traffic import HOPS, ROUTES, BoundaryCounts, GroupCounts, OpCounts, count_ops, measured_activity
from st2chip.traces import Traces
from st2chip.xylo.spec import XYLO_TARGETS

# ChipGraph has no partition field yet: everything it holds runs on neurocores.
NEUROCORE = "neurocore"
TERMS = ("ac", "mac", "neuron", "routing", "static", "host")
MAX_PROFILE_BYTES = 1 << 20
MAX_PROFILE_DEPTH = 3  # the profile object > 'sources' > one figure's {"status", "source"}
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")

#: every figure a profile may give (key = figure + unit suffix) and the Profile attribute it fills
FIGURES = {
    "E_AC_pJ": "e_ac_pj",
    "E_MAC_pJ": "e_mac_pj",
    "E_NEURON_UPDATE_pJ": "e_neuron_update_pj",
    "E_SPIKE_LOCAL_pJ": "e_spike_local_pj",
    "E_SPIKE_CORE_pJ": "e_spike_core_pj",
    "E_SPIKE_CHIP_pJ": "e_spike_chip_pj",
    "E_SPIKE_HOST_pJ": "e_spike_host_pj",
    "E_HOP_X_pJ": "e_hop_x_pj",
    "E_HOP_Y_pJ": "e_hop_y_pj",
    "E_CHIP_LINK_pJ": "e_chip_link_pj",
    "E_HOST_OP_pJ": "e_host_op_pj",
    "P_STATIC_CORE_mW": "p_static_core_mw",
    "T_STEP_us": "t_step_us",
}
_REQUIRED = ("name", "source", "E_AC_pJ", "E_MAC_pJ")
_TEXT = ("name", "source", "description", "resources")
_STATIC = ("P_STATIC_CORE_mW", "T_STEP_us")
STATUSES = ("published", "estimate")
_ROUTE_FIGURE = {"local": "E_SPIKE_LOCAL_pJ", "core": "E_SPIKE_CORE_pJ", "chip": "E_SPIKE_CHIP_pJ",
                 "host": "E_SPIKE_HOST_pJ"}
_HOP_FIGURE = {"hops_x": "E_HOP_X_pJ", "hops_y": "E_HOP_Y_pJ", "chip_links": "E_CHIP_LINK_pJ"}


# --------------------------------------------------------------------------- profiles

@dataclass(frozen=True)
class Profile:
    """Energy per event for one chip or process node; see the module docstring.

    Figures a profile leaves out are 0. ``resources`` names the chip resource model the
    placement uses (``loihi1``, ``loihi2``); ``figures`` holds the file's figure keys and
    ``sources`` each figure's ``{"status": "published" | "estimate", "source": ...}``.
    """

    name: str
    source: str
    path: str
    e_ac_pj: float
    e_mac_pj: float
    e_neuron_update_pj: float = 0.0
    e_spike_local_pj: float = 0.0
    e_spike_core_pj: float = 0.0
    e_spike_chip_pj: float = 0.0
    e_spike_host_pj: float = 0.0
    e_hop_x_pj: float = 0.0
    e_hop_y_pj: float = 0.0
    e_chip_link_pj: float = 0.0
    e_host_op_pj: float = 0.0
    p_static_core_mw: float = 0.0
    t_step_us: float = 0.0
    resources: str = "loihi2"
    figures: tuple[str, ...] = ()
    sources: dict = field(default_factory=dict, compare=False)

    def route_pj(self, route: str) -> float:
        """Energy of one message on ``route`` (one of :data:`~st2chip.analysis.traffic.ROUTES`)."""
        return getattr(self, FIGURES[_ROUTE_FIGURE[route]])

    def hop_pj(self, quantity: str) -> float:
        """Energy of one hop or chip link (one of :data:`~st2chip.analysis.traffic.HOPS`)."""
        return getattr(self, FIGURES[_HOP_FIGURE[quantity]])


def available_profiles() -> list[str]:
    """Names of the profiles shipped with st2chip (for ``--profile`` choices)."""
    folder = resources.files("st2chip.analysis") / "profiles"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


def profile_text(name_or_path: str | os.PathLike) -> tuple[str, str]:
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


def json_nesting(text: str) -> int:
    """How deeply arrays and objects nest in JSON ``text``, found without parsing it (strings skipped), so that
    a deeply nested file is refused before ``json.loads`` recurses into it."""
    depth = deepest = 0
    for bracket in _BRACKET.finditer(_JSON_STRING.sub('""', text)):
        depth += 1 if bracket.group() in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _number(where: str, data: dict, key: str) -> float:
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise InputError(f"{where}: key '{key}' must be a finite non-negative number, got {value!r}")
    return float(value)


def _check_keys(where: str, data: dict) -> None:
    """Unknown keys are errors; one that names a known figure with another unit says so."""
    for key in data:
        if key in FIGURES or key in _TEXT or key == "sources":
            continue
        stem = key.rsplit("_", 1)[0]
        known = next((f for f in FIGURES if f.rsplit("_", 1)[0] == stem), None)
        if known:
            raise InputError(f"{where}: key '{key}': unknown unit '{key.rsplit('_', 1)[-1]}' (write it as "
                             f"'{known}', in {known.rsplit('_', 1)[-1]})")
        raise InputError(f"{where}: unknown key '{key}' (known: {', '.join([*_TEXT, *FIGURES, 'sources'])})")


def _check_sources(where: str, data: dict) -> dict:
    """``sources``: per figure present, ``{"status": "published" | "estimate", "source": text}``."""
    sources = data.get("sources", {})
    if not isinstance(sources, dict):
        raise InputError(f"{where}: key 'sources' must be an object (figure -> status and source)")
    for key, entry in sources.items():
        if key not in FIGURES or key not in data:
            raise InputError(f"{where}: key 'sources.{key}' names no figure of this profile")
        if not isinstance(entry, dict) or entry.get("status") not in STATUSES \
                or not isinstance(entry.get("source"), str) or not entry["source"].strip():
            raise InputError(f"{where}: key 'sources.{key}' must be an object with 'status' "
                             f"({' or '.join(STATUSES)}) and a non-empty 'source'")
    return sources


def load_profile(name_or_path: str | os.PathLike) -> Profile:
    """Load an energy profile by bundled name (``45nm``, ``loihi``, ``loihi2``) or from a JSON path.

    Raises InputError naming the file and the key when the file is missing, not JSON, lacks a
    key, has a negative or non-finite figure, an unknown key or unit, or a bad ``sources`` entry.
    """
    where, text = profile_text(name_or_path)
    depth = json_nesting(text)
    if depth > MAX_PROFILE_DEPTH:
        raise InputError(f"{where}: JSON nested {depth} levels deep; a profile nests at most {MAX_PROFILE_DEPTH} "
                         f"(an entry of 'sources' in the profile object)")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(data, dict):
        raise InputError(f"{where}: must hold a JSON object, got {type(data).__name__}")
    if data.get("chip") in XYLO_TARGETS:
        raise InputError(f"{where}: a Xylo energy profile; it prices a Xylo run: --target {data['chip']}")
    for key in _REQUIRED:
        if key not in data:
            raise InputError(f"{where}: missing key '{key}'")
    _check_keys(where, data)
    present = [k for k in _STATIC if k in data]
    if present and len(present) != len(_STATIC):
        missing = next(k for k in _STATIC if k not in data)
        raise InputError(f"{where}: missing key '{missing}' (static power needs {', '.join(_STATIC)})")
    for key in _TEXT:
        if key in data and not isinstance(data[key], str):
            raise InputError(f"{where}: key '{key}' must be a string")
    if data.get("resources", BUILTIN[0]) not in BUILTIN:
        raise InputError(f"{where}: key 'resources' must name a resource model built into st2chip "
                         f"({', '.join(BUILTIN)}), got {data['resources']!r:.80}; a resource file is given with "
                         f"--resources")
    values = {FIGURES[k]: _number(where, data, k) for k in FIGURES if k in data}
    return Profile(name=data["name"], source=data["source"], path=where,
                   resources=data.get("resources", "loihi2"), figures=tuple(k for k in FIGURES if k in data),
                   sources=_check_sources(where, data), **values)


# --------------------------------------------------------------------------- pricing

def _energy_table(counts: OpCounts, profile: Profile) -> dict[str, np.ndarray]:
    """pJ per sample for each term, ``(layers, cores)``."""
    per = 1.0 / counts.samples
    t = {q: a * per for q, a in counts.table.items()}
    on_core = counts.neurons.sum(axis=0)
    share = np.divide(counts.neurons, on_core, out=np.zeros(counts.neurons.shape), where=on_core > 0)
    # mW x us = nJ = 1e3 pJ, for every step of one sample
    static = share * counts.steps * profile.t_step_us * profile.p_static_core_mw * 1e3
    return {
        "ac": t["acs"] * profile.e_ac_pj,
        "mac": t["macs"] * profile.e_mac_pj,
        "neuron": t["neuron_updates"] * profile.e_neuron_update_pj,
        "routing": sum(t[f"routed_{r}"] * profile.route_pj(r) for r in ROUTES if r != "host")
        + sum(t[q] * profile.hop_pj(q) for q in HOPS),
        "static": static,
        "host": t["routed_host"] * profile.e_spike_host_pj,
    }


@dataclass
class LayerEnergy:
    """One layer's operations and energy per sample (energy in pJ per term), with its sparsity."""

    layer: str
    partition: str
    neurons: int
    synapses: int
    weights: int
    cores: int
    acs: float
    macs: float
    neuron_updates: float
    spikes: float
    spikes_routed: dict[str, float]
    hops: dict[str, float]
    spike_rate: float
    weight_density: float
    energy_pj: dict[str, float]
    host_ops: float = 0.0  # a host partition's own operations (accumulates on the host CPU)

    @property
    def total_pj(self) -> float:
        return sum(self.energy_pj.values())


@dataclass
class CoreEnergy:
    """One neurocore's operations and energy per sample (energy in pJ per term)."""

    core: int
    chip: int
    layers: list[str]
    neurons: int
    synapses: int
    acs: float
    macs: float
    neuron_updates: float
    spikes: float
    spikes_routed: dict[str, float]
    hops: dict[str, float]
    energy_pj: dict[str, float]

    @property
    def total_pj(self) -> float:
        return sum(self.energy_pj.values())


_SUMMED = ("neurons", "synapses", "acs", "macs", "neuron_updates", "spikes", "host_ops")


def _summary(rows: list[LayerEnergy], steps: int) -> dict:
    """Sums of layer rows, energy per sample (inference) and per time step."""
    out: dict = {k: sum(getattr(r, k) for r in rows) for k in _SUMMED}
    out["spikes_routed"] = {route: sum(r.spikes_routed[route] for r in rows) for route in ROUTES}
    out["hops"] = {q: sum(r.hops[q] for r in rows) for q in HOPS}
    out["energy_pj"] = {t: sum(r.energy_pj[t] for r in rows) for t in TERMS}
    total = sum(r.total_pj for r in rows)
    out["energy_pj"]["total"] = total
    out["energy_per_inference_pj"] = total
    out["energy_per_step_pj"] = total / steps if steps else 0.0
    return out


def _nj(pj: float) -> str:
    """pJ as nJ for tables: three decimals, or four significant digits below 1 nJ."""
    nj = pj / 1e3
    return f"{nj:,.3f}" if abs(nj) >= 1 or nj == 0 else f"{nj:.4g}"


def markdown_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    """A Markdown table, first column left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    rule = "|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|"
    return [line(header), rule, *(line(r) for r in rows)]


MARKDOWN_CORES = 16  # per-core rows shown in Markdown; JSON has every core


@dataclass
class EnergyReport:
    """Operations and energy per sample: per layer, per partition, per core, and in total."""

    profile: Profile
    samples: int
    steps: int
    backend: str
    placement: Placement
    layers: list[LayerEnergy]
    cores: list[CoreEnergy]
    groups: list[GroupCounts]
    boundaries: list[BoundaryCounts]

    @property
    def total_pj(self) -> float:
        return sum(r.total_pj for r in self.layers)

    def partitions(self) -> dict[str, dict]:
        """Layer sums per partition (``neurocore`` for now; host partitions add their own)."""
        names = dict.fromkeys(r.partition for r in self.layers)
        return {p: _summary([r for r in self.layers if r.partition == p], self.steps) for p in names}

    def totals(self) -> dict:
        return _summary(self.layers, self.steps)

    def unpriced(self) -> list[str]:
        """Events that were counted but that the profile gives no figure for."""
        t = self.totals()
        checks = [("MACs", t["macs"], "E_MAC_pJ"), ("neuron updates", t["neuron_updates"], "E_NEURON_UPDATE_pJ"),
                  *((f"spikes routed ({r})", t["spikes_routed"][r], _ROUTE_FIGURE[r]) for r in ROUTES),
                  *((f"mesh {q.replace('_', ' ')}", t["hops"][q], _HOP_FIGURE[q]) for q in HOPS),
                  ("static power", len(self.cores), "P_STATIC_CORE_mW"),
                  ("host partition operations", t["host_ops"], "E_HOST_OP_pJ")]
        return [f"{what} (no {key})" for what, n, key in checks if n and key not in self.profile.figures]

    def to_dict(self) -> dict:
        """JSON-ready: per-sample layers, cores, partitions and totals; group counts over the batch."""
        total = self.total_pj
        with_total = lambda r: asdict(r) | {"energy_pj": r.energy_pj | {"total": r.total_pj}}  # noqa: E731
        return {
            "profile": asdict(self.profile),
            "backend": self.backend,
            "samples": self.samples,
            "steps": self.steps,
            "units": {"energy": "pJ per sample", "counts": "per sample", "groups": "whole batch"},
            "placement": {"resources": self.placement.resources.name, "cores": self.placement.n_cores,
                          "chips": self.placement.n_chips,
                          "mesh": None if self.placement.mesh_use is None else self.placement.mesh_use.to_dict()},
            "layers": [with_total(r) | {"share": r.total_pj / total if total else 0.0} for r in self.layers],
            "cores": [with_total(c) for c in self.cores],
            "partitions": self.partitions(),
            "total": self.totals(),
            "unpriced": self.unpriced(),
            "groups": [asdict(g) for g in self.groups],
            "boundaries": [{"name": b.name, "kind": b.kind, "to_chip_per_step": b.to_chip.tolist(),
                            "from_chip_per_step": b.from_chip.tolist()} for b in self.boundaries],
        }

    def to_markdown(self) -> str:
        """Per-layer, per-term, routing and per-core tables (each fits 80 columns), then the sources."""
        total, t = self.total_pj, self.totals()
        layer_rows = [(r.layer, f"{r.synapses:,}", f"{r.acs:,.1f}", f"{r.macs:,.1f}", _nj(r.total_pj),
                       f"{100.0 * r.total_pj / total if total else 0.0:.1f}") for r in self.layers]
        layer_rows.append(("total", f"{t['synapses']:,}", f"{t['acs']:,.1f}", f"{t['macs']:,.1f}", _nj(total),
                           "100.0" if total else "0.0"))
        term_rows = [(r.layer, *(_nj(r.energy_pj[k]) for k in TERMS)) for r in self.layers]
        route_rows = [(r.layer, f"{r.spike_rate:.3f}", f"{r.weight_density:.3f}",
                       *(f"{r.spikes_routed[k]:,.1f}" for k in ROUTES)) for r in self.layers]
        hop_rows = [(r.layer, f"{r.spikes_routed['core'] + r.spikes_routed['chip']:,.1f}",
                     *(f"{r.hops[q]:,.1f}" for q in HOPS), _per_message(r)) for r in self.layers]
        shown = sorted(self.cores, key=lambda c: -c.total_pj)[:MARKDOWN_CORES]
        core_rows = [(str(c.core), str(c.chip), ",".join(c.layers)[:24], f"{c.neurons:,}", _nj(c.total_pj))
                     for c in sorted(shown, key=lambda c: c.core)]
        more = len(self.cores) - len(shown)
        unpriced = self.unpriced()
        boundary_rows = [(b.name, b.kind, f"{b.to_chip.mean():,.1f}", f"{b.to_chip.max(initial=0):,.1f}",
                          f"{b.from_chip.mean():,.1f}", f"{b.from_chip.max(initial=0):,.1f}") for b in self.boundaries]
        return "\n".join([
            f"Energy per sample (one inference), profile `{self.profile.name}`: {self.samples} samples x "
            f"{self.steps} steps of traces from {self.backend}, partition(s) {', '.join(self.partitions())}, "
            f"placed on {self.placement.n_cores} core(s) of {self.placement.n_chips} chip(s) "
            f"({self.placement.resources.name}).", "",
            *markdown_table(("layer", "synapses (nnz)", "ACs/sample", "MACs/sample", "nJ/sample", "share %"),
                            layer_rows),
            "", f"Per inference {_nj(total)} nJ; per time step {_nj(t['energy_per_step_pj'])} nJ.", "",
            *[f"Host partition `{r.layer}`: {r.host_ops:,.1f} operations per sample (the attention product's "
              f"accumulates on the host CPU; the spikes it reads are routed to the host)." for r in self.layers
              if r.partition == "host"],
            "By term (nJ/sample):", "", *markdown_table(("layer", *TERMS), term_rows), "",
            "Spike rate (spikes per neuron per step), weight density (non-zero / stored) and spikes routed "
            "per sample:", "",
            *markdown_table(("layer", "rate", "density", *ROUTES), route_rows), "",
            "Mesh paths of the messages between cores, per sample (into each layer; links per message = on-chip "
            "hops + chip links, averaged):", "",
            *markdown_table(("layer", "messages", "hops E-W", "hops N-S", "chip links", "links/msg"), hop_rows), "",
            "Boundary traffic, host <-> neurocores: non-zero values per time step (mean over samples; mean and "
            "peak over steps; every step in energy.json):", "",
            *markdown_table(("boundary", "kind", "to chip", "peak", "from chip", "peak"), boundary_rows), "",
            f"Per core (the {len(shown)} costliest" + (f"; {more} more in energy.json" if more else "") + "):", "",
            *markdown_table(("core", "chip", "layers", "neurons", "nJ/sample"), core_rows), "",
            *([f"Counted but not priced by this profile: {', '.join(unpriced)}.", ""] if unpriced else []),
            f"Source: {self.profile.source}", ""])


def _per_message(row: LayerEnergy) -> str:
    """Mean links (on-chip hops and chip links) per message between cores of one report row."""
    messages = row.spikes_routed["core"] + row.spikes_routed["chip"]
    return f"{sum(row.hops.values()) / messages:.2f}" if messages else "-"


def _layer_rows(chip: ChipGraph, counts: OpCounts, energy: dict[str, np.ndarray], partition: str
                ) -> list[LayerEnergy]:
    per = 1.0 / counts.samples
    rows = []
    for i, layer in enumerate(counts.layers):
        pops = {p.name for p in chip.layer_populations(layer)}
        groups = [g for g in chip.synapses if g.target in pops]
        nnz, dense = sum(g.nnz for g in groups), sum(g.shape[0] * g.shape[1] for g in groups)
        neurons = int(counts.neurons[i].sum())
        senders = sum(p.size for p in chip.layer_populations(layer) if not p.readout)
        spikes = float(counts.table["spikes"][i].sum()) * per
        rows.append(LayerEnergy(
            layer=layer, partition=partition, neurons=neurons, synapses=nnz, weights=dense,
            cores=int(np.count_nonzero(counts.neurons[i])),
            acs=float(counts.table["acs"][i].sum()) * per, macs=float(counts.table["macs"][i].sum()) * per,
            neuron_updates=float(counts.table["neuron_updates"][i].sum()) * per, spikes=spikes,
            spikes_routed={r: float(counts.table[f"routed_{r}"][i].sum()) * per for r in ROUTES},
            hops={q: float(counts.table[q][i].sum()) * per for q in HOPS},
            spike_rate=spikes / (senders * counts.steps) if senders and counts.steps else 0.0,
            weight_density=nnz / dense if dense else 0.0,
            energy_pj={k: float(v[i].sum()) for k, v in energy.items()}))
    return rows


def _core_rows(counts: OpCounts, energy: dict[str, np.ndarray]) -> list[CoreEnergy]:
    per = 1.0 / counts.samples
    return [CoreEnergy(
        core=core.index, chip=core.chip, layers=core.layers, neurons=core.neurons, synapses=core.synapses,
        acs=float(counts.table["acs"][:, c].sum()) * per, macs=float(counts.table["macs"][:, c].sum()) * per,
        neuron_updates=float(counts.table["neuron_updates"][:, c].sum()) * per,
        spikes=float(counts.table["spikes"][:, c].sum()) * per,
        spikes_routed={r: float(counts.table[f"routed_{r}"][:, c].sum()) * per for r in ROUTES},
        hops={q: float(counts.table[q][:, c].sum()) * per for q in HOPS},
        energy_pj={k: float(v[:, c].sum()) for k, v in energy.items()})
        for c, core in enumerate(counts.placement.cores)]


def energy_report(chip: ChipGraph, traces: Traces, profile: Profile | str | os.PathLike = "45nm",
                  placement: Placement | None = None) -> EnergyReport:
    """Count operations in ``traces`` and price them with ``profile`` (a Profile, name or path).

    Without a ``placement`` the chip is placed on the profile's resource model (no chip limit), its mesh
    positions chosen for the traffic these traces measure.
    """
    prof = profile if isinstance(profile, Profile) else load_profile(profile)
    placed = placement or place(chip, prof.resources, max_chips=None, activity=measured_activity(chip, traces))
    counts = count_ops(chip, traces, placed)
    energy = _energy_table(counts, prof)
    return EnergyReport(profile=prof, samples=counts.samples, steps=counts.steps, backend=traces.backend,
                        placement=placed, layers=_layer_rows(chip, counts, energy, NEUROCORE)
                        + _host_rows(counts, prof), cores=_core_rows(counts, energy), groups=counts.groups,
                        boundaries=counts.boundaries)


def _host_rows(counts: OpCounts, profile: Profile) -> list[LayerEnergy]:
    """One row per host partition (partition ``host``): its own operations, priced by ``E_HOST_OP_pJ``."""
    per = 1.0 / counts.samples
    zero_routes = {r: 0.0 for r in ROUTES}
    zero_hops = {q: 0.0 for q in HOPS}
    return [LayerEnergy(layer=h.name, partition="host", neurons=0, synapses=0, weights=0, cores=0, acs=0.0,
                        macs=0.0, neuron_updates=0.0, spikes=0.0, spikes_routed=dict(zero_routes),
                        hops=dict(zero_hops), spike_rate=0.0,
                        weight_density=0.0, host_ops=h.ops * per,
                        energy_pj={t: (h.ops * per * profile.e_host_op_pj if t == "host" else 0.0) for t in TERMS})
            for h in counts.hosts]


def write_energy_report(report: EnergyReport, folder: str | os.PathLike, stem: str = "energy") -> dict[str, Path]:
    """Write ``<stem>.json``, ``<stem>.md``, ``<stem>.png`` (per layer) and ``<stem>_cores.png``, each atomically."""
    from st2chip.analysis.energy_plots import plot_cores, plot_layers

    folder = Path(folder)
    return {
        "json": write_json(folder / f"{stem}.json", report.to_dict()),
        "markdown": write_text(folder / f"{stem}.md", report.to_markdown()),
        "plot": plot_layers(report, folder / f"{stem}.png"),
        "cores_plot": plot_cores(report, folder / f"{stem}_cores.png"),
    }
