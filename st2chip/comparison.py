"""One model on several chips side by side: whether it fits (and why not), accuracy, operations, energy, latency.

Per target (:data:`st2chip.families.TARGETS`) the graph is lowered and, on Loihi 2, placed on one chip;
a target whose lowering, design rules or placement refuse the model is a row that gives every reason,
one line each, not an error. A target that takes it runs the inputs on st2chip's bit-exact engine of
that chip; its synaptic operations per inference are counted from those spikes and priced by the
target's energy profile (a profile of the same name: ``loihi2``, ``xylo-audio3`` …; a chip with no
published figure has no energy). Latency is the chip steps a sample needs beyond its own (the depth
of the chip's pipeline of layers).
"""

from __future__ import annotations

from typing import Any

import nir

from st2chip import defaults
from st2chip.analysis.compare import CompareReport, TargetResult
from st2chip.errors import InputError, St2chipError
from st2chip.families import TARGETS
from st2chip.inputs import RunInputs


def _reasons(err: St2chipError) -> list[str]:
    """Every reason a target refused the model, one line each (a design-rule error lists its violations)."""
    violations = getattr(err, "violations", None)
    if violations:
        return [" ".join(f"{v.layer or 'network'}: {v.rule}: {v.detail}".split()) for v in violations]
    return [" ".join(str(err).split())]


def _accuracy(traces, labels) -> float | None:
    return None if labels is None else traces.accuracy(labels)


def _loihi(graph: nir.NIRGraph, inputs: RunInputs, name: str, engine: dict) -> TargetResult:
    """Lower and place on one Loihi 2 chip; run on the engine; price with the ``loihi2`` profile."""
    import st2chip
    try:
        chip = st2chip.lower(graph, target=name)
        placement = st2chip.place(chip, defaults.RESOURCES, max_chips=defaults.MAX_CHIPS)
    except St2chipError as err:
        return TargetResult(name, False, _reasons(err))
    traces = st2chip.run(chip, inputs, voltages=False, **engine)
    report = st2chip.energy(chip, traces, profile=name, placement=placement)
    totals = report.totals()
    estimates = [k for k, entry in report.profile.sources.items() if entry["status"] == "estimate"]
    notes = [f"placed on {placement.n_cores} core(s) of {placement.n_chips} chip(s) ({placement.resources.name}); "
             f"profile '{name}': {len(estimates)} of {len(report.profile.figures)} figures are estimates"]
    return TargetResult(name, True, chip_accuracy=_accuracy(traces, inputs.labels),
                        synaptic_ops=totals["acs"] + totals["macs"], energy_pj=report.total_pj,
                        latency_steps=chip.depth, profile=name, notes=notes)


def _xylo(graph: nir.NIRGraph, inputs: RunInputs, name: str, engine: dict) -> TargetResult:
    """Lower against the chip's design rules; run on the Xylo engine; price with the chip's profile if any."""
    import st2chip
    from st2chip.analysis.xylo_energy import has_profile, xylo_energy, xylo_ops
    from st2chip.targets.xylo_run import counts_of, run_padded, xylo_traces
    try:
        chip = st2chip.lower(graph, target=name)
    except St2chipError as err:
        return TargetResult(name, False, _reasons(err))
    counts = counts_of(chip, inputs.spikes)
    run = run_padded(chip, counts, device=engine["device"], batch_size=engine["batch_size"])
    traces = xylo_traces(chip, run, counts.shape[1], inputs.spikes, "engine")
    result = TargetResult(name, True, chip_accuracy=_accuracy(traces, inputs.labels), latency_steps=chip.latency,
                          synaptic_ops=sum(r.synaptic_ops for r in xylo_ops(chip, run, counts)))
    dt = graph.metadata.get("dt") if isinstance(graph.metadata, dict) else None
    if not has_profile(name):
        result.notes.append(f"no published energy figure for {name}: energy not given")
    elif dt is None:
        result.notes.append("energy needs the time step: the graph's metadata has no dt (pass --dt)")
    else:
        report = xylo_energy(chip, run, name, dt=dt, counts=counts)
        result.energy_pj, result.profile = report.total_pj, name
        result.notes.extend(report.notes())
    return result


def compare(graph: nir.NIRGraph, inputs: Any = None, labels: Any = None, *,
            targets: tuple[str, ...] | list[str] = defaults.COMPARE_TARGETS, samples: int | None = None,
            steps: int | None = None, device: str | None = None,
            batch_size: int = defaults.BATCH_SIZE) -> CompareReport:
    """``graph`` on each of ``targets`` over the same ``inputs`` (see :func:`st2chip.api.inputs_for`)."""
    import st2chip
    names = list(dict.fromkeys(t.strip() for t in targets if t.strip()))
    unknown = [name for name in names if name not in TARGETS]
    if unknown or not names:
        raise InputError(f"--targets: {'unknown target ' + repr(unknown[0]) if unknown else 'no target named'}; "
                         f"choose from {', '.join(TARGETS)}")
    families = {name: TARGETS[name].family for name in names}
    run_inputs = st2chip.inputs_for(graph, inputs, labels, samples=samples, steps=steps)
    float_accuracy = _accuracy(st2chip.simulate(graph, run_inputs), run_inputs.labels)
    engine = {"device": device, "batch_size": batch_size}
    rows = [(_xylo if families[name] == "xylo" else _loihi)(graph, run_inputs, name, engine) for name in names]
    return CompareReport(inputs=run_inputs.describe(), samples=run_inputs.samples, steps=run_inputs.steps,
                         float_accuracy=float_accuracy, targets=rows)
