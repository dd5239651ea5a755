"""Placement: a ChipGraph's populations and synapse groups on neurocores and chips.

The limits come from a **resource model**, a data file with a unit, a source and a
``certain`` flag for every figure (``st2chip/chip/resources/loihi2.json``, ``loihi1.json``,
or a user's copy): :func:`load_resources`. Figures that are not public (Loihi 2's per-core
synapse memory and axon limits) are marked uncertain there; they are options.

What a core holds (see the resource file's ``synapse_memory_model``):

- **neurons**: the neurons placed on it;
- **synapse memory**: the incoming synapses of those neurons. A group stored dense (a numpy
  array; Lava's ``Dense``) costs ``weight_bits + delay_bits`` per (target, source) pair, zeros
  included; a group stored sparse (CSR; Lava's ``Sparse``) costs
  ``weight_bits + sparse_index_bits + delay_bits`` per non-zero weight;
- **fan-in** (input axons): per incoming group, the distinct source neurons with a synapse onto
  the core (every source neuron for a dense group), summed over the groups;
- **fan-out** (output axons): per neuron on the core and outgoing group, the number of
  destination slices (see below) it has a synapse into, summed.

Everything is computed from non-zeros: CSR ``indptr``/``indices`` and per-row counts, never a
dense copy of a sparse matrix.

**Policy** (greedy, one pass per stage; simple and predictable rather than optimal):

1. *Slices.* Each population is cut, in order, into slices of consecutive neurons. A slice
   grows while it fits one core: at most ``neurons_per_core`` neurons, at most
   ``synapse_memory_per_core`` of synapse memory (both prefix sums) and at most
   ``axons_in_per_core`` fan-in (measured on the slice, shrunk by bisection when over),
   whichever binds first; the table reports which one did.
2. *Fan-out.* With all slices known, each neuron's fan-out (destination slices) is counted and
   slices whose summed fan-out is over ``axons_out_per_core`` are cut further. Cutting a target
   adds destinations to its sources, so this repeats until nothing changes (slices only get
   smaller, so it ends).
3. *Cores.* Slices go onto cores in population order. With ``pack=True`` (default) a slice
   joins the core opened last when neurons, memory, fan-in and fan-out, summed, all still fit
   (next fit), so small populations (a layer's decay groups, a readout) share a core; with
   ``pack=False`` every population gets cores of its own.
4. *Chips.* The network needs ``ceil(cores / cores_per_chip)`` chips; more than ``max_chips`` chips
   (default 1: one Loihi 2 chip; ``None``: no limit) is an error.
5. *Mesh.* Every core gets a position ``(chip, x, y)`` on the chips' 2-D meshes and the board's grid of
   chips (:mod:`st2chip.chip.mesh`, figures ``mesh_columns`` and ``chip_grid_columns``), placed to reduce
   the traffic-weighted hops: the sum over pairs of cores of the messages between them times their
   Manhattan hops, a chip-to-chip link counting :data:`~st2chip.chip.mesh.CROSSING_HOPS` hops. Messages
   per step are counted per (source neuron, destination core) with a synapse between them, each weighted
   by the source's spike count: measured ones when ``activity`` is given (``st2chip energy`` passes the
   traces'), else expected ones (:func:`expected_activity`). Start: cores along a snake path in layer order
   or in traffic order (sorted by the traffic graph's Fiedler vector), whichever has the lower objective; then
   pairwise swaps that each lower the objective (within a fixed work budget on large graphs):
   deterministic, never worse than the start.

Inputs (:class:`~st2chip.chip.chipgraph.InputPort`) stay off-core: the host sends their spikes;
they count towards the fan-in of the cores they feed. What cannot fit raises
:class:`PlacementError`, naming every offending layer at once with the resource and both
numbers (``layer 'fc1': fan-in 5000 axons > 4096 per core``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import scipy.sparse as sp

from st2chip.chip.chipgraph import ChipGraph, Population, SynapseGroup
from st2chip.chip.mesh import CROSSING_HOPS, Mesh, arrange, traffic_hops, traffic_matrix
from st2chip.errors import InputError, St2chipError

RESOURCE_DIR = Path(__file__).parent / "resources"
BUILTIN = ("loihi2", "loihi1")
MAX_RESOURCE_FILE = 1 << 20  # bytes: a resource file is a page of JSON

#: memory units a resource file may use, in bits
MEMORY_UNITS = {"bits": 1, "bytes": 8, "KiB": 8 * 1024, "MiB": 8 * 1024 * 1024}

#: every figure a resource file must give: its allowed units and whether it must be positive
FIGURES: dict[str, tuple[tuple[str, ...], bool]] = {
    "cores_per_chip": (("cores",), True),
    "embedded_cpus_per_chip": (("cpus",), False),
    "neurons_per_chip": (("neurons",), True),
    "synapses_per_chip": (("synapses",), True),
    "neurons_per_core": (("neurons",), True),
    "synapse_memory_per_core": (tuple(MEMORY_UNITS), True),
    "axons_in_per_core": (("axons",), True),
    "axons_out_per_core": (("axons",), True),
    "weight_bits": (("bits",), True),
    "sparse_index_bits": (("bits",), False),
    "max_synaptic_delay": (("steps",), True),
    "graded_spike_bits": (("bits",), False),
    "mesh_columns": (("cores",), True),
    "chip_grid_columns": (("chips",), True),
}


class PlacementError(St2chipError):
    """The ChipGraph does not fit the resource model; the message names every offending layer."""


@dataclass(frozen=True)
class Resources:
    """One chip's resource limits (all integers; ``synapse_memory_per_core`` in **bits**).

    Build one with :func:`load_resources`; change figures with :meth:`replace`.
    ``figures`` keeps the file's entries (value, unit, source, certain, note) for reports.
    """

    name: str
    cores_per_chip: int
    embedded_cpus_per_chip: int
    neurons_per_chip: int
    synapses_per_chip: int
    neurons_per_core: int
    synapse_memory_per_core: int
    axons_in_per_core: int
    axons_out_per_core: int
    weight_bits: int
    sparse_index_bits: int
    max_synaptic_delay: int
    graded_spike_bits: int
    mesh_columns: int
    chip_grid_columns: int
    source: str = "built in"
    figures: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        for name, (_, positive) in FIGURES.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise InputError(f"resources '{self.name}': field '{name}' must be an integer, got {value!r}")
            if value < 0 or (positive and value == 0):
                raise InputError(f"resources '{self.name}': field '{name}' must be "
                                 f"{'positive' if positive else 'non-negative'}, got {value}")
            object.__setattr__(self, name, int(value))

    def replace(self, **figures: int) -> Resources:
        """A copy with some figures changed (e.g. ``axons_in_per_core=1024``); marks them as set by the caller."""
        entries = dict(self.figures)
        for name in figures:
            if name in FIGURES:
                entries[name] = {"value": figures[name], "unit": "bits" if name == "synapse_memory_per_core"
                                 else FIGURES[name][0][0], "source": "set by the caller", "certain": True}
        changed = ", ".join(f"{name}={value}" for name, value in figures.items())
        return dataclasses.replace(self, figures=entries, source=f"{self.source}; changed: {changed}", **figures)

    def uncertain(self) -> list[str]:
        """Figures the resource file marks ``"certain": false``."""
        return [name for name, entry in self.figures.items() if isinstance(entry, dict) and not entry.get("certain")]

    @property
    def label(self) -> str:
        """The model's name, with its file when it is not a built-in one."""
        builtin = any(self.source == str(RESOURCE_DIR / f"{name}.json") for name in BUILTIN)
        return self.name if builtin or self.source == "built in" else f"{self.name} ({self.source})"

    @property
    def synapse_memory_bytes(self) -> float:
        return self.synapse_memory_per_core / 8

    @property
    def rows_by_columns(self) -> str:
        """A chip's mesh, e.g. ``8 x 16`` cores."""
        return f"{-(-self.cores_per_chip // self.mesh_columns)} x {self.mesh_columns} cores"


