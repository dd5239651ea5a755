"""The spiking Transformer at CIFAR size on Loihi 2: train, prune, map, run, check and count.

For each preset (``STConfig.cifar10()``: dim 256, 2 blocks, 64 tokens; and, in the
full run, ``STConfig.spikformer_4_384()``: dim 384, 4 blocks, 12 heads) on 32x32x3
images:

1. train it (``--epochs`` on ``--train`` images; in a child process of its own, whose memory
   is given back before mapping starts) on CIFAR-10 from ``--data-root`` when
   given, else on ``digits32`` (the shipped digits upscaled to 32x32x3: CIFAR-10's
   shape, not its content; the JSON says which);
2. derive the variants: ``l1p90`` (global magnitude pruning of the block matrices to
   90 %) and ``dsp`` (block matrices factored by SVD and truncated to ``--rank``),
   each fine-tuned ``--finetune`` epochs (sLIF: thresholds and leaks learn);
3. in a fresh child process per variant (so peak memory is the mapping's own):
   export the bundle, compose it into one graph, lower it (fan-in trees where a
   neuron's fan-in exceeds a core), place it on as many Loihi 2 chips as it takes
   (coordinates on the mesh) -- timed, with the child's peak resident memory read
   right after placement; then run the fixed-point engine over ``--test`` images
   (accuracy, sample-steps/s), check Lava population by population on the first
   ``--lava-samples`` images against the engine, and count operations, hops and
   energy per inference (Loihi 2 profile).

Writes ``benchmarks/results/st_scale.json`` and ``.png`` (``st_scale_quick.*`` with
``--quick``) and prints, last, for the first variant of the first preset:
``cifar10 ST <variant>: <N> chips, <C> cores, mapped in <S> s, <M> GB peak, engine <R>
sample-steps/s, Lava layer-wise exact``.

    python benchmarks/st_scale.py --quick   # cifar10 preset, small training, few samples
    python benchmarks/st_scale.py           # both presets
    python benchmarks/st_scale.py --presets cifar10   # the full settings, one preset
    ST2CHIP_MEMORY_BUDGET=10G python benchmarks/st_scale.py --presets spikformer-4-384 --variants l1p90 \
        --out benchmarks/results/st_scale_spikformer.json   # the larger preset, one variant
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from queue import Empty
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from st2chip.io import write_json, write_png  # noqa: E402
from st2chip.learn import compensation, pruning  # noqa: E402
from st2chip.learn.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from st2chip.learn.data import Split, load_split  # noqa: E402
from st2chip.learn.training import evaluate, seed_everything, train_classifier  # noqa: E402
from st2chip.learn.transformer import SpikingTransformer, STConfig  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PRESETS = {"cifar10": STConfig.cifar10, "spikformer-4-384": STConfig.spikformer_4_384}
SETTINGS = {
    "quick": dict(presets=["cifar10"], train=256, test=64, epochs=1, finetune=0, lava_samples=2, rank=32),
    "full": dict(presets=["cifar10", "spikformer-4-384"], train=1437, test=360, epochs=3, finetune=1,
                 lava_samples=4, rank=32),
}
SPARSITY = 0.9
VARIANTS = ("l1p90", "dsp")


def _subset(split: Split, n: int) -> Split:
    return Split(split.x[:n], split.y[:n])


def _peak_gb() -> float:
    """This process's own peak resident memory: ``VmHWM`` (a spawned child's ``ru_maxrss`` starts at its parent's
    resident memory at the fork; ``ru_maxrss`` where /proc is absent)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def train_variants(preset: str, s: dict, data: str, root: str | None, seed: int, folder: Path) -> dict:
    """Train the preset, derive the ``l1p90`` and ``dsp`` variants, save each as a checkpoint in ``folder`` (and
    what was measured as ``trained.json``); a folder that holds them already is reused."""
    done = folder / "trained.json"
    if done.exists():
        return json.loads(done.read_text())
    seed_everything(seed)
    train, test = load_split(data, root)
    train, test = _subset(train, s["train"]), _subset(test, s["test"])
    model = SpikingTransformer(PRESETS[preset](neuron="slif"))
    start = time.perf_counter()
    dense = train_classifier(model, train, test, epochs=s["epochs"], lr=5e-3, seed=seed, desc=f"train {preset}")
    out = {"train_seconds": round(time.perf_counter() - start, 1), "float_dense": dense.test_accuracy,
           "parameters": sum(p.numel() for p in model.parameters()), "variants": {}}
    for variant in VARIANTS:
        pruned = pruning.copy_model(model)
        if variant == "l1p90":
            pruning.magnitude_prune(pruned, SPARSITY, "global")
        else:
            pruning.factorize(pruned)
            pruning.truncate(pruned, rank=s["rank"])
        if s["finetune"]:
            pruned, _ = compensation.finetune(pruned, train, test, learn_intrinsic=True, epochs=s["finetune"],
                                              lr=2e-3, intrinsic_lr=1e-2, seed=seed, desc=f"fine-tune {variant}")
        pruning.make_permanent(pruned)
        nonzero, total = pruning.nonzero_weights(pruned)
        path = folder / f"{preset}-{variant}.pt"
        save_checkpoint(pruned, "st", asdict(pruned.config), path, {"data": data})
        out["variants"][variant] = {"checkpoint": str(path), "float_accuracy": evaluate(pruned, test),
                                    "nonzero_block_weights": nonzero, "block_weights": total,
                                    "ranks": dict(pruned.config.ranks)}
    write_json(done, out)
    return out


