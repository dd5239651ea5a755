"""A per-layer table of a ChipGraph that fits a terminal (what ``st2chip map`` prints).

With a :class:`~st2chip.chip.placement.Placement`, the table gains a ``cores`` column (and
which resource bound the layer's cores) and :func:`format_cores` gives the per-core view.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from st2chip.chip.chipgraph import ChipGraph, Population
from st2chip.text import printable

if TYPE_CHECKING:
    from st2chip.chip.lowering.report import LayerReport
    from st2chip.chip.placement import Core, Placement


def neuron_model(chip: ChipGraph, layer: str) -> str:
    """``LIF`` where Lava's own LIF runs the layer, ``graded`` for a relay (lava-nc's ``GradedVec``), else
    ``own (...)``: why it needs st2chip's neuron model."""
    pops = chip.layer_populations(layer)
    if all(p.graded for p in pops):
        return "graded"
    names = {p.name for p in pops}
    out = [s for s in chip.synapses if s.source in names]
    needs = [why for why, yes in (("subtract", any(p.reset == "subtract" for p in pops)),
                                  ("refractory", any(p.refractory for p in pops)),
                                  ("recurrent", any(s.feedback for s in out)),
                                  ("delayed", any(s.lag for s in out))) if yes]
    return f"own ({', '.join(needs)})" if needs else "LIF"


def _kind(pops: list[Population], info: LayerReport | None) -> str:
    """The layer's kind: ``relay``, ``always-on``, or its NIR node type (``*``: its Affine bias enters the
    current through the always-on source)."""
    if all(p.graded for p in pops):
        return "relay"
    if all(p.always_on for p in pops):
        return "always-on"
    return f"{info.kind}{'*' if info.current_bias else ''}" if info else "?"


def layer_rows(chip: ChipGraph, placement: Placement | None = None) -> list[dict]:
    """One dict per layer: neurons, populations, neuron model, synapses, non-zeros, bits, exponents, errors;
    with a placement also ``cores`` (distinct cores holding the layer) and ``bound`` (the resource that ended
    most of its cores: neurons, memory, fan-in, fan-out; ``-`` when the layer fits one core)."""
    rows = []
    cores = placement.layer_cores() if placement is not None else {}
    for layer in chip.layers():
        pops = chip.layer_populations(layer)
        names = {p.name for p in pops}
        syns = [s for s in chip.synapses if s.target in names]
        info = chip.layer_report(layer)  # None: a relay, the always-on source, or a ChipGraph built by hand
        rows.append({
            "layer": layer,
            "kind": _kind(pops, info),
            "neurons": chip.layer_size(layer),
            "populations": len(pops),
            "model": neuron_model(chip, layer),
            "linear": info.chains if info else (["Affine"] if syns else ["-"]),
            "dv": sorted({p.dv for p in pops}),
            "vth": None if pops[0].readout or pops[0].graded or pops[0].always_on else sorted({p.vth for p in pops}),
            "synapses": sum(s.shape[0] * s.shape[1] for s in syns),
            "nonzero": sum(s.nnz for s in syns),
            "form": sorted({s.form for s in syns}) or ["-"],  # "-": no groups into it (the always-on source)
            "weight_bits": 16 if info and info.precision and info.precision.chosen == "16" else 8,
            "exp": sorted({s.exp for s in syns}),
            "weight_error": info.weight_error if info else max((s.error for s in syns), default=0.0),
            "leak_error": info.leak_error if info else 0.0,
            "bias_error": info.bias_error if info else 0.0,
        })
        if info and info.lowrank:
            rows[-1]["lowrank"] = {relay: choice.to_dict() for relay, choice in info.lowrank.items()}
        if info and info.current_bias:
            rows[-1]["current_bias"] = info.current_bias.to_dict()
        if info and info.fanin:
            rows[-1]["fanin"] = info.fanin.to_dict()
        if placement is not None:
            rows[-1]["cores"] = cores.get(layer, 0)
            rows[-1]["bound"] = placement.bound.get(layer, "-")
    return rows


def _aligned(header: tuple[str, ...], lines: list[tuple[str, ...]], left: set[int]) -> list[str]:
    lines = [tuple(printable(cell) for cell in line) for line in lines]  # names come from files
    widths = [max(len(h), *(len(l[i]) for l in lines)) if lines else len(h) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" if i in left else f"{{:>{w}}}" for i, w in enumerate(widths))
    return [fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*l) for l in lines]