def _entry_error(path: Path, name: str, what: str) -> InputError:
    return InputError(f"{path}: field 'figures.{name}' {what}")


def _parse_resources(data: Any, path: Path) -> Resources:
    if not isinstance(data, dict):
        raise InputError(f"{path}: a resource file holds one JSON object, got {type(data).__name__}")
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not name:
        raise InputError(f"{path}: field 'name' must be a non-empty string")
    figures = data.get("figures")
    if not isinstance(figures, dict):
        raise InputError(f"{path}: field 'figures' is missing or not an object")
    unknown = sorted(set(figures) - set(FIGURES))
    if unknown:
        raise _entry_error(path, unknown[0], f"is not a known figure (known: {', '.join(FIGURES)})")
    values: dict[str, int] = {}
    for fig, (units, positive) in FIGURES.items():
        if fig not in figures:
            raise InputError(f"{path}: field 'figures.{fig}' is missing")
        entry = figures[fig]
        if not isinstance(entry, dict):
            raise _entry_error(path, fig, "must be an object with value, unit, source and certain")
        for key in ("value", "unit", "source", "certain"):
            if key not in entry:
                raise InputError(f"{path}: field 'figures.{fig}.{key}' is missing")
        value, unit = entry["value"], entry["unit"]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{path}: field 'figures.{fig}.value' must be a number, got {value!r}")
        if not math.isfinite(value):
            raise InputError(f"{path}: field 'figures.{fig}.value' must be finite, got {value!r}")
        if value < 0 or (positive and value == 0):
            raise InputError(f"{path}: field 'figures.{fig}.value' must be "
                             f"{'positive' if positive else 'non-negative'}, got {value!r}")
        if unit not in units:
            raise InputError(f"{path}: field 'figures.{fig}.unit' {unit!r} is not a known unit for this "
                             f"figure (use {' or '.join(units)})")
        scaled = value * MEMORY_UNITS[unit] if fig == "synapse_memory_per_core" else value
        if scaled != int(scaled):
            raise InputError(f"{path}: field 'figures.{fig}.value' must be a whole number of "
                             f"{'bits' if fig == 'synapse_memory_per_core' else unit}, got {value!r}")
        if not isinstance(entry["source"], str) or not entry["source"].strip():
            raise InputError(f"{path}: field 'figures.{fig}.source' must be a non-empty string (where the figure "
                             f"comes from)")
        if not isinstance(entry["certain"], bool):
            raise InputError(f"{path}: field 'figures.{fig}.certain' must be true or false")
        if not isinstance(entry.get("note", ""), str):
            raise InputError(f"{path}: field 'figures.{fig}.note' must be a string")
        values[fig] = int(scaled)
    return Resources(name=name, source=str(path), figures=figures, **values)


