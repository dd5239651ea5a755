"""st2chip's Python API: the pipeline's stages as functions you chain, with exactly the CLI's defaults.

::

    import st2chip
    graph = st2chip.load("model.nir")              # canonical NIR (a .nir file or a bundle folder)
    chip = st2chip.lower(graph)                    # ChipGraph: fixed-point populations and synapse groups
    traces = st2chip.run(chip, x)                  # st2chip's bit-exact engine; backend="lava" for Lava
    report = st2chip.verify(graph, x, labels=y)    # float vs engine vs Lava, with pass/fail checks
    print(st2chip.energy(chip, x).to_dict())       # synaptic operations and energy from the spike traces

Inputs are shaped as ``--inputs`` files are: an array or torch tensor ``(batch, steps, n)`` (or
``(batch, steps, *input_shape)``) for a graph with one Input node, or a mapping from Input node
name to such an array. Every command of the ``st2chip`` CLI calls these functions; the defaults
live in :mod:`st2chip.defaults`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

import nir
import numpy as np

from st2chip import defaults
from st2chip.analysis.energy import EnergyReport
from st2chip.analysis.verify import VerifyReport
from st2chip.analysis.xylo_energy import XyloEnergyReport
from st2chip.analysis.xylo_verify import XyloVerifyReport
from st2chip.chip.chipgraph import ChipGraph
from st2chip.chip.placement import Placement, Resources
from st2chip.inputs import RunInputs, as_levels, input_sizes, limit, mnist1d_training_inputs, resolve_inputs
from st2chip.errors import InputError
from st2chip.traces import Traces
from st2chip.xylo.xylograph import XyloGraph

Source = str | os.PathLike
Stage = Callable[..., Any]  # ``stage(name, fn, *args, **kwargs) -> fn(*args, **kwargs)``, e.g. a timing log

__all__ = ["load", "lower", "place", "run", "simulate", "verify", "energy", "compare", "import_model", "export",
           "quantize", "quantize_graph", "inputs_for"]


def _call(name: str, fn: Callable, *args: Any, **kwargs: Any) -> Any:
    return fn(*args, **kwargs)


def load(path: Source | nir.NIRGraph, *, dt: float | None = None, steps: int | None = None) -> nir.NIRGraph:
    """Read and normalize a NIR graph: a ``.nir`` file, a deployment bundle folder, or a ``nir.NIRGraph``.

    ``dt`` (seconds) is needed where the graph's metadata has none; ``steps`` is recorded in the
    metadata as the run length the default inputs use.
    """
    from st2chip import limits
    from st2chip.pipeline import load_graph
    graph = load_graph(path, dt)
    if steps is not None:
        graph.metadata["steps"] = limits.positive_int(steps, "steps")
    return graph


def lower(graph: nir.NIRGraph | Source, *, target: str = defaults.TARGET, decay_groups: int | None = None,
          lowrank: str = defaults.LOWRANK, headroom: float = defaults.HEADROOM,
          precision: str | int = defaults.PRECISION,
          resources: str | os.PathLike | Resources | None = defaults.RESOURCES) -> ChipGraph | XyloGraph:
    """Lower a graph (or a path, read with :func:`load`) for ``target`` (:data:`st2chip.families.TARGETS`):
    ``loihi2`` gives a :class:`~st2chip.chip.chipgraph.ChipGraph`, ``xylo-audio2``, ``xylo-audio3`` or
    ``xylo-imu`` a :class:`~st2chip.xylo.xylograph.XyloGraph` (Xylo's design rules broken: a
    ``DesignRuleError`` listing every one). The options below are Loihi's; a Xylo target refuses them
    set away from their defaults.

    ``decay_groups``: at most this many distinct decays per layer (default: the graph's metadata
    ``decay_groups``, else :data:`~st2chip.defaults.DEFAULT_DECAY_GROUPS`); ``lowrank``: ``"auto"``,
    ``"factored"`` or ``"product"`` for DSP low-rank layers; ``headroom``: thresholds a neuron's current and
    voltage may reach (see ``st2chip map --help``); ``precision``: ``"8"`` (8-bit weights), ``"16"`` (a
    residual synapse group too, wherever it adds precision on the chip) or ``"auto"`` (per layer);
    ``resources``: the resource model (``loihi2``, ``loihi1``, a JSON file; None: none) whose per-core limits
    fan-in trees split a neuron's incoming synapses against.
    """
    from st2chip import families
    from st2chip.errors import GraphError
    source = None
    if not isinstance(graph, nir.NIRGraph):
        source, graph = graph, load(graph)
    try:
        return families.lower(graph, target, decay_groups=decay_groups, lowrank=lowrank, headroom=headroom,
                              precision=precision, resources=resources)
    except GraphError as err:  # name the file as well as the node and field
        raise err.at(source) from None


def place(chip: ChipGraph, resources: str | os.PathLike | Resources = defaults.RESOURCES, *,
          max_chips: int | None = defaults.MAX_CHIPS, pack: bool = True) -> Placement:
    """Place ``chip`` on neurocores and chips of a resource model (``loihi2``, ``loihi1`` or a JSON file).

    Raises :class:`~st2chip.chip.placement.PlacementError` naming every layer that does not fit.
    """
    from st2chip.chip.placement import place as place_chip
    return place_chip(chip, resources, max_chips=max_chips, pack=pack)


def _array(value: Any, where: str) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise InputError(f"{where}: expected a numeric array, got dtype {array.dtype}")
    return array


def _named(inputs: Any, names: list[str]) -> dict[str, np.ndarray]:
    """One array per input name, from a mapping or (one input only) a bare array."""
    if isinstance(inputs, Mapping):
        missing = [n for n in names if n not in inputs]
        unknown = sorted(set(inputs) - set(names))
        if missing or unknown:
            raise InputError(f"inputs: the graph's Input nodes are {', '.join(names)}; missing "
                             f"{', '.join(missing) or 'none'}, unknown {', '.join(map(str, unknown)) or 'none'}")
        return {n: _array(inputs[n], f"input '{n}'") for n in names}
    if len(names) != 1:
        raise InputError(f"inputs: the graph has {len(names)} Input nodes ({', '.join(names)}); pass a mapping "
                         f"from each name to its array")
    return {names[0]: _array(inputs, f"input '{names[0]}'")}


def _labels(labels: Any, samples: int) -> np.ndarray | None:
    if labels is None:
        return None
    array = _array(labels, "labels")
    if array.shape != (samples,) or not (np.issubdtype(array.dtype, np.integer)
                                         or np.array_equal(array, np.round(array))):
        raise InputError(f"labels: expected {samples} integer class indices, got {array.dtype} {array.shape}")
    return array.astype(np.int64)


def _packed(spikes: dict[str, np.ndarray], labels: Any, origin: str) -> RunInputs:
    shapes = {n: s.shape[:2] for n, s in spikes.items()}
    if len(set(shapes.values())) != 1:
        raise InputError(f"inputs disagree in (batch, steps): {shapes}")
    return RunInputs(spikes, _labels(labels, next(iter(shapes.values()))[0]), origin)


def inputs_for(graph: nir.NIRGraph, inputs: Any = None, labels: Any = None, *, samples: int | None = None,
               steps: int | None = None) -> RunInputs:
    """The run inputs for ``graph``: arrays or tensors (see the module docstring), a ``.npy``/``.npz`` path
    as ``--inputs`` takes, or ``None`` for the graph's default data (the digits or MNIST-1D test split);
    ``samples`` and ``steps`` keep the first ones."""
    if isinstance(inputs, RunInputs):
        return limit(inputs, samples, steps)
    if inputs is None or isinstance(inputs, (str, os.PathLike)):
        return resolve_inputs(graph, None if inputs is None else str(inputs), samples, steps)
    analog = isinstance(graph.metadata, dict) and graph.metadata.get("encoding") == "direct"
    sizes = input_sizes(graph)
    arrays = _named(inputs, list(sizes))
    top = {n: (int(a.max()) if a.size and analog else 1) for n, a in arrays.items()}
    spikes = {n: as_levels("inputs", n, a, sizes[n], max(top[n], 1)) for n, a in arrays.items()}
    return limit(_packed(spikes, labels, "arrays"), samples, steps)


def _chip_inputs(chip: ChipGraph, inputs: Any) -> dict[str, np.ndarray]:
    """Inputs for a ChipGraph's input ports: spikes for spike ports, integer levels for analog ones."""
    if isinstance(inputs, RunInputs):
        return inputs.spikes
    ports = {p.name: p for p in chip.inputs}
    arrays = _named(inputs, list(ports))
    spikes = {n: as_levels("inputs", n, a, ports[n].size, ports[n].levels) for n, a in arrays.items()}
    return _packed(spikes, None, "arrays").spikes


