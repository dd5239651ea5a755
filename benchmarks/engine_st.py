"""The engine's speed on the CIFAR-size spiking Transformer (``STConfig.cifar10()``), in one process.

Takes the checkpoints that ``benchmarks/st_scale.py --quick`` trains (``--checkpoints``: the 90 %-L1P and the
rank-32 DSP variant, digits32), exports, composes and lowers each (fan-in trees included), and runs the
fixed-point engine on ``--samples`` images of the digits32 test split, ``voltages=False``, ``--batch`` at a
time, on ``--threads`` CPU threads:

- **run**: ``engine.run`` as ``st_scale.py`` times it (the engine built, then every batch; the CPU kernels
  compute each population only while a recorded window depends on it);
- **full records**: ``Engine.run_batch`` on one batch with every global step of every population recorded
  (what Lava layer by layer replays);
- **torch path**: ``engine.run(..., use_kernels=False)`` on the first ``--torch-samples`` images (what CUDA
  runs, and a CPU without a C compiler), checked spike for spike and voltage for voltage against the kernels.

Writes ``benchmarks/results/engine_st.json`` and ``.png`` (sample-steps/s per variant and mode) and prints, last:
``CIFAR-size ST engine (<variant>): <R> sample-steps/s (run, batch <B>), <F> with full records, <X> on the
torch path (<x>x); kernels = torch path``.

    python benchmarks/engine_st.py                       # both variants, 64 samples
    python benchmarks/engine_st.py --variants l1p90      # the pruned one only (lowers in ~4 GB)
"""

from __future__ import annotations

import argparse
import gc
import platform
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import st2chip  # noqa: E402
from st2chip.chip.chipgraph import ChipGraph  # noqa: E402
from st2chip.converters.transformer import export_bundle  # noqa: E402
from st2chip.graph.bundle_graph import LEVELS  # noqa: E402
from st2chip.inputs import direct_levels  # noqa: E402
from st2chip.io import write_json, write_png  # noqa: E402
from st2chip.learn.checkpoint import load_checkpoint  # noqa: E402
from st2chip.learn.data import load_split  # noqa: E402
from st2chip.targets import engine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CHECKPOINTS = ROOT / "runs" / "st_scale" / "quick-cifar10-digits32-seed0"


def _timed(fn):
    """``fn()``, its wall and CPU seconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def lower_variant(checkpoint: Path) -> tuple[ChipGraph, int]:
    """The checkpoint exported, composed and lowered: the chip and its time steps."""
    _, model, _ = load_checkpoint(str(checkpoint), "st")
    with tempfile.TemporaryDirectory() as tmp:
        bundle = export_bundle(model.eval(), Path(tmp) / "bundle")
        del model
        graph = st2chip.load(bundle)
        return st2chip.lower(graph), int(graph.metadata["steps"])


def _same(a, b) -> bool:
    return all(np.array_equal(a.spikes[k], b.spikes[k]) for k in b.spikes) and all(
        np.array_equal(a.voltages[k], b.voltages[k]) for k in b.voltages)


def measure(chip: ChipGraph, inputs: dict[str, np.ndarray], labels: np.ndarray, steps: int, batch: int,
            torch_samples: int) -> dict:
    """The three modes' speeds on one chip (sample-steps per second of wall time) and the exactness check."""
    n = len(next(iter(inputs.values())))
    built, build_s, _ = _timed(lambda: engine.Engine(chip))
    one = {k: torch.from_numpy(np.ascontiguousarray(v[:batch])) for k, v in inputs.items()}
    _, full_s, full_cpu = _timed(lambda: built.run_batch(one, voltages=False))
    del built
    gc.collect()
    traces, run_s, run_cpu = _timed(lambda: engine.run(chip, inputs, voltages=False, batch_size=batch))
    out = {"samples": n, "build_seconds": round(build_s, 2),
           "run": {"seconds": round(run_s, 2), "cpu_seconds": round(run_cpu, 2),
                   "sample_steps_per_s": n * steps / run_s},
           "full_records": {"samples": min(batch, n), "seconds": round(full_s, 2), "cpu_seconds": round(full_cpu, 2),
                            "sample_steps_per_s": min(batch, n) * steps / full_s}}
    if torch_samples:
        few = {k: v[:torch_samples] for k, v in inputs.items()}
        slow, torch_s, torch_cpu = _timed(lambda: engine.run(chip, few, voltages=False, use_kernels=False))
        fast = engine.run(chip, few, voltages=False, batch_size=batch)
        out["torch_path"] = {"samples": torch_samples, "seconds": round(torch_s, 2), "cpu_seconds": round(torch_cpu, 2),
                             "sample_steps_per_s": torch_samples * steps / torch_s, "exact": _same(fast, slow)}
    out["accuracy_digits32"] = float(np.mean(traces.scores.argmax(1) == labels[:n]))
    return out