def load_resources(spec: str | os.PathLike | Resources = "loihi2") -> Resources:
    """A built-in resource model by name (``loihi2``, ``loihi1``) or a user's JSON file, validated.

    A bad file raises :class:`~st2chip.errors.InputError` naming the file and the field
    (missing, not finite, negative, a unit the figure does not take, an unknown figure).
    """
    if isinstance(spec, Resources):
        return spec
    text = os.fspath(spec)
    path = RESOURCE_DIR / f"{text}.json" if text in BUILTIN else Path(text)
    if not path.is_file():
        raise InputError(f"{path}: no such resource file (built-in models: {', '.join(BUILTIN)})")
    size = path.stat().st_size
    if size > MAX_RESOURCE_FILE:
        raise InputError(f"{path}: a resource file of {size} bytes is larger than {MAX_RESOURCE_FILE} bytes")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise InputError(f"{path}: cannot read the resource file: {err}") from None
    return _parse_resources(data, path)


# --------------------------------------------------------------------------- placement records


@dataclass(frozen=True)
class CoreSlice:
    """Neurons ``start:stop`` (positions in the population, not layer indices) of one population."""

    population: str
    layer: str
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start

    def label(self, population_size: int | None = None) -> str:
        whole = self.start == 0 and population_size is not None and self.stop == population_size
        return self.population if whole else f"{self.population}[{self.start}:{self.stop}]"


@dataclass
class Core:
    """One neurocore: what it holds and how much of each resource that takes."""

    index: int          # global core number (the order placement made it in)
    chip: int
    core: int           # number on its chip: y * mesh_columns + x
    slices: list[CoreSlice]
    neurons: int = 0
    synapses: int = 0         # non-zero weights onto its neurons
    stored_weights: int = 0   # weights it stores (a dense group stores zeros too)
    memory_bits: int = 0
    fan_in: int = 0
    fan_out: int = 0
    x: int = 0          # column on its chip's mesh
    y: int = 0          # row on its chip's mesh

    @property
    def memory_bytes(self) -> float:
        return self.memory_bits / 8

    @property
    def layers(self) -> list[str]:
        return list(dict.fromkeys(s.layer for s in self.slices))

    @property
    def populations(self) -> list[str]:
        return list(dict.fromkeys(s.population for s in self.slices))


@dataclass
class MeshUse:
    """Traffic between cores on the mesh (policy stage 5), per time step: ``messages`` between distinct cores,
    the on-chip ``hops`` and chip-to-chip ``crossings`` they take (summed over messages), the objective with
    layer order, at the start taken (``start``: ``layers`` or ``traffic`` order) and after the swaps.
    ``activity`` says whether spike counts were ``measured`` or ``expected``."""

    messages: float
    hops: float
    crossings: float
    layer_cost: float
    start: str
    start_cost: float
    cost: float
    swaps: int
    sweeps: int
    seconds: float
    activity: str

    @property
    def mean_hops(self) -> float:
        """Links (on-chip hops and chip crossings) per message between cores."""
        return (self.hops + self.crossings) / self.messages if self.messages else 0.0

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "mean_hops": self.mean_hops, "crossing_hops": CROSSING_HOPS}