def run(chip: ChipGraph | XyloGraph, inputs: Any, *, backend: str = defaults.BACKEND, device: str | None = None,
        batch_size: int = defaults.BATCH_SIZE, voltages: bool = True, progress: bool = False,
        ray: str | None = None, lava_target: str = defaults.LAVA_TARGET) -> Traces:
    """Run ``inputs`` through ``chip`` on ``backend``: ``"engine"`` (st2chip's bit-exact engine of the chip's
    arithmetic, on ``device``: CUDA when present, else CPU) or the chip's oracle: ``"lava"`` (Lava's
    fixed-point simulator, on ``lava_target``) for a ChipGraph, ``"xylosim"`` for a XyloGraph.

    Returns :class:`~st2chip.traces.Traces`: per layer ``spikes`` and ``voltages`` ``(batch, steps, n)``
    and the readout ``scores`` (a XyloGraph's layers each read at its own depth: see
    :mod:`st2chip.targets.xylo_run`). ``ray``: shard the engine's samples over Ray (``"local"`` or an address).
    """
    from st2chip.pipeline import run_backend
    if backend == "float":
        raise InputError("backend 'float' runs a NIR graph, not a ChipGraph: use st2chip.simulate(graph, inputs)")
    if isinstance(chip, XyloGraph):
        from st2chip.targets.xylo_run import run_traces
        return run_traces(chip, _xylo_inputs(chip, inputs), backend=backend, device=device, batch_size=batch_size)
    return run_backend(backend, None, chip, _chip_inputs(chip, inputs), voltages, device=device,
                       batch_size=batch_size, progress=progress, ray=ray, target=lava_target)


