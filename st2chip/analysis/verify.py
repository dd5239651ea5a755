"""Compare backends on the same samples: accuracy, per-layer agreement, first divergence.

The float NIR simulation is what the trained model means; the fixed-point
reference and Lava are what the chip does. Reference and Lava must agree exactly
(spikes and voltages); float vs fixed-point agreement measures what lowering
(folding, decay grouping, quantization) costs.

Agreement between two runs that do nothing is no success: each backend's spike
rates are reported per layer, and a graph's outputs (:class:`OutputLayers`) that
never spike, spike at every step, or whose readout scores are the same for every
sample fail the verification unless the user expects it (``--allow-silent``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import nir
import numpy as np

from st2chip.graph.reading import READOUT, SPIKING
from st2chip.traces import Traces


@dataclass
class Divergence:
    """Where two backends first differ: earliest time step, then layer order (``population``: the population
    Lava ran alone and found different, in ``--lava-mode layers``)."""

    layer: str
    sample: int
    step: int
    neuron: int
    what: str  # "spike" or "voltage"
    population: str | None = None


@dataclass
class LavaRun:
    """How a Lava cross-check ran: ``whole`` (the network in one Lava run) or ``layers`` (each population
    alone on the inputs the engine recorded for it, ``populations`` of them in ``runs`` Lava runs of at most
    ``max_processes`` processes)."""

    mode: str
    populations: int | None = None
    runs: int | None = None
    max_processes: int | None = None

    @classmethod
    def of(cls, traces: Traces) -> "LavaRun":
        meta = traces.meta
        if meta.get("lava_mode") != "layers":
            return cls("whole")
        return cls("layers", meta["populations"], meta["runs"], meta["max_processes"])

    def describe(self) -> str:
        if self.mode != "layers":
            return "whole (the whole network in one Lava run)"
        return (f"layers (each of {self.populations} populations alone on the engine's recorded inputs, in "
                f"{self.runs} Lava runs of at most {self.max_processes} processes)")


@dataclass
class Comparison:
    """Agreement of backend ``b`` with backend ``a``."""

    a: str
    b: str
    spike_agreement: dict[str, float]
    exact: bool
    first_divergence: Divergence | None
    prediction_agreement: float | None  # None: the outputs of a or b carry nothing (silent or saturated)
    readout_error: dict[str, float] = field(default_factory=dict)  # relative error of b's readout voltages
    # float vs chip only: each float layer fed the chip's spikes into it (what the layer itself loses)
    layer_by_layer: dict[str, float] = field(default_factory=dict)
    layer_by_layer_readout_error: dict[str, float] = field(default_factory=dict)
    lava: LavaRun | None = None  # a Lava cross-check: how it ran
    populations: list[Divergence] = field(default_factory=list)  # layers mode: each population that differs

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


@dataclass(frozen=True)
class OutputLayers:
    """What a graph's Output nodes are made of.

    ``spiking``: the spiking layers whose spikes reach an Output node, directly or through a non-spiking
    readout (LI / CubaLI / I); ``readouts``: those readouts, whose voltages at the last step are the scores.
    """

    spiking: tuple[str, ...] = ()
    readouts: tuple[str, ...] = ()


@dataclass
class SpikeRate:
    """How one layer spikes on one backend, over every sample, step and neuron."""

    layer: str
    backend: str
    rate: float  # mean spikes per neuron per step
    never: float  # fraction of the layer's neurons that never spike
    always: float  # fraction of the layer's neurons that spike at every step of every sample
    neurons: int

    @property
    def silent(self) -> bool:
        return self.rate == 0.0

    @property
    def saturated(self) -> bool:
        return self.rate == 1.0


@dataclass
class VerifyReport:
    samples: int
    accuracy: dict[str, float]
    comparisons: list[Comparison] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    headroom: list[Headroom] = field(default_factory=list)
    rates: list[SpikeRate] = field(default_factory=list)
    outputs: OutputLayers | None = None

    @property
    def chip_exact(self) -> bool:
        """True when every fixed-point backend pair agreed exactly."""
        return all(c.exact for c in self.comparisons if c.a != "float")

    @property
    def passed(self) -> bool:
        """True when every check passed: the chip backends agree, the chip is faithful to float and the outputs
        neither stay silent nor saturate (or the user allowed it)."""
        return all(c.passed for c in self.checks)

    def to_dict(self) -> dict:
        out = {"samples": self.samples, "accuracy": self.accuracy, "chip_exact": self.chip_exact,
               "passed": self.passed, "checks": [asdict(c) for c in self.checks], "comparisons": [],
               "headroom": [asdict(h) for h in self.headroom],
               "spike_rates": [asdict(r) | {"silent": r.silent, "saturated": r.saturated} for r in self.rates],
               "outputs": None if self.outputs is None else {k: list(v) for k, v in asdict(self.outputs).items()}}
        for c in self.comparisons:
            d = asdict(c)
            d["overall_spike_agreement"] = c.overall_spike_agreement
            out["comparisons"].append(d)
        return out

    def to_text(self) -> str:
        lines = [f"samples: {self.samples}"]
        lines += [f"accuracy[{k}]: {v:.4f}" for k, v in self.accuracy.items()] or ["accuracy: no labels given"]
        lines += rate_lines(self.rates, self.samples)
        for c in self.comparisons:
            predicted = ("n/a (outputs silent)" if c.prediction_agreement is None
                         else f"{100 * c.prediction_agreement:.2f} %")
            lines.append(f"{c.a} vs {c.b}: spike agreement {100 * c.overall_spike_agreement:.3f} %, "
                         f"prediction agreement {predicted}" + (" (exact)" if c.exact else ""))
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
            if c.lava is not None:
                lines.append(f"  lava mode: {c.lava.describe()}")
            if c.first_divergence is not None:
                d = c.first_divergence
                lines.append(f"  first divergence: layer '{d.layer}', step {d.step}, sample {d.sample}, "
                             f"neuron {d.neuron} ({d.what})")
            for d in c.populations:
                lines.append(f"  population '{d.population}' (layer '{d.layer}') differs on Lava from step "
                             f"{d.step}: sample {d.sample}, neuron {d.neuron} ({d.what})")
        for h in self.headroom:
            if h.beyond:
                lines.append(f"headroom: layer '{h.layer}': float voltages reach {h.reach:.0f} thresholds from zero, "
                             f"beyond what the chip holds for {h.beyond} of {h.neurons} neurons ({h.room:.0f} "
                             f"thresholds at least); theirs saturate there (more room: raise --headroom)")
        for check in self.checks:
            lines.append(f"check {'ok    ' if check.passed else 'FAILED'} {check.name}: {check.detail}")
        return "\n".join(lines)


def rate_lines(rates: list[SpikeRate], samples: int) -> list[str]:
    """The spike-rate table (one column per backend), then one line per layer that never spikes or spikes at
    every step on some backend."""
    if not rates:
        return []
    backends = list(dict.fromkeys(r.backend for r in rates))
    table: dict[str, dict[str, SpikeRate]] = {}
    for r in rates:
        table.setdefault(r.layer, {})[r.backend] = r
    lines = ["spike rates: spikes per neuron per step, and % of neurons that never | always spike",
             f"  {'layer':<28}" + "".join(f"  {b:>24}" for b in backends)]
    for layer, row in table.items():
        cells = [f"{row[b].rate:6.4f} {100 * row[b].never:5.1f} % | {100 * row[b].always:5.1f} %" if b in row
                 else "-" for b in backends]
        lines.append(f"  {layer:<28}" + "".join(f"  {cell:>24}" for cell in cells))
    for layer, row in table.items():
        silent = [b for b, r in row.items() if r.silent]
        saturated = [b for b, r in row.items() if r.saturated]
        if silent:
            lines.append(f"  layer '{layer}' never spikes on {' and '.join(silent)} (over {_over(samples)})")
        if saturated:
            lines.append(f"  layer '{layer}' spikes at every step on {' and '.join(saturated)} (every neuron, "
                         f"over {_over(samples)})")
    return lines


def _over(samples: int) -> str:
    return f"all {samples} samples" if samples != 1 else "its 1 sample"


def output_layers(graph: nir.NIRGraph) -> OutputLayers:
    """The spiking layers and readouts that feed ``graph``'s Output nodes, looking back through every node that
    is not a spiking neuron (affine maps, flatten, pooling, products, readouts) and stopping at spiking ones."""
    preds: dict[str, list[str]] = {name: [] for name in graph.nodes}
    for a, b in graph.edges:
        preds[b].append(a)
    todo = [name for name, node in graph.nodes.items() if isinstance(node, nir.Output)]
    seen, spiking, readouts = set(todo), [], []
    while todo:
        name = todo.pop(0)
        node = graph.nodes[name]
        if isinstance(node, SPIKING):
            spiking.append(name)
            continue
        if isinstance(node, READOUT):
            readouts.append(name)
        for p in preds[name]:
            if p not in seen:
                seen.add(p)
                todo.append(p)
    order = list(graph.nodes)
    return OutputLayers(tuple(sorted(spiking, key=order.index)), tuple(sorted(readouts, key=order.index)))


def spike_rates(traces: Traces, layers: list[str]) -> list[SpikeRate]:
    """Per layer of ``layers`` recorded in ``traces``: its :class:`SpikeRate`."""
    out = []
    for layer in layers:
        s = traces.spikes.get(layer)
        if s is None or not s.size:
            continue
        out.append(SpikeRate(layer, traces.backend, float(s.mean()), float((s.max(axis=(0, 1)) == 0).mean()),
                             float((s.min(axis=(0, 1)) >= 1).mean()), int(s.shape[2])))
    return out


def _rated_layers(traces: list[Traces], outputs: OutputLayers) -> list[str]:
    """The spiking layers: the float run's (which records no others), else every chip layer but the readouts."""
    first = next((t for t in traces if t.backend == "float"), traces[0])
    return [layer for layer in first.spikes if layer not in outputs.readouts]


