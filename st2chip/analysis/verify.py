"""Compare backends on the same samples: accuracy, per-layer agreement, first divergence.

The float NIR simulation is what the trained model means; the fixed-point
reference and Lava are what the chip does. Reference and Lava must agree exactly
(spikes and voltages); float vs fixed-point agreement measures what lowering
(folding, decay grouping, quantization) costs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from st2chip.traces import Traces


@dataclass
class Divergence:
    """Where two backends first differ: earliest time step, then layer order."""

    layer: str
    sample: int
    step: int
    neuron: int
    what: str  # "spike" or "voltage"


@dataclass
class Comparison:
    """Agreement of backend ``b`` with backend ``a``."""

    a: str
    b: str
    spike_agreement: dict[str, float]
    exact: bool
    first_divergence: Divergence | None
    prediction_agreement: float
    readout_error: dict[str, float] = field(default_factory=dict)  # relative error of b's readout voltages
    # float vs chip only: each float layer fed the chip's spikes into it (what the layer itself loses)
    layer_by_layer: dict[str, float] = field(default_factory=dict)
    layer_by_layer_readout_error: dict[str, float] = field(default_factory=dict)

    @property
    def overall_spike_agreement(self) -> float:
        return float(np.mean(list(self.spike_agreement.values()))) if self.spike_agreement else 1.0


@dataclass
class Check:
    """One pass/fail criterion of a verification, with the numbers behind it."""

    name: str
    passed: bool
    detail: str


@dataclass
class Headroom:
    """How far one spiking layer's float voltages go from zero, against what the chip holds (in thresholds)."""

    layer: str
    reach: float  # the largest |v| / threshold of the float run, over samples, steps and neurons
    room: float  # the least any of the layer's neurons holds before its voltage saturates
    beyond: int  # neurons whose float voltage goes further than their own population holds
    neurons: int


@dataclass
class VerifyReport:
    samples: int
    accuracy: dict[str, float]
    comparisons: list[Comparison] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    headroom: list[Headroom] = field(default_factory=list)

    @property
    def chip_exact(self) -> bool:
        """True when every fixed-point backend pair agreed exactly."""
        return all(c.exact for c in self.comparisons if c.a != "float")

    @property
    def passed(self) -> bool:
        """True when every check passed: the chip backends agree and the chip is faithful to float."""
        return all(c.passed for c in self.checks)

    def to_dict(self) -> dict:
        out = {"samples": self.samples, "accuracy": self.accuracy, "chip_exact": self.chip_exact,
               "passed": self.passed, "checks": [asdict(c) for c in self.checks], "comparisons": [],
               "headroom": [asdict(h) for h in self.headroom]}
        for c in self.comparisons:
            d = asdict(c)
            d["overall_spike_agreement"] = c.overall_spike_agreement
            out["comparisons"].append(d)
        return out

    def to_text(self) -> str:
        lines = [f"samples: {self.samples}"]
        lines += [f"accuracy[{k}]: {v:.4f}" for k, v in self.accuracy.items()] or ["accuracy: no labels given"]
        for c in self.comparisons:
            lines.append(f"{c.a} vs {c.b}: spike agreement {100 * c.overall_spike_agreement:.3f} %, "
                         f"prediction agreement {100 * c.prediction_agreement:.2f} %"
                         + (" (exact)" if c.exact else ""))
            local = c.layer_by_layer
            if local:
                lines.append(f"  {'layer':<28} {'end to end':>10}   {'layer by layer':>14}")
            for layer, agree in c.spike_agreement.items():
                lines.append(f"  {layer:<28} {100 * agree:8.3f} %" + (f"   {100 * local[layer]:12.3f} %"
                                                                      if layer in local else ""))
            for layer, err in c.readout_error.items():
                lines.append(f"  {layer:<28} readout relative error {100 * err:.3f} %" + (
                    f" ({100 * c.layer_by_layer_readout_error[layer]:.3f} % layer by layer)"
                    if layer in c.layer_by_layer_readout_error else ""))
            if c.first_divergence is not None:
                d = c.first_divergence
                lines.append(f"  first divergence: layer '{d.layer}', step {d.step}, sample {d.sample}, "
                             f"neuron {d.neuron} ({d.what})")
        for h in self.headroom:
            if h.beyond:
                lines.append(f"headroom: layer '{h.layer}': float voltages reach {h.reach:.0f} thresholds from zero, "
                             f"beyond what the chip holds for {h.beyond} of {h.neurons} neurons ({h.room:.0f} "
                             f"thresholds at least); theirs saturate there (more room: raise --headroom)")
        for check in self.checks:
            lines.append(f"check {'ok    ' if check.passed else 'FAILED'} {check.name}: {check.detail}")
        return "\n".join(lines)


def headroom_use(float_traces: Traces, thresholds: dict[str, np.ndarray], room: dict[str, np.ndarray]
                 ) -> list[Headroom]:
    """Per layer of ``thresholds`` (its neurons' float thresholds) recorded in ``float_traces``: how far
    the float voltages go from zero in thresholds, against ``room`` (per neuron, the thresholds its
    chip voltage holds before it saturates)."""
    out = []
    for layer, theta in thresholds.items():
        if layer not in float_traces.voltages:
            continue
        reach = np.abs(float_traces.voltages[layer]).max(axis=(0, 1)) / theta
        out.append(Headroom(layer, float(reach.max(initial=0.0)), float(room[layer].min(initial=np.inf)),
                            int((reach > room[layer]).sum()), int(theta.size)))
    return out


def _first_difference(diff: np.ndarray) -> tuple[int, int, int] | None:
    """(step, sample, neuron) of the earliest True in ``diff`` (B, T, n)."""
    if not diff.any():
        return None
    b, t, n = np.nonzero(diff)
    k = np.lexsort((n, b, t))[0]
    return int(t[k]), int(b[k]), int(n[k])