def _xylo_inputs(chip: XyloGraph, inputs: Any) -> dict[str, np.ndarray]:
    """Inputs for a XyloGraph: one array of counts per Input node it reads."""
    if isinstance(inputs, RunInputs):
        return inputs.spikes
    return _named(inputs, list(dict.fromkeys(chip.input_names)) or ["input"])


def simulate(graph: nir.NIRGraph, inputs: Any) -> Traces:
    """Run ``inputs`` through the float NIR interpreter (the model as trained, no chip arithmetic)."""
    from st2chip.pipeline import run_backend
    return run_backend("float", graph, None, inputs_for(graph, inputs).spikes)


def verify(model: nir.NIRGraph | Source, inputs: Any = None, labels: Any = None, *, target: str = defaults.TARGET,
           backends: tuple[str, ...] | None = None, lava_samples: int = defaults.LAVA_SAMPLES,
           max_drop: float = defaults.MAX_DROP, min_agreement: float = defaults.MIN_AGREEMENT,
           chip: ChipGraph | XyloGraph | None = None, decay_groups: int | None = None,
           lowrank: str = defaults.LOWRANK, headroom: float = defaults.HEADROOM, samples: int | None = None,
           steps: int | None = None, device: str | None = None, batch_size: int = defaults.BATCH_SIZE,
           ray: str | None = None, lava_target: str = defaults.LAVA_TARGET, progress: bool = False,
           stage: Stage = _call, allow_silent: bool = defaults.ALLOW_SILENT, lava_mode: str = defaults.LAVA_MODE,
           xylosim_samples: int = defaults.XYLOSIM_SAMPLES) -> VerifyReport | XyloVerifyReport:
    """Float vs st2chip's engine vs the chip's oracle on the same inputs, with the checks ``st2chip verify``
    makes. ``target`` (default ``loihi2``): for a Xylo target (``xylo-audio2`` …) the oracle is xylosim, run
    on the first ``xylosim_samples`` samples (:func:`st2chip.pipeline.verify_xylo`), ``backends`` from
    ``float``, ``engine``, ``xylosim`` (default all three); what follows is Loihi's.

    ``model`` is a graph or a path; ``chip`` a ChipGraph already lowered from it (else it is lowered
    with ``decay_groups``, ``lowrank``, ``headroom``). ``inputs``: see :func:`inputs_for` (``None``: the
    graph's default data, with its labels). Lava runs the first ``lava_samples`` samples only, by
    ``lava_mode``: ``"layers"`` (each population alone on the inputs the engine recorded for it, a bounded
    number of Lava processes per run, whatever the model's size) or ``"whole"`` (the whole network in one
    Lava run: one OS process per population and synapse group). The report's ``passed`` is False when
    engine and Lava differ, accuracy drops more than ``max_drop``
    points, or a layer's float-vs-chip spike agreement (layer by layer) is below ``min_agreement`` %,
    or (unless ``allow_silent``) an output layer never spikes or spikes at every step over all samples
    on float or chip, or a readout's scores are the same for every sample: the spiking layers feeding
    the Output nodes, directly or through an LI / CubaLI / I readout, are the output layers.
    ``stage(name, fn, *args)`` wraps each step (the CLI's ``--verbose`` timing log).
    """
    from st2chip.analysis.verify import output_layers, verify as compare_traces
    from st2chip.families import get_target
    from st2chip.pipeline import BACKENDS, chip_headroom, run_backend, run_layer_by_layer
    if get_target(target).family == "xylo":
        return _verify_xylo(model, inputs, labels, target=target, backends=backends, chip=chip,
                            xylosim_samples=xylosim_samples, max_drop=max_drop, min_agreement=min_agreement,
                            allow_silent=allow_silent, samples=samples, steps=steps, device=device,
                            batch_size=batch_size, stage=stage)
    backends = tuple(b.strip() for b in (defaults.VERIFY_BACKENDS if backends is None else backends) if b.strip())
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown or not backends:
        raise InputError(f"--backends: unknown backend(s) {unknown} (choose from {', '.join(BACKENDS)})")
    if lava_samples < 0:
        raise InputError(f"--lava-samples must be 0 or more, got {lava_samples}")
    if lava_mode not in LAVA_MODES:
        raise InputError(f"--lava-mode: expected {' or '.join(LAVA_MODES)}, got {lava_mode!r}")
    graph = model if isinstance(model, nir.NIRGraph) else stage("read+normalize", load, model)
    if chip is None:
        chip = stage("lower", lower, graph, decay_groups=decay_groups, lowrank=lowrank, headroom=headroom)
    run_inputs = inputs_for(graph, inputs, labels, samples=samples, steps=steps)
    engine_args = {"device": device, "batch_size": batch_size, "progress": progress and ray is None, "ray": ray,
                   "target": lava_target}
    everything = [b for b in backends if b != "lava"] or ["reference"]
    traces = [stage(f"simulate:{b}", run_backend, b, graph, chip, run_inputs.spikes, **engine_args)
              for b in everything]
    cross: tuple[Traces, ...] = ()
    if "lava" in backends and lava_samples:
        n = min(lava_samples, run_inputs.samples)
        head = {name: x[:n] for name, x in run_inputs.spikes.items()}
        cross = ((stage("simulate:lava", run_backend, "lava", graph, chip, head, target=lava_target,
                        progress=progress),) if lava_mode == "whole"
                 else (stage("simulate:lava layer by layer", _lava_layers, chip, head, lava_target, progress),))
    local = None
    if "float" in backends and any(b != "float" for b in everything):
        chip_traces = next(t for t in traces if t.backend != "float")
        local = stage("simulate:float layer by layer", run_layer_by_layer, graph, run_inputs.spikes, chip_traces)
    headroom_use = (chip_headroom(graph, chip, next(t for t in traces if t.backend == "float"))
                    if "float" in everything else ())
    return stage("verify", compare_traces, traces, run_inputs.labels, max_drop=max_drop,
                 min_agreement=min_agreement, cross_checks=cross,
                 units={layer: chip.voltage_units(layer) for layer in chip.readout_layers()},
                 layer_by_layer=local, headroom=headroom_use, outputs=output_layers(graph),
                 allow_silent=allow_silent)


