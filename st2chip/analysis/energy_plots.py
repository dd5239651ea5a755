"""Energy plots: per-layer stacked bars by term and a per-core heat map from the placement (PNG, atomic, Agg)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from st2chip.analysis.energy import TERMS, EnergyReport
from st2chip.io import atomic_path

_LABELS = {"ac": "synaptic (AC)", "mac": "synaptic (MAC)", "neuron": "neuron updates", "routing": "routing",
           "static": "static", "host": "host boundary"}
HEATMAP_COLUMNS = 16  # cores per heat-map row (Loihi's 128 cores per chip: 8 rows)


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, target: str | os.PathLike) -> Path:
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return Path(target)


def plot_layers(report: EnergyReport, target: str | os.PathLike) -> Path:
    """Per-layer stacked bars of nJ per sample by term (synaptic, neuron, routing, static, host)."""
    long_names = max((len(r.layer) for r in report.layers), default=0) > 10
    fig = _figure(max(4.0, (0.6 if long_names else 1.2) * len(report.layers) + 2.0), 5.0 if long_names else 3.5)
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
    return _save(fig, target)


def core_grid(report: EnergyReport) -> np.ndarray:
    """nJ per sample of every core of every chip used, as rows of :data:`HEATMAP_COLUMNS` (NaN: core unused)."""
    per_chip = report.placement.resources.cores_per_chip
    rows_per_chip = math.ceil(per_chip / HEATMAP_COLUMNS)
    grid = np.full((report.placement.n_chips * rows_per_chip * HEATMAP_COLUMNS,), np.nan)
    for c in report.cores:
        grid[c.chip * rows_per_chip * HEATMAP_COLUMNS + c.core % per_chip] = c.total_pj / 1e3
    return grid.reshape(-1, HEATMAP_COLUMNS)


def plot_cores(report: EnergyReport, target: str | os.PathLike) -> Path:
    """Heat map of nJ per sample per neurocore, chips stacked top to bottom; unused cores blank."""
    grid = core_grid(report)
    fig = _figure(6.0, 1.2 + 0.35 * grid.shape[0])
    ax = fig.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis", aspect="auto", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="nJ per sample")
    ax.set_xlabel(f"core (mod {HEATMAP_COLUMNS})")
    ax.set_ylabel("row of cores (chips top to bottom)")
    ax.set_title(f"Energy per core, profile {report.profile.name}, {report.placement.n_cores} core(s) used")
    return _save(fig, target)