def compare(a: Traces, b: Traces, *, voltages: bool, units: dict[str, np.ndarray] | None = None) -> Comparison:
    """Per-layer spike agreement of ``b`` with ``a``; voltages too when both are fixed-point.

    ``units`` (readout layer -> per-neuron chip voltage per float unit, see
    :meth:`~st2chip.chip.chipgraph.ChipGraph.voltage_units`) adds the relative
    error ``||v_b / unit - v_a|| / ||v_a||`` of each readout layer's voltages
    over all steps, for float ``a`` against chip ``b``.
    """
    agreement, first = {}, None
    exact = True
    for layer in a.spikes:
        sa, sb = a.spikes[layer], b.spikes[layer]
        agreement[layer] = float(np.mean(sa == sb)) if sa.size else 1.0
        for what, diff in (("spike", sa != sb),
                           ("voltage", a.voltages[layer] != b.voltages[layer] if voltages else None)):
            if diff is None:
                continue
            hit = _first_difference(diff)
            if hit is None:
                continue
            exact = False
            if first is None or hit[0] < first.step:
                first = Divergence(layer, hit[1], hit[0], hit[2], what)
    if voltages:
        exact = exact and np.array_equal(a.scores, b.scores)
    else:
        exact = exact and np.array_equal(a.predictions(), b.predictions())
    pred = float(np.mean(a.predictions() == b.predictions()))
    readout = {}
    for layer, unit in (units or {}).items():
        if layer in a.voltages and layer in b.voltages:
            va, vb = np.asarray(a.voltages[layer], np.float64), b.voltages[layer] / unit
            norm = float(np.linalg.norm(va))
            readout[layer] = float(np.linalg.norm(vb - va) / norm) if norm else float(np.linalg.norm(vb))
    return Comparison(a.backend, b.backend, agreement, exact, first, pred, readout)


def verify(traces: list[Traces], labels: np.ndarray | None = None, *, max_drop: float = 2.0,
           min_agreement: float = 95.0, cross_checks: tuple[Traces, ...] = (),
           units: dict[str, np.ndarray] | None = None, layer_by_layer: Traces | None = None,
           headroom: list[Headroom] = ()) -> VerifyReport:
    """Compare backends (float→first chip backend, chip→chip) and check the result.

    ``cross_checks`` are chip backends run on the first samples only (Lava on a
    few samples while the engine runs them all): each is compared with the first
    chip backend on those samples. Checks: the chip backends agree exactly; the
    first chip backend's accuracy is at most ``max_drop`` points below float
    (when ``labels`` are given); float-vs-chip spike agreement is at least
    ``min_agreement`` percent. ``units`` adds the readouts' relative error (see :func:`compare`).

    ``layer_by_layer`` is the float graph run with every layer fed the first chip
    backend's spikes (:func:`st2chip.pipeline.run_layer_by_layer`): its agreement
    with the chip is what each layer's lowering costs by itself, where end-to-end
    agreement also counts every difference again in each layer after it (in a deep
    network a few flips in layer 1 move many spikes later). Given, the agreement
    check takes its worst layer; end-to-end agreement is reported beside it.
    ``headroom`` (:func:`headroom_use`) is reported, not checked: a saturated voltage is a
    difference the agreement figures already count.
    """
    accuracy = {t.backend: t.accuracy(labels) for t in traces} if labels is not None else {}
    report = VerifyReport(samples=traces[0].samples, accuracy=accuracy, headroom=list(headroom))
    floats = [t for t in traces if t.backend == "float"]
    chips = [t for t in traces if t.backend != "float"]
    if floats and chips:
        report.comparisons.append(compare(floats[0], chips[0], voltages=False, units=units))
        if layer_by_layer is not None:
            local = compare(layer_by_layer, chips[0], voltages=False, units=units)
            report.comparisons[0].layer_by_layer = local.spike_agreement
            report.comparisons[0].layer_by_layer_readout_error = local.readout_error
    for other in chips[1:]:
        report.comparisons.append(compare(chips[0], other, voltages=True))
    for other in cross_checks:
        n = other.samples
        if labels is not None:
            accuracy[f"{other.backend} (first {n})"] = other.accuracy(labels[:n])
        comparison = compare(chips[0].head(n), other, voltages=True)
        comparison.b = f"{other.backend} (first {n} samples)"
        report.comparisons.append(comparison)
    for c in report.comparisons:
        if c.a != "float":
            report.checks.append(Check(f"{c.a} = {c.b}", c.exact, "spikes and voltages identical" if c.exact else
                                       f"{100 * c.overall_spike_agreement:.3f} % of spikes agree"))
    if floats and chips:
        chip = chips[0].backend
        if labels is not None:
            drop = 100 * (accuracy["float"] - accuracy[chip])
            report.checks.append(Check(f"accuracy drop float -> {chip}", drop <= max_drop,
                                       f"{drop:.2f} points (at most {max_drop:g} allowed, --max-drop)"))
        first = report.comparisons[0]
        agree = 100 * first.overall_spike_agreement
        if first.layer_by_layer:
            layer, worst = min(first.layer_by_layer.items(), key=lambda item: item[1])
            report.checks.append(Check(
                f"spike agreement float vs {chip}, layer by layer", 100 * worst >= min_agreement,
                f"worst layer '{layer}' {100 * worst:.3f} % on the chip's inputs (at least {min_agreement:g} % "
                f"required, --min-agreement; end to end {agree:.3f} %)"))
        else:
            report.checks.append(Check(f"spike agreement float vs {chip}", agree >= min_agreement,
                                       f"{agree:.3f} % (at least {min_agreement:g} % required, --min-agreement)"))
    return report