LAVA_MODES = ("layers", "whole")


def _verify_xylo(model: nir.NIRGraph | Source, inputs: Any, labels: Any, *, target: str,
                 backends: tuple[str, ...] | None, chip: XyloGraph | None, samples: int | None, steps: int | None,
                 stage: Stage, **options: Any) -> XyloVerifyReport:
    """:func:`verify` for a Xylo target: lower (unless ``chip`` is given), then float vs engine vs xylosim."""
    from st2chip.pipeline import XYLO_BACKENDS, verify_xylo
    graph = model if isinstance(model, nir.NIRGraph) else stage("read+normalize", load, model)
    if chip is None:
        chip = stage("lower", lower, graph, target=target)
    run_inputs = inputs_for(graph, inputs, labels, samples=samples, steps=steps)
    backends = tuple(b.strip() for b in (XYLO_BACKENDS if backends is None else backends) if b.strip())
    return verify_xylo(graph, chip, run_inputs.spikes, run_inputs.labels, target=target, backends=backends,
                       stage=stage, **options)


def _lava_layers(chip: ChipGraph, inputs: dict[str, np.ndarray], target: str, progress: bool) -> Traces:
    """Lava one population at a time on the engine's recorded inputs (:mod:`st2chip.targets.lava_layers`)."""
    if target != defaults.LAVA_TARGET:
        raise InputError(f"--lava-mode layers runs on Lava's simulator ({defaults.LAVA_TARGET}); for "
                         f"--lava-target {target} use --lava-mode whole")
    from st2chip.targets import lava_layers
    return lava_layers.run(chip, inputs, max_processes=defaults.LAVA_PROCESSES, progress=progress)


