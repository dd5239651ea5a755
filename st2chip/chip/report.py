r"""``st2chip map … --report DIR``: what a mapping costs, as Markdown, JSON and a plot, before anything runs.

Per layer: its kind (``dense`` / ``sparse`` / ``factored`` / ``relay``, from the
synapse groups into it), neurons, synapses, non-zero weights, weight bits and
exponents, quantization error, cores, and the **estimated** synaptic operations
per time step. Mapping sees no traces, so the estimate assumes every source
neuron spikes with probability :math:`\rho` per step (lowering's
:data:`~st2chip.chip.lowering.lowrank.SPIKE_RATE`) and every graded source (relay, host
partition, analog input) sends a non-zero value every step (an upper bound):

.. math::  \mathrm{ACs} = \rho \sum_{\text{spike groups}} \mathrm{nnz}, \qquad
           \mathrm{MACs} = \sum_{\text{graded groups}} \mathrm{nnz}.

``st2chip energy`` counts the real ones from traces. Boundary traffic is what
crosses between the host and the neurocores per step, at most: the input ports'
values, and for each host partition the spikes it reads and the values it sends
back. Per core: the placement's view (neurons, synapses, memory, fan-in, fan-out).
"""

from __future__ import annotations

import os
from pathlib import Path

from st2chip.chip.chipgraph import ChipGraph
from st2chip.chip.lowering.lowrank import SPIKE_RATE
from st2chip.chip.placement import Placement
from st2chip.chip.table import format_cores, format_table, layer_rows
from st2chip.io import atomic_path, write_json, write_text


def estimated_ops(chip: ChipGraph, rate: float = SPIKE_RATE) -> dict[str, dict[str, float]]:
    """Per layer: estimated ACs and MACs per time step (see the module docstring)."""
    graded = set(chip.source_bounds())
    always = {p.name for p in chip.populations if p.always_on}  # fires every step: rate 1
    out = {layer: {"acs": 0.0, "macs": 0.0} for layer in chip.layers()}
    for s in chip.synapses:
        layer = chip.population(s.target).layer
        if s.source in graded:
            out[layer]["macs"] += s.nnz
        else:
            out[layer]["acs"] += (1.0 if s.source in always else rate) * s.nnz
    return out


def boundary_traffic(chip: ChipGraph) -> dict[str, dict[str, int]]:
    """Values crossing host <-> neurocores per step, at most: input ports in, host partitions both ways."""
    out = {i.name: {"to_chip": i.size, "from_chip": 0, "kind": i.kind} for i in chip.inputs}
    for h in chip.hosts:
        out[h.name] = {"to_chip": h.size, "from_chip": 3 * h.size, "kind": "host"}
    return out


def report_data(chip: ChipGraph, placement: Placement | None) -> dict:
    """Everything the report shows, as plain data (the JSON)."""
    ops = estimated_ops(chip)
    rows = layer_rows(chip, placement)
    for row in rows:
        row["estimated_acs_per_step"] = round(ops[row["layer"]]["acs"], 1)
        row["estimated_macs_per_step"] = round(ops[row["layer"]]["macs"], 1)
    return {
        "assumed_spike_rate": SPIKE_RATE,
        "layers": rows,
        "hosts": [{"name": h.name, "computes": "(Q K^T) V per head", "inputs": list(h.inputs), "heads": h.heads,
                   "tokens": h.tokens, "dim": h.dim, "max_value": h.max_value} for h in chip.hosts],
        "boundary_per_step": boundary_traffic(chip),
        "totals": {"neurons": sum(r["neurons"] for r in rows), "nonzero": sum(r["nonzero"] for r in rows),
                   "estimated_acs_per_step": round(sum(o["acs"] for o in ops.values()), 1),
                   "estimated_macs_per_step": round(sum(o["macs"] for o in ops.values()), 1),
                   "cores": placement.n_cores if placement is not None else None},
        "placement": placement.to_dict() if placement is not None else None,
        "lowering": chip.report,
    }


def _markdown(chip: ChipGraph, placement: Placement | None, data: dict) -> str:
    t = data["totals"]
    lines = ["# st2chip mapping report", "",
             f"{t['neurons']:,} neurons, {t['nonzero']:,} non-zero synapses"
             + (f", {t['cores']} cores" if t["cores"] is not None else "")
             + f"; estimated {t['estimated_acs_per_step']:,.0f} ACs and {t['estimated_macs_per_step']:,.0f} MACs per "
               f"time step (every source spiking with probability {data['assumed_spike_rate']:g} per step, every "
               f"graded value non-zero: `st2chip energy` counts the real ones).", "",
             "| layer | kind | neurons | synapses | non-zero | bits | exp | weight error % | cores | est. ACs/step "
             "| est. MACs/step |", "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for r in data["layers"]:
        lines.append(f"| {r['layer']} | {'/'.join(r['form'])} | {r['neurons']:,} | {r['synapses']:,} | "
                     f"{r['nonzero']:,} | {r['weight_bits']} | {','.join(map(str, r['exp']))} | "
                     f"{100 * r['weight_error']:.2f} | {r.get('cores', '-')} | {r['estimated_acs_per_step']:,.1f} | "
                     f"{r['estimated_macs_per_step']:,.1f} |")
    if data["hosts"]:
        lines += ["", "## Host partitions", ""]
        lines += [f"- `{h['name']}`: {h['computes']}, {h['heads']} heads × {h['tokens']} tokens × "
                  f"{h['dim'] // h['heads']}, from {', '.join(h['inputs'])}; values up to {h['max_value']}"
                  for h in data["hosts"]]
    lines += ["", "## Boundary traffic (host ↔ neurocores, values per step, at most)", "",
              "| port or partition | kind | to the neurocores | from the neurocores |", "|---|---|---:|---:|"]
    lines += [f"| {name} | {b['kind']} | {b['to_chip']:,} | {b['from_chip']:,} |"
              for name, b in data["boundary_per_step"].items()]
    lines += ["", "What actually crosses, per step on real inputs, is counted from the spike traces by "
                  "`st2chip energy` (its boundary traffic table)."]
    lines += ["", "## The map table", "", "```", format_table(chip, placement), "```"]
    if placement is not None:
        lines += ["", "## Per core", "", "```", format_cores(placement), "```"]
    return "\n".join(lines) + "\n"


def _plot(data: dict, path: Path) -> None:
    """Per layer: non-zero synapses (bars, by kind) and estimated operations per step (dots)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = data["layers"]
    colors = {"dense": "tab:blue", "sparse": "tab:green", "lowrank": "tab:purple", "factored": "tab:orange"}
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.5))
    y = range(len(rows))
    ax.barh(y, [r["nonzero"] for r in rows], color=[colors.get(r["form"][0], "grey") for r in rows])
    ax.scatter([r["estimated_acs_per_step"] + r["estimated_macs_per_step"] for r in rows], list(y), color="black",
               zorder=3, label="estimated ops per step")
    ax.set_yticks(list(y), [f"{r['layer']} ({'/'.join(r['form'])})" for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("non-zero synapses (bars), operations per step (dots)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def write_report(chip: ChipGraph, placement: Placement | None, folder: str | os.PathLike) -> list[Path]:
    """``report.md``, ``report.json`` and ``report.png`` in ``folder`` (each written atomically)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = report_data(chip, placement)
    paths = [folder / "report.json", folder / "report.md", folder / "report.png"]
    write_json(paths[0], data)
    write_text(paths[1], _markdown(chip, placement, data))
    _plot(data, paths[2])
    return paths
