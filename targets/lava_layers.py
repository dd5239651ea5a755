"""Lava checked one population at a time, on the inputs the engine recorded for it.

A whole-network Lava run starts one OS process (about 17 MiB) per population,
synapse group, monitor and source: its memory grows with the model. Here the
engine runs the samples once (:func:`record`: what every source sends at every
global step, every population's voltage); then each population, with its incoming
synapse groups, is cut out into a small ChipGraph whose sources are input ports
that replay what the engine recorded for them (spikes, or a relay's, host
product's or analog input's graded values), and runs on Lava. Its spikes and
voltages must equal the engine's bit for bit. Several such units share one Lava
run, as many as fit ``max_processes`` processes (and the memory budget), so
Lava's process count stays bounded whatever the model's size; one Lava process
replays all the ports of a run (:mod:`.lava_record`).

Timing: in the whole graph a population ``P`` at depth ``d`` reads, at global
step ``g``, what a source sent at step ``g - 1 - delay``; cut out, ``P`` (fed by
ports only) is at depth ``d' = 1`` (ports are at depth 0) and its groups from ports take no delay:
the port shifts by it instead, so port row ``j`` (sent at local step ``j + 1``)
replays what the source sent at global step ``j + 1 + d - d' - delay``. A
feedback group becomes a plain group from a port (a recurrent population reads
its own recorded spikes). ``P``'s window, local steps ``d' + 1 ..``, is then its
global steps ``d + 1 ..``, the steps the engine's traces hold. A relay that sums
relays (a fan-in tree's upper level; a relay takes no graded port) runs with the
relays below it, down to those fed by spikes, under the same offset, and the
groups between them keep ``delay - lag``. Each sample then takes ``T + d'`` Lava
steps instead of ``T`` plus the whole pipeline's depth.

Host products are not themselves run on Lava here: the populations they feed
replay the engine's counts (``--lava-mode whole`` runs Lava's host process).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from st2chip import limits
from st2chip.attention import attention_counts
from st2chip.chip.chipgraph import ChipGraph, InputPort, Population, SynapseGroup
from st2chip.traces import Traces

from . import lava
from .engine import Engine, assemble, batch_steps

IDLE_PORT = "(idle)"  # a one-neuron silent port (connected to nothing) for a run whose populations take no input
RECORD_BYTES = 14  # per sample, step and neuron: the engine's spike and int64 voltage, then their numpy copies


@dataclass
class Record:
    """The engine's run of a ChipGraph at every global step ``1 .. steps + depth`` (axis 1, index ``g - 1``).

    ``sent``: per input port, population, relay and host product, what it sends at each
    step ``(B, H, n)`` (0/1 spikes, or graded values); ``voltages``: per population, its
    voltage after reset (a relay's: the value it sends).
    """

    sent: dict[str, np.ndarray]
    voltages: dict[str, np.ndarray]


@dataclass
class Difference:
    """Where Lava's run of one population first differs from the engine's record (step: the sample's step)."""

    population: str
    layer: str
    sample: int
    step: int
    neuron: int  # the neuron's index in its layer
    what: str  # "spike" or "voltage"


def record(chip: ChipGraph, inputs: dict[str, np.ndarray]) -> Record:
    """Run ``inputs`` through the engine on the CPU, keeping every global step of every source."""
    batch, steps = batch_steps(inputs)
    engine = Engine(chip, "cpu")
    horizon = steps + chip.depth
    limits.check_alloc(f"the engine's record for Lava layer by layer ({batch} samples x {horizon} steps x "
                       f"{engine.n} neurons; fewer samples: --lava-samples)", batch * horizon * engine.n,
                       RECORD_BYTES, where="verify")
    analog = {p.name for p in chip.inputs if p.kind == "analog"}
    tensors = {name: torch.from_numpy(np.asarray(x, np.int64 if name in analog else np.uint8))
               for name, x in inputs.items()}
    with torch.no_grad():
        rec_s, rec_v = engine.run_batch(tensors, voltages=True)
    sent, voltages = {}, {}
    for name, x in inputs.items():
        sent[name] = np.zeros((batch, horizon, x.shape[2]), np.int32)
        sent[name][:, :steps] = x
    for pop in chip.populations:
        cols = slice(engine.layout.start[pop.name], engine.layout.start[pop.name] + pop.size)
        voltages[pop.name] = rec_v[:, :, cols].transpose(0, 1).numpy().astype(np.int32)
        sent[pop.name] = (voltages[pop.name] if pop.graded
                          else rec_s[:, :, cols].transpose(0, 1).numpy().astype(np.uint8))
    for h in chip.hosts:
        q, k, v = (torch.from_numpy(_layer(chip, sent, layer)).to(torch.float64) for layer in h.inputs)
        sent[h.name] = attention_counts(q, k, v, h.tokens, h.heads).round_().numpy().astype(np.int32)
    return Record(sent, voltages)


def _layer(chip: ChipGraph, sent: dict[str, np.ndarray], layer: str) -> np.ndarray:
    """A layer's spikes at every global step, in the layer's neuron order."""
    pops = chip.layer_populations(layer)
    first = sent[pops[0].name]
    out = np.zeros((*first.shape[:2], chip.layer_size(layer)), np.uint8)
    for p in pops:
        out[:, :, p.index] = sent[p.name]
    return out


@dataclass
class _Unit:
    """One population cut out with its incoming groups, whose sources are ports (see :func:`_port`); a relay
    that sums relays (a fan-in tree) comes with them (``populations``: theirs first, the checked one last)."""

    populations: list[Population]
    groups: list[SynapseGroup]
    feeds: dict[str, tuple[str, int]]  # port -> (source, shift): row j is the source at global step j + 1 + shift
    depth: int  # the checked population's depth in the cut-out graph

    @property
    def target(self) -> Population:
        return self.populations[-1]


def _port(source: str, shift: int) -> str:
    """The name of the port that replays ``source`` shifted by ``shift`` steps (units of one run share it)."""
    return f"{source} (recorded, {shift:+d})"


def _members(chip: ChipGraph, pop: Population) -> list[Population]:
    """``pop`` and, for a relay, the relays whose values it sums, recursively, sources first: a relay takes
    0/1 spikes or a relay's values, so those relays run with it (on ports of their spikes)."""
    if not pop.graded:
        return [pop]
    out: list[Population] = []
    for s in chip.incoming(pop.name):
        source = next((p for p in chip.populations if p.name == s.source and p.graded), None)
        if source is not None:
            out += [m for m in _members(chip, source) if all(m.name != o.name for o in out)]
    return out + [pop]


def _unit(chip: ChipGraph, pop: Population, depth: int) -> _Unit:
    members = _members(chip, pop)
    names = {m.name: m.name if m is pop else f"{m.name} (into {pop.name})" for m in members}
    inside = {m.name for m in members[:-1]}  # the relays run with it; every other source is a port
    local: dict[str, int] = {}
    for m in members:  # depths in the cut-out graph, ports at depth 0, a port's group undelayed
        local[m.name] = max((local[s.source] + 1 + s.delay - s.lag if s.source in inside else 1
                             for s in chip.incoming(m.name)), default=0 if m.always_on else 1)
    offset = depth - local[pop.name]
    cut, feeds = [], {}
    for m in members:
        for s in chip.incoming(m.name):
            name = s.name if m is pop else f"{s.name} (into {pop.name})"
            if s.source in inside:
                cut.append(replace(s, name=name, source=names[s.source], target=names[m.name],
                                   delay=s.delay - s.lag, lag=0, feedback=False))
                continue
            shift = offset - s.delay
            port = _port(s.source, shift)
            cut.append(replace(s, name=name, source=port, target=names[m.name], delay=0, lag=0, feedback=False))
            feeds[port] = (s.source, shift)
    pops = [replace(m, name=names[m.name], layer=names[m.name], index=np.arange(m.size)) for m in members]
    return _Unit(pops, cut, feeds, local[pop.name])


def _cut(units: list[_Unit], bounds: dict[str, np.ndarray]) -> ChipGraph:
    """The cut-out graph of ``units``: their populations and groups, one port per fed (source, shift), a
    graded source's port analog and bounded by the source's largest value (``bounds``: the whole graph's
    :meth:`~st2chip.chip.chipgraph.ChipGraph.source_bounds`). The units need not be connected: Lava's
    run joins them through the one process that records them all.
    """
    sizes = {g.source: g.shape[1] for u in units for g in u.groups}
    ports = []
    for name, (source, _) in {n: f for u in units for n, f in u.feeds.items()}.items():
        top = bounds.get(source)
        ports.append(InputPort(name, sizes[name]) if top is None
                     else InputPort(name, sizes[name], "analog", max(1, int(np.abs(top).max(initial=1)))))
    return ChipGraph(ports or [InputPort(IDLE_PORT, 1)], [p for u in units for p in u.populations],
                     [g for u in units for g in u.groups])


def _chunks(units: list[_Unit], bounds: dict[str, np.ndarray], bound: int) -> list[list[_Unit]]:
    """Consecutive units, as many per Lava run as keep it within ``bound`` processes and the memory budget (a
    larger unit runs alone)."""
    out: list[list[_Unit]] = []
    for unit in units:
        if out and _fits(_cut(out[-1] + [unit], bounds), bound):
            out[-1].append(unit)
        else:
            out.append([unit])
    return out


def _fits(small: ChipGraph, bound: int) -> bool:
    """Whether a Lava run of a cut-out graph (every population's voltage recorded) stays within ``bound``
    processes and the memory budget."""
    return lava.process_count(small) <= bound and lava.memory_bytes(small) <= limits.memory_budget()


def _replay(sent: np.ndarray, shift: int, rows: int) -> np.ndarray:
    """Rows ``0 .. rows - 1`` of a port: what the source sent at global steps ``j + 1 + shift`` (0 outside)."""
    out = np.zeros((sent.shape[0], rows, sent.shape[2]), np.int32)
    lo, hi = max(0, -shift), min(rows, sent.shape[1] - shift)
    if hi > lo:
        out[:, lo:hi] = sent[:, lo + shift:hi + shift]
    return out


def _rows(units: list[_Unit], steps: int) -> int:
    """Port rows a run of ``units`` replays: a port's row ``j`` reaches a population at local step ``j + 2`` at
    the earliest, and the deepest population's last step is ``depth + steps`` (and Lava records as many
    steps of every population as there are rows)."""
    return steps + max(0, max(u.depth for u in units) - 1)


def _data(units: list[_Unit], rec: Record, batch: int, rows: int) -> dict[str, np.ndarray]:
    """Each port's rows ``(B, rows, n)``: what the engine recorded for its source, shifted."""
    feeds = {name: feed for u in units for name, feed in u.feeds.items()}
    if not feeds:
        return {IDLE_PORT: np.zeros((batch, rows, 1), np.int32)}
    return {name: _replay(rec.sent[source], shift, rows) for name, (source, shift) in feeds.items()}


def _difference(pop: Population, lav: Traces, rec: Record, depth: int, steps: int) -> Difference | None:
    """The earliest (step, then sample, then neuron) difference of ``pop``'s spikes or voltages on Lava
    from the engine's record."""
    mine_v = rec.voltages[pop.name][:, depth:depth + steps]
    mine_s = (mine_v != 0) if pop.graded else rec.sent[pop.name][:, depth:depth + steps]
    found = None
    for what, diff in (("spike", lav.spikes[pop.name][:, :steps] != mine_s),
                       ("voltage", lav.voltages[pop.name][:, :steps] != mine_v)):
        if not diff.any():
            continue
        b, t, k = np.nonzero(diff)
        i = np.lexsort((k, b, t))[0]
        if found is None or t[i] < found.step:
            found = Difference(pop.name, pop.layer, int(b[i]), int(t[i]), int(pop.index[k[i]]), what)
    return found


def run(chip: ChipGraph, inputs: dict[str, np.ndarray], *, max_processes: int, rec: Record | None = None,
        progress: bool = False, simulate: Callable[..., Traces] = lava.run) -> Traces:
    """Every population of ``chip`` on Lava, fed what the engine recorded (``rec``, default: :func:`record` of
    ``inputs``), at most ``max_processes`` Lava processes per run (fewer where the memory budget says so).
    ``simulate(graph, inputs, voltages=True)`` runs each cut-out graph (Lava's; the engine's checks the
    cutting itself, fast).

    Returns Lava's traces per layer; their ``meta`` says how they ran (``lava_mode``: ``"layers"``,
    ``populations``, ``runs``, ``max_processes``: the most Lava processes one run started) and lists
    each population whose spikes or voltages differ from ``rec`` (``differences``: :class:`Difference`).
    """
    rec = rec or record(chip, inputs)
    limits.release_freed()  # the record's engine, gone: Lava's processes fork from a lean process
    batch, steps = batch_steps(inputs)
    depths = chip.depths()
    bound = max(1, max_processes)
    units = [_unit(chip, pop, depths[pop.name]) for pop in chip.populations]
    bounds = chip.source_bounds()
    chunks = _chunks(units, bounds, bound)
    pop_s, pop_v, differences, most = {}, {}, [], 0
    with tqdm(total=len(units), desc="lava layer by layer", unit="population", leave=False,
              disable=not progress) as bar:
        for chunk in chunks:
            small = _cut(chunk, bounds)
            most = max(most, lava.process_count(small))
            lav = simulate(small, _data(chunk, rec, batch, _rows(chunk, steps)), voltages=True)
            for unit in chunk:
                pop = chip.population(unit.target.name)
                pop_s[pop.name] = lav.spikes[pop.name][:, :steps]
                pop_v[pop.name] = lav.voltages[pop.name][:, :steps]
                found = _difference(pop, lav, rec, depths[pop.name], steps)
                if found is not None:
                    differences.append(found)
            bar.update(len(chunk))
    traces = assemble(chip, "lava", inputs, pop_s, pop_v)
    traces.meta.update(lava_mode="layers", populations=len(units), runs=len(chunks), max_processes=most,
                       differences=differences)
    return traces