def energy(chip: ChipGraph | XyloGraph, inputs: Any, *, profile: str | os.PathLike | None = None,
           resources: str | os.PathLike | Resources | None = None, placement: Placement | None = None,
           backend: str = defaults.BACKEND, device: str | None = None, batch_size: int = defaults.BATCH_SIZE,
           progress: bool = False, ray: str | None = None, lava_target: str = defaults.LAVA_TARGET,
           dt: float | None = None) -> EnergyReport | XyloEnergyReport:
    """Synaptic operations and energy per layer, partition and core, counted from real spike traces.

    ``inputs`` are run on ``backend`` (or are :class:`~st2chip.traces.Traces` already run); ``profile``:
    ``45nm`` (default), ``loihi``, ``loihi2`` or a JSON file; the chip is placed on ``resources`` (default:
    the profile's) unless a ``placement`` is given. A XyloGraph runs on the Xylo engine and is priced by its
    chip's profile (``xylo-audio2``, ``xylo-audio3`` or a JSON file) over steps of ``dt`` seconds
    (:func:`st2chip.analysis.xylo_energy.xylo_energy`).
    """
    from st2chip.analysis.energy import energy_report, load_profile
    if isinstance(chip, XyloGraph):
        return _energy_xylo(chip, inputs, profile, dt=dt, device=device, batch_size=batch_size)
    prof = load_profile(profile or defaults.PROFILE)
    if placement is None:
        placement = place(chip, resources or prof.resources, max_chips=None)
    traces = inputs if isinstance(inputs, Traces) else run(
        chip, inputs, backend=backend, device=device, batch_size=batch_size, voltages=False, progress=progress,
        ray=ray, lava_target=lava_target)
    return energy_report(chip, traces, prof, placement)


def _energy_xylo(chip: XyloGraph, inputs: Any, profile: str | os.PathLike | None, *, dt: float | None,
                 device: str | None, batch_size: int) -> XyloEnergyReport:
    """:func:`energy` of a XyloGraph: the whole chip run on the engine, counted and priced by ``profile``."""
    from st2chip.analysis.xylo_energy import xylo_energy
    from st2chip.targets.xylo_run import counts_of, run_padded
    if profile is None:
        raise InputError("energy of a Xylo graph: name its chip's profile (--profile xylo-audio3, or a JSON file)")
    counts = counts_of(chip, _xylo_inputs(chip, inputs))
    chip_run = run_padded(chip, counts, device=device, batch_size=batch_size)
    return xylo_energy(chip, chip_run, profile, dt=dt, counts=counts)


