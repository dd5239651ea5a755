"""Engine vs Lava: throughput of st2chip's fixed-point engine against Lava's fixed_pt simulator, in one process.

The same ChipGraphs (one decay group each) — the demo-shaped 64-128-10 network, a
dense 784-512-512-10 and the same network with 90 % of its weights pruned (CSR
synapses) — are fed random input spikes at a 10 % rate for T = 16 steps:

- Lava runs a few samples (``--lava-samples``) and three times as many, each twice (the faster counts),
  recording spikes of every layer and the readout's voltages, as the engine
  does here; the difference between the two runs gives its **steady-state**
  rate (compile and start-up excluded), the larger run its rate with them; its
  spikes and readout voltages are checked against the engine's, bit for bit;
- the engine runs batches of 1, 32 and 256 samples (and 4096 and 16384 with
  ``--device cuda``), after one warm-up run; on a CPU with its compiled kernels
  (``targets/engine_kernels.py``, the default where a C compiler builds them), and at
  batch 256 also on its torch path (``use_kernels=False``, what a step cost before the
  kernels; what CUDA runs), in the same process.

Throughput is sample-steps per second (samples x (T + pipeline depth)). Peak
memory is the process's peak RSS on CPU and torch's peak allocation on CUDA.
Writes ``benchmarks/results/engine_vs_lava_<device>.json`` and ``.png``
(throughput against batch size, dense and 90 % sparse) and prints, last, one line
``engine/lava speedup: <R>x (...)`` with R the engine's rate on dense
784-512-512-10 at batch 256 over Lava's steady-state rate on the same graph.

On a machine without Lava (the GPU machine), ``--lava-json FILE`` takes Lava's
rates from an earlier CPU run of this script instead, and says so.

    python benchmarks/engine_vs_lava.py                      # CPU
    python benchmarks/engine_vs_lava.py --device cuda --lava-json benchmarks/results/engine_vs_lava_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from st2chip.chip.lower import lower  # noqa: E402
from st2chip.converters.mlp import mlp_to_nir  # noqa: E402
from st2chip.io import write_json, write_png  # noqa: E402
from st2chip.learn.mlp import MLPConfig, SpikingMLP  # noqa: E402
from st2chip.learn.pruning import magnitude_prune, make_permanent  # noqa: E402
from st2chip.targets import engine, engine_kernels  # noqa: E402

RESULTS = Path(__file__).parent / "results"
STEPS, RATE, SEED = 16, 0.1, 0


def _network(sizes: list[int], sparsity: float = 0.0):
    """A seeded sLIF MLP lowered with one decay group; weights scaled so every layer spikes."""
    torch.manual_seed(SEED)
    model = SpikingMLP(MLPConfig(sizes=sizes, steps=STEPS))
    with torch.no_grad():
        for lin in model.linears:
            lin.weight.mul_(3.0)
    if sparsity:
        magnitude_prune(model, sparsity, scope="layer")
        make_permanent(model)
    return lower(mlp_to_nir(model), decay_groups=1)


def _inputs(n_in: int, batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED)
    return {"input": (rng.random((batch, STEPS, n_in)) < RATE).astype(np.uint8)}


def _peak_memory_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _time(fn, device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _equal(a, b) -> bool:
    """Same spikes in every layer, same recorded voltages, same scores."""
    return (a.spikes.keys() == b.spikes.keys() and a.voltages.keys() == b.voltages.keys()
            and all(np.array_equal(a.spikes[k], b.spikes[k]) for k in a.spikes)
            and all(np.array_equal(a.voltages[k], b.voltages[k]) for k in a.voltages)
            and np.array_equal(a.scores, b.scores))


def _lava(chip, n_in: int, samples: int) -> dict:
    from st2chip.targets import lava
    window = STEPS + chip.depth
    small, large = _inputs(n_in, samples), _inputs(n_in, 3 * samples)
    # the best of two runs each: start-up time varies by more than a small network's whole run
    t_small = min(_time(lambda: lava.run(chip, small, voltages=False), "cpu") for _ in range(2))
    t_large = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        traces = lava.run(chip, large, voltages=False)  # spikes of every layer, voltages of the readout
        t_large = min(t_large, time.perf_counter() - start)
    exact = _equal(traces, engine.run(chip, large, voltages=False))
    if t_large <= t_small:
        raise SystemExit(f"Lava's run of {3 * samples} samples was not slower than its run of {samples}: its "
                         f"steady-state rate is lost in start-up noise; pass a larger --lava-samples")
    steady = (2 * samples * window) / (t_large - t_small)
    return {"samples": [samples, 3 * samples], "seconds": [t_small, t_large],
            "steady_steps_per_s": steady, "with_compile_steps_per_s": 3 * samples * window / t_large,
            "engine_equals_lava": exact}


def _engine(chip, n_in: int, batches: list[int], device: str, use_kernels: bool = True) -> list[dict]:
    window = STEPS + chip.depth
    engine.run(chip, _inputs(n_in, 2), device=device, use_kernels=use_kernels)  # warm-up (allocator, kernels)
    rows = []
    for batch in batches:
        x = _inputs(n_in, batch)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        reps = 3
        seconds = min(_time(lambda: engine.run(chip, x, device=device, voltages=False, use_kernels=use_kernels),
                            device) for _ in range(reps))
        rows.append({"batch": batch, "seconds": seconds, "steps_per_s": batch * window / seconds,
                     "peak_memory_mb": _peak_memory_mb(device)})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="engine device (default cpu)")
    parser.add_argument("--lava-samples", type=int, default=64,
                        help="samples of Lava's smaller run (default 64: with fewer, start-up noise of a few tenths of a "
                             "second is a large part of the two runs' difference)")
    parser.add_argument("--lava-json", help="take Lava's rates from this earlier result file instead of running Lava")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    card = torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or platform.machine()
    batches = [1, 32, 256] + ([4096, 16384] if device == "cuda" else [])
    nets = {"demo 64-128-10": ([64, 128, 10], 0.0), "dense 784-512-512-10": ([784, 512, 512, 10], 0.0),
            "90% sparse 784-512-512-10": ([784, 512, 512, 10], 0.9)}
    earlier = json.loads(Path(args.lava_json).read_text())["networks"] if args.lava_json else None
    kernels = device == "cpu" and engine_kernels.library() is not None
    results = {}
    for name, (sizes, sparsity) in nets.items():
        chip = _network(sizes, sparsity)
        lava_row = earlier[name]["lava"] if earlier else _lava(chip, sizes[0], args.lava_samples)
        rows = _engine(chip, sizes[0], batches, device)
        torch_path = _engine(chip, sizes[0], [256], device, use_kernels=False) if kernels else []
        for row in rows + torch_path:
            row["speedup_vs_lava_steady"] = row["steps_per_s"] / lava_row["steady_steps_per_s"]
        nnz = sum(s.nnz for s in chip.synapses)
        results[name] = {"lava": lava_row, "engine": rows, "engine_torch_path": torch_path, "nonzero_weights": nnz,
                         "weights": sum(s.shape[0] * s.shape[1] for s in chip.synapses)}
        best = rows[-1]
        print(f"{name}: Lava steady {lava_row['steady_steps_per_s']:.0f} sample-steps/s; engine batch "
              f"{best['batch']} {best['steps_per_s']:.0f} ({best['speedup_vs_lava_steady']:.0f}x)", file=sys.stderr)

    def rate(net: str, batch: int) -> float:
        return next(r["steps_per_s"] for r in results[net]["engine"] if r["batch"] == batch)

    sparse_gain = rate("90% sparse 784-512-512-10", 256) / rate("dense 784-512-512-10", 256)
    headline = results["dense 784-512-512-10"]["engine"][2]
    kernel_gain = {name: res["engine"][-1]["steps_per_s"] / res["engine_torch_path"][0]["steps_per_s"]
                   for name, res in results.items() if res["engine_torch_path"]}
    out = {"device": device, "card": card, "threads": args.threads, "steps": STEPS, "input_rate": RATE,
           "cpu_kernels": kernels, "kernels_over_torch_path_at_256": kernel_gain,
           "lava_from": args.lava_json or "measured in this run", "torch": torch.__version__,
           "date": time.strftime("%Y-%m-%d"), "networks": results, "sparse_over_dense_at_256": sparse_gain}
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / f"engine_vs_lava_{device}.json", out)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, res in results.items():
        ax.plot([r["batch"] for r in res["engine"]], [r["steps_per_s"] for r in res["engine"]], "o-",
                label=f"engine, {name}")
        ax.axhline(res["lava"]["steady_steps_per_s"], ls="--", lw=0.8, color=ax.lines[-1].get_color(),
                   label=f"Lava steady state, {name}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size (samples)")
    ax.set_ylabel("sample-steps per second")
    ax.set_title(f"engine ({device}, {card}) vs Lava fixed_pt")
    ax.legend(fontsize=6)
    fig.tight_layout()
    write_png(RESULTS / f"engine_vs_lava_{device}.png", fig)
    exact = all(res["lava"]["engine_equals_lava"] for res in results.values())
    print(f"engine/lava speedup: {headline['speedup_vs_lava_steady']:.0f}x (dense 784-512-512-10, batch 256, "
          f"{device} {card}: engine {headline['steps_per_s']:.0f} vs Lava steady-state "
          f"{results['dense 784-512-512-10']['lava']['steady_steps_per_s']:.0f} sample-steps/s; 90% sparse "
          f"{sparse_gain:.2f}x dense; " + (f"CPU kernels {kernel_gain['dense 784-512-512-10']:.2f}x the torch path; "
                                           if kernels else "torch path; ") + f"bit-exact on Lava's samples: {exact})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