def plot(result: dict, target: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 3.6))
    modes = ["run", "full_records", "torch_path"]
    variants = list(result["variants"])
    for i, mode in enumerate(modes):
        rates = [result["variants"][v].get(mode, {}).get("sample_steps_per_s", 0) for v in variants]
        ax.bar(np.arange(len(variants)) + (i - 1) * 0.27, rates, 0.27, label=mode.replace("_", " "))
    ax.set_xticks(range(len(variants)), variants)
    ax.set_yscale("log")
    ax.set_ylabel("sample-steps / s")
    ax.set_title(f"engine on the CIFAR-size ST ({result['settings']['threads']} CPU threads, "
                 f"batch {result['settings']['batch']})")
    ax.legend()
    fig.tight_layout()
    return write_png(target, fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", nargs="+", default=["l1p90", "dsp"], choices=["l1p90", "dsp"])
    ap.add_argument("--checkpoints", type=Path, default=CHECKPOINTS)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--torch-samples", type=int, default=4, help="images on the torch path (0: none)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS / "engine_st.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    _, test = load_split("digits32", None)
    result = {"benchmark": "engine_st", "settings": {k: str(v) if isinstance(v, Path) else v
                                                     for k, v in vars(args).items()},
              "command": "python benchmarks/engine_st.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": f"{platform.machine()}, {torch.get_num_threads()} threads", "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d"), "variants": {}}
    for variant in args.variants:
        (chip, steps), lower_s, _ = _timed(lambda: lower_variant(args.checkpoints / f"cifar10-{variant}.pt"))
        inputs = {chip.inputs[0].name: direct_levels(test.x[:args.samples], LEVELS, steps)}
        r = measure(chip, inputs, np.asarray(test.y), steps, args.batch, args.torch_samples)
        r.update(lower_seconds=round(lower_s, 1), steps=steps, depth=chip.depth,
                 neurons=sum(p.size for p in chip.populations), synapse_groups=len(chip.synapses),
                 synapses=int(sum(g.nnz for g in chip.synapses)))
        result["variants"][variant] = r
        print(f"  {variant}: run {r['run']['sample_steps_per_s']:.0f}, full records "
              f"{r['full_records']['sample_steps_per_s']:.0f}, torch path "
              f"{r.get('torch_path', {}).get('sample_steps_per_s', float('nan')):.1f} sample-steps/s", flush=True)
        del chip
        gc.collect()
    write_json(args.out, result)
    plot(result, args.out.with_suffix(".png"))
    name, r = next(iter(result["variants"].items()))
    tp = r.get("torch_path")
    speedup = r["run"]["sample_steps_per_s"] / tp["sample_steps_per_s"] if tp else 0
    tail = (f", {tp['sample_steps_per_s']:.1f} on the torch path ({speedup:.0f}x); "
            f"kernels {'=' if tp['exact'] else '!='} torch path") if tp else ""
    print(f"CIFAR-size ST engine ({name}): {r['run']['sample_steps_per_s']:.0f} sample-steps/s (run, batch "
          f"{args.batch}), {r['full_records']['sample_steps_per_s']:.0f} with full records{tail}")
    return 0 if not tp or all(v.get("torch_path", {}).get("exact", True) for v in result["variants"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