def compare(model: nir.NIRGraph | Source, inputs: Any = None, labels: Any = None, *,
            targets: tuple[str, ...] | list[str] = defaults.COMPARE_TARGETS, samples: int | None = None,
            steps: int | None = None, device: str | None = None, batch_size: int = defaults.BATCH_SIZE):
    """One model on several ``targets`` side by side, on the same inputs (see :func:`inputs_for`): per target
    whether it fits (else every reason, one line each), float vs chip accuracy, synaptic operations and energy
    per inference, latency in steps. Returns a :class:`~st2chip.analysis.compare.CompareReport`
    (``to_markdown()``, ``to_dict()``; :func:`~st2chip.analysis.compare.write_compare_report` writes it)."""
    from st2chip.comparison import compare as compare_targets
    graph = model if isinstance(model, nir.NIRGraph) else load(model)
    return compare_targets(graph, inputs, labels, targets=targets, samples=samples, steps=steps, device=device,
                           batch_size=batch_size)


def import_model(path: Source, framework: str, *, dt: float | None = None, steps: int | None = None,
                 tau_quirk: bool | None = None):
    """Read a ``.nir`` file as ``framework`` (norse, snntorch, spikingjelly, sinabs, rockpool or nir) wrote it,
    absorbing its quirks; returns the canonical graph (``.graph``) and one note per change (``.notes``, which
    say where dt came from). ``tau_quirk``: see :func:`~st2chip.converters.registry.import_file`."""
    from st2chip.converters.registry import import_file
    return import_file(path, framework, dt=dt, steps=steps, tau_quirk=tau_quirk)


def export(checkpoint: Source, output: Source, *, dt: float = defaults.EXPORT_DT) -> Path:
    """Export an st2chip checkpoint: an MLP, CNN or RNN to one NIR file, a spiking Transformer to a deployment
    bundle folder (NIR and ONNX parts, ``manifest.json``); ``output`` is replaced atomically. Returns it."""
    from st2chip.converters.registry import BUNDLE_EXPORTERS, exporter
    from st2chip.graph.nirfile import write_nir
    from st2chip.io import check_output
    from st2chip.learn.checkpoint import load_checkpoint
    kind, model, extra = load_checkpoint(checkpoint)
    bundle = kind in BUNDLE_EXPORTERS
    check_output(output, [checkpoint], folder=bundle, flag="-o")
    if bundle:
        return exporter(kind)(model, output, dt=dt, data=extra.get("data"))
    graph = exporter(kind)(model, dt=dt)
    if isinstance(extra.get("chip_aware"), dict):  # st2chip quantize tied the decays into this many groups
        graph.metadata["decay_groups"] = int(extra["chip_aware"]["decay_groups"])
    return write_nir(graph, output)


def quantize(checkpoint: Source, output: Source, *, decay_groups: int = defaults.DEFAULT_DECAY_GROUPS,
             headroom: float = defaults.HEADROOM, epochs: int = defaults.QUANTIZE_EPOCHS,
             lr: float = defaults.QUANTIZE_LR, seed: int = 0, device: str | None = None,
             data_root: Source | None = None) -> dict:
    """Fine-tune an MLP or RNN checkpoint with the chip in the loop and write it to ``output``.

    Decays are tied into ``decay_groups`` pairs per layer and the forward pass runs on the weights
    the chip holds, so that the exported model is what the chip runs, exactly
    (:func:`~st2chip.chip.finetune.chip_finetune`). Returns the new checkpoint's summary: its
    ``kind``, ``test_accuracy`` and what fine-tuning did (``chip_aware``).
    """
    import time
    from dataclasses import asdict

    from st2chip.chip.finetune import ADAPTERS, chip_finetune
    from st2chip.learn.checkpoint import load_checkpoint, save_checkpoint
    from st2chip.learn.data import load_split
    from st2chip.learn.training import default_device, evaluate
    from st2chip.io import check_output
    check_output(output, [checkpoint], flag="--out")
    kind, model, extra = load_checkpoint(checkpoint)
    if kind not in ADAPTERS:
        raise InputError(f"{checkpoint}: quantize fine-tunes {', '.join(ADAPTERS)} checkpoints so far; this "
                         f"one is kind {kind!r} (its chip accuracy: st2chip verify)")
    device = device or default_device()
    train, test = load_split(extra.get("data", "digits"), data_root)
    before = evaluate(model.to(device), test, device=device)
    start = time.perf_counter()
    result, chip = chip_finetune(model, kind, train, test, decay_groups=decay_groups, headroom=headroom,
                                 epochs=epochs, lr=lr, seed=seed, device=device)
    summary = {**extra, "test_accuracy": result.test_accuracy, "train_accuracy": result.train_accuracy,
               "chip_aware": {"decay_groups": decay_groups, "headroom": headroom, "epochs": epochs, "lr": lr,
                              "seed": seed, "accuracy_before": before,
                              "seconds": round(time.perf_counter() - start, 1), **chip}}
    save_checkpoint(model, kind, asdict(model.config), output, summary)
    return {"kind": kind, **summary}


