"""Lava layer by layer, before and after: the same bundle, samples and engine record, in one process.

``st2chip verify`` checks Lava one population at a time on the inputs the engine
recorded (:mod:`st2chip.targets.lava_layers`). This benchmark times that check as
it is now against the code of a baseline git revision (default: the last one
before it was made faster), loaded from ``git show`` into modules of their own, on
the same engine record; both must be exact (no population differs) and return
the same Lava spikes and voltages. Writes ``benchmarks/results/lava_layers.json``
and ``.png`` (seconds per sample, both ways) and prints, last,
``lava layers on <bundle>: <N> samples, baseline <A> s (<R> runs), now <B> s (<R'> runs): <X>x faster, exact``.

    python benchmarks/lava_layers.py bundle/ --samples 20
    python benchmarks/lava_layers.py bundle/ --samples 20 --baseline none   # the current code only
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import st2chip  # noqa: E402
from st2chip import defaults  # noqa: E402
from st2chip.api import inputs_for  # noqa: E402
from st2chip.io import write_json, write_png  # noqa: E402
from st2chip.targets import lava_layers  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
BASELINE = "2c0de84"  # the last revision before Lava's workers forked from a frozen heap


def baseline_modules(revision: str) -> ModuleType:
    """``targets/lava_process.py``, ``targets/lava.py`` and ``targets/lava_layers.py`` at ``revision`` as top-level
    modules ``_baseline_lava_process``, ``_baseline_lava`` and ``_baseline_lava_layers`` in a temporary folder on the
    import path (st2chip's Lava process imports the baseline's functions from there by name); their relative
    imports point to each other or to ``st2chip.targets``. Returns the last."""
    def source(path: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), "show", f"{revision}:{path}"], check=True,
                              capture_output=True, text=True).stdout

    folder = Path(tempfile.mkdtemp(prefix="st2chip-baseline-"))
    atexit.register(shutil.rmtree, folder, True)
    for name, path in (("_baseline_lava_process", "targets/lava_process.py"), ("_baseline_lava", "targets/lava.py"),
                       ("_baseline_lava_layers", "targets/lava_layers.py")):
        text = (source(path).replace("from .lava_process import", "from _baseline_lava_process import")
                .replace("from . import lava\n", "import _baseline_lava as lava\n")
                .replace("from . import ", "from st2chip.targets import ").replace("from .", "from st2chip.targets."))
        (folder / f"{name}.py").write_text(text)
    sys.path.insert(0, str(folder))
    return importlib.import_module("_baseline_lava_layers")


def timed(module: ModuleType, chip, x: dict, rec) -> tuple[float, object]:
    start = time.perf_counter()
    out = module.run(chip, x, max_processes=defaults.LAVA_PROCESSES, rec=rec, progress=True)
    return time.perf_counter() - start, out


def same(a, b) -> bool:
    """Whether two layer-by-layer runs returned the same Lava spikes and voltages."""
    return all(np.array_equal(a.spikes[k], b.spikes[k]) and np.array_equal(a.voltages[k], b.voltages[k])
               for k in a.spikes)


def summary(t, samples: int) -> dict:
    seconds, out = t
    return {"seconds": round(seconds, 1), "seconds_per_sample": round(seconds / samples, 2),
            "runs": out.meta["runs"], "max_processes": out.meta["max_processes"],
            "exact": not out.meta["differences"]}


def plot(result: dict, target: Path) -> Path:
    names = [k for k in ("baseline", "now") if k in result]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    bars = ax.bar(names, [result[k]["seconds_per_sample"] for k in names], color=["tab:gray", "tab:blue"][:len(names)])
    ax.bar_label(bars, fmt="%.2f s")
    ax.set_ylabel("seconds per sample")
    ax.set_title(f"Lava layer by layer: {result['bundle_name']}, {result['samples']} samples", fontsize=9)
    fig.tight_layout()
    return write_png(target, fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", help="a bundle folder or .nir file (its default test data feeds it)")
    parser.add_argument("--samples", type=int, default=defaults.LAVA_SAMPLES, help="samples checked on Lava")
    parser.add_argument("--baseline", default=BASELINE, help="git revision of the old code, or 'none'")
    parser.add_argument("--out", default=str(RESULTS / "lava_layers.json"))
    args = parser.parse_args(argv)
    graph = st2chip.load(args.bundle)
    chip = st2chip.lower(graph)
    x = inputs_for(graph, None, samples=args.samples).spikes
    samples = next(iter(x.values())).shape[0]
    rec = lava_layers.record(chip, x)
    result = {"bundle": str(args.bundle), "bundle_name": Path(args.bundle).name, "samples": samples,
              "populations": len(chip.populations), "neurons": sum(p.size for p in chip.populations),
              "max_processes": defaults.LAVA_PROCESSES, "machine": f"{platform.machine()}, "
              f"{__import__('os').cpu_count()} CPUs, Python {platform.python_version()}",
              "date": time.strftime("%Y-%m-%d")}
    now = timed(lava_layers, chip, x, rec)
    result["now"] = summary(now, samples)
    if args.baseline != "none":
        old = timed(baseline_modules(args.baseline), chip, x, rec)
        result["baseline"] = {**summary(old, samples), "revision": args.baseline}
        result["same_traces"] = same(old[1], now[1])
        result["speedup"] = round(old[0] / now[0], 2)
    out = write_json(args.out, result)
    plot(result, out.with_suffix(".png"))
    exact = result["now"]["exact"] and result.get("same_traces", True) and result.get("baseline", {}).get("exact", True)
    line = f"lava layers on {result['bundle_name']}: {samples} samples"
    if "baseline" in result:
        line += (f", baseline {result['baseline']['seconds']} s ({result['baseline']['runs']} runs), now "
                 f"{result['now']['seconds']} s ({result['now']['runs']} runs): {result['speedup']}x faster")
    else:
        line += f", {result['now']['seconds']} s ({result['now']['runs']} runs)"
    print(line + (", exact" if exact else ", NOT EXACT"))
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
