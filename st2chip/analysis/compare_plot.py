"""The side-by-side plot: energy per inference and float vs chip accuracy per target (PNG, atomic, Agg)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from st2chip.analysis.compare import CompareReport
from st2chip.analysis.energy_plots import agg_figure
from st2chip.io import write_png


def plot_compare(report: CompareReport, target: str | os.PathLike) -> Path:
    """Two panels over the targets: energy per inference (nJ, log scale) and accuracy (float, chip); a target
    that does not fit (or has no energy figure) has no bar there and says so under its name."""
    names = [t.target + ("\n(does not fit)" if not t.fits else "\n(no energy figure)" if t.energy_pj is None else "")
             for t in report.targets]
    x = np.arange(len(names))
    fig = agg_figure(max(6.0, 1.6 * len(names) + 3.0), 3.6)
    energy, accuracy = fig.subplots(1, 2)
    nj = [np.nan if t.energy_pj is None else t.energy_pj / 1e3 for t in report.targets]
    energy.bar(x, nj, color="tab:orange")
    energy.set_ylabel("energy per inference (nJ)")
    if any(np.isfinite(v) and v > 0 for v in nj):
        energy.set_yscale("log")
    chip = [np.nan if t.chip_accuracy is None else 100 * t.chip_accuracy for t in report.targets]
    flt = [np.nan if report.float_accuracy is None or not t.fits else 100 * report.float_accuracy
           for t in report.targets]
    accuracy.bar(x - 0.2, flt, width=0.4, label="float")
    accuracy.bar(x + 0.2, chip, width=0.4, label="chip")
    accuracy.set_ylabel("accuracy (%)")
    accuracy.set_ylim(0, 100)
    accuracy.legend(fontsize="small")
    for ax, title in ((energy, "Energy per inference"), (accuracy, "Accuracy")):
        ax.set_xticks(x, names, fontsize="small")
        ax.set_title(title)
    return write_png(target, fig)
