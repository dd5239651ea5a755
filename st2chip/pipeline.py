"""The pipeline's stages in one place: NIR file -> canonical NIR -> ChipGraph -> traces.

Each stage is a function from one representation to the next; :data:`STAGES`
lists them so that ``--verbose`` can print the pipeline as it runs.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable

import nir
import numpy as np

from st2chip import defaults
from st2chip.analysis.verify import Headroom, headroom_use, output_layers, verify as compare_traces
from st2chip.analysis.xylo_verify import XyloVerifyReport, oracle_check
from st2chip.chip.chipgraph import UV_MAX, ChipGraph
from st2chip.converters.registry import framework_dt
from st2chip.errors import GraphError, InputError
from st2chip.chip.lower import PASSES
from st2chip.graph.bundle import MANIFEST
from st2chip.graph.bundle_graph import bundle_graph
from st2chip.graph.normalize import normalize
from st2chip.graph.reading import SPIKING
from st2chip.graph.simulate import simulate
from st2chip.targets.xylo_run import ENGINE, ORACLE, counts_of, run_padded, xylo_traces
from st2chip.traces import Traces
from st2chip.xylo.xylograph import XyloGraph

BACKENDS = ("float", "reference", "engine", "lava")  # engine: another name of reference

STAGES = (
    ("read+normalize", "NIR file or graph -> canonical NIR (numpy arrays, shapes, topological order)"),
    ("lower", "canonical NIR -> ChipGraph (fold thresholds, group decays, quantize weights)"),
    ("simulate", "ChipGraph -> spike traces (fixed-point engine = reference, Lava fixed_pt); NIR -> float traces"),
    ("verify", "traces -> accuracy, per-layer agreement, first divergence"),
    ("energy", "ChipGraph + traces -> synaptic operations and energy"),
)


class Log:
    """Prints the pipeline (:data:`STAGES`) and each stage's time to stderr when verbose."""

    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose
        if verbose:
            print("[st2chip] pipeline:", file=sys.stderr)
            for name, what in STAGES:
                print(f"[st2chip]   {name:<15} {what}", file=sys.stderr)
            print(f"[st2chip]   lower's passes: {' -> '.join(name for name, _ in PASSES)}", file=sys.stderr)

    def stage(self, name: str, fn: Callable, *args, **kwargs):
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        if self.verbose:
            print(f"[st2chip] {name:<15} {time.perf_counter() - start:7.2f} s", file=sys.stderr)
        return result


def load_graph(path: str | os.PathLike | nir.NIRGraph, dt: float | None = None) -> nir.NIRGraph:
    """Read (if a path) and normalize a NIR graph; a deployment bundle folder is composed into one graph
    (:func:`~st2chip.graph.bundle_graph.bundle_graph`), with the ``dt`` of its manifest."""
    if isinstance(path, (str, os.PathLike)) and os.path.isdir(path) and os.path.isfile(os.path.join(path, MANIFEST)):
        if dt is not None:
            raise InputError(f"{path}: a bundle's dt is in its manifest; --dt applies to .nir files")
        return bundle_graph(path)
    return normalize(path, dt=dt, export_dt=framework_dt())


LAVA_TARGETS = ("lava-sim", "loihi2-hw")  # where the lava backend runs: Loihi2SimCfg (CPU) or Loihi2HwCfg (chip)
# What a Loihi2HwCfg run needs from Intel's lava-loihi: lava-nc's compiler imports these inside a try and, where
# they are missing, silently puts stand-ins in their place (a hardware run would then fall back to CPU models).
LAVA_LOIHI_MODULES = ("lava.magma.compiler.subcompilers.nc.ncproc_compiler", "lava.magma.core.model.nc.model")


