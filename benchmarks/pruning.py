"""Pruning benchmark: accuracy, sparsity, SOPs and energy of the tiny spiking Transformer on digits.

For every seed: train a dense plain-LIF ST; then
- L1P: train with the L1 penalty, prune to each sparsity (global magnitude), fine-tune;
- DSP: factorize (SVD), train with the group penalty, truncate to each rank, fine-tune;
each fine-tuning once in the LIF arm (thresholds/leaks frozen) and once in the sLIF
arm (per-neuron thresholds/leaks learn; see st2chip.compensation). Each row reports
test accuracy (mean and standard deviation over seeds), parameters, non-zero weights,
synaptic operations counted from the real spikes on the test set, and 45 nm energy;
and the same **on the chip**: each model is exported as a bundle, composed, lowered
(``--chip-decay-groups`` K, ``--lowrank auto``), run on the fixed-point engine over the whole
test split, and counted from the engine's traces (st2chip.analysis.traffic) with the 45 nm
and Loihi 2 profiles: chip accuracy, ACs, MACs and energy per sample.

    python benchmarks/pruning.py --quick     # smoke run, about a minute or two
    python benchmarks/pruning.py             # the full table in docs/pruning.md

Writes benchmarks/results/pruning.json and pruning.png (pruning_quick.* with --quick);
prints one summary line.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from st2chip.learn import compensation, pruning  # noqa: E402
from st2chip.learn.data import load_digits_split  # noqa: E402
from st2chip.io import write_json, write_png  # noqa: E402
from st2chip.analysis.energy import energy_report, load_profile  # noqa: E402
from st2chip.chip.lower import lower  # noqa: E402
from st2chip.inputs import direct_inputs  # noqa: E402
from st2chip.converters.transformer import export_bundle  # noqa: E402
from st2chip.graph.bundle_graph import bundle_graph  # noqa: E402
from st2chip.targets import engine  # noqa: E402
from st2chip.analysis.model_sops import count_sops  # noqa: E402
from st2chip.learn.training import default_device, evaluate, seed_everything, train_classifier  # noqa: E402
from st2chip.learn.transformer import SpikingTransformer, STConfig  # noqa: E402

RESULTS = Path(__file__).parent / "results"
CHIP_PROFILES = ("45nm", "loihi2")
SETTINGS = {
    "quick": dict(seeds=1, base_epochs=8, penalty_epochs=2, finetune_epochs=3,
                  sparsities=[0.0, 0.9], ranks=[4]),
    "full": dict(seeds=3, base_epochs=25, penalty_epochs=5, finetune_epochs=8,
                 sparsities=[0.0, 0.5, 0.8, 0.9, 0.95], ranks=[16, 8, 4, 2]),
}


def measure(model: torch.nn.Module, test, device: torch.device) -> dict:
    """Accuracy, parameter and weight counts, SOPs and energy of one model on the test set."""
    sops = count_sops(model, test, device=device)
    block_nonzero, block_total = pruning.nonzero_weights(model)
    weights = [l for l in sops.layers.values() if l.kind != "spike-product"]
    blocks = [l for l in weights if l.name.startswith("blocks.")]
    return {"accuracy": evaluate(model, test, device=device),
            "parameters": sum(p.numel() for p in model.parameters()),
            "nonzero_weights": sum(l.nonzero_weights for l in weights),
            "weights": sum(l.weights for l in weights),
            "nonzero_block_weights": block_nonzero, "block_weights": block_total,
            "sparsity": pruning.weight_sparsity(model),
            "ranks": dict(model.config.ranks),
            "acs": sops.acs, "macs": sops.macs, "sops": sops.sops, "energy_nj": sops.energy_pj() / 1e3,
            "block_sops": sum(l.acs + l.macs for l in blocks) / sops.samples}


def measure_chip(model: torch.nn.Module, decay_groups: int) -> dict:
    """The model as the chip runs it, on the whole digits test split: accuracy, ACs and MACs per sample,
    cores (Loihi 2 placement) and energy per sample with each profile of :data:`CHIP_PROFILES`."""
    with tempfile.TemporaryDirectory() as tmp:
        graph = bundle_graph(export_bundle(model.cpu(), Path(tmp) / "bundle"))
    chip = lower(graph, decay_groups=decay_groups, lowrank="auto")
    inputs = direct_inputs(graph, None, None)
    traces = engine.run(chip, inputs.spikes, voltages=False, batch_size=128)
    reports = {p: energy_report(chip, traces, p) for p in CHIP_PROFILES}
    totals = reports["45nm"].totals()
    return {"chip_accuracy": float(np.mean(traces.scores.argmax(1) == inputs.labels)),
            "chip_acs": totals["acs"], "chip_macs": totals["macs"], "chip_sops": totals["acs"] + totals["macs"],
            "chip_nonzero": sum(s.nnz for s in chip.synapses), "chip_cores": reports["loihi2"].placement.n_cores,
            **{f"chip_energy_nj_{p}": r.total_pj / 1e3 for p, r in reports.items()}}


def run_seed(seed: int, s: dict, lr: float, arms: list[tuple[str, float | None]], train, test,
             device: torch.device, bar: tqdm, train_norm: bool = True, chip_groups: int = 4) -> list[dict]:
    """All rows of one seed: dense, L1P at every sparsity, DSP at every rank, in every arm.

    ``arms``: (label, intrinsic learning rate), ``None`` for the frozen LIF arm. ``chip_groups`` > 0
    also measures every model on the chip with that many decay groups.
    """
    chip = (lambda m: measure_chip(m, chip_groups)) if chip_groups > 0 else (lambda m: {})
    seed_everything(seed)
    dense = SpikingTransformer(STConfig.tiny_digits(neuron="lif"))
    train_classifier(dense, train, test, epochs=s["base_epochs"], lr=5e-3, seed=seed, device=device,
                     progress=False)
    rows = [{"method": "dense", "level": None, "arm": "lif", "seed": seed, **measure(dense, test, device),
             **chip(dense)}]
    bar.update()

    l1 = copy.deepcopy(dense)
    train_classifier(l1, train, test, epochs=s["penalty_epochs"], lr=lr, seed=seed, device=device,
                     penalty=pruning.l1_penalty(s["l1_strength"]), progress=False)
    low = copy.deepcopy(dense)
    pruning.factorize(low)
    train_classifier(low, train, test, epochs=s["penalty_epochs"], lr=lr, seed=seed, device=device,
                     penalty=pruning.group_penalty(s["group_strength"]), progress=False)

    jobs = [("l1p", sp, l1) for sp in s["sparsities"]] + [("dsp", r, low) for r in s["ranks"]]
    for method, level, start in jobs:
        for arm, intrinsic_lr in arms:
            model = copy.deepcopy(start)
            if method == "l1p":
                pruning.magnitude_prune(model, level, "global")
            else:
                pruning.truncate(model, rank=level)
            pruned_accuracy = evaluate(model, test, device=device)
            model, _ = compensation.finetune(model, train, test, learn_intrinsic=intrinsic_lr is not None,
                                             epochs=s["finetune_epochs"], lr=lr, intrinsic_lr=intrinsic_lr or 0.0,
                                             seed=seed, device=device, train_norm=train_norm, progress=False)
            pruning.make_permanent(model)
            rows.append({"method": method, "level": level, "arm": arm, "seed": seed,
                         "accuracy_pruned": pruned_accuracy, **measure(model, test, device), **chip(model)})
            bar.update()
    return rows


def aggregate(rows: list[dict]) -> list[dict]:
    """One row per (method, level, arm): mean and standard deviation over seeds."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["level"], r["arm"]), []).append(r)
    table = []
    for (method, level, arm), rs in groups.items():
        mean = lambda k: statistics.fmean(r[k] for r in rs)
        std = lambda k: statistics.stdev([r[k] for r in rs]) if len(rs) > 1 else 0.0
        row = {"method": method, "level": level, "arm": arm, "seeds": len(rs),
               "accuracy_mean": mean("accuracy"), "accuracy_std": std("accuracy")}
        if "accuracy_pruned" in rs[0]:
            row["accuracy_pruned_mean"] = mean("accuracy_pruned")
        for k in ("parameters", "nonzero_weights", "weights", "nonzero_block_weights", "block_weights",
                  "sparsity", "acs", "macs", "sops", "energy_nj", "block_sops"):
            row[k] = mean(k)
        for k in (k for k in rs[0] if k.startswith("chip_")):
            row[k] = mean(k)
        if "chip_accuracy" in rs[0]:
            row["chip_accuracy_std"] = std("chip_accuracy")
        row["sops_std"] = std("sops")
        row["ranks"] = sorted(set(rs[0]["ranks"].values()))
        table.append(row)
    return table


