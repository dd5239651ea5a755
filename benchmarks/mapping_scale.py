"""Mapping at scale: time and peak memory of normalize + lower on synthetic sparse networks of 10^3 to 10^6 neurons.

Each network is a spiking CNN written as a NIR graph: an input of 11 channels
and four layers of ``Conv2d(11 -> 11, 3x3, padding 1) -> LIF`` on an ``H x H``
map, so every neuron has about 99 incoming synapses (fewer at the borders) and
the network ``4 * 11 * H^2`` neurons. H is chosen for 10^3, 10^4, 10^5 and 10^6
neurons; the largest holds about 10^8 synapses. A convolution is a sparse matrix,
so this is the case where a mapper that makes dense copies cannot cope.

Every size runs in a fresh child process (so that peak memory is that size's
own): it builds the graph, then times ``normalize``, ``lower`` and the Loihi 2
placement (:mod:`st2chip.chip.placement`, as many chips as needed, every core given a
``(chip, x, y)`` position on the chips' meshes: :mod:`st2chip.chip.mesh`, timed apart as
``mesh_s``) and reports the child's peak resident memory (``ru_maxrss``, including the
interpreter and its imports, measured alone as ``baseline``), the CPU seconds it used (which a
machine loaded by other work does not inflate, unlike the wall time), and the mesh traffic at the
expected spike rates: links per message between cores, how many of them chip-to-chip, and
the placement objective with the cores in layer order, at the start taken (layer or traffic order)
and after the swaps. Writes ``benchmarks/results/mapping_scale.json`` and ``.png`` and prints, last,
``mapping <N> neurons: <S> s (<U> s CPU), <M> GB peak; <C> cores on <K> chips, <H> links per message
(objective -<P> % from layer order; <O> order start)`` for the largest size.

    python benchmarks/mapping_scale.py               # 10^3 .. 10^6
    python benchmarks/mapping_scale.py --max 100000  # a quick run
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import platform
import resource
import time
from pathlib import Path

CHANNELS, LAYERS, KERNEL = 11, 4, 3
RESULTS = Path(__file__).resolve().parent / "results"


def side_for(neurons: int) -> int:
    """Map side H so that the network holds about ``neurons`` neurons."""
    return max(3, round(math.sqrt(neurons / (LAYERS * CHANNELS))))


def build_graph(side: int, seed: int = 0):
    """The synthetic CNN as a NIR graph (random weights, per-neuron leaks and thresholds)."""
    import nir
    import numpy as np

    rng = np.random.default_rng(seed)
    shape = (CHANNELS, side, side)
    nodes = {"input": nir.Input(input_type={"input": np.array(shape)})}
    edges, previous = [], "input"
    for k in range(1, LAYERS + 1):
        weight = rng.normal(0.02, 0.1, (CHANNELS, CHANNELS, KERNEL, KERNEL))
        nodes[f"conv{k}"] = nir.Conv2d(input_shape=(side, side), weight=weight, stride=1, padding=1, dilation=1,
                                       groups=1, bias=np.zeros(CHANNELS))
        beta = rng.uniform(0.8, 0.95, shape)
        nodes[f"lif{k}"] = nir.LIF(tau=1e-3 / (1 - beta), r=1 / (1 - beta), v_leak=np.zeros(shape),
                                   v_threshold=rng.uniform(0.5, 1.5, shape), v_reset=np.zeros(shape))
        edges += [(previous, f"conv{k}"), (f"conv{k}", f"lif{k}")]
        previous = f"lif{k}"
    nodes["output"] = nir.Output(output_type={"output": np.array(shape)})
    edges.append((previous, "output"))
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata={"dt": 1e-3}, type_check=False)


def _cpu_s() -> float:
    """CPU seconds this process has used (user + system): what a loaded machine does not inflate."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _measure(side: int, decay_groups: int, queue) -> None:
    """In the child: build, normalize, lower (and place) one network; send back the figures."""
    import warnings

    from st2chip.chip.lower import lower
    from st2chip.chip.placement import place
    from st2chip.graph.normalize import normalize

    warnings.simplefilter("ignore")
    baseline = _peak_gb()
    graph = build_graph(side)
    c0 = _cpu_s()
    t0 = time.perf_counter()
    canonical = normalize(graph)
    t1 = time.perf_counter()
    chip = lower(canonical, decay_groups=decay_groups)
    t2 = time.perf_counter()
    result = {"side": side, "neurons": sum(p.size for p in chip.populations),
              "synapses": sum(s.nnz for s in chip.synapses), "populations": len(chip.populations),
              "normalize_s": t1 - t0, "lower_s": t2 - t1, "baseline_gb": baseline}
    t3 = time.perf_counter()
    placed = place(chip, "loihi2", max_chips=None)
    use = placed.mesh_use
    result.update(place_s=time.perf_counter() - t3, cores=placed.n_cores, chips=placed.n_chips, mesh_s=use.seconds,
                  messages_per_step=use.messages, links_per_message=use.mean_hops,
                  chip_links_per_message=use.crossings / use.messages if use.messages else 0.0,
                  objective_layers=use.layer_cost, start=use.start, objective_start=use.start_cost,
                  objective=use.cost, swaps=use.swaps, sweeps=use.sweeps)
    result["total_s"] = time.perf_counter() - t0
    result["total_cpu_s"] = _cpu_s() - c0
    result["peak_gb"] = _peak_gb()
    queue.put(result)


