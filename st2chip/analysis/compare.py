"""The side-by-side report of one model on several chips: whether it fits (and why not), accuracy, operations,
energy, latency per target (:func:`st2chip.comparison.compare` fills it), as Markdown, JSON and a plot.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from st2chip.analysis.energy import markdown_table


@dataclass
class TargetResult:
    """One target's row: ``fits`` or the ``reasons`` it does not; the rest per inference (None: not known)."""

    target: str
    fits: bool
    reasons: list[str] = field(default_factory=list)
    chip_accuracy: float | None = None
    synaptic_ops: float | None = None
    energy_pj: float | None = None
    latency_steps: int | None = None
    profile: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class CompareReport:
    """The side-by-side report of one model on ``targets``, over the same inputs."""

    inputs: str
    samples: int
    steps: int
    float_accuracy: float | None
    targets: list[TargetResult]

    def to_dict(self) -> dict:
        return {"inputs": self.inputs, "samples": self.samples, "steps": self.steps,
                "float_accuracy": self.float_accuracy,
                "units": {"energy_pj": "pJ per inference", "synaptic_ops": "per inference",
                          "latency_steps": "chip steps beyond the sample's own"},
                "targets": [asdict(t) for t in self.targets]}

    def to_markdown(self) -> str:
        rows = [_row(t, self.float_accuracy) for t in self.targets]
        why = [f"- {t.target}: {reason}" for t in self.targets for reason in t.reasons]
        notes = [f"- {t.target}: {note}" for t in self.targets for note in t.notes]
        return "\n".join([
            f"One model on {len(self.targets)} target(s), {self.inputs}; per inference (one sample of "
            f"{self.steps} steps).", "",
            *markdown_table(("target", "fits", "float acc %", "chip acc %", "syn. ops", "energy nJ", "latency steps"),
                            rows),
            *(["", "Why not:", "", *why] if why else []), *(["", "Notes:", "", *notes] if notes else []), ""])


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _row(t: TargetResult, float_accuracy: float | None) -> tuple[str, ...]:
    return (t.target, "yes" if t.fits else "no", _percent(float_accuracy if t.fits else None),
            _percent(t.chip_accuracy), "-" if t.synaptic_ops is None else f"{t.synaptic_ops:,.0f}",
            "-" if t.energy_pj is None else f"{t.energy_pj / 1e3:,.3f}",
            "-" if t.latency_steps is None else str(t.latency_steps))


def write_compare_report(report: CompareReport, folder: str | os.PathLike) -> dict[str, Path]:
    """Write ``compare.md``, ``compare.json`` and ``compare.png`` into ``folder`` (each file atomically)."""
    from st2chip.analysis.compare_plot import plot_compare
    from st2chip.io import write_json, write_text
    folder = Path(folder)
    return {"markdown": write_text(folder / "compare.md", report.to_markdown()),
            "json": write_json(folder / "compare.json", report.to_dict()),
            "plot": plot_compare(report, folder / "compare.png")}
