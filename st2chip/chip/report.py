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
Per chip: cores used of the chip's mesh, neurons and synapses; the mesh traffic (messages
between cores per step at the expected spike rates, their on-chip hops and chip-to-chip
links); and a floorplan, ``floorplan.png``: every core at its ``(chip, x, y)`` on the board,
coloured by layer.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from st2chip.chip.chipgraph import ChipGraph
from st2chip.chip.lowering.lowrank import SPIKE_RATE
from st2chip.chip.mesh import CROSSING_HOPS
from st2chip.chip.placement import Placement
from st2chip.chip.table import format_cores, format_table, layer_rows
from st2chip.io import write_json, write_png, write_text

MARKDOWN_CHIPS = 16  # chip rows shown in Markdown; report.json has every chip


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
        lines += _chip_lines(placement)
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
    write_png(path, fig)
    plt.close(fig)


def _chip_lines(placement: Placement) -> list[str]:
    """The chips section: per-chip use and the mesh traffic, then the floorplan image."""
    res, use = placement.resources, placement.mesh_use
    chips = placement.chips()
    lines = ["", "## Chips and the mesh", "",
             f"{placement.n_chips} chip{'s' * (placement.n_chips != 1)} of {res.rows_by_columns} "
             f"({res.cores_per_chip} per chip), on a grid {res.chip_grid_columns} chips wide.", "",
             "| chip | grid (column, row) | cores | core use % | neurons | synapses |",
             "|---:|---|---:|---:|---:|---:|"]
    lines += [f"| {c['chip']} | {c['grid'][0]}, {c['grid'][1]} | {c['cores']} | {100 * c['core_use']:.0f} | "
              f"{c['neurons']:,} | {c['synapses']:,} |" for c in chips[:MARKDOWN_CHIPS]]
    if len(chips) > MARKDOWN_CHIPS:
        lines.append(f"| ... | {len(chips) - MARKDOWN_CHIPS} more chips in report.json | | | | |")
    if use is not None:
        per = (lambda x: x / use.messages) if use.messages else (lambda x: 0.0)
        lines += ["", f"Mesh traffic ({use.activity} spike rates): {use.messages:,.1f} messages per step between "
                      f"cores, {per(use.hops):.2f} on-chip hops and {per(use.crossings):.3f} chip-to-chip links per "
                      f"message on average. Placement objective (messages x (hops + {CROSSING_HOPS} x chip links)): "
                      f"{use.cost:,.1f}, from {use.start_cost:,.1f} at the start in {use.start} order (layer order: "
                      f"{use.layer_cost:,.1f}; {use.swaps} swaps in "
                      f"{use.sweeps} sweeps). `st2chip energy` counts the real hops from spike traces."]
    if placement.cores:
        lines += ["", "![floorplan](floorplan.png)"]
    return lines


def floorplan(placement: Placement) -> np.ndarray:
    """The board as an image: each mesh position holds the layer number (in layer order) of the first layer
    on its core, NaN where no core is used."""
    layer = {name: i for i, name in enumerate(placement.layer_order)}
    return placement.mesh.image(placement.slots(), np.array([layer[c.slices[0].layer] for c in placement.cores]))


def _plot_floorplan(placement: Placement, path: Path) -> None:
    """Cores on the board's mesh coloured by layer, chip outlines drawn, unused positions blank."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch, Rectangle

    grid, mesh = floorplan(placement), placement.mesh
    layers = placement.layer_order
    palette = list(colormaps["tab20"].colors)
    colors = [palette[i % len(palette)] for i in range(max(len(layers), 1))]
    height, width = grid.shape
    inches = min(12.0, 2.0 + 0.25 * width)  # wide enough for the legend; the height keeps cores square
    fig = Figure(figsize=(inches, min(12.0, 1.6 + (inches - 2.0) * height / width)), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    cmap = ListedColormap(colors).with_extremes(bad="white")
    ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=-0.5, vmax=len(colors) - 0.5, interpolation="nearest",
              aspect="equal" if max(height, width) <= 64 else "auto")
    for chip in range(mesh.n_chips):
        cx, cy = chip % mesh.chip_columns, chip // mesh.chip_columns
        ax.add_patch(Rectangle((cx * mesh.columns - 0.5, cy * mesh.rows - 0.5), mesh.columns, mesh.rows,
                               fill=False, lw=1.2))
    shown = layers[:20]
    ax.legend(handles=[Patch(color=colors[i], label=name) for i, name in enumerate(shown)], fontsize="x-small",
              loc="upper left", bbox_to_anchor=(1.01, 1.0),
              title="layer" + ("s (first 20)" if len(layers) > 20 else ""))
    ax.set_xlabel("x (cores; chips side by side)")
    ax.set_ylabel("y (cores; chips stacked)")
    ax.set_title(f"Floorplan: {placement.n_cores} cores on {placement.n_chips} chip(s) "
                 f"({placement.resources.rows_by_columns} each)", fontsize="small")
    write_png(path, fig)


def write_report(chip: ChipGraph, placement: Placement | None, folder: str | os.PathLike) -> list[Path]:
    """``report.md``, ``report.json``, ``report.png`` and, when placed on at least one core, ``floorplan.png`` in
    ``folder`` (each written atomically)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = report_data(chip, placement)
    paths = [folder / "report.json", folder / "report.md", folder / "report.png"]
    write_json(paths[0], data)
    write_text(paths[1], _markdown(chip, placement, data))
    _plot(data, paths[2])
    if placement is not None and placement.cores:
        paths.append(folder / "floorplan.png")
        _plot_floorplan(placement, paths[-1])
    return paths
