"""``st2chip demo``: the whole spine on the embedded digits data.

Train (or reuse) an sLIF MLP, export it to NIR, normalize and lower it, run the
test samples through the float NIR simulation, the fixed-point reference and
Lava's fixed_pt simulator, verify, count synaptic operations, and write
``model.pt``, ``model.nir``, ``report.json``, ``report.md`` and plots into one folder.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

import st2chip
from st2chip import defaults
from st2chip.analysis.energy import write_energy_report
from st2chip.analysis.verify import output_layers, verify
from st2chip.chip.table import format_table, layer_rows
from st2chip.pipeline import Log
from st2chip.converters.mlp import mlp_to_nir
from st2chip.graph.nirfile import write_nir
from st2chip.io import folder_lock, write_json, write_text
from st2chip.learn.checkpoint import load_mlp, save_checkpoint
from st2chip.learn.data import load_digits_split
from st2chip.learn.mlp import MLPConfig, SpikingMLP
from st2chip.learn.training import evaluate, seed_everything, train_classifier


def _model(out: Path, epochs: int, seed: int, retrain: bool) -> tuple[SpikingMLP, bool]:
    path = out / "model.pt"
    if path.exists() and not retrain:
        return load_mlp(path), False
    train, test = load_digits_split()
    seed_everything(seed)  # the initial weights come from the seed too
    model = SpikingMLP(MLPConfig())
    result = train_classifier(model, train, test, epochs=epochs, lr=5e-3, seed=seed, device="cpu",
                              desc="train sLIF MLP")
    save_checkpoint(model.cpu(), "mlp", model.config.to_dict(), path,
                    extra={"seed": seed, "epochs": epochs, "test_accuracy": result.test_accuracy})
    return model, True


def _markdown(summary: dict, table: str, verify_text: str, energy_md: str) -> str:
    acc = summary["accuracy"]
    return "\n".join([
        "# st2chip demo report", "",
        f"Model: sLIF MLP {summary['sizes']}, T = {summary['steps']} steps, rate-coded digits.", "",
        "| | value |", "|---|---|",
        f"| float (torch) test accuracy, all {summary['test_samples']} samples | {acc['torch']:.4f} |",
        f"| float (NIR simulation), {summary['samples']} samples | {acc['float']:.4f} |",
        f"| fixed-point reference, {summary['samples']} samples | {acc['reference']:.4f} |",
        f"| Lava fixed_pt, {summary['samples']} samples | {acc['lava']:.4f} |",
        f"| fixed-point reference, all {summary['test_samples']} samples | {acc['reference_all']:.4f} |",
        f"| reference vs Lava spike agreement | {100 * summary['reference_vs_lava_agreement']:.3f} % "
        f"({'exact' if summary['chip_exact'] else 'DIFFERENT'}) |",
        f"| float vs chip spike agreement | {100 * summary['float_vs_chip_agreement']:.3f} % |",
        f"| synaptic ops per sample (AC) | {summary['sops_per_sample']:.0f} |",
        f"| energy per sample (45 nm) | {summary['energy_nj_per_sample']:.3f} nJ |", "",
        "## ChipGraph", "", "```", table, "```", "",
        "## Verification", "", "```", verify_text, "```", "",
        "## Energy", "", energy_md, ""])


def run_demo(out: Path = Path(defaults.DEMO_OUT), samples: int = defaults.DEMO_SAMPLES,
             decay_groups: int = defaults.DEFAULT_DECAY_GROUPS, epochs: int = defaults.DEMO_EPOCHS,
             seed: int = 0, retrain: bool = False) -> int:
    """Run the demo; return 0 when every verification check passes (reference = Lava, chip faithful to float), else 1.

    ``out`` is locked while the demo writes into it: a second demo into the same
    folder at the same time is refused instead of mixing files of both.
    """
    with folder_lock(out, "demo"):
        return _run_demo(out, samples, decay_groups, epochs, seed, retrain)


def _run_demo(out: Path, samples: int, decay_groups: int, epochs: int, seed: int, retrain: bool) -> int:
    start = time.perf_counter()
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    log = Log(True)
    model, trained = log.stage("train" if retrain or not (out / "model.pt").exists() else "load model",
                               _model, out, epochs, seed, retrain)
    _, test = load_digits_split()
    torch_acc = evaluate(model, test)
    nir_path = write_nir(mlp_to_nir(model), out / "model.nir")
    graph = log.stage("read+normalize", st2chip.load, nir_path)
    chip = log.stage("lower", st2chip.lower, graph, decay_groups=decay_groups)
    run = st2chip.inputs_for(graph, samples=samples, steps=model.config.steps)  # the digits test split
    traces = [log.stage("simulate:float", st2chip.simulate, graph, run),
              log.stage("simulate:reference", st2chip.run, chip, run),
              log.stage("simulate:lava", st2chip.run, chip, run, backend="lava")]
    report = verify(traces, run.labels, outputs=output_layers(graph))
    everything = st2chip.inputs_for(graph, samples=len(test), steps=model.config.steps)
    reference_all = log.stage("simulate:ref-all", st2chip.run, chip, everything)
    lava_traces = traces[2]
    energy = log.stage("energy", st2chip.energy, chip, lava_traces, profile="45nm")
    energy_files = write_energy_report(energy, out)
    float_vs_chip, ref_vs_lava = report.comparisons
    energy_dict = energy.to_dict()
    totals = energy.totals()
    summary = {
        "sizes": model.config.sizes, "steps": model.config.steps, "samples": report.samples,
        "test_samples": len(test), "decay_groups": decay_groups, "trained_now": trained,
        "accuracy": {"torch": torch_acc, **report.accuracy,
                     "reference_all": reference_all.accuracy(everything.labels)},
        "chip_exact": report.chip_exact,
        "reference_vs_lava_agreement": ref_vs_lava.overall_spike_agreement,
        "float_vs_chip_agreement": float_vs_chip.overall_spike_agreement,
        "float_vs_chip_prediction_agreement": float_vs_chip.prediction_agreement,
        "sops_per_sample": totals["acs"] + totals["macs"],
        "acs_per_sample": totals["acs"], "macs_per_sample": totals["macs"],
        "energy_nj_per_sample": energy.total_pj / 1e3,
    }
    result = {"summary": summary, "chip": {"layers": layer_rows(chip), "lowering": chip.report},
              "verify": report.to_dict(), "energy": energy_dict,
              "wall_time_s": time.perf_counter() - start}
    write_json(out / "report.json", result)
    write_text(out / "report.md", _markdown(summary, format_table(chip), report.to_text(), energy.to_markdown()))
    print(format_table(chip))
    print(report.to_text())
    print(f"\nreport: {out / 'report.md'}, {out / 'report.json'}; plots: "
          + ", ".join(str(p) for p in energy_files.values() if str(p).endswith(".png")))
    print(f"demo finished in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0 if report.passed else 1
