"""verify's report for a Xylo target: float vs st2chip's Xylo engine, and the engine against SynSense's xylosim.

Float vs engine is checked as on Loihi (:func:`st2chip.analysis.verify.verify`, on the layers read by
:mod:`st2chip.targets.xylo_run`). On top of that the engine is checked against xylosim, the vendor's
bit-accurate simulator, on the first samples: every recorded array (hidden and output spikes, membranes,
currents) at every chip step, the samples named in the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from st2chip.analysis.verify import Check, VerifyReport
from st2chip.targets.xylo_run import ENGINE, ORACLE
from st2chip.xylo.xylograph import RUN_FIELDS, XyloRun


@dataclass
class Mismatch:
    """Where xylosim's run first differs from the engine's: earliest chip step, then array order."""

    array: str
    sample: int
    step: int
    neuron: int


@dataclass
class OracleCheck:
    """The engine against xylosim on the samples ``samples`` (indices into the run's inputs)."""

    samples: list[int]
    steps: int
    mismatch: Mismatch | None = None

    @property
    def exact(self) -> bool:
        return self.mismatch is None

    def check(self) -> Check:
        where = f"on samples {sample_names(self.samples)}, {self.steps} chip steps each"
        if self.mismatch is None:
            return Check(f"{ENGINE} = {ORACLE}", True,
                         f"spikes, membranes and currents identical (hidden and output neurons) {where}")
        m = self.mismatch
        return Check(f"{ENGINE} = {ORACLE}", False, f"{m.array} first differs at sample {m.sample}, chip step "
                                                   f"{m.step}, neuron {m.neuron} ({where})")


def sample_names(samples: list[int]) -> str:
    """Sample indices as ranges: ``0-19``, ``0-3, 7``."""
    runs: list[list[int]] = []
    for s in samples:
        if runs and s == runs[-1][-1] + 1:
            runs[-1].append(s)
        else:
            runs.append([s])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else f"{r[0]}" for r in runs) or "none"


def oracle_check(engine: XyloRun, oracle: XyloRun) -> OracleCheck:
    """Compare the oracle's run with the engine's on the oracle's samples, every array and chip step."""
    n = oracle.output_spikes.shape[0]
    first: Mismatch | None = None
    for name in RUN_FIELDS:
        a, b = getattr(engine, name), getattr(oracle, name)
        if a is None or b is None:
            continue
        diff = np.asarray(a[:n]) != np.asarray(b)
        if diff.any():
            sample, step, neuron = np.nonzero(diff)
            k = np.lexsort((neuron, sample, step))[0]
            if first is None or step[k] < first.step:
                first = Mismatch(name, int(sample[k]), int(step[k]), int(neuron[k]))
    return OracleCheck(list(range(n)), int(oracle.output_spikes.shape[1]), first)


@dataclass
class XyloVerifyReport:
    """verify's report for a Xylo target: float vs engine (:class:`VerifyReport`) and the xylosim check."""

    target: str
    report: VerifyReport
    oracle: OracleCheck | None = None
    lowering: dict = field(default_factory=dict)

    @property
    def checks(self) -> list[Check]:
        return self.report.checks

    @property
    def passed(self) -> bool:
        return self.report.passed

    def to_dict(self) -> dict:
        oracle = None if self.oracle is None else {
            "samples": self.oracle.samples, "steps": self.oracle.steps, "exact": self.oracle.exact,
            "first_difference": None if self.oracle.mismatch is None else vars(self.oracle.mismatch)}
        return {"target": self.target, **self.report.to_dict(), "xylosim": oracle, "lowering": self.lowering}

    def to_text(self) -> str:
        lines = [f"target: {self.target}"]
        if self.oracle is not None:
            state = "equal" if self.oracle.exact else "DIFFERENT"
            lines.append(f"{ENGINE} vs {ORACLE}: {state} on samples {sample_names(self.oracle.samples)} "
                         f"({len(self.oracle.samples)} samples)")
        return "\n".join(lines + [self.report.to_text()])