def measure_variant(checkpoint: str, data: str, root: str | None, s: dict, queue: mp.Queue) -> None:
    """Child process: map (timed, peak memory), run the engine, check Lava layer by layer, count energy."""
    torch.set_num_threads(int(os.environ.get("ST2CHIP_THREADS", "2")))
    mp.set_start_method("fork", force=True)  # Lava starts its processes by fork; this child was spawned
    import st2chip
    from st2chip import defaults
    from st2chip.analysis.energy import energy_report
    from st2chip.converters.transformer import export_bundle
    from st2chip.graph.bundle_graph import LEVELS
    from st2chip.inputs import direct_levels
    from st2chip.targets import engine, lava_layers

    _, model, _ = load_checkpoint(checkpoint, "st")
    result: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        bundle = export_bundle(model.eval(), Path(tmp) / "bundle")
        del model
        graph = st2chip.load(bundle)
        chip = st2chip.lower(graph)
        placement = st2chip.place(chip, max_chips=None)
        result["map_seconds"] = round(time.perf_counter() - start, 1)
        result["map_peak_gb"] = round(_peak_gb(), 2)
        print(f"  mapped in {result['map_seconds']} s, {result['map_peak_gb']} GB peak: {placement.n_cores} cores on "
              f"{placement.n_chips} chips", flush=True)
    result["fanin"] = {name: layer.fanin.to_dict() for name, layer in chip.lowering.layers.items() if layer.fanin}
    result.update(neurons=sum(p.size for p in chip.populations), synapses=int(sum(g.nnz for g in chip.synapses)),
                  chips=placement.n_chips, cores=placement.n_cores, placement=slim(placement.to_dict()))
    _, test = load_split(data, root)
    test = _subset(test, s["test"])
    steps = int(graph.metadata["steps"])
    name = chip.inputs[0].name
    inputs = {name: direct_levels(test.x, LEVELS, steps)}
    start = time.perf_counter()
    traces = engine.run(chip, inputs, voltages=False, batch_size=32)
    seconds = time.perf_counter() - start
    result.update(engine_seconds=round(seconds, 1), sample_steps_per_s=len(test) * steps / seconds,
                  chip_accuracy=float(np.mean(traces.scores.argmax(1) == test.y)))
    result["energy"] = slim(energy_report(chip, traces, "loihi2", placement).to_dict())
    few = {name: inputs[name][: s["lava_samples"]]}
    start = time.perf_counter()
    lava = lava_layers.run(chip, few, max_processes=defaults.LAVA_PROCESSES, progress=True)
    meta = lava.meta
    result["lava"] = {"samples": s["lava_samples"], "exact": not meta["differences"],
                      "differences": [asdict(d) for d in meta["differences"]], "populations": meta["populations"],
                      "runs": meta["runs"], "max_processes": meta["max_processes"],
                      "seconds": round(time.perf_counter() - start, 1)}
    queue.put(result)


def slim(report: dict) -> dict:
    """A placement's or energy report's JSON without its per-core and per-group lists (tens of thousands of cores)."""
    return {k: v for k, v in report.items() if k not in ("cores", "groups", "boundaries")}


