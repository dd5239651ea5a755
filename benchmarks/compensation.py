"""The compensation question: does sLIF fine-tuning beat LIF fine-tuning after pruning, with paired statistics?

Models: the tiny spiking Transformer (``st``: MNIST-1D cut into 10 windows of 4
values, one token each, direct-encoded over T steps) and two sLIF MLP controls,
``mlp`` (the 40 values rate-coded over T steps) and ``mlp-seq`` (MNIST-1D only: the
sequence fed over time, one value per step, T = 40, thermometer-coded, so the
leaks decide how long the network remembers). For every model, T and seed: train a
dense plain-LIF model; for the ST fold every batch norm into the weights
(chip-faithful, ``--keep-norm`` skips it); then
- L1P: train with the L1 penalty, prune to each sparsity (global magnitude);
- DSP (ST only): factorize, train with the group penalty, truncate to each rank;
and fine-tune each pruned model twice, paired (same weights, masks, seed and data
order): LIF (thresholds and leaks frozen) and sLIF (per-neuron thresholds and leaks,
initialized from the LIF values, learn). Fine-tuning runs at a constant learning rate
and the test accuracy is taken after every budget (epochs), so one run per arm gives
every budget. Per condition (model, T, method, level, budget): mean paired difference
sLIF - LIF over seeds with a 95 % paired-t interval and the seed spread.

On the chip (MLP only; the ST needs the bundle mapping): both arms of the condition
with the largest mean difference are exported to NIR, lowered with K decay groups
and run on the fixed-point engine; accuracy per K and arm, paired over seeds.

    python benchmarks/compensation.py --quick   # smoke run, a few minutes
    python benchmarks/compensation.py           # the full grid (hours on one CPU thread)

Writes benchmarks/results/compensation.json and .png (compensation_quick.* with
--quick), the JSON after every finished (model, T) so a long run keeps what it has;
the last printed line names the largest paired difference with its interval.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nir  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import stats  # noqa: E402
from torch import nn  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from st2chip.chip.lower import lower  # noqa: E402
from st2chip.converters.mlp import mlp_to_nir  # noqa: E402
from st2chip.errors import St2chipWarning  # noqa: E402
from st2chip.graph.normalize import normalize  # noqa: E402
from st2chip.io import write_json, write_png  # noqa: E402
from st2chip.learn import compensation, pruning  # noqa: E402
from st2chip.learn.data import MNIST1D_LEVELS, MNIST1D_STEPS, Split, load_split  # noqa: E402
from st2chip.learn.mlp import MLPConfig, SpikingMLP  # noqa: E402
from st2chip.learn.neurons import SLIF  # noqa: E402
from st2chip.learn.training import default_device, evaluate, seed_everything, train_classifier  # noqa: E402
from st2chip.learn.transformer import SpikingTransformer, STConfig, fold_batch_norms  # noqa: E402
from st2chip.targets import engine  # noqa: E402

RESULTS = Path(__file__).parent / "results"
BASE_LR, LR = 5e-3, 2e-3
SETTINGS = {
    "quick": dict(models=["mlp", "st"], mlp_steps=[4], st_steps=[4], seeds=2, base_epochs=3, penalty_epochs=1,
                  budgets=[1, 2], sparsities=[0.95], ranks=[1], chip_groups=[1, 2], limit=None,
                  st_budgets=None, st_sparsities=None),
    "full": dict(models=["mlp-seq", "mlp", "st"], mlp_steps=[4, 8, 16], st_steps=[4, 8, 16], seeds=5,
                 base_epochs=20, penalty_epochs=3, budgets=[1, 2, 5, 10], sparsities=[0.8, 0.9, 0.95, 0.98],
                 ranks=[4, 2, 1], chip_groups=[1, 2, 4, 8], limit=None, st_budgets=None, st_sparsities=None),
}


def grid(model: str, s: dict) -> dict:
    """T values, budgets and sparsities of one model (the ST may have its own, smaller grid)."""
    st = model == "st"
    steps = {"mlp": s["mlp_steps"], "st": s["st_steps"], "mlp-seq": [MNIST1D_STEPS]}[model]
    return {"steps": steps, "budgets": (st and s["st_budgets"]) or s["budgets"],
            "sparsities": (st and s["st_sparsities"]) or s["sparsities"], "ranks": s["ranks"] if st else []}


def build(model: str, data: str, steps: int, reset: str, features: int) -> nn.Module:
    """A plain-LIF model: an MLP control (rate-coded, or the sequence over time) or the tiny ST of the data set."""
    if model == "mlp":
        return SpikingMLP(MLPConfig(sizes=[features, 128, 10], steps=steps, neuron="lif", reset=reset))
    if model == "mlp-seq":
        if data != "mnist1d":
            raise ValueError("mlp-seq reads MNIST-1D sequences over time; use --data mnist1d")
        return SpikingMLP(MLPConfig(sizes=[MNIST1D_LEVELS, 128, 10], steps=steps, neuron="lif", reset=reset,
                                    leak=0.95, encoding="sequence"))
    preset = STConfig.tiny_mnist1d if data == "mnist1d" else STConfig.tiny_digits
    return SpikingTransformer(preset(neuron="lif", steps=steps, reset=reset))


def intrinsic_spread(model: nn.Module) -> dict:
    """Across-neuron standard deviation of learned thresholds and leaks (0 for plain LIF)."""
    neurons = [m for m in model.modules() if isinstance(m, SLIF)]
    theta = torch.cat([m.theta.detach().flatten() for m in neurons])
    beta = torch.cat([m.beta.detach().flatten() for m in neurons])
    return {"theta_std": float(theta.std()) if theta.numel() > 1 else 0.0,
            "beta_std": float(beta.std()) if beta.numel() > 1 else 0.0,
            "theta_mean": float(theta.mean()), "beta_mean": float(beta.mean())}


def pruned_starts(base: nn.Module, g: dict, s: dict, seed: int, train: Split, test: Split):
    """(method, level, pruned model) for every L1P sparsity and DSP rank of the grid ``g``."""
    l1 = copy.deepcopy(base)
    train_classifier(l1, train, test, epochs=s["penalty_epochs"], lr=LR, seed=seed, device=s["device"],
                     penalty=pruning.l1_penalty(s["l1_strength"]), progress=False)
    for sparsity in g["sparsities"]:
        m = copy.deepcopy(l1)
        pruning.magnitude_prune(m, sparsity, "global")
        yield "l1p", sparsity, m
    if not g["ranks"]:
        return
    low = copy.deepcopy(base)
    pruning.factorize(low)
    train_classifier(low, train, test, epochs=s["penalty_epochs"], lr=LR, seed=seed, device=s["device"],
                     penalty=pruning.group_penalty(s["group_strength"]), progress=False)
    for rank in g["ranks"]:
        m = copy.deepcopy(low)
        pruning.truncate(m, rank=rank)
        yield "dsp", rank, m


def run_cell(model: str, steps: int, seed: int, s: dict, train: Split, test: Split, bar: tqdm) -> tuple[list, dict]:
    """Rows of one (model, T, seed), and the MLP's kept arm models by (method, level)."""
    seed_everything(seed)
    base = build(model, s["data"], steps, s["reset"], train.x.shape[1])
    dev = s["device"]
    train_classifier(base, train, test, epochs=s["base_epochs"], lr=BASE_LR, seed=seed, device=dev, progress=False)
    common = {"model": model, "steps": steps, "seed": seed, "accuracy_dense": evaluate(base, test, device=dev)}
    if model == "st" and s["fold"]:
        base = fold_batch_norms(base)
        common["accuracy_folded"] = evaluate(base, test, device=dev)
    rows, kept, g = [], {}, grid(model, s)
    for method, level, pruned in pruned_starts(base, g, s, seed, train, test):
        before = evaluate(pruned, test, device=dev)
        runs = compensation.paired_finetune(pruned, train, test, budgets=g["budgets"], seed=seed, lr=LR,
                                            intrinsic_lr=s["intrinsic_lr"], device=dev, keep_models=model != "st")
        for arm, run in runs.items():
            spread = intrinsic_spread(run.model)
            rows += [{**common, "method": method, "level": level, "arm": arm, "budget": b, "accuracy": acc,
                      "accuracy_pruned": before, "sparsity": pruning.weight_sparsity(run.model), **spread}
                     for b, acc in sorted(run.accuracy.items())]
        kept[(method, level)] = {arm: run.snapshots for arm, run in runs.items()}
        bar.update()
    return rows, kept