def format_table(chip: ChipGraph, placement: Placement | None = None) -> str:
    """Render :func:`layer_rows` as aligned text plus a totals line; with a placement, a ``cores`` column
    (``4 mem``: 4 cores, memory bound) and the placement's summary line."""
    header = ("layer", "kind", "model", "neurons", "pops", "synapses", "nonzero", "form", "from", "bits", "exp",
              "w-err %", "leak-err", "vth")
    lines = []
    rows = layer_rows(chip, placement)
    for r in rows:
        lines.append((r["layer"], r["kind"], r["model"], str(r["neurons"]), str(r["populations"]),
                      str(r["synapses"]), str(r["nonzero"]), "/".join(r["form"]), " + ".join(r["linear"]),
                      str(r["weight_bits"]),
                      ",".join(map(str, r["exp"])), f"{100 * r['weight_error']:.2f}",
                      f"{r['leak_error']:.2e}", "-" if r["vth"] is None else ",".join(map(str, r["vth"]))))
    left = {0, 1, 2, 8}  # text columns
    if placement is not None:
        header = header[:5] + ("cores",) + header[5:]
        lines = [l[:5] + (f"{r['cores']} {_BOUND.get(r['bound'], r['bound'])}".rstrip(),) + l[5:]
                 for l, r in zip(lines, rows)]
        left = {0, 1, 2, 9}
    out = _aligned(header, lines, left)
    total_syn = sum(r["synapses"] for r in rows)
    total_nnz = sum(r["nonzero"] for r in rows)
    out.append(f"{len(chip.populations)} populations, {sum(r['neurons'] for r in rows)} neurons, "
               f"{len(chip.synapses)} synapse groups, {total_nnz}/{total_syn} non-zero weights, "
               f"dt={chip.lowering.dt:g} s, pipeline depth {chip.depth}")
    if any(r["model"] not in ("LIF", "graded") for r in rows):
        out.append("model 'own': st2chip's Lava neuron, not Lava's LIF (reset by subtraction; held for the step after "
                   "a spike; a recurrent or delayed source is silenced at the end of each sample's window)")
    out += [_lowrank_line(r["layer"], relay, e) for r in rows for relay, e in r.get("lowrank", {}).items()]
    out += [_current_bias_line(r["layer"], r["current_bias"]) for r in rows if "current_bias" in r]
    out += [_fanin_line(r["layer"], r["fanin"]) for r in rows if "fanin" in r]
    if any(r["model"] == "graded" for r in rows):
        out.append("kind 'relay': graded values (lava-nc's GradedVec): the middle of a factored low-rank layer U·V "
                   "(form 'factored': V into it, U, MACs, out of it) or a fan-in tree's partial sums (form 'fanin')")
    out += [_partition_line(chip, h) for h in chip.hosts]
    out += [f"analog input '{i.name}': {i.size} integer levels 0..{i.levels} per step (a MAC per non-zero weight)"
            for i in chip.inputs if i.kind == "analog"]
    if placement is not None:
        out += placement.summary().split("\n")  # several lines; each is escaped below
        if any(r["bound"] != "-" for r in rows):
            out.append("cores: what bound them - neur (neurons per core), mem (synapse memory), in (fan-in axons), "
                       "out (fan-out axons)")
    return "\n".join(map(printable, out))


def _partition_line(chip: ChipGraph, host) -> str:
    """One line for a host partition: what it computes, from which layers, into which."""
    into = sorted({chip.population(s.target).layer for s in chip.synapses if s.source == host.name})
    return (f"host partition '{host.name}': attention product (Q K^T) V, {host.heads} heads x {host.tokens} tokens x "
            f"{host.dim // host.heads}, of {', '.join(host.inputs)}; counts up to {host.max_value} per value, "
            f"{host.size} values per step into {', '.join(into)}")


def _current_bias_line(layer: str, entry: dict) -> str:
    """One line for a layer marked ``*``: its Affine bias enters ``u`` from the always-on source."""
    return (f"* {layer}: Affine bias into the synaptic current u, from always-on neuron '{entry['source']}' "
            f"(one spike every step; 8-bit, exp {','.join(map(str, entry['exp']))}, "
            f"error {100 * entry['error']:.2f} %)")


def _fanin_line(layer: str, entry: dict) -> str:
    """One line for a layer whose incoming synapses are split into fan-in trees: fan-in before and after, the
    relays, the levels and what they cost."""
    levels = sorted(set(entry["levels"].values()))
    return (f"fan-in tree {layer}: fan-in {entry['fan_in']['before']} -> {entry['fan_in']['after']} axons "
            f"({entry['limits']['axons']} per core); {entry['relay_neurons']} relay neurons in "
            f"{len(entry['relays'])} relay layers, {'/'.join(map(str, levels))} level(s), at least "
            f"{entry['cores_at_least']} cores; +{entry['latency_steps']} step(s) latency, "
            f"~{entry['macs_per_step']:.0f} MACs/step")


