"""Backend speed: Lava fixed_pt vs the bit-exact numpy reference, in one process.

Lowers a seeded sLIF MLP (64-128-10, T = 16, the demo's shape; untrained, with
spread thresholds and leaks so decay grouping matters) and runs the same digits
test samples through the reference and through Lava, with 1 and 4 decay groups,
recording all voltages or only the readout's. Reports time steps per second
(sample steps = samples x (T + depth)) and each as a ratio to the reference,
checks that Lava's spikes equal the reference's, writes
benchmarks/results/backend_speed.json and .png, and prints one summary line.

    python benchmarks/backend_speed.py [--samples 30]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from st2chip.learn.data import load_digits_split, rate_encode  # noqa: E402
from st2chip.io import atomic_path, write_json  # noqa: E402
from st2chip.chip.lower import lower  # noqa: E402
from st2chip.learn.mlp import MLPConfig, SpikingMLP  # noqa: E402
from st2chip.converters.mlp import mlp_to_nir  # noqa: E402
from st2chip.targets import lava, reference  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def _model(seed: int) -> SpikingMLP:
    torch.manual_seed(seed)
    model = SpikingMLP(MLPConfig())
    with torch.no_grad():
        model.linears[0].weight.mul_(3.0)
        model.neurons[0].threshold.uniform_(0.5, 1.5)
        model.neurons[0].leak_logit.uniform_(0.0, 4.0)
    return model


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=30, help="digits test samples per run (default 30)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model (default 0)")
    args = parser.parse_args(argv)

    model = _model(args.seed)
    graph, steps = mlp_to_nir(model), model.config.steps
    _, test = load_digits_split()
    rows = []
    for groups in (1, 4):
        chip = lower(graph, decay_groups=groups)
        x = {"input": rate_encode(test.x[:args.samples], steps).numpy().transpose(1, 0, 2).astype(np.uint8)}
        sample_steps = args.samples * (steps + chip.depth)
        ref, t_ref = _timed(reference.run, chip, x)
        rows.append({"backend": "reference", "decay_groups": groups, "voltages": "all",
                     "seconds": t_ref, "steps_per_s": sample_steps / t_ref, "exact": True})
        for voltages in (True, False):
            lav, t_lava = _timed(lava.run, chip, x, voltages=voltages)
            exact = all(np.array_equal(ref.spikes[k], lav.spikes[k]) for k in ref.spikes) \
                and np.array_equal(ref.scores, lav.scores)
            rows.append({"backend": "lava", "decay_groups": groups, "voltages": "all" if voltages else "readout",
                         "seconds": t_lava, "steps_per_s": sample_steps / t_lava, "exact": exact})
        for row in rows[-3:]:
            row["speed_vs_reference"] = row["steps_per_s"] / rows[-3]["steps_per_s"]
    result = {"samples": args.samples, "model": "sLIF MLP 64-128-10, T=16, seeded, untrained",
              "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, python {sys.version.split()[0]}",
              "rows": rows}
    RESULTS.mkdir(exist_ok=True)
    write_json(RESULTS / "backend_speed.json", result)

    fig, ax = plt.subplots(figsize=(6, 3.5), layout="constrained")
    labels = [f"{r['backend']}\nK={r['decay_groups']}, v={r['voltages']}" for r in rows]
    ax.bar(range(len(rows)), [r["steps_per_s"] for r in rows],
           color=["tab:gray" if r["backend"] == "reference" else "tab:blue" for r in rows])
    ax.set_yscale("log")
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    ax.set_ylabel("sample time steps per second")
    ax.set_title(f"Backends on {args.samples} digits samples (same process)")
    with atomic_path(RESULTS / "backend_speed.png") as tmp:
        fig.savefig(tmp, format="png", dpi=120)

    lava_rows = [r for r in rows if r["backend"] == "lava"]
    print(f"backend_speed: Lava {min(r['steps_per_s'] for r in lava_rows):.0f}-"
          f"{max(r['steps_per_s'] for r in lava_rows):.0f} steps/s, reference "
          f"{min(1 / r['speed_vs_reference'] for r in lava_rows):.0f}-{max(1 / r['speed_vs_reference'] for r in lava_rows):.0f}x faster, "
          f"spikes exact: {all(r['exact'] for r in lava_rows)} -> {RESULTS / 'backend_speed.json'}")
    return 0 if all(r["exact"] for r in lava_rows) else 1


if __name__ == "__main__":
    sys.exit(main())