def pareto_plot(table: list[dict], target: Path, title: str) -> Path:
    """Accuracy versus SOPs per sample, one marker per method and arm, with the Pareto front: the chip's
    accuracy and operations where the rows have them, else the torch model's."""
    on_chip = all("chip_sops" in r for r in table)
    ops, acc, spread = (("chip_sops", "chip_accuracy", "chip_accuracy_std") if on_chip
                        else ("sops", "accuracy_mean", "accuracy_std"))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    arms = list(dict.fromkeys(r["arm"] for r in table if r["method"] != "dense"))
    colors = dict(zip(arms, ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"]))
    styles = {("dense", "lif"): ("k", "*")}
    styles.update({(m, a): (colors[a], "o" if m == "l1p" else "s") for m in ("l1p", "dsp") for a in arms})
    for (method, arm), (color, marker) in styles.items():
        rs = [r for r in table if r["method"] == method and r["arm"] == arm]
        if not rs:
            continue
        ax.errorbar([r[ops] for r in rs], [100 * r[acc] for r in rs],
                    yerr=[100 * r[spread] for r in rs], fmt=marker, color=color, capsize=3,
                    label=f"{method.upper() if method != 'dense' else 'dense'} ({arm})",
                    mfc="none" if method == "dsp" else color)
        for r in rs:
            if r["level"] is not None:
                tag = f"{100 * r['level']:.0f}%" if method == "l1p" else f"r{r['level']}"
                ax.annotate(tag, (r[ops], 100 * r[acc]), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
    front, best = [], -1.0
    for r in sorted(table, key=lambda r: r[ops]):
        if r[acc] > best:
            front.append(r)
            best = r[acc]
    ax.step([r[ops] for r in front], [100 * r[acc] for r in front], where="post",
            color="grey", lw=1, alpha=0.6, label="Pareto front")
    ax.set_xscale("log")
    ax.set_xlabel("synaptic operations per sample (ACs + MACs, "
                  + ("counted on the chip: engine traces)" if on_chip else "torch model, test-set spikes)"))
    ax.set_ylabel("test accuracy (%)" + (" on the chip (engine)" if on_chip else ""))
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    write_png(target, fig, dpi=130)
    plt.close(fig)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 seed, few epochs, 2 sparsities, 1 rank")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (default 1 quick, 3 full)")
    parser.add_argument("--lr", type=float, default=2e-3, help="weight learning rate of penalty and fine-tune phases")
    parser.add_argument("--intrinsic-lr", type=float, nargs="+", default=[1e-2],
                        help="sLIF threshold/leak learning rate(s); several give one sLIF arm each")
    parser.add_argument("--freeze-norm", action="store_true",
                        help="freeze batch-norm scales/shifts during fine-tuning (both arms)")
    parser.add_argument("--sparsities", type=float, nargs="+", default=None, help="L1P sparsities (override)")
    parser.add_argument("--ranks", type=int, nargs="+", default=None, help="DSP ranks (override)")
    parser.add_argument("--l1", type=float, default=1e-4, help="L1 penalty strength")
    parser.add_argument("--group", type=float, default=1e-3, help="DSP group penalty strength")
    parser.add_argument("--chip-decay-groups", type=int, default=4, metavar="K",
                        help="measure every model on the chip with K decay groups (default 4; 0: skip the chip)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON output, PNG beside it (default results/pruning.json, or pruning_quick.json with --quick)")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("ST2CHIP_THREADS", "2")))
    mode = "quick" if args.quick else "full"
    out = args.out or RESULTS / ("pruning_quick.json" if args.quick else "pruning.json")
    s = dict(SETTINGS[mode], l1_strength=args.l1, group_strength=args.group)
    for key in ("seeds", "sparsities", "ranks"):
        if getattr(args, key) is not None:
            s[key] = getattr(args, key)
    arms: list[tuple[str, float | None]] = [("lif", None)] + [
        ("slif" if len(args.intrinsic_lr) == 1 else f"slif@{v:g}", v) for v in args.intrinsic_lr]
    device = default_device()
    train, test = load_digits_split()
    started = time.time()
    runs = s["seeds"] * (1 + len(arms) * (len(s["sparsities"]) + len(s["ranks"])))
    rows: list[dict] = []
    with tqdm(total=runs, desc=f"pruning benchmark ({mode})") as bar:
        for seed in range(s["seeds"]):
            rows += run_seed(seed, s, args.lr, arms, train, test, device, bar, train_norm=not args.freeze_norm,
                             chip_groups=args.chip_decay_groups)
    table = aggregate(rows)
    minutes = (time.time() - started) / 60
    device_name = (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)")
    profile = load_profile("45nm")
    command = " ".join(["python benchmarks/pruning.py", *(sys.argv[1:] if argv is None else argv)])
    result = {"benchmark": "pruning", "mode": mode, "command": command,
              "device": device_name, "torch": torch.__version__, "minutes": minutes,
              "settings": {**s, "lr": args.lr, "freeze_norm": args.freeze_norm, "intrinsic_lr": args.intrinsic_lr, "base_lr": 5e-3,
                           "chip_decay_groups": args.chip_decay_groups, "chip_profiles": list(CHIP_PROFILES),
                           "config": STConfig.tiny_digits(neuron="lif").to_dict()},
              "energy_profile": {"name": profile.name, "E_AC_pJ": profile.e_ac_pj, "E_MAC_pJ": profile.e_mac_pj,
                                 "source": profile.source},
              "table": table, "runs": rows}
    write_json(out, result)
    png = pareto_plot(table, out.with_suffix(".png"),
                      f"tiny ST on digits, {s['seeds']} seed(s), {mode} run on {device_name}")
    pick = lambda m, l, a: next((r for r in table if (r["method"], r["level"], r["arm"]) == (m, l, a)), None)
    fmt = lambda r: f"{100 * r['accuracy_mean']:.1f}±{100 * r['accuracy_std']:.1f}%" if r else "n/a"
    l1_level = 0.9 if 0.9 in s["sparsities"] else max(s["sparsities"])
    rank = min(s["ranks"], key=lambda r: abs(r - 4))
    slif = arms[1][0]
    print(f"pruning ({mode}, {s['seeds']} seeds, {device_name}, {minutes:.1f} min): dense {fmt(pick('dense', None, 'lif'))}; "
          f"L1P {100 * l1_level:.0f}% LIF {fmt(pick('l1p', l1_level, 'lif'))} / {slif} {fmt(pick('l1p', l1_level, slif))}; "
          f"DSP rank {rank} LIF {fmt(pick('dsp', rank, 'lif'))} / {slif} {fmt(pick('dsp', rank, slif))} -> {out}, {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