def _flat(traces: Traces, readout: str) -> bool | None:
    """Whether ``readout``'s scores (its voltages at the last step) are the same for every sample; None where
    that says nothing (one sample) or the voltages were not recorded."""
    v = traces.voltages.get(readout)
    if v is None or v.shape[0] < 2:
        return None
    last = v[:, -1]
    return bool(np.all(last == last[0]))


def _outputs_silent(traces: Traces, outputs: OutputLayers) -> bool:
    """True when nothing a prediction is made of moves on ``traces``: every output layer silent or saturated
    and every readout's scores the same for every sample."""
    flags = [r.silent or r.saturated for r in spike_rates(traces, list(outputs.spiking))]
    flags += [f for f in (_flat(traces, r) for r in outputs.readouts) if f is not None]
    return bool(flags) and all(flags)


def _output_checks(rates: list[SpikeRate], traces: list[Traces], outputs: OutputLayers, samples: int,
                   allow_silent: bool) -> list[Check]:
    """One check per output layer (neither silent nor saturated on any backend) and per readout (its scores
    differ between samples on every backend, when there are two samples or more)."""
    checks = []
    suffix = "allowed by --allow-silent" if allow_silent else "if that is expected: --allow-silent"
    for layer in outputs.spiking:
        mine = [r for r in rates if r.layer == layer]
        if not mine:
            continue
        silent = " and ".join(r.backend for r in mine if r.silent)
        saturated = " and ".join(r.backend for r in mine if r.saturated)
        bad = ([f"never spikes on {silent}"] if silent else []) + (
            [f"spikes at every step on {saturated}"] if saturated else [])
        detail = (f"{'; '.join(bad)}, over {_over(samples)} ({suffix})" if bad
                  else ", ".join(f"{r.backend} {r.rate:.4f}" for r in mine) + " spikes per neuron per step")
        checks.append(Check(f"output layer '{layer}' neither silent nor saturated", allow_silent or not bad,
                            detail))
    for readout in outputs.readouts:
        flat = {t.backend: f for t in traces if (f := _flat(t, readout)) is not None}
        if not flat:
            continue
        bad = [b for b, f in flat.items() if f]
        detail = (f"the same for all {samples} samples on {' and '.join(bad)} ({suffix})" if bad
                  else f"on {' and '.join(flat)} ({samples} samples)")
        checks.append(Check(f"readout '{readout}' scores differ between samples", allow_silent or not bad,
                            detail))
    return checks


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


