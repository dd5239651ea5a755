"""st2chip's Xylo engine against SynSense's xylosim on the same network and inputs, in one process.

A random Xylo Audio 3-sized network (16 inputs, ``--hidden`` hidden neurons, 32 outputs; 8-bit weights,
the recurrent matrix ``--rec-density`` dense, shifts 4/2/2, leaks dash 2/3) runs ``--batch`` samples of
``--steps`` steps of Poisson input counts (mean ``--rate`` per channel and step) on the engine (the whole
batch at once, best of ``--repeats``) and on xylosim (one sample at a time, on ``--xylosim-samples``
samples, timed per sample). Every array of the samples both ran is compared (spikes, membranes,
currents, hidden and output). ``--threshold`` sets the hidden thresholds: lower means more spikes
and more entries on the engine's exact saturating path.

Writes ``benchmarks/results/xylo_engine.json`` and ``.png`` and prints, last,
``xylo engine: <R> sample-steps/s, <X>x xylosim (<S> sample-steps/s), equal on <N> samples``.

    python benchmarks/xylo_engine.py
    python benchmarks/xylo_engine.py --threshold 8000 --xylosim-samples 16
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch

from st2chip.io import write_json, write_png
from st2chip.targets.xylo_engine import run_xylo
from st2chip.targets.xylosim_run import run_xylosim
from st2chip.xylo.xylograph import RUN_FIELDS, XyloGraph, XyloLayer, XyloNeurons

RESULTS = Path(__file__).resolve().parent / "results"


def network(hidden: int, threshold: int, rec_density: float, seed: int) -> XyloGraph:
    """A random 16-``hidden``-32 Xylo network (seeded)."""
    rng = np.random.default_rng(seed)
    w_rec = rng.integers(-128, 128, (hidden, hidden)) * (rng.random((hidden, hidden)) < rec_density)
    neurons = lambda n, vth: XyloNeurons(np.full(n, 2), np.full(n, 3), np.full(n, vth), np.zeros(n, int))  # noqa: E731
    return XyloGraph(rng.integers(-128, 128, (16, hidden)), w_rec, rng.integers(-128, 128, (hidden, 32)), 4, 2, 2,
                     neurons(hidden, threshold), neurons(32, 20000),
                     [XyloLayer("hidden", 0, hidden, 0), XyloLayer("out", 0, 32, 1, output=True)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=1000)
    parser.add_argument("--threshold", type=int, default=16000)
    parser.add_argument("--rec-density", type=float, default=0.1)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rate", type=float, default=0.3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--xylosim-samples", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    graph = network(args.hidden, args.threshold, args.rec_density, args.seed)
    counts = np.random.default_rng(args.seed + 1).poisson(args.rate, (args.batch, args.steps, 16))
    engine_s = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        run = run_xylo(graph, counts)
        engine_s.append(time.perf_counter() - start)
    n = min(args.xylosim_samples, args.batch)
    start = time.perf_counter()
    oracle = run_xylosim(graph, counts[:n])
    xylosim_s = time.perf_counter() - start
    equal = all(np.array_equal(getattr(run, f)[:n], getattr(oracle, f)) for f in RUN_FIELDS)
    engine_rate = args.batch * args.steps / min(engine_s)
    xylosim_rate = n * args.steps / xylosim_s
    out = {"machine": platform.machine(), "processor": platform.processor(), "torch_threads": torch.get_num_threads(),
           "args": vars(args), "engine_s": engine_s, "xylosim_s": xylosim_s, "xylosim_samples": n,
           "engine_sample_steps_per_s": engine_rate, "xylosim_sample_steps_per_s": xylosim_rate,
           "ratio": engine_rate / xylosim_rate, "equal": equal,
           "hidden_spike_rate": float(run.hidden_spikes.mean())}
    RESULTS.mkdir(exist_ok=True)
    write_json(RESULTS / "xylo_engine.json", out)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar(["xylosim\n(one sample at a time)", "st2chip engine\n(batch at once)"], [xylosim_rate, engine_rate],
           color=["tab:gray", "tab:blue"])
    ax.set_ylabel("sample-steps per second")
    ax.set_title(f"Xylo 16-{args.hidden}-32, batch {args.batch}, {args.steps} steps")
    fig.tight_layout()
    write_png(RESULTS / "xylo_engine.png", fig)
    print(f"xylo engine: {engine_rate:,.0f} sample-steps/s, {engine_rate / xylosim_rate:.1f}x xylosim "
          f"({xylosim_rate:,.0f} sample-steps/s), {'equal' if equal else 'DIFFERENT'} on {n} samples")


if __name__ == "__main__":
    main()