@dataclass
class Placement:
    """Where every neuron sits (cores, and each core's chip and mesh position), per-core use, per-layer cores."""

    resources: Resources
    cores: list[Core]
    population_sizes: dict[str, int]
    layer_order: list[str]
    bound: dict[str, str]          # layer -> the resource that ended most of its slices ("-" if one slice)
    inputs: dict[str, int]         # off-core input ports and their sizes
    max_chips: int | None
    pack: bool
    seconds: float = 0.0
    mesh_use: MeshUse | None = None

    @property
    def mesh(self) -> Mesh:
        """The slots of the chips used (:mod:`st2chip.chip.mesh`)."""
        res = self.resources
        return Mesh(res.cores_per_chip, res.mesh_columns, res.chip_grid_columns, self.n_chips)

    def slots(self) -> np.ndarray:
        """The mesh slot (``chip * cores_per_chip + core``) of each core, by core index."""
        return np.array([c.chip * self.resources.cores_per_chip + c.core for c in self.cores], dtype=np.int64)

    @property
    def n_cores(self) -> int:
        return len(self.cores)

    @property
    def n_chips(self) -> int:
        return -(-len(self.cores) // self.resources.cores_per_chip) if self.cores else 0

    def layer_cores(self) -> dict[str, int]:
        """Distinct cores that hold neurons of each layer (a shared core counts for each of its layers)."""
        cores: dict[str, set[int]] = {layer: set() for layer in self.layer_order}
        for core in self.cores:
            for s in core.slices:
                cores.setdefault(s.layer, set()).add(core.index)
        return {layer: len(found) for layer, found in cores.items()}

    def assignment(self) -> dict[str, np.ndarray]:
        """Per population: the global core number of each of its neurons (by position)."""
        out = {name: np.full(size, -1, dtype=np.int64) for name, size in self.population_sizes.items()}
        for core in self.cores:
            for s in core.slices:
                out[s.population][s.start:s.stop] = core.index
        return out

    def chips(self) -> list[dict]:
        """Per chip: cores, neurons and non-zero synapses (against the chip-level figures)."""
        out = []
        res = self.resources
        for chip in range(self.n_chips):
            cores = [c for c in self.cores if c.chip == chip]
            column, row = chip % res.chip_grid_columns, chip // res.chip_grid_columns
            out.append({"chip": chip, "grid": [column, row], "cores": len(cores),
                        "core_use": len(cores) / res.cores_per_chip, "neurons": sum(c.neurons for c in cores),
                        "synapses": sum(c.synapses for c in cores)})
        return out

    def summary(self) -> str:
        """Cores and chips used and the per-core limits; a second line names the uncertain figures."""
        res = self.resources
        chips = "no chip limit" if self.max_chips is None else f"at most {self.max_chips}"
        line = (f"placement ({res.label}): {self.n_cores} core{'s' * (self.n_cores != 1)} on {self.n_chips} "
                f"chip{'s' * (self.n_chips != 1)} of {res.cores_per_chip} cores ({chips}); per core at most "
                f"{res.neurons_per_core} neurons, {res.synapse_memory_bytes / 1024:g} KiB synapse memory, "
                f"fan-in {res.axons_in_per_core}, fan-out {res.axons_out_per_core} axons")
        if self.inputs:
            line += "; off-core (host) inputs: " + ", ".join(f"{n} ({s})" for n, s in self.inputs.items())
        use = self.mesh_use
        if use is not None and use.messages:
            line += (f"\nmesh ({res.rows_by_columns}, chips on a grid {res.chip_grid_columns} wide): "
                     f"{use.mean_hops:.2f} links per message between cores ({use.activity} traffic), "
                     f"{use.crossings / use.messages:.3f} of them chip-to-chip; objective {use.cost:,.0f} "
                     f"({use.start} order start {use.start_cost:,.0f}, layer order {use.layer_cost:,.0f}; "
                     f"{use.swaps} swaps)")
        uncertain = res.uncertain()
        if uncertain:
            line += (f"\nuncertain figures of {res.name} (estimates, not public figures; options in a resource file): "
                     f"{', '.join(uncertain)}")
        return line

    def to_dict(self) -> dict:
        res = self.resources
        return {
            "resources": res.name, "resource_file": res.source, "max_chips": self.max_chips, "pack": self.pack,
            "cores_used": self.n_cores, "chips_used": self.n_chips, "seconds": round(self.seconds, 4),
            "limits": {name: getattr(res, name) for name in FIGURES},
            "uncertain": res.uncertain(),
            "inputs_off_core": dict(self.inputs),
            "layers": {layer: {"cores": n, "bound": self.bound.get(layer, "-")}
                       for layer, n in self.layer_cores().items()},
            "chips": self.chips(),
            "mesh": {"columns": res.mesh_columns, "rows": self.mesh.rows, "chip_grid_columns": res.chip_grid_columns,
                     **(self.mesh_use.to_dict() if self.mesh_use is not None else {})},
            "cores": [{"core": c.index, "chip": c.chip, "core_on_chip": c.core, "x": c.x, "y": c.y,
                       "slices": [[s.population, s.start, s.stop] for s in c.slices],
                       "neurons": c.neurons, "synapses": c.synapses, "stored_weights": c.stored_weights,
                       "memory_bytes": c.memory_bytes, "fan_in": c.fan_in, "fan_out": c.fan_out}
                      for c in self.cores],
        }


# --------------------------------------------------------------------------- the pass


class _Incoming:
    """One synapse group as its target population sees it: per-row costs from non-zeros only."""

    def __init__(self, group: SynapseGroup, res: Resources) -> None:
        self.group = group
        self.source = group.source
        m = group.mantissa
        n_rows, self.n_src = group.shape
        delay_bits = int(math.ceil(math.log2(group.delay + 1))) if group.delay > 0 else 0
        self.sparse = sp.issparse(m)
        if self.sparse:
            csr = m if m.format == "csr" else sp.csr_matrix(m)
            if not csr.has_canonical_format:
                csr = csr.copy()
                csr.sum_duplicates()
            if csr.nnz and not np.all(csr.data):  # explicit zeros are not stored
                csr = csr.copy()
                csr.eliminate_zeros()
            self.indptr = np.asarray(csr.indptr, dtype=np.int64)
            self.indices = csr.indices
            self.row_nnz = np.diff(self.indptr)
            self.row_stored = self.row_nnz
            self.row_bits = self.row_nnz * (res.weight_bits + res.sparse_index_bits + delay_bits)
            self.row_fan_in = self.row_nnz
            self.mask = np.zeros(self.n_src, dtype=bool)
        else:
            self.row_nnz = np.count_nonzero(np.asarray(m), axis=1).astype(np.int64)
            self.row_stored = np.full(n_rows, self.n_src, dtype=np.int64)
            self.row_bits = self.row_stored * (res.weight_bits + delay_bits)
            self.row_fan_in = self.row_stored

    def fan_in(self, a: int, b: int) -> int:
        """Distinct source neurons with a synapse onto rows ``a:b``."""
        if not self.sparse:
            return self.n_src if b > a else 0
        lo, hi = self.indptr[a], self.indptr[b]
        if hi - lo <= 1:
            return int(hi - lo)
        idx = self.indices[lo:hi]
        k = idx.size
        if k * (math.log2(k) - 4) < self.n_src / 40:  # measured: sorting k entries beats a pass over the mask
            return int(np.unique(idx).size)
        self.mask[idx] = True
        count = int(np.count_nonzero(self.mask))
        self.mask[idx] = False
        return count

    def fan_in_bound(self, a: int, b: int) -> int:
        if not self.sparse:
            return self.n_src
        return int(min(self.n_src, self.indptr[b] - self.indptr[a]))


def row_costs(group: SynapseGroup, res: Resources) -> tuple[np.ndarray, np.ndarray]:
    """Per target neuron of ``group``: the input axons (fan-in) and synapse memory (bits) it takes on a core,
    as placement charges them (lowering's pass ``fanin`` splits what one core cannot hold)."""
    incoming = _Incoming(group, res)
    return incoming.row_fan_in, incoming.row_bits


class _Pop:
    """A population with its incoming groups and prefix sums of its per-neuron costs."""

    def __init__(self, pop: Population, incoming: list[_Incoming]) -> None:
        self.pop = pop
        self.name, self.layer, self.size = pop.name, pop.layer, pop.size
        self.incoming = incoming
        zeros = np.zeros(self.size, dtype=np.int64)
        bits, nnz, stored, fan_in = zeros.copy(), zeros.copy(), zeros.copy(), zeros.copy()
        for g in incoming:
            bits += g.row_bits
            nnz += g.row_nnz
            stored += g.row_stored
            fan_in += g.row_fan_in
        self.row_bits, self.row_fan_in = bits, fan_in
        self.cum_bits = np.concatenate([[0], np.cumsum(bits)])
        self.cum_nnz = np.concatenate([[0], np.cumsum(nnz)])
        self.cum_stored = np.concatenate([[0], np.cumsum(stored)])
        self.slices: list[tuple[int, int, str]] = []   # (start, stop, what ended it)
        self._fan_in: dict[tuple[int, int], int] = {}

    def fan_in(self, a: int, b: int) -> int:
        key = (a, b)
        if key not in self._fan_in:
            self._fan_in[key] = sum(g.fan_in(a, b) for g in self.incoming)
        return self._fan_in[key]

    def fan_in_fits(self, a: int, b: int, cap: int) -> bool:
        if sum(g.fan_in_bound(a, b) for g in self.incoming) <= cap:
            return True
        return self.fan_in(a, b) <= cap

    def cut(self, res: Resources) -> None:
        """Stage 1: consecutive slices bounded by neurons, synapse memory and fan-in."""
        npc, mem, fan = res.neurons_per_core, res.synapse_memory_per_core, res.axons_in_per_core
        start, n, guess = 0, self.size, 0
        while start < n:
            end, why = min(n, start + npc), "neurons"
            mem_end = int(np.searchsorted(self.cum_bits, self.cum_bits[start] + mem, side="right")) - 1
            if mem_end < end:
                end, why = mem_end, "memory"
            fit = self._largest_fan_in_fit(start, end, fan, guess)
            if fit < end:
                end, why, guess = fit, "fan-in", fit - start
            self.slices.append((start, end, why if end < n else "end"))
            start = end

    def _largest_fan_in_fit(self, start: int, end: int, cap: int, guess: int) -> int:
        """The largest ``e <= end`` whose slice ``start:e`` has fan-in at most ``cap`` (``start + 1`` fits: checked
        before). Fan-in only grows with the slice, so: start at the last fan-in-bound slice's length (neighbouring
        slices are alike), search outwards from it in steps 1, 2, 4, ... to bracket the answer, then bisect;
        with a close guess that is two or three probes, on slices of about the final size."""
        lo, hi = start + 1, end + 1  # lo fits; hi does not (end + 1 stands for "beyond the range")
        first = min(start + guess, end)
        if guess <= 0 or first <= lo:
            if self.fan_in_fits(start, end, cap):
                return end
            hi = end
        elif self.fan_in_fits(start, first, cap):
            lo, step = first, 1
            while lo + step < hi:
                if not self.fan_in_fits(start, lo + step, cap):
                    hi = lo + step
                    break
                lo, step = lo + step, step * 2
        else:
            hi, step = first, 1
            while hi - step > lo:
                if self.fan_in_fits(start, hi - step, cap):
                    lo = hi - step
                    break
                hi, step = hi - step, step * 2
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.fan_in_fits(start, mid, cap):
                lo = mid
            else:
                hi = mid
        return lo

    def split_fan_out(self, cum_out: np.ndarray, cap: int) -> bool:
        """Stage 2: cut slices whose summed fan-out exceeds ``cap``; True when anything changed."""
        new, changed = [], False
        for a, b, why in self.slices:
            if cum_out[b] - cum_out[a] <= cap:
                new.append((a, b, why))
                continue
            changed = True
            start = a
            while start < b:
                end = min(b, int(np.searchsorted(cum_out, cum_out[start] + cap, side="right")) - 1)
                new.append((start, end, "fan-out" if end < b else why))
                start = end
        self.slices = new
        return changed


def _fmt_bits(bits: float) -> str:
    return f"{bits / 8 / 1024:.1f} KiB" if bits >= 8 * 1024 else f"{bits:g} bits"


def _fan_out_counts(pops: list[_Pop]) -> dict[str, np.ndarray]:
    """Per population: for each neuron, the destination slices it sends to (summed over its groups)."""
    out = {p.name: np.zeros(p.size, dtype=np.int64) for p in pops}
    for target in pops:
        if not target.slices:
            continue
        for g in target.incoming:
            counts = out.get(g.source)
            if counts is None:  # an input port: the host sends it, off-core
                continue
            if not g.sparse:
                counts += len(target.slices)
                continue
            for a, b, _ in target.slices:
                lo, hi = g.indptr[a], g.indptr[b]
                if hi > lo:
                    # repeated indices add once: a[idx] += 1 writes a[idx] + 1 for each distinct idx
                    counts[g.indices[lo:hi]] += 1
    return out


def expected_activity(chip: ChipGraph) -> dict[str, np.ndarray]:
    """Expected spikes per step of each population's neurons when no traces are at hand: every step for one
    that always fires or sends graded values, else the spike rate lowering assumes
    (:data:`~st2chip.chip.lowering.lowrank.SPIKE_RATE`)."""
    from st2chip.chip.lowering.lowrank import SPIKE_RATE  # lowering's plan imports this module
    return {p.name: np.full(p.size, 1.0 if p.always_on or p.graded else SPIKE_RATE) for p in chip.populations}


def place(chip: ChipGraph, resources: str | os.PathLike | Resources = "loihi2", *,
          max_chips: int | None = 1, pack: bool = True,
          activity: Mapping[str, np.ndarray] | None = None) -> Placement:
    """Assign every population's neurons to neurocores, and the cores to chips and mesh positions (policy:
    module docstring).

    ``max_chips`` (default 1, a single chip; ``None`` for no limit) bounds the chips used. ``activity``
    (population name -> spike count of each neuron, any time span) weighs the traffic the mesh stage
    reduces; without it, :func:`expected_activity`.
    Raises :class:`PlacementError` naming every layer that cannot fit, with the resource and
    both numbers; a bad resource file raises :class:`~st2chip.errors.InputError`.
    """
    t0 = time.perf_counter()
    res = load_resources(resources)
    if max_chips is not None and max_chips < 1:
        raise InputError(f"max_chips must be at least 1 (or None for no limit), got {max_chips}")
    errors: dict[tuple[str, str], tuple[float, float, str]] = {}  # (layer, resource) -> (need, limit, text)

    def fail(layer: str, resource: str, need: float, limit: float, text: str) -> None:
        key = (layer, resource)
        if key not in errors or need > errors[key][0]:
            errors[key] = (need, limit, text)

    incoming: dict[str, list[_Incoming]] = {p.name: [] for p in chip.populations}
    layer_of = {p.name: p.layer for p in chip.populations}
    for s in chip.synapses:
        incoming[s.target].append(_Incoming(s, res))
        if 1 + s.delay > res.max_synaptic_delay:
            fail(layer_of[s.target], "delay", 1 + s.delay, res.max_synaptic_delay,
                 f"layer '{layer_of[s.target]}': synaptic delay {1 + s.delay} steps (group '{s.name}') > "
                 f"{res.max_synaptic_delay} steps")
    pops = [_Pop(p, incoming[p.name]) for p in chip.populations]

    # stage 1: single neurons first (every offending layer is reported), then slices
    for p in pops:
        if p.size == 0:
            continue
        worst_bits = int(p.row_bits.max())
        worst_fan = int(p.row_fan_in.max())
        ok = True
        if worst_bits > res.synapse_memory_per_core:
            fail(p.layer, "memory", worst_bits, res.synapse_memory_per_core,
                 f"layer '{p.layer}': synapse memory {_fmt_bits(worst_bits)} for one neuron > "
                 f"{_fmt_bits(res.synapse_memory_per_core)} per core")
            ok = False
        if worst_fan > res.axons_in_per_core:
            fail(p.layer, "fan-in", worst_fan, res.axons_in_per_core,
                 f"layer '{p.layer}': fan-in {worst_fan} axons > {res.axons_in_per_core} per core")
            ok = False
        if ok:
            p.cut(res)

    # stage 2: fan-out, until no slice changes
    while True:
        counts = _fan_out_counts(pops)
        changed = False
        for p in pops:
            if not p.slices:
                continue
            worst = int(counts[p.name].max())
            if worst > res.axons_out_per_core:
                fail(p.layer, "fan-out", worst, res.axons_out_per_core,
                     f"layer '{p.layer}': fan-out {worst} axons (destination core slices of one neuron) > "
                     f"{res.axons_out_per_core} per core")
                continue
            cum = np.concatenate([[0], np.cumsum(counts[p.name])])
            changed |= p.split_fan_out(cum, res.axons_out_per_core)
        if not changed:
            break

    if errors:
        raise PlacementError(_error_text(res, [text for _, _, text in errors.values()]))

    # stage 3: cores (next fit), stage 4: chips
    cores: list[Core] = []
    slice_cores: dict[str, list[int]] = {p.name: [] for p in pops}
    limits = (res.neurons_per_core, res.synapse_memory_per_core, res.axons_in_per_core, res.axons_out_per_core)
    for p in pops:
        cum_out = np.concatenate([[0], np.cumsum(counts[p.name])])
        for a, b, _ in p.slices:
            use = (b - a, int(p.cum_bits[b] - p.cum_bits[a]), p.fan_in(a, b), int(cum_out[b] - cum_out[a]))
            last = cores[-1] if cores else None
            fits = (pack and last is not None and
                    all(have + add <= cap for have, add, cap in
                        zip((last.neurons, last.memory_bits, last.fan_in, last.fan_out), use, limits)))
            if not fits:
                index = len(cores)
                last = Core(index=index, chip=index // res.cores_per_chip, core=index % res.cores_per_chip,
                            slices=[])
                cores.append(last)
            last.slices.append(CoreSlice(p.name, p.layer, a, b))
            slice_cores[p.name].append(last.index)
            last.neurons += use[0]
            last.memory_bits += use[1]
            last.fan_in += use[2]
            last.fan_out += use[3]
            last.synapses += int(p.cum_nnz[b] - p.cum_nnz[a])
            last.stored_weights += int(p.cum_stored[b] - p.cum_stored[a])

    bound = {}
    for layer in chip.layers():
        whys = Counter(why for p in pops if p.layer == layer for _, _, why in p.slices if why != "end")
        bound[layer] = whys.most_common(1)[0][0] if whys else "-"
    placement = Placement(resources=res, cores=cores, population_sizes={p.name: p.size for p in pops},
                          layer_order=chip.layers(), bound=bound, inputs={i.name: i.size for i in chip.inputs},
                          max_chips=max_chips, pack=pack)
    if max_chips is not None and placement.n_chips > max_chips:
        per_layer = ", ".join(f"'{layer}' {n}" for layer, n in placement.layer_cores().items())
        raise PlacementError(_error_text(res, [
            f"the network needs {placement.n_chips} chips ({placement.n_cores} cores at {res.cores_per_chip} per "
            f"chip) > {max_chips} allowed (max_chips, --max-chips); cores per layer: {per_layer}"]))
    weights = activity if activity is not None else expected_activity(chip)
    traffic = _core_traffic(pops, slice_cores, placement.assignment(), weights, len(cores))
    placement.mesh_use = _arrange(placement, traffic, "measured" if activity is not None else "expected")
    placement.seconds = time.perf_counter() - t0
    return placement


def _core_traffic(pops: list[_Pop], slice_cores: dict[str, list[int]], core_of: dict[str, np.ndarray],
                  activity: Mapping[str, np.ndarray], n_cores: int) -> sp.csr_matrix:
    """Messages per step between cores: each (source neuron, destination core) pair with a synapse between them
    carries the source's activity. Input ports (the host's) are left out. A population's cores rise with its
    neurons' positions (stage 3 makes them in order), so a slice's distinct sources group into runs by core.
    Kept compact (32-bit entries; one destination count per slice): a dense core graph has many entries."""
    src, weight, dst, counts = [], [], [], []
    for p in pops:
        for g in p.incoming:
            if g.source not in core_of:
                continue
            cores = core_of[g.source].astype(np.int32)
            act = np.asarray(activity[g.source], dtype=np.float32)
            if not g.sparse:
                per_core = np.bincount(cores, weights=act, minlength=n_cores).astype(np.float32)
                senders = np.flatnonzero(per_core).astype(np.int32)
            for (a, b, _), d in zip(p.slices, slice_cores[p.name]):
                if g.sparse:
                    idx = np.unique(g.indices[g.indptr[a]:g.indptr[b]])
                    idx = idx[act[idx] > 0]
                    if idx.size == 0:
                        continue
                    c = cores[idx]
                    starts = np.flatnonzero(np.concatenate([[True], c[1:] != c[:-1]]))
                    src.append(c[starts])
                    weight.append(np.add.reduceat(act[idx], starts))
                else:
                    src.append(senders)
                    weight.append(per_core[senders])
                dst.append(d)
                counts.append(src[-1].size)
    rows = np.concatenate(src) if src else np.zeros(0, dtype=np.int32)
    del src
    return traffic_matrix(n_cores, rows, np.repeat(np.array(dst, dtype=np.int32), counts),
                          np.concatenate(weight) if weight else np.zeros(0, dtype=np.float32))


def _arrange(placement: Placement, traffic: sp.csr_matrix, activity: str) -> MeshUse:
    """Stage 5: every core's mesh position (:func:`st2chip.chip.mesh.arrange`), written into the cores."""
    mesh = placement.mesh
    done = arrange(mesh, traffic)
    chip, x, y = mesh.coords(done.slots)
    for core in placement.cores:
        i = core.index
        core.chip, core.x, core.y = int(chip[i]), int(x[i]), int(y[i])
        core.core = core.y * mesh.columns + core.x
    hops, crossings = traffic_hops(mesh, traffic, done.slots)
    return MeshUse(messages=float(traffic.data.sum(dtype=np.float64)) / 2, hops=hops, crossings=crossings,
                   layer_cost=done.layer_cost, start=done.start, start_cost=done.start_cost, cost=done.cost,
                   swaps=done.swaps, sweeps=done.sweeps, seconds=done.seconds, activity=activity)


def _error_text(res: Resources, problems: list[str]) -> str:
    uncertain = res.uncertain()
    hint = (f" (uncertain figures of '{res.name}', options in a resource file: {', '.join(uncertain)})"
            if uncertain else "")
    return f"does not fit {res.label}: " + "; ".join(problems) + hint