def _compared(a: Traces, b: Traces, outputs: OutputLayers, **options) -> Comparison:
    """:func:`compare`, with no prediction agreement where ``a`` or ``b`` has only silent outputs."""
    comparison = compare(a, b, **options)
    if _outputs_silent(a, outputs) or _outputs_silent(b, outputs):
        comparison.prediction_agreement = None
    return comparison


def _cross_checked(chip: Traces, other: Traces, outputs: OutputLayers) -> Comparison:
    """A Lava cross-check of ``other.samples`` samples against the first chip backend: layer by layer, each
    population Lava found different (``other.meta["differences"]``) is named and fails it."""
    comparison = _compared(chip, other, outputs, voltages=True)
    comparison.lava = LavaRun.of(other)
    comparison.b = f"{other.backend} (first {other.samples} samples)"
    comparison.populations = [Divergence(d.layer, d.sample, d.step, d.neuron, d.what, d.population)
                              for d in other.meta.get("differences", ())]
    comparison.exact = comparison.exact and not comparison.populations
    return comparison


def _exact_detail(c: Comparison) -> str:
    if c.exact:
        return "spikes and voltages identical"
    named = "".join(f"; population '{d.population}' differs from step {d.step} (sample {d.sample}, neuron "
                    f"{d.neuron}, {d.what})" for d in c.populations[:3])
    more = f"; {len(c.populations) - 3} more populations differ" if len(c.populations) > 3 else ""
    return f"{100 * c.overall_spike_agreement:.3f} % of spikes agree{named}{more}"