def run_size(neurons: int, decay_groups: int) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_measure, args=(side_for(neurons), decay_groups, queue))
    child.start()
    result = queue.get()
    child.join()
    result["target_neurons"] = neurons
    return result


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["neurons"] for r in results]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    _panel(ax1.loglog, ax1, n, results, [("total_s", "o-", "map (normalize + lower + place)"),
                                         ("lower_s", "s--", "lower")], 60, "goal 60 s", "seconds")
    _panel(ax2.semilogx, ax2, n, results, [("peak_gb", "o-", "peak RSS"),
                                           ("baseline_gb", ":", "interpreter + imports")], 4, "goal 4 GB", "GB")
    fig.suptitle("st2chip mapping at scale (sparse CNN, ~99 synapses per neuron)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _panel(draw, ax, n: list[int], results: list[dict], series: list[tuple[str, str, str]], goal: float,
           goal_label: str, ylabel: str) -> None:
    """One panel: each (field, style, label) of ``results`` against neurons, and the goal as a line."""
    for field, style, label in series:
        draw(n, [r[field] for r in results], style, label=label)
    ax.axhline(goal, color="grey", lw=0.8, ls=":", label=goal_label)
    ax.set_xlabel("neurons")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max", type=int, default=1_000_000, help="largest network (neurons), default 10^6")
    parser.add_argument("--decay-groups", type=int, default=4, help="decay groups per layer (default 4)")
    parser.add_argument("--out", type=Path, default=RESULTS / "mapping_scale.json")
    args = parser.parse_args()
    sizes = [n for n in (1_000, 10_000, 100_000, 1_000_000) if n <= args.max]
    results = []
    for n in sizes:
        r = run_size(n, args.decay_groups)
        results.append(r)
        print(f"{r['neurons']:>9,} neurons, {r['synapses']:>12,} synapses: normalize {r['normalize_s']:.1f} s, "
              f"lower {r['lower_s']:.1f} s, place {r['place_s']:.1f} s (mesh {r['mesh_s']:.1f} s; {r['cores']:,} "
              f"cores, {r['chips']} chips, {r['links_per_message']:.2f} links per message, "
              f"{r['chip_links_per_message']:.3f} chip-to-chip), {r['total_cpu_s']:.1f} s CPU, peak "
              f"{r['peak_gb']:.2f} GB", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"machine": platform.machine(), "python": platform.python_version(), "decay_groups": args.decay_groups,
              "network": f"input {CHANNELS}xHxH, {LAYERS} x (Conv2d {CHANNELS}->{CHANNELS} {KERNEL}x{KERNEL} pad 1 "
                         f"-> LIF)", "results": results}
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(args.out)
    plot(results, args.out.with_suffix(".png"))
    last = results[-1]
    gain = 1 - last["objective"] / last["objective_layers"] if last["objective_layers"] else 0.0
    print(f"mapping {last['neurons']} neurons: {last['total_s']:.1f} s ({last['total_cpu_s']:.1f} s CPU), "
          f"{last['peak_gb']:.2f} GB peak; "
          f"{last['cores']} cores on {last['chips']} chips, {last['links_per_message']:.2f} links per message "
          f"(objective -{100 * gain:.0f} % from layer order; {last['start']} order start)")


if __name__ == "__main__":
    main()