def loihi2_hw_run_cfg():
    """The ``Loihi2HwCfg`` for ``--lava-target loihi2-hw``; an :class:`InputError` (exit 2) where lava-loihi is absent."""
    import importlib

    from st2chip.targets.lava_compat import ensure_lava

    ensure_lava()
    missing = []
    for module in LAVA_LOIHI_MODULES:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise InputError(f"--lava-target loihi2-hw: running on Loihi 2 (Loihi2HwCfg) needs lava-loihi, Intel's "
                         f"Loihi 2 compiler and runtime extension of Lava (available to INRC members only), "
                         f"which is not installed here (no module {', '.join(missing)}); "
                         f"--lava-target lava-sim (the default) runs Lava's fixed-point CPU simulator")
    from lava.magma.core.run_configs import Loihi2HwCfg
    return Loihi2HwCfg()


def run_backend(backend: str, graph: nir.NIRGraph, chip: ChipGraph, inputs: dict[str, np.ndarray],
                voltages: bool = True, *, device: str | None = None, batch_size: int = defaults.BATCH_SIZE,
                progress: bool = False, ray: str | None = None, target: str = defaults.LAVA_TARGET) -> Traces:
    """Run one backend: ``float`` reads NIR; the chip backends read only the ChipGraph.

    ``reference`` (alias ``engine``) is the fixed-point engine on ``device`` (CUDA
    when present, else CPU), ``batch_size`` samples at a time; with ``ray``
    (``"local"`` or a cluster address) its samples are sharded over Ray workers.
    ``voltages=False`` records voltages of readout layers only (Lava runs about
    twice as fast). ``target`` is where ``lava`` runs: ``lava-sim`` (Lava's
    fixed-point simulator) or ``loihi2-hw`` (``Loihi2HwCfg``: needs lava-loihi,
    refused with an :class:`InputError` where it is absent).
    """
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    if target not in LAVA_TARGETS:
        raise InputError(f"unknown Lava target '{target}' (--lava-target: choose from {', '.join(LAVA_TARGETS)})")
    if backend == "float":
        return simulate(graph, _graph_inputs(graph, inputs))
    if backend in ("reference", "engine") and ray is not None:
        from st2chip.targets import ray_shards
        return ray_shards.run(chip, inputs, address=None if ray == "local" else ray, voltages=voltages,
                              device=device or "cpu", batch_size=batch_size)
    if backend in ("reference", "engine"):
        from st2chip.targets import engine
        return engine.run(chip, inputs, device=device or engine.default_device(), batch_size=batch_size,
                          voltages=voltages, progress=progress)
    if backend == "lava":
        from st2chip.targets import lava
        if target == "loihi2-hw":
            import inspect
            run_cfg = loihi2_hw_run_cfg()
            if "run_cfg" not in inspect.signature(lava.run).parameters:
                raise InputError("--lava-target loihi2-hw: lava-loihi is installed, but st2chip's Lava backend "
                                 "(targets/lava.py) builds Loihi2SimCfg runs only so far")
            return lava.run(chip, inputs, voltages=voltages, run_cfg=run_cfg)
        return lava.run(chip, inputs, voltages=voltages, progress=progress)
    raise InputError(f"unknown backend '{backend}' (choose from {', '.join(BACKENDS)})")


def decay_groups_of(graph: nir.NIRGraph, given: int | None) -> int:
    """``given``, else the graph's ``metadata["decay_groups"]`` (written by export after st2chip quantize), else
    :data:`~st2chip.defaults.DEFAULT_DECAY_GROUPS`."""
    if given is not None:
        return given
    value = graph.metadata.get("decay_groups", defaults.DEFAULT_DECAY_GROUPS)
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise GraphError(f"metadata 'decay_groups' must be a positive integer, got {value!r}",
                         field="metadata.decay_groups")
    return int(value)


def chip_headroom(graph: nir.NIRGraph, chip: ChipGraph, float_traces: Traces) -> list[Headroom]:
    """How far each spiking layer's float voltages go from zero against the range its chip voltage holds
    (both in thresholds; see :func:`~st2chip.analysis.verify.headroom_use`)."""
    layers = [layer for layer in chip.layers() if isinstance(graph.nodes.get(layer), SPIKING)]
    thresholds = {layer: np.broadcast_to(np.ravel(graph.nodes[layer].v_threshold).astype(float),
                                         (chip.layer_size(layer),)) for layer in layers}
    room = {layer: UV_MAX / chip.voltage_units(layer) for layer in layers}
    return headroom_use(float_traces, thresholds, room)