def summarize(rows: list[dict]) -> list[dict]:
    """Per condition (model, T, method, level, budget): both arms' mean and spread, the paired sLIF - LIF statistics.

    Many conditions are tested at once, so each p-value also gets its Benjamini-Hochberg
    adjustment over all conditions (``p_bh``; ``significant_bh``: below 0.05).
    """
    groups: dict[tuple, dict[str, dict[int, float]]] = {}
    for r in rows:
        key = (r["model"], r["steps"], r["method"], r["level"], r["budget"])
        groups.setdefault(key, {}).setdefault(r["arm"], {})[r["seed"]] = r["accuracy"]
    table = []
    for (model, steps, method, level, budget), arms in groups.items():
        seeds = sorted(set(arms["lif"]) & set(arms["slif"]))
        lif, slif = [arms["lif"][k] for k in seeds], [arms["slif"][k] for k in seeds]
        row = {"model": model, "steps": steps, "method": method, "level": level, "budget": budget,
               "seeds": seeds, "lif_mean": statistics.fmean(lif), "slif_mean": statistics.fmean(slif),
               "lif_std": statistics.stdev(lif) if len(lif) > 1 else 0.0,
               "slif_std": statistics.stdev(slif) if len(slif) > 1 else 0.0}
        if len(seeds) > 1:
            st = compensation.paired_difference(slif, lif)
            row.update(diff_mean=st.mean, diff_low=st.low, diff_high=st.high, diff_std=st.std, p_value=st.p_value,
                       excludes_zero=st.excludes_zero)
        table.append(row)
    tested = [r for r in table if "p_value" in r]
    if tested:
        for r, p in zip(tested, stats.false_discovery_control([r["p_value"] for r in tested], method="bh")):
            r.update(p_bh=float(p), significant_bh=bool(p < 0.05))
    return table