def quantize_graph(model: nir.NIRGraph | Source, inputs: Any, labels: Any = None, *, output: Source | None = None,
                   target: str = defaults.TARGET,
                   decay_groups: int = defaults.DEFAULT_DECAY_GROUPS, headroom: float = defaults.HEADROOM,
                   epochs: int = defaults.QUANTIZE_EPOCHS, lr: float = defaults.QUANTIZE_LR,
                   holdout: float = defaults.QUANTIZE_HOLDOUT, seed: int = 0, device: str | None = None,
                   progress: bool = False):
    """Fine-tune a NIR graph from any framework with the chip in the loop, on labelled ``inputs``.

    ``model``: a graph or a path (read with :func:`load`); ``inputs``: a ``.npz`` path as ``--inputs`` takes
    (one array per Input node and ``labels``) or arrays with ``labels`` (see :func:`inputs_for`). A seeded
    ``holdout`` fraction of the samples is kept out of training and measures float and chip accuracy before
    and after. Returns a :class:`~st2chip.chip.finetune_graph.GraphTuning` whose ``graph`` lowering
    reproduces exactly (:func:`~st2chip.chip.finetune_graph.finetune_graph`); ``output``: also written
    there as a ``.nir`` file, atomically. ``target`` a Xylo chip (``xylo-audio3`` …): the graph trains as that
    chip computes it (:func:`~st2chip.xylo.finetune.finetune_xylo`, an ``XyloTuning``; ``decay_groups`` and
    ``headroom`` are Loihi's), and an MNIST-1D model needs no ``inputs`` (its training split).
    """
    from st2chip.chip.finetune_graph import finetune_graph
    from st2chip.families import get_target
    from st2chip.graph.nirfile import write_nir
    from st2chip.io import check_output
    from st2chip.learn.training import default_device
    xylo = get_target(target).family == "xylo"
    if inputs is None and not xylo:
        where = "quantize" if isinstance(model, nir.NIRGraph) else str(model)
        raise InputError(f"{where}: a NIR graph fine-tunes on your samples: pass --inputs FILE.npz (spikes per "
                         "Input node and 'labels')")
    sources = [] if isinstance(model, nir.NIRGraph) else [model]
    if output is not None:
        check_output(output, [*sources, *([inputs] if isinstance(inputs, (str, os.PathLike)) else [])], flag="-o")
    graph = model if isinstance(model, nir.NIRGraph) else load(model)
    run_inputs = mnist1d_training_inputs(graph) if inputs is None else inputs_for(graph, inputs, labels)
    device = device or default_device()
    if xylo:
        from st2chip.targets.xylo_run import run_traces
        from st2chip.xylo.finetune import finetune_xylo
        from st2chip.xylo.spec import load_spec
        tuning = finetune_xylo(graph, run_inputs.spikes, run_inputs.labels, spec=load_spec(target),
                               run_chip=lambda chip, spikes: run_traces(chip, spikes, batch_size=defaults.BATCH_SIZE),
                               epochs=epochs, lr=lr, holdout=holdout, seed=seed, device=device, progress=progress)
    else:
        tuning = finetune_graph(graph, run_inputs.spikes, run_inputs.labels, decay_groups=decay_groups,
                                headroom=headroom, epochs=epochs, lr=lr, holdout=holdout,
                                run_chip=lambda chip, spikes: run(chip, spikes, voltages=False), seed=seed,
                                device=device, progress=progress)
    if output is not None:
        write_nir(tuning.graph, output)
    return tuning