def _graph_inputs(graph: nir.NIRGraph, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The float interpreter's one input array: each Input node's signal, in graph order."""
    return np.concatenate([inputs[name] for name, node in graph.nodes.items() if isinstance(node, nir.Input)], axis=2)


def run_layer_by_layer(graph: nir.NIRGraph, inputs: dict[str, np.ndarray], chip_traces: Traces) -> Traces:
    """The float graph with every spiking layer fed the chip's spikes of the layers before it (see
    :func:`~st2chip.graph.simulate.simulate`'s ``forced``): what each layer alone makes of the chip's inputs."""
    spiking = [name for name, node in graph.nodes.items() if isinstance(node, SPIKING) and name in chip_traces.spikes]
    return simulate(graph, _graph_inputs(graph, inputs), forced={name: chip_traces.spikes[name] for name in spiking})


XYLO_BACKENDS = ("float", ENGINE, ORACLE)


def verify_xylo(graph: nir.NIRGraph, chip: XyloGraph, inputs: dict[str, np.ndarray], labels: np.ndarray | None,
                *, target: str, backends: tuple[str, ...] = XYLO_BACKENDS,
                xylosim_samples: int = defaults.XYLOSIM_SAMPLES, max_drop: float = defaults.MAX_DROP,
                min_agreement: float = defaults.MIN_AGREEMENT, allow_silent: bool = defaults.ALLOW_SILENT,
                device: str | None = None, batch_size: int = defaults.BATCH_SIZE,
                stage: Callable[..., Any] = lambda name, fn, *a, **k: fn(*a, **k)) -> XyloVerifyReport:
    """A Xylo target checked end to end: float vs the engine on every sample (accuracy, agreement, output checks
    as on Loihi, on the layers :mod:`st2chip.targets.xylo_run` reads), and the engine against xylosim on the
    first ``xylosim_samples``, every array at every chip step (:mod:`st2chip.analysis.xylo_verify`)."""
    unknown = [b for b in backends if b not in XYLO_BACKENDS]
    if unknown or ENGINE not in backends:
        raise InputError(f"--backends: a Xylo target compares {', '.join(XYLO_BACKENDS)} ({ENGINE} always); "
                         f"got {', '.join(backends)}")
    if xylosim_samples < 0:
        raise InputError(f"--xylosim-samples must be 0 or more, got {xylosim_samples}")
    counts = counts_of(chip, inputs)
    steps = counts.shape[1]
    engine_run = stage(f"simulate:{ENGINE}", run_padded, chip, counts, device=device, batch_size=batch_size)
    traces = [xylo_traces(chip, engine_run, steps, inputs, ENGINE)]
    local = None
    if "float" in backends:
        traces.insert(0, stage("simulate:float", run_backend, "float", graph, None, inputs))
        local = stage("simulate:float layer by layer", run_layer_by_layer, graph, inputs, traces[1])
    report = compare_traces(traces, labels, max_drop=max_drop, min_agreement=min_agreement,
                            layer_by_layer=local, outputs=output_layers(graph), allow_silent=allow_silent)
    oracle = None
    n = min(xylosim_samples, counts.shape[0])
    if ORACLE in backends and n:
        oracle_run = stage(f"simulate:{ORACLE}", run_padded, chip, counts[:n], backend=ORACLE,
                           batch_size=batch_size)
        oracle = oracle_check(engine_run, oracle_run)
        if labels is not None:
            head = xylo_traces(chip, oracle_run, steps, {k: v[:n] for k, v in inputs.items()}, ORACLE)
            report.accuracy[f"{ORACLE} (first {n})"] = head.accuracy(labels[:n])
        report.checks.insert(0, oracle.check())
    return XyloVerifyReport(target, report, oracle, dict(chip.report))