def chip_accuracy(graph: nir.NIRGraph, inputs: dict[str, np.ndarray], labels: np.ndarray,
                  groups: list[int]) -> dict[int, float]:
    """Engine accuracy of a NIR graph after normalize and lowering with each number of decay groups.

    ``inputs``: input node name -> spikes ``(B, T, n)``. Any graph the pipeline lowers works
    (the MLP today; the ST once its bundle maps to one graph).
    """
    canonical = normalize(graph)
    out = {}
    for k in groups:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", St2chipWarning)
            chip = lower(canonical, decay_groups=k)
        traces = engine.run(chip, inputs, device=engine.default_device(), batch_size=500, voltages=False)
        out[k] = float((traces.scores.argmax(1) == labels).mean())
    return out


def chip_check(table: list[dict], kept: dict, s: dict, test: Split) -> dict | None:
    """Both MLP arms of the condition where sLIF helps most, on the engine, per number of decay groups."""
    candidates = [r for r in table if r["model"] != "st" and "diff_mean" in r]
    if not candidates:
        return None
    best = max(candidates, key=lambda r: r["diff_mean"])
    per_arm: dict[str, dict] = {"lif": {}, "slif": {}}
    for seed in best["seeds"]:
        for arm, snapshots in kept[(best["model"], best["steps"], seed, best["method"], best["level"])].items():
            model = snapshots[best["budget"]].cpu().eval()
            spikes = model.encode(torch.as_tensor(test.x)).numpy().transpose(1, 0, 2).astype(np.uint8)
            chip = chip_accuracy(mlp_to_nir(model), {"input": spikes}, test.y, s["chip_groups"])
            per_arm[arm][seed] = {"float": evaluate(model, test), **{f"K={k}": v for k, v in chip.items()}}
    stages = ["float", *(f"K={k}" for k in s["chip_groups"])]
    result = {"condition": {k: best[k] for k in ("model", "steps", "method", "level", "budget", "diff_mean",
                                                 "diff_low", "diff_high")},
              "per_seed": per_arm, "stages": {}}
    for stage in stages:
        lif = [per_arm["lif"][k][stage] for k in best["seeds"]]
        slif = [per_arm["slif"][k][stage] for k in best["seeds"]]
        st = compensation.paired_difference(slif, lif)
        result["stages"][stage] = {"lif_mean": statistics.fmean(lif), "slif_mean": statistics.fmean(slif),
                                   "diff_mean": st.mean, "diff_low": st.low, "diff_high": st.high,
                                   "excludes_zero": st.excludes_zero}
    return result


