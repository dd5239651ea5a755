"""Energy plots: per-layer stacked bars by term and a per-core heat map from the placement (PNG, atomic, Agg)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from st2chip.analysis.energy import TERMS, EnergyReport
from st2chip.io import write_png

_LABELS = {"ac": "synaptic (AC)", "mac": "synaptic (MAC)", "neuron": "neuron updates", "routing": "routing",
           "static": "static", "host": "host boundary"}


def agg_figure(width: float, height: float):
    """A matplotlib figure on the Agg canvas (no display, no pyplot state), laid out constrained."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_layers(report: EnergyReport, target: str | os.PathLike) -> Path:
    """Per-layer stacked bars of nJ per sample by term (synaptic, neuron, routing, static, host)."""
    long_names = max((len(r.layer) for r in report.layers), default=0) > 10
    fig = agg_figure(max(4.0, (0.6 if long_names else 1.2) * len(report.layers) + 2.0), 5.0 if long_names else 3.5)
    ax = fig.add_subplot()
    names = [r.layer for r in report.layers]
    bottom = np.zeros(len(names))
    for term in TERMS:
        heights = np.array([r.energy_pj[term] / 1e3 for r in report.layers])
        if heights.any():
            ax.bar(names, heights, bottom=bottom, label=_LABELS[term])
            bottom += heights
    ax.set_ylabel("energy per sample (nJ)")
    if long_names:  # slanted, so that long layer names (a bundle's) do not overlap
        ax.tick_params(axis="x", labelrotation=35, labelsize="small")
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
    ax.set_title(f"Energy per layer, profile {report.profile.name}")
    if bottom.any():
        ax.legend(fontsize="small")
    return write_png(target, fig)


def core_grid(report: EnergyReport) -> np.ndarray:
    """nJ per sample of every core at its place on the board's mesh (as the mapping report's floorplan; NaN:
    no core there)."""
    return report.placement.mesh.image(report.placement.slots(), np.array([c.total_pj / 1e3 for c in report.cores]))


def plot_cores(report: EnergyReport, target: str | os.PathLike) -> Path:
    """Heat map of nJ per sample per neurocore at its mesh position (chips on the board's grid); unused blank."""
    grid = core_grid(report)
    fig = agg_figure(min(12.0, 2.5 + 0.3 * grid.shape[1]), min(12.0, 1.2 + 0.3 * grid.shape[0]))
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", aspect="auto", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="nJ per sample")
    ax.set_xlabel("x (cores on the mesh; chips side by side)")
    ax.set_ylabel("y (chips stacked)")
    ax.set_title(f"Energy per core, profile {report.profile.name}, {report.placement.n_cores} core(s) used")
    return write_png(target, fig)