def _lowrank_line(layer: str, relay: str, entry: dict) -> str:
    """One low-rank path's choice with both costs (stored weights, accumulate-equivalent ops per step)."""
    cost = entry.get("cost")
    if cost is None:
        return f"low rank {relay} -> {layer}: {entry['chosen']} ({entry['why']})"
    p, f = cost["product"], cost["factored"]
    err = f", error product-equivalent {100 * entry['product_error']:.2f} %" if "product_error" in entry else ""
    return (f"low rank {relay} -> {layer} (rank {entry['rank']}, {entry['shape'][0]}x{entry['shape'][1]}): "
            f"{entry['chosen']}; weights {f['weights']} factored vs {p['weights']} product, ops/step "
            f"{f['ops']:.1f} vs {p['ops']:.1f}{err} ({entry['why']})")


_BOUND = {"neurons": "neur", "memory": "mem", "fan-in": "in", "fan-out": "out", "-": ""}


def _core_line(core: Core, placement: Placement) -> tuple[str, ...]:
    res = placement.resources
    names = ", ".join(s.label(placement.population_sizes.get(s.population)) for s in core.slices)
    if len(names) > 40:
        names = names[:37] + "..."
    return (str(core.chip), str(core.core), names, str(core.neurons), str(core.synapses),
            f"{core.memory_bytes / 1024:.1f}", f"{100 * core.memory_bits / res.synapse_memory_per_core:.0f}",
            str(core.fan_in), str(core.fan_out))


def format_cores(placement: Placement, max_rows: int = 40) -> str:
    """The per-core view: one row per core (chip, core, population slices, neurons, non-zero synapses,
    synapse memory in KiB and % of a core, fan-in and fan-out axons), then the largest use of each resource.

    Over ``max_rows`` cores it shows the first and last ``max_rows // 2`` cores and, instead of the rest,
    one row per layer with the min-max over its cores.
    """
    res = placement.resources
    header = ("chip", "core", "populations", "neurons", "synapses", "mem KiB", "mem %", "fan-in", "fan-out")
    cores = placement.cores
    if len(cores) <= max_rows:
        out = _aligned(header, [_core_line(c, placement) for c in cores], {2})
    else:
        half = max(1, max_rows // 2)
        head = [_core_line(c, placement) for c in cores[:half]]
        tail = [_core_line(c, placement) for c in cores[-half:]]
        gap = ("", "", f"... {len(cores) - 2 * half} more cores ...", "", "", "", "", "", "")
        out = _aligned(header, head + [gap] + tail, {2})
        out.append("")
        out.append("per layer, min-max over its cores:")
        agg = []
        for layer, n in placement.layer_cores().items():
            mine = [c for c in cores if layer in c.layers]
            if not mine:
                continue

            def span(values: list[float], fmt: str = "{:.0f}") -> str:
                lo, hi = min(values), max(values)
                return fmt.format(lo) if lo == hi else f"{fmt.format(lo)}-{fmt.format(hi)}"
            agg.append((layer, str(n), span([c.neurons for c in mine]), span([c.synapses for c in mine]),
                        span([c.memory_bytes / 1024 for c in mine], "{:.1f}"),
                        span([100 * c.memory_bits / res.synapse_memory_per_core for c in mine]),
                        span([c.fan_in for c in mine]), span([c.fan_out for c in mine])))
        out += _aligned(("layer", "cores", "neurons", "synapses", "mem KiB", "mem %", "fan-in", "fan-out"), agg, {0})
    if cores:
        def most(attr: str) -> int:
            return max(getattr(c, attr) for c in cores)
        out.append(f"{len(cores)} cores on {placement.n_chips} chip{'s' * (placement.n_chips != 1)}; largest per core: "
                   f"neurons {most('neurons')}/{res.neurons_per_core}, synapse memory "
                   f"{most('memory_bits') / 8 / 1024:.1f}/{res.synapse_memory_bytes / 1024:g} KiB, "
                   f"fan-in {most('fan_in')}/{res.axons_in_per_core}, fan-out {most('fan_out')}/{res.axons_out_per_core} "
                   f"axons ({res.name})")
    else:
        out.append(f"no neurons to place ({res.name})")
    return "\n".join(map(printable, out))