def plot(table: list[dict], target: Path, title: str) -> Path:
    """Mean paired difference (sLIF - LIF, points) against sparsity / rank: one panel per (model, method) and T."""
    panels = sorted({(r["model"], r["method"], r["steps"]) for r in table if "diff_mean" in r})
    if not panels:
        return target
    cols = sorted({p[2] for p in panels})
    rows = sorted({p[:2] for p in panels})
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(max(3.6 * len(cols), 6.5), 2.9 * len(rows)),
                             squeeze=False)
    budgets = sorted({r["budget"] for r in table})
    colors = dict(zip(budgets, plt.cm.viridis(np.linspace(0, 0.85, len(budgets)))))
    for i, (model, method) in enumerate(rows):
        for j, steps in enumerate(cols):
            ax = axes[i][j]
            sel = [r for r in table
                   if (r["model"], r["method"], r["steps"]) == (model, method, steps) and "diff_mean" in r]
            if not sel:
                ax.axis("off")
                continue
            levels = sorted({r["level"] for r in sel}, reverse=method == "dsp")
            for n, b in enumerate(budgets):
                rs = sorted((r for r in sel if r["budget"] == b), key=lambda r: levels.index(r["level"]))
                x = [levels.index(r["level"]) + (n - (len(budgets) - 1) / 2) * 0.06 for r in rs]
                y = [100 * r["diff_mean"] for r in rs]
                err = [[100 * (r["diff_mean"] - r["diff_low"]) for r in rs],
                       [100 * (r["diff_high"] - r["diff_mean"]) for r in rs]]
                ax.errorbar(x, y, yerr=err, fmt="o-", ms=3, capsize=2, color=colors[b], label=f"{b} ep")
            ax.axhline(0, color="grey", lw=0.8)
            ax.set_xticks(range(len(levels)))
            ax.set_xlim(-0.5, len(levels) - 0.5)
            ax.set_xticklabels([f"{100 * v:.0f}%" if method == "l1p" else f"r{v}" for v in levels], fontsize=7)
            ax.set_title(f"{model.upper()} {method.upper()}, T={steps}", fontsize=8)
            ax.tick_params(labelsize=7)
            if j == 0:
                ax.set_ylabel("sLIF - LIF (points, 95% CI)", fontsize=7)
    axes[0][0].legend(fontsize=6, title="fine-tune", title_fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    write_png(target, fig)
    plt.close(fig)
    return target


def settings(args: argparse.Namespace) -> dict:
    """The run's settings: the mode's defaults with the command-line overrides."""
    s = dict(SETTINGS["quick" if args.quick else "full"])
    for key in ("models", "mlp_steps", "st_steps", "seeds", "base_epochs", "penalty_epochs", "budgets",
                "sparsities", "ranks", "chip_groups", "limit", "st_budgets", "st_sparsities"):
        if getattr(args, key) is not None:
            s[key] = getattr(args, key)
    s.update(data=args.data, reset=args.reset, device=args.device or str(default_device()), fold=not args.keep_norm,
             intrinsic_lr=args.intrinsic_lr,
             l1_strength=args.l1, group_strength=args.group, base_lr=BASE_LR, lr=LR)
    return s


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke run: 2 seeds, T=4, few epochs, one level per method")
    p.add_argument("--data", choices=["mnist1d", "digits"], default="mnist1d")
    p.add_argument("--models", nargs="+", choices=["mlp-seq", "mlp", "st"], default=None,
                   help="models in the order run (MLPs first, so the chip check runs early)")
    p.add_argument("--mlp-steps", type=int, nargs="+", default=None, help="T values of the MLP control")
    p.add_argument("--st-steps", type=int, nargs="+", default=None, help="T values of the spiking Transformer")
    p.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (at least 2 for intervals)")
    p.add_argument("--base-epochs", type=int, default=None, help="dense training epochs")
    p.add_argument("--penalty-epochs", type=int, default=None, help="L1 / group-penalty epochs before pruning")
    p.add_argument("--budgets", type=int, nargs="+", default=None, help="fine-tuning budgets (epochs)")
    p.add_argument("--sparsities", type=float, nargs="+", default=None, help="L1P sparsities")
    p.add_argument("--ranks", type=int, nargs="+", default=None, help="DSP ranks (ST only)")
    p.add_argument("--st-budgets", type=int, nargs="+", default=None, help="the ST's budgets (default: --budgets)")
    p.add_argument("--st-sparsities", type=float, nargs="+", default=None,
                   help="the ST's L1P sparsities (default: --sparsities)")
    p.add_argument("--chip-groups", type=int, nargs="+", default=None, help="decay-group counts K on the chip")
    p.add_argument("--limit", type=int, default=None, help="use only the first N train and test samples (tests)")
    p.add_argument("--reset", choices=["zero", "subtract"], default="zero")
    p.add_argument("--device", default=None, help="torch device for training (default: cuda when present, else cpu)")
    p.add_argument("--keep-norm", action="store_true", help="keep the ST's batch norms (not chip-faithful)")
    p.add_argument("--intrinsic-lr", type=float, default=1e-2, help="sLIF threshold/leak learning rate")
    p.add_argument("--l1", type=float, default=1e-4, help="L1 penalty strength")
    p.add_argument("--group", type=float, default=1e-3, help="DSP group penalty strength")
    p.add_argument("--out", type=Path, default=None, help="JSON output, PNG beside it")
    p.add_argument("--reanalyse", type=Path, default=None,
                   help="recompute the statistics, plot and summary of a written JSON from its runs (no training)")
    return p.parse_args(argv)


def headline(table: list[dict]) -> str:
    """The largest mean paired difference with its interval, and how many intervals exclude zero."""
    stat = [r for r in table if "diff_mean" in r]
    if not stat:
        return "no paired statistics (fewer than 2 seeds)"
    best = max(stat, key=lambda r: r["diff_mean"])
    level = f"{100 * best['level']:.0f}%" if best["method"] == "l1p" else f"rank {best['level']}"
    up = sum(r["excludes_zero"] and r["diff_mean"] > 0 for r in stat)
    down = sum(r["excludes_zero"] and r["diff_mean"] < 0 for r in stat)
    bh = sum(r["significant_bh"] for r in stat)
    return (f"largest sLIF - LIF: {100 * best['diff_mean']:+.2f} points [95% CI {100 * best['diff_low']:+.2f}, "
            f"{100 * best['diff_high']:+.2f}] ({best['model'].upper()} {best['method'].upper()} {level}, "
            f"T={best['steps']}, {best['budget']} epoch(s), {len(best['seeds'])} seeds); intervals above zero: "
            f"{up}/{len(stat)}, below zero: {down}/{len(stat)}; significant after Benjamini-Hochberg: {bh}")


def title(s: dict, device: str) -> str:
    return (f"sLIF - LIF after pruning, {s['data']}, {s['seeds']} seeds\n"
            f"chip-faithful ST: {s['fold']}, reset {s['reset']}; {device}")


def reanalyse(path: Path) -> int:
    """Statistics, plot and summary line of an existing result file, from its per-run rows."""
    result = json.loads(path.read_text())
    result["table"] = summarize(result["runs"])
    write_json(path, result)
    plot(result["table"], path.with_suffix(".png"), title(result["settings"], result["device"]))
    print(f"compensation (re-analysed {path}; numbers measured on {result['device']})")
    print(headline(result["table"]))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.reanalyse:
        return reanalyse(args.reanalyse)
    torch.set_num_threads(int(os.environ.get("ST2CHIP_THREADS", "1")))
    s = settings(args)
    out = args.out or RESULTS / ("compensation_quick.json" if args.quick else "compensation.json")
    train, test = load_split(s["data"])
    if s["limit"]:
        train, test = Split(train.x[:s["limit"]], train.y[:s["limit"]]), Split(test.x[:s["limit"]], test.y[:s["limit"]])
    device = (torch.cuda.get_device_name(s["device"]) if s["device"].startswith("cuda")
              else f"cpu ({platform.machine()}, {torch.get_num_threads()} thread(s))")
    command = " ".join(["python benchmarks/compensation.py", *(sys.argv[1:] if argv is None else argv)])
    cells = [(m, t) for m in s["models"] for t in grid(m, s)["steps"]]
    levels = {m: len(grid(m, s)["sparsities"]) + len(grid(m, s)["ranks"]) for m in s["models"]}
    started, rows, kept, chip = time.time(), [], {}, None
    result = {"benchmark": "compensation", "mode": "quick" if args.quick else "full", "command": command,
              "device": device, "torch": torch.__version__, "settings": s}
    with tqdm(total=sum(s["seeds"] * levels[m] for m, _ in cells), desc="compensation") as bar:
        for model, steps in cells:
            for seed in range(s["seeds"]):
                cell_rows, cell_kept = run_cell(model, steps, seed, s, train, test, bar)
                rows += cell_rows
                kept.update({(model, steps, seed, *key): v for key, v in cell_kept.items()})
            table = summarize(rows)
            done = cells.index((model, steps)) + 1
            if model != "st" and (done == len(cells) or cells[done][0] == "st"):
                chip = chip_check(table, kept, s, test)
            write_json(out, {**result, "complete": done == len(cells), "cells_done": cells[:done],
                             "minutes": (time.time() - started) / 60, "table": table, "chip": chip, "runs": rows})
            png = plot(table, out.with_suffix(".png"), title(s, device))
    print(f"compensation ({result['mode']}, {device}, {(time.time() - started) / 60:.1f} min) -> {out}, {png}")
    print(headline(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