def in_fresh_process(target: Callable[..., None], *args: object) -> dict:
    """``target(*args, queue)`` in a freshly spawned process, returning what it puts on the queue: the
    training's memory (13-15 GB for the larger preset) is given back before a mapping starts, and each
    mapping's peak is its own."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=target, args=(*args, queue))
    child.start()
    while True:
        try:
            result = queue.get(timeout=5)
            break
        except Empty:
            if not child.is_alive():
                raise RuntimeError(f"{target.__name__}({args[0]!r}, ...) failed (exit {child.exitcode}); see its "
                                   f"traceback above")
    child.join()
    return result


def train_child(preset: str, s: dict, data: str, root: str | None, seed: int, folder: Path, queue: mp.Queue) -> None:
    """Child process: :func:`train_variants`."""
    torch.set_num_threads(int(os.environ.get("ST2CHIP_THREADS", "2")))
    queue.put(train_variants(preset, s, data, root, seed, folder))


def plot(result: dict, target: Path) -> Path:
    """Per preset and variant: cores, energy per inference split into computation, routing and static power,
    and float against chip accuracy."""
    rows = [(f"{p}\n{v}", r) for p, entry in result["presets"].items() for v, r in entry["variants"].items()]
    labels = [label for label, _ in rows]
    at = np.arange(len(rows))
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    axes[0].bar(at, [r["cores"] for _, r in rows], color="tab:blue")
    axes[0].set_ylabel("Loihi 2 neurocores")
    parts = {"computation": ("ac", "mac", "neuron", "host"), "routing": ("routing",), "static": ("static",)}
    bottom = np.zeros(len(rows))
    for (name, keys), color in zip(parts.items(), ("tab:orange", "tab:red", "tab:gray")):
        mj = np.array([sum(r["energy"]["total"]["energy_pj"][k] for k in keys) / 1e9 for _, r in rows])
        axes[1].bar(at, mj, bottom=bottom, color=color, label=name)
        bottom += mj
    axes[1].set_ylabel("energy per inference (mJ, Loihi 2 profile)")
    axes[1].legend(fontsize=8)
    width = 0.38
    axes[2].bar(at - width / 2, [100 * r["float_accuracy"] for _, r in rows], width, label="float", color="tab:green")
    axes[2].bar(at + width / 2, [100 * r["chip_accuracy"] for _, r in rows], width, label="chip (engine)",
                color="tab:purple")
    axes[2].set_ylabel(f"test accuracy (%, {result['data']})")
    axes[2].set_ylim(0, 100)
    axes[2].legend(fontsize=8, loc="lower right")
    for ax in axes:
        ax.set_xticks(at, labels)
    fig.suptitle(f"CIFAR-size spiking Transformer on Loihi 2 ({result['mode']} run, {result['date']})")
    fig.tight_layout()
    write_png(target, fig)
    plt.close(fig)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the cifar10 preset only, small training, few samples")
    parser.add_argument("--data-root", default=None,
                        help="folder holding torchvision's 'cifar-10-batches-py' (default: the digits32 stand-in)")
    parser.add_argument("--presets", default=None, metavar="NAME[,NAME]",
                        help=f"which presets to run, of {', '.join(PRESETS)} (default: the mode's; the JSON names them)")
    parser.add_argument("--variants", default=",".join(VARIANTS), metavar="NAME[,NAME]",
                        help=f"which pruned variants to map and measure (default {','.join(VARIANTS)})")
    parser.add_argument("--seed", type=int, default=0, help="seed of training and data order (default 0)")
    parser.add_argument("--out", type=Path, default=None, help="JSON output, PNG beside it")
    parser.add_argument("--cache", type=Path, default=RESULTS.parent.parent / "runs" / "st_scale",
                        help="folder keeping the trained checkpoints between runs (default runs/st_scale)")
    parser.add_argument("--retrain", action="store_true", help="train again even where --cache holds the models")
    parser.add_argument("--replot", type=Path, default=None, metavar="JSON",
                        help="only redo the plot and the summary line of an earlier run's JSON")
    args = parser.parse_args(argv)
    if args.replot is not None:
        return report(json.loads(args.replot.read_text()), args.replot)
    torch.set_num_threads(int(os.environ.get("ST2CHIP_THREADS", "2")))
    mode = "quick" if args.quick else "full"
    s = dict(SETTINGS[mode])
    if args.presets is not None:
        s["presets"] = [name.strip() for name in args.presets.split(",")]
        unknown = [name for name in s["presets"] if name not in PRESETS]
        if unknown:
            parser.error(f"--presets: unknown {', '.join(unknown)} (known: {', '.join(PRESETS)})")
    variants = [name.strip() for name in args.variants.split(",")]
    if [name for name in variants if name not in VARIANTS] or not variants:
        parser.error(f"--variants: choose from {', '.join(VARIANTS)}")
    data = "cifar10" if args.data_root else "digits32"
    out = args.out or RESULTS / f"st_scale{'_quick' if args.quick else ''}.json"
    result = {"benchmark": "st_scale", "mode": mode, "data": data, "settings": s,
              "command": " ".join(["python benchmarks/st_scale.py", *(sys.argv[1:] if argv is None else argv)]),
              "machine": f"{platform.machine()}, {torch.get_num_threads()} threads", "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d"), "presets": {}}
    for preset in s["presets"]:
        folder = args.cache / f"{mode}-{preset}-{data}-seed{args.seed}"
        if args.retrain:
            shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        entry = in_fresh_process(train_child, preset, s, data, args.data_root, args.seed, folder)
        entry["variants"] = {name: info for name, info in entry["variants"].items() if name in variants}
        for variant, info in entry["variants"].items():
            info.update(in_fresh_process(measure_variant, info.pop("checkpoint"), data, args.data_root, s))
        result["presets"][preset] = entry
    return report(result, out)


def report(result: dict, out: Path) -> int:
    """Write the JSON and the plot; print the summary line (the first variant of the first preset)."""
    for entry in result["presets"].values():
        for info in entry["variants"].values():
            info["energy"], info["placement"] = slim(info["energy"]), slim(info["placement"])
    write_json(out, result)
    png = plot(result, out.with_suffix(".png"))
    preset, first = next(iter(result["presets"].items()))
    name, r = next(iter(first["variants"].items()))
    lava = "exact" if r["lava"]["exact"] else "DIFFERS"
    print(f"wrote {out}, {png}")
    print(f"{preset} ST {name}: {r['chips']} chips, {r['cores']} cores, mapped in {r['map_seconds']:.0f} s, "
          f"{r['map_peak_gb']:.1f} GB peak, engine {r['sample_steps_per_s']:.0f} sample-steps/s, Lava layer-wise {lava}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
