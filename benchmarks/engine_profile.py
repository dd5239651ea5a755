"""Where the engine's time goes: the synaptic products' share of a run, and what that bounds.

Issue 9 asks for a 90 %-pruned 784-512-512-10 network to run at least 3x faster than
the dense one. Weight sparsity can only speed up the synaptic products; the neuron
update (decays, shifts, thresholds, resets, records) costs the same either way. This
benchmark runs the engine on both networks of ``engine_vs_lava.py`` (10 % input spikes,
T = 16, batch 256, voltages of the readout only, as the speed-up is measured there)
under ``torch.profiler`` and splits the operators' own CPU time into

- **products**: matrix products (dense and CSR), ``embedding_bag`` and the
  ``nonzero`` that finds the sources that spiked for it (the event path);
- **the rest**: everything else the step does.

If the products cost nothing at all, the run would be ``1 / (1 - share)`` times
faster (Amdahl): that is the most any product kernel can give. It profiles the engine's
torch path (``use_kernels=False``: what CUDA runs, and a CPU without a C compiler); the
profiler does not see into the compiled CPU kernels (``targets/engine_kernels.py``), which
fuse "the rest" into one pass per step: ``engine_vs_lava.py`` times them. Writes
``benchmarks/results/engine_profile.json`` and ``.png`` (time per category and
operator, both networks) and prints, last, ``products' share of the engine's time at
batch 256: <P> % (...)``.

    python benchmarks/engine_profile.py
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
import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from engine_vs_lava import _inputs, _network  # noqa: E402

from st2chip.io import write_json, write_png  # noqa: E402
from st2chip.targets import engine  # noqa: E402

RESULTS = Path(__file__).parent / "results"
BATCH, REPS = 256, 3
PRODUCT_OPS = ("aten::mm", "aten::addmm", "aten::matmul", "aten::_sparse_csr_mm", "aten::_sparse_addmm",
               "aten::addmm_", "aten::embedding_bag", "aten::_embedding_bag_forward_only", "aten::nonzero")


def _profile(chip, x) -> dict:
    """Own CPU time (ms per run) of every operator in ``REPS`` runs of the engine, after one warm-up."""
    engine.run(chip, x, voltages=False, use_kernels=False)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(REPS):
            engine.run(chip, x, voltages=False, use_kernels=False)
    return {e.key: e.self_cpu_time_total / 1e3 / REPS for e in prof.key_averages() if e.self_cpu_time_total > 0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    nets = {}
    for label, sparsity in (("dense", 0.0), ("90% sparse", 0.9)):
        ops = _profile(_network([784, 512, 512, 10], sparsity), _inputs(784, BATCH))
        total = sum(ops.values())
        products = sum(t for k, t in ops.items() if k in PRODUCT_OPS)
        nets[label] = {"ms_per_run": total, "products_ms": products, "rest_ms": total - products,
                       "products_share": products / total, "amdahl_bound": total / (total - products),
                       "ops_ms": dict(sorted(ops.items(), key=lambda kv: -kv[1]))}
    card = platform.processor() or platform.machine()
    out = {"device": "cpu", "card": card, "threads": args.threads, "batch": BATCH, "steps": 16, "input_rate": 0.1,
           "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "product_ops": list(PRODUCT_OPS),
           "networks": nets}
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / "engine_profile.json", out)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    labels = list(nets)
    ax.barh(labels, [nets[n]["products_ms"] for n in labels], color="tab:blue", label="synaptic products")
    ax.barh(labels, [nets[n]["rest_ms"] for n in labels], left=[nets[n]["products_ms"] for n in labels],
            color="tab:gray", label="neuron update, records, the rest")
    ax.set_xlabel(f"operator CPU time per run (ms), batch {BATCH}, T = 16")
    ax.set_title(f"engine, 784-512-512-10, {args.threads} CPU threads ({card})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    write_png(RESULTS / "engine_profile.png", fig)
    d, s = nets["dense"], nets["90% sparse"]
    print(f"products' share of the engine's time at batch {BATCH}: {100 * d['products_share']:.0f} % (dense; "
          f"{100 * s['products_share']:.0f} % at 90 % sparsity): free products would make a run at most "
          f"{d['amdahl_bound']:.2f}x faster; {d['ms_per_run']:.1f} vs {s['ms_per_run']:.1f} ms per run of operator "
          f"time; {args.threads} threads, {card}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