def verify(traces: list[Traces], labels: np.ndarray | None = None, *, max_drop: float = 2.0,
           min_agreement: float = 95.0, cross_checks: tuple[Traces, ...] = (),
           units: dict[str, np.ndarray] | None = None, layer_by_layer: Traces | None = None,
           headroom: list[Headroom] = (), outputs: OutputLayers | None = None,
           allow_silent: bool = False) -> VerifyReport:
    """Compare backends (float→first chip backend, chip→chip) and check the result.

    ``cross_checks`` are chip backends run on the first samples only (Lava on a
    few samples while the engine runs them all): each is compared with the first
    chip backend on those samples. A Lava run layer by layer
    (:func:`st2chip.targets.lava_layers.run`) also names each population whose spikes or
    voltages differed from the engine's record, with its first differing step and neuron.
    Checks: the chip backends agree exactly; the first chip backend's accuracy is at most
    ``max_drop`` points below float (when ``labels`` are given); float-vs-chip spike agreement
    is at least ``min_agreement`` percent. ``units`` adds the readouts' relative error (see :func:`compare`).

    ``layer_by_layer`` is the float graph run with every layer fed the first chip
    backend's spikes (:func:`st2chip.pipeline.run_layer_by_layer`): its agreement
    with the chip is what each layer's lowering costs by itself, where end-to-end
    agreement also counts every difference again in each layer after it (in a deep
    network a few flips in layer 1 move many spikes later). Given, the agreement
    check takes its worst layer; end-to-end agreement is reported beside it.
    ``headroom`` (:func:`headroom_use`) is reported, not checked: a saturated voltage is a
    difference the agreement figures already count.

    Every backend's spike rates are reported per layer (readouts left out). Given the graph's
    ``outputs`` (:func:`output_layers`), a check per output layer fails when it never spikes or spikes
    at every step on some backend over all samples, and one per readout when its scores are the same
    for every sample (two runs that do nothing agree perfectly); ``allow_silent`` lets them pass. A
    prediction agreement between backends one of which has only such outputs is None (n/a).
    """
    accuracy = {t.backend: t.accuracy(labels) for t in traces} if labels is not None else {}
    outs = outputs or OutputLayers()
    layers = _rated_layers(traces, outs)
    rates = [r for t in traces for r in spike_rates(t, layers)]
    report = VerifyReport(samples=traces[0].samples, accuracy=accuracy, headroom=list(headroom), rates=rates,
                          outputs=outputs)
    floats = [t for t in traces if t.backend == "float"]
    chips = [t for t in traces if t.backend != "float"]
    if floats and chips:
        report.comparisons.append(_compared(floats[0], chips[0], outs, voltages=False, units=units))
        if layer_by_layer is not None:
            local = compare(layer_by_layer, chips[0], voltages=False, units=units)
            report.comparisons[0].layer_by_layer = local.spike_agreement
            report.comparisons[0].layer_by_layer_readout_error = local.readout_error
    for other in chips[1:]:
        report.comparisons.append(_compared(chips[0], other, outs, voltages=True))
    for other in cross_checks:
        n = other.samples
        if labels is not None:
            accuracy[f"{other.backend} (first {n})"] = other.accuracy(labels[:n])
        report.comparisons.append(_cross_checked(chips[0].head(n), other, outs))
    for c in report.comparisons:
        if c.a != "float":
            report.checks.append(Check(f"{c.a} = {c.b}", c.exact, _exact_detail(c)))
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
    report.checks += _output_checks(rates, traces, outs, report.samples, allow_silent)
    return report
