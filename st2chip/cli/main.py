"""The ``st2chip`` command line.

Exit codes: 0 ok, 1 verification found a difference or a backend failed, 2 bad
input (one line on stderr naming the file, node, field or layer at fault). Progress goes to stderr,
results to stdout or files.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from pathlib import Path
from typing import Callable, Iterable, Sequence

from st2chip import defaults
from st2chip.cli.compare import register as register_compare
from st2chip.cli.train import register as register_train
from st2chip.converters.registry import EXPORT_DT, FRAMEWORKS
from st2chip.errors import GraphError, InputError, St2chipError, St2chipWarning
from st2chip.text import printable

EPILOG_EXIT = ("exit codes: 0 ok, 1 verification failed a check or a backend failed, 2 bad input, 130/143 interrupted "
               "(SIGINT/SIGTERM)")



def _add_graph_args(p: argparse.ArgumentParser) -> None:
    from st2chip.families import TARGETS
    p.add_argument("model", help="NIR file (.nir), as written by st2chip export or st2chip import")
    p.add_argument("--target", default=defaults.TARGET, metavar="|".join(TARGETS),
                   help=f"the chip to deploy to (default {defaults.TARGET}): Loihi 2, or Xylo Audio 2, Xylo "
                        f"Audio 3 or Xylo IMU (one recurrent hidden population; checked against SynSense's xylosim)")
    p.add_argument("--decay-groups", type=int, default=None, metavar="K",
                   help=f"at most K distinct voltage decays per layer (default: the graph's metadata "
                        f"'decay_groups', which st2chip quantize records, else {defaults.DEFAULT_DECAY_GROUPS}); "
                        f"each distinct decay (for a CubaLIF, each pair of K current and K voltage decays: up to K^2) is one "
                        f"population (one Lava process), and each pair of connected populations one synapse group")
    p.add_argument("--dt", type=float, default=None,
                   help="time step in seconds (default: the graph's metadata; a graph with time constants and none "
                        "is refused)")
    p.add_argument("--lowrank", choices=["auto", "factored", "product"], default=defaults.LOWRANK,
                   help="a DSP low-rank layer U·V: kept factored through a graded relay, multiplied out, or "
                        "auto (default): per layer, the cheaper by stored weights x synaptic-op energy")
    p.add_argument("--precision", choices=["auto", "8", "16"], default=defaults.PRECISION,
                   help="weight precision: 8-bit mantissas (8), a second synapse group per path carrying what they "
                        "round away at a smaller exponent (16; up to the population's scale), or per layer (auto) "
                        "where the 8-bit weight error is over 1 %% and falls by more than stored weights x "
                        f"synaptic ops grow (default {defaults.PRECISION}; 'map --json' gives each layer's choice)")
    _add_headroom(p)


def _add_headroom(p: argparse.ArgumentParser) -> None:
    p.add_argument("--headroom", type=float, default=defaults.HEADROOM, metavar="H",
                   help=f"thresholds a spiking neuron's current and voltage may reach before they wrap or saturate "
                        f"(default {defaults.HEADROOM:g}); the fixed-point scale is made as fine as this allows, which "
                        f"shrinks the floor of negative weight exponents; raise it if float voltages or currents go "
                        f"further from zero (the layer report gives each population's 'headroom')")


def _add_run_args(p: argparse.ArgumentParser) -> None:
    _add_graph_args(p)
    p.add_argument("--inputs", metavar="FILE",
                   help="spikes to run: .npy (B, T, n) or (B, T, *input_shape) for one Input node, or .npz "
                        "with one array per Input node name and optional 'labels' (default: digits test split)")
    p.add_argument("--steps", type=int, default=None,
                   help="time steps per sample (default: the inputs' T; for digits, the graph's metadata)")
    p.add_argument("--samples", type=int, default=None,
                   help="samples to run (default: all of --inputs, or the whole digits test split)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None,
                   help="where the fixed-point engine runs (default: cuda when present, else cpu)")
    p.add_argument("--batch-size", type=int, default=defaults.BATCH_SIZE,
                   help=f"engine samples per batch (default {defaults.BATCH_SIZE})")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="shard the engine's samples over Ray: a local instance, or the cluster at ADDRESS "
                        "(e.g. ray://head:10001)")
    p.add_argument("--lava-target", choices=["lava-sim", "loihi2-hw"], default=defaults.LAVA_TARGET,
                   help="where the lava backend runs: lava-sim, Lava's fixed-point CPU simulator (default), or "
                        "loihi2-hw, a Loihi 2 chip through Loihi2HwCfg (needs Intel's lava-loihi; exit 2 "
                        "without it)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="st2chip",
        description="Deploy trained spiking networks (sLIF) to Loihi-class chips: NIR -> ChipGraph -> "
                    "Lava fixed_pt and st2chip's bit-exact fixed-point engine, with verification and energy "
                    "reports; or to SynSense Xylo (--target xylo-audio3 ...), checked against xylosim.",
        epilog=EPILOG_EXIT)
    parser.add_argument("-v", "--verbose", action="store_true", help="print each pipeline stage as it runs")
    parser.add_argument("--progress", action="store_true",
                        help="show progress bars on stderr even when it is not a terminal (default: only on one)")
    parser.add_argument("--memory-budget", metavar="SIZE", default=None,
                        help="memory st2chip may use for what a file declares, e.g. 8G (default: "
                             "$ST2CHIP_MEMORY_BUDGET, else a quarter of physical memory)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    p = sub.add_parser("demo", help="train, export, map, simulate on Lava, verify and cost a digits model",
                       description="End to end on the embedded digits data: train an sLIF MLP (cached in "
                                   "OUT/model.pt), export NIR, lower, run Lava fixed_pt and the reference, verify, "
                                   "count SOPs. Example: st2chip demo --out runs/demo",
                       epilog=EPILOG_EXIT)
    p.add_argument("--out", default=defaults.DEMO_OUT, help=f"output folder (default {defaults.DEMO_OUT})")
    p.add_argument("--samples", type=int, default=defaults.DEMO_SAMPLES,
                   help=f"test samples run through float, reference and Lava (default {defaults.DEMO_SAMPLES}; "
                        f"the split has 360)")
    p.add_argument("--decay-groups", type=int, default=defaults.DEFAULT_DECAY_GROUPS, metavar="K",
                   help=f"decay groups per layer (default {defaults.DEFAULT_DECAY_GROUPS})")
    p.add_argument("--epochs", type=int, default=defaults.DEMO_EPOCHS,
                   help=f"training epochs (default {defaults.DEMO_EPOCHS})")
    p.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    p.add_argument("--retrain", action="store_true", help="train again even if OUT/model.pt exists")

    p = sub.add_parser("export", help="checkpoint (.pt) -> NIR file (MLP, CNN, RNN) or deployment bundle folder (ST)",
                       description="Export an st2chip checkpoint: an MLP, CNN or RNN to one NIR 1.0 file, a spiking "
                                   "Transformer to a bundle folder (NIR parts, ONNX parts checked with "
                                   "onnxruntime, manifest.json; see docs/bundle.md). "
                                   "Example: st2chip export runs/demo/model.pt -o model.nir; "
                                   "st2chip export runs/st/model.pt -o runs/st/bundle",
                       epilog=EPILOG_EXIT)
    p.add_argument("checkpoint", help="checkpoint written by st2chip (loaded with weights_only=True)")
    p.add_argument("-o", "--output", required=True,
                   help="NIR file (MLP, CNN, RNN) or bundle folder (ST; replaced atomically) to write")
    p.add_argument("--dt", type=float, default=defaults.EXPORT_DT,
                   help=f"time step in seconds recorded in the graph (default {defaults.EXPORT_DT:g})")

    p = sub.add_parser("map", help="lower a NIR file to the chip, place it on cores and print the per-layer table",
                       description="Normalize, validate and lower a NIR graph; place its populations on neurocores "
                                   "and chips against a resource model (default loihi2: 128 neurocores per chip; "
                                   "per-core neurons, synapse memory and fan-in/fan-out axon limits); print the "
                                   "ChipGraph per layer with the cores each layer takes and what bound them. A "
                                   "network that does not fit is exit 2 naming every offending layer, the resource "
                                   "and both numbers. Loihi 2's per-core figures are not public: the resource file "
                                   "(st2chip/chip/resources/loihi2.json) marks them uncertain and cites a source "
                                   "for each figure; copy it, edit a figure and pass --resources FILE.json. "
                                   "A mapping does not depend on run length. With --target xylo-audio2, "
                                   "xylo-audio3 or xylo-imu: Xylo's design rules (every broken one in one error, "
                                   "exit 2), then per layer its slice of the hidden population, depth, leak "
                                   "shifts, errors and weight shift, and the chip's inputs, hidden and output "
                                   "neurons used (--json writes them). "
                                   "Example: st2chip map model.nir --decay-groups 2 --cores",
                       epilog=EPILOG_EXIT)
    _add_graph_args(p)
    p.add_argument("--json", help="also write the table (and the placement, per core) as JSON here")
    p.add_argument("--report", metavar="DIR",
                   help="also write report.md, report.json and report.png here: per layer kind, synapses, "
                        "non-zeros, bits, errors, cores, estimated operations; host partitions, boundary "
                        "traffic, per-core use")
    p.add_argument("--resources", default=defaults.RESOURCES, metavar="NAME|FILE",
                   help="resource model: loihi2 (default), loihi1, a JSON file in the same format, or none "
                        "(lower only, no placement)")
    p.add_argument("--max-chips", default="1", metavar="N",
                   help="chips the network may use (default 1; 'any' for no limit)")
    p.add_argument("--cores", action="store_true",
                   help="also print the per-core view: chip, core, population slices, neurons, synapses, synapse "
                        "memory (KiB, %% of a core), fan-in and fan-out axons")
    p.add_argument("--no-pack", action="store_true",
                   help="give every population cores of its own (default: small populations share a core)")

    p = sub.add_parser("simulate", help="run a NIR file on one backend and report accuracy",
                       description="Run input spikes (--inputs, or digits test samples) through one backend; "
                                   "accuracy when labels are known. Example: st2chip simulate f.nir "
                                   "--inputs x.npy --dt 1e-4 --backend lava -o traces.npz",
                       epilog=EPILOG_EXIT)
    _add_run_args(p)
    p.add_argument("--backend", default="reference", choices=["float", "reference", "engine", "lava", "xylosim"],
                   help="float NIR simulation, the fixed-point engine (reference, alias engine) or the chip's "
                        "oracle: Lava fixed_pt (--target loihi2) or xylosim (a Xylo target) (default reference)")
    p.add_argument("-o", "--output", help="write the traces (.npz) here")

    p = sub.add_parser("verify", help="float vs fixed-point engine vs Lava, with pass/fail checks",
                       description="Accuracy of each backend, per-layer spike agreement and the first "
                                   "diverging layer/step/neuron. Exit 0 when reference and Lava (a Xylo "
                                   "target: engine and xylosim, on named samples) agree "
                                   "exactly, the chip stays faithful to float (--max-drop, "
                                   "--min-agreement) and no output layer is silent or saturated on every "
                                   "sample (--allow-silent), 1 otherwise, naming the failed check. "
                                   "Example: st2chip verify model.nir "
                                   "--inputs spikes.npz",
                       epilog=EPILOG_EXIT)
    _add_run_args(p)
    p.add_argument("--backends", default=None,
                   help=f"comma-separated backends to compare (default {','.join(defaults.VERIFY_BACKENDS)}; for a "
                        "Xylo target float,engine,xylosim); lava runs the first --lava-samples samples only, "
                        "xylosim the first --xylosim-samples")
    p.add_argument("--xylosim-samples", type=int, default=defaults.XYLOSIM_SAMPLES, metavar="N",
                   help=f"a Xylo target: samples cross-checked on SynSense's xylosim, spikes, membranes and "
                        f"currents at every step against the engine (default {defaults.XYLOSIM_SAMPLES})")
    p.add_argument("--lava-samples", type=int, default=defaults.LAVA_SAMPLES, metavar="N",
                   help=f"samples cross-checked on Lava, bit for bit against the engine (default "
                        f"{defaults.LAVA_SAMPLES})")
    p.add_argument("--lava-mode", choices=["layers", "whole"], default=defaults.LAVA_MODE,
                   help=f"how Lava checks the engine (default {defaults.LAVA_MODE}): layers: each population "
                        f"alone, fed the spikes the engine recorded for its inputs, at most "
                        f"{defaults.LAVA_PROCESSES} Lava processes per run whatever the model's size; whole: "
                        f"the whole network in one Lava run (one OS process of about 17 MiB per population "
                        f"and synapse group)")
    p.add_argument("--max-drop", type=float, default=defaults.MAX_DROP, metavar="POINTS",
                   help=f"fail when the chip's accuracy is more than this many points below float (default "
                        f"{defaults.MAX_DROP:g})")
    p.add_argument("--min-agreement", type=float, default=defaults.MIN_AGREEMENT, metavar="PERCENT",
                   help="fail when float-vs-chip spike agreement of some layer, run on the chip's spikes into it "
                        f"(layer by layer), is below this (default {defaults.MIN_AGREEMENT:g}); end-to-end "
                        "agreement is reported beside it")
    p.add_argument("--allow-silent", action="store_true", default=defaults.ALLOW_SILENT,
                   help="pass even when an output layer never spikes or spikes at every step on every sample, "
                        "or a readout's scores are the same for every sample (default: that fails)")
    p.add_argument("--json", help="also write the report as JSON here")

    p = sub.add_parser("energy", help="synaptic operations and energy per layer from real spike traces",
                       description="Count SOPs (one accumulate per non-zero outgoing weight per spike) and "
                                   "energy from a profile. Example: st2chip energy model.nir --inputs x.npy "
                                   "--profile loihi2",
                       epilog=EPILOG_EXIT)
    _add_run_args(p)
    p.add_argument("--backend", default="reference", choices=["reference", "engine", "lava"],
                   help="where the spike traces come from (default reference: the engine, bit-exact with "
                        "Lava, faster)")
    p.add_argument("--profile", default=None,
                   help=f"energy profile: 45nm (default for --target loihi2), loihi (Loihi 1, Davies 2018), loihi2 "
                        f"(estimates), a Xylo chip's (xylo-audio2, xylo-audio3: the default for that target), or "
                        f"a JSON file")
    p.add_argument("--resources", default=None, metavar="MODEL",
                   help="chip resource model the network is placed on for per-core counts and routing: loihi1, "
                        "loihi2 or a JSON file (default: the profile's, loihi2 for 45nm)")
    p.add_argument("-o", "--output", default=None,
                   help="folder for energy.json, energy.md, energy.png (per layer) and energy_cores.png")

    p = sub.add_parser("import", help="a framework's .nir file -> canonical .nir that every command takes",
                       description="Read a graph as norse, snnTorch, SpikingJelly, sinabs, Rockpool or plain NIR "
                                   "wrote it, absorb that framework's quirks (0-d tensors, norse's tau, the dt the "
                                   "export assumed, the reset convention) and write a canonical NIR file with dt (and "
                                   "steps) in its metadata. Prints one line per change. "
                                   "Example: st2chip import sj.nir --from spikingjelly -o model.nir",
                       epilog=EPILOG_EXIT)
    p.add_argument("file", help="the .nir file the framework wrote")
    p.add_argument("--from", dest="framework", required=True, choices=FRAMEWORKS,
                   help="which framework wrote it (nir: a plain NIR file, no quirks assumed)")
    p.add_argument("--dt", type=float, default=None,
                   help="time step in seconds (default: the file's metadata, else what the framework's export "
                        "assumes: " + ", ".join(f"{k} {v:g}" for k, v in EXPORT_DT.items() if k != "nir")
                        + "; nir has none: a plain file with time constants and no dt is refused)")
    p.add_argument("--steps", type=int, default=None, help="time steps per sample, recorded in the metadata")
    p.add_argument("--tau-quirk", action=argparse.BooleanOptionalAction, default=None,
                   help="norse only: the file's time constants are norse 1.1's dt/tau_inv (norse issue #411) "
                        "and are divided by dt (--no-tau-quirk: they are seconds; default: decided per neuron, "
                        "a constant below dt being the quirk)")
    p.add_argument("-o", "--output", required=True, help="canonical .nir file to write (replaced atomically)")

    register_train(sub)
    _register_export_netx(sub)
    register_compare(sub)
    return parser


def _register_export_netx(sub) -> None:
    p = sub.add_parser("export-netx", help="lower a NIR file and write what lava-dl's netx can express as netx HDF5",
                       description="Normalize and lower a NIR graph, then write its feed-forward chain (one "
                                   "population per layer: dense, sparse as dense matrices, recurrent dense) as a "
                                   "lava-dl netx HDF5 file that netx.hdf5.Network loads. Layers netx cannot "
                                   "express (several decay groups, reset by subtraction, skip connections, "
                                   "feedback to an earlier layer, graph-level delays, weights or biases netx "
                                   "cannot hold exactly) are listed with the reason, not dropped silently. "
                                   "Exit 0 when a chain was written (a partial one lists the rest), 2 when not "
                                   "even the first layer can be expressed. "
                                   "Example: st2chip export-netx model.nir -o model.h5",
                       epilog=EPILOG_EXIT)
    p.add_argument("model", help="NIR file (.nir), as written by st2chip export or st2chip import")
    p.add_argument("-o", "--output", required=True, help="netx HDF5 file to write (replaced atomically)")
    p.add_argument("--decay-groups", type=int, default=1, metavar="K",
                   help="distinct voltage decays per layer when lowering (default 1: netx holds one per layer)")
    _add_headroom(p)
    p.add_argument("--dt", type=float, default=None,
                   help="time step in seconds (default: the graph's metadata; a graph with time constants and none "
                        "is refused)")
    p.add_argument("--approximate", action="store_true",
                   help="round weights and biases netx cannot hold exactly (its bias exponent is fixed at 6; "
                        "it adds weights per synapse where the chip shifts the sum) and report the largest "
                        "error, instead of stopping the export at that layer")
    p.add_argument("--json", help="also write the export record (layers, what was not exported and why) as JSON")
    p.set_defaults(func=_cmd_export_netx)


def _cmd_export_netx(args: argparse.Namespace) -> int:
    from st2chip.io import write_json
    from st2chip.targets.netx import export_netx
    _check_outputs(args, [args.model], files=("output", "json"))
    _, _, chip = _pipeline(args, resources=None)  # no fan-in trees: netx has no relays; Lava's compiler places
    export = export_netx(chip, args.output, approximate=args.approximate)
    _print(export.describe())
    if args.json:
        write_json(args.json, export.to_dict())
    return 0


def _pipeline(args: argparse.Namespace, resources=defaults.RESOURCES):
    """Read, normalize and lower ``args.model`` as the API does, each stage timed with ``--verbose``."""
    import st2chip
    from st2chip.pipeline import Log
    log = Log(args.verbose)
    graph = log.stage("read+normalize", st2chip.load, args.model, dt=args.dt)
    # export-netx has no --lowrank or --precision: netx has one group per layer and cannot express a graded relay
    try:
        chip = log.stage("lower", st2chip.lower, graph, target=getattr(args, "target", defaults.TARGET),
                         decay_groups=args.decay_groups,
                         lowrank=getattr(args, "lowrank", "product"), headroom=args.headroom,
                         precision=getattr(args, "precision", "8"), resources=resources)
    except GraphError as err:  # name the file as well as the node and field
        raise err.at(args.model) from None
    return log, graph, chip


def _check_outputs(args: argparse.Namespace, inputs: list[str | None], files: tuple[str, ...] = (),
                   folders: tuple[str, ...] = ()) -> None:
    """Refuse, before anything runs, an output flag naming a device, FIFO, socket (or a link to one), a folder
    where a file goes (or the reverse), or the same file as one of ``inputs`` (exit 2)."""
    from st2chip.io import check_output
    for names, folder in ((files, False), (folders, True)):
        for name in names:
            if getattr(args, name) is not None:
                check_output(getattr(args, name), inputs, folder=folder, flag=f"--{name}")


def _run_inputs(args: argparse.Namespace, graph):
    import st2chip
    inputs = st2chip.inputs_for(graph, args.inputs, samples=args.samples, steps=args.steps)
    print(f"inputs: {inputs.describe()}")
    return inputs


def _engine_args(args: argparse.Namespace) -> dict:
    """How a chip backend runs: device, batch size, Ray, the Lava target and progress bars (on stderr)."""
    if args.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise InputError("--device cuda: no CUDA device is available here")
    from st2chip import progress
    return {"device": args.device, "batch_size": args.batch_size, "progress": progress.shown(), "ray": args.ray,
            "lava_target": args.lava_target}


def _print(text: str) -> None:
    """Print a report; names that came from files are escaped line by line (no control characters)."""
    print("\n".join(printable(line) for line in text.split("\n")))


def write_folder(folder: str, write: Callable[[Path], Iterable[Path]]) -> None:
    """``write(tmp)`` into a temporary folder renamed to ``folder`` (atomically), then the files' names printed."""
    from st2chip.io import atomic_folder
    with atomic_folder(folder) as tmp:
        names = [p.name for p in write(tmp)]
    print("written: " + ", ".join(str(Path(folder) / name) for name in names))


def _check_target(args: argparse.Namespace, runs_lava: bool) -> None:
    """``--lava-target loihi2-hw``: refuse at once (exit 2) where it cannot run, before any model is read."""
    if args.lava_target != "loihi2-hw":
        return
    if not runs_lava:
        raise InputError("--lava-target loihi2-hw runs the lava backend on a Loihi 2 chip: choose the lava "
                         "backend (--backend lava, or lava in --backends with --lava-samples above 0)")
    from st2chip.pipeline import loihi2_hw_run_cfg
    loihi2_hw_run_cfg()


def _target(args: argparse.Namespace):
    """The chip ``--target`` names (:data:`st2chip.families.TARGETS`), checked before any file is read."""
    from st2chip.families import get_target
    return get_target(args.target)


def _check_backend(target, backend: str, flag: str = "--backend") -> None:
    """An oracle backend of another chip family (lava on Xylo, xylosim on Loihi) is exit 2."""
    oracle = {"lava": "loihi", "xylosim": "xylo"}
    if oracle.get(backend, target.family) != target.family:
        raise InputError(f"{flag} {backend} does not run --target {target.name}: its oracle is {target.oracle}")


def loihi_only(args: argparse.Namespace, flags: dict[str, object]) -> None:
    """Refuse (exit 2) a Loihi flag given with a Xylo target: ``flags`` maps each to its default."""
    for flag, default in flags.items():
        if getattr(args, flag.lstrip("-").replace("-", "_")) != default:
            raise InputError(f"{flag} applies to --target loihi2, not to --target {args.target}")


def _xylo_runs(args: argparse.Namespace, flags: dict[str, object]) -> None:
    """A Xylo target runs on its engine and xylosim: Lava's and Ray's flags (and ``flags``) are refused."""
    if _target(args).family == "xylo":
        loihi_only(args, {"--lava-target": defaults.LAVA_TARGET, "--ray": None, **flags})


def _max_chips(text: str) -> int | None:
    if text.strip().lower() == "any":
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise InputError(f"--max-chips must be a whole number of at least 1 or 'any', got {text!r}")
    return value


def _cmd_map(args: argparse.Namespace) -> int:
    import st2chip
    from st2chip.chip.placement import PlacementError, load_resources
    from st2chip.chip.table import format_cores, format_table, layer_rows
    from st2chip.io import atomic_folder, write_json
    _check_outputs(args, [args.model, args.resources], files=("json",), folders=("report",))
    if _target(args).family == "xylo":
        return _map_xylo(args)
    max_chips = _max_chips(args.max_chips)
    resources = None if args.resources == "none" else load_resources(args.resources)
    log, _, chip = _pipeline(args, resources)
    placement = None
    if resources is not None:
        try:
            placement = log.stage("place", st2chip.place, chip, resources, max_chips=max_chips,
                                  pack=not args.no_pack)
        except PlacementError:
            print(format_table(chip))  # what was lowered, before the one-line error on stderr
            raise
    print(format_table(chip, placement))
    if args.cores and placement is not None:
        print()
        print(format_cores(placement))
    if args.json:
        data = {"layers": layer_rows(chip, placement), "report": chip.report}
        if placement is not None:
            data["placement"] = placement.to_dict()
        write_json(args.json, data)
    if args.report:
        from st2chip.chip.report import write_report
        with atomic_folder(args.report) as tmp:
            written = write_report(chip, placement, tmp)
        print("report written: " + ", ".join(str(Path(args.report) / p.name) for p in written))
    return 0


def _map_xylo(args: argparse.Namespace) -> int:
    """``map --target xylo-…``: the design rules (every broken one in one error), then the per-layer table."""
    from st2chip.io import write_json
    from st2chip.xylo.spec import load_spec
    from st2chip.xylo.table import chip_use, format_table, layer_rows
    loihi_only(args, {"--report": None, "--cores": False, "--no-pack": False, "--max-chips": "1"})
    _, _, chip = _pipeline(args, args.resources)
    spec = load_spec(args.target)
    _print(format_table(chip, spec))
    if args.json:
        write_json(args.json, {"target": args.target, "layers": layer_rows(chip), "use": chip_use(chip, spec),
                               "report": chip.report})
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    import st2chip
    from st2chip.io import write_npz
    _check_outputs(args, [args.model, args.inputs], files=("output",))
    _check_backend(_target(args), args.backend)
    _xylo_runs(args, {})
    _check_target(args, args.backend == "lava")
    log, graph, chip = _pipeline(args)
    inputs = _run_inputs(args, graph)
    if args.backend == "float":
        traces = log.stage("simulate", st2chip.simulate, graph, inputs)
    else:
        traces = log.stage("simulate", st2chip.run, chip, inputs, backend=args.backend,
                           voltages=args.output is not None, **_engine_args(args))
    if inputs.labels is not None:
        print(f"{args.backend}: accuracy {traces.accuracy(inputs.labels):.4f} on {inputs.samples} samples")
    else:
        counts = ", ".join(f"{layer} {int(s.sum())}" for layer, s in traces.spikes.items())
        _print(f"{args.backend}: no labels, accuracy skipped; spikes per layer: {counts}")
    if args.output:
        arrays = {f"spikes/{k}": v for k, v in traces.spikes.items()}
        arrays |= {f"voltages/{k}": v for k, v in traces.voltages.items()}
        arrays |= {f"inputs/{k}": v for k, v in traces.inputs.items()}
        if inputs.labels is not None:
            arrays["labels"] = inputs.labels
        write_npz(args.output, {"scores": traces.scores, **arrays})
        print(f"traces written to {args.output}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    import st2chip
    from st2chip.io import write_json
    _check_outputs(args, [args.model, args.inputs], files=("json",))
    target = _target(args)
    backends = None if args.backends is None else tuple(args.backends.split(","))
    for backend in backends or ():
        _check_backend(target, backend.strip(), "--backends")
    _xylo_runs(args, {"--lava-samples": defaults.LAVA_SAMPLES, "--lava-mode": defaults.LAVA_MODE})
    _check_target(args, "lava" in (defaults.VERIFY_BACKENDS if backends is None else backends)
                  and args.lava_samples > 0)
    log, graph, chip = _pipeline(args)
    inputs = _run_inputs(args, graph)
    report = st2chip.verify(graph, inputs, chip=chip, target=args.target, backends=backends,
                            lava_samples=args.lava_samples, lava_mode=args.lava_mode, max_drop=args.max_drop,
                            min_agreement=args.min_agreement, stage=log.stage, allow_silent=args.allow_silent,
                            xylosim_samples=args.xylosim_samples, **_engine_args(args))
    _print(report.to_text())
    if args.json:
        write_json(args.json, report.to_dict())
    failed = [c.name for c in report.checks if not c.passed]
    if failed:
        print(f"st2chip: verification failed: {'; '.join(failed)}", file=sys.stderr)
    return 0 if report.passed else 1


def _cmd_energy(args: argparse.Namespace) -> int:
    import st2chip
    from st2chip.analysis.energy import load_profile, write_energy_report
    from st2chip.chip.placement import load_resources
    _check_outputs(args, [args.model, args.inputs, args.profile, args.resources], folders=("output",))
    target = _target(args)
    _check_backend(target, args.backend)
    if target.family == "xylo":
        return _energy_xylo(args, target)
    profile = load_profile(args.profile or target.profile)
    resources = load_resources(args.resources or profile.resources)
    _check_target(args, args.backend == "lava")
    log, graph, chip = _pipeline(args, resources)
    placement = log.stage("place", st2chip.place, chip, resources, max_chips=None)
    inputs = _run_inputs(args, graph)
    report = log.stage("energy", st2chip.energy, chip, inputs, profile=args.profile or target.profile,
                       placement=placement, backend=args.backend, **_engine_args(args))
    _print(report.to_markdown())
    if args.output:
        write_folder(args.output, lambda tmp: write_energy_report(report, tmp).values())
    return 0


def _energy_xylo(args: argparse.Namespace, target) -> int:
    """``energy --target xylo-…``: the engine's run counted per layer and priced by the chip's profile."""
    import st2chip
    from st2chip.io import write_json, write_text
    from st2chip.analysis.xylo_energy import load_xylo_profile
    _xylo_runs(args, {})
    profile = load_xylo_profile(args.profile or target.profile)  # before anything runs
    log, graph, chip = _pipeline(args, args.resources or defaults.RESOURCES)
    inputs = _run_inputs(args, graph)
    report = log.stage("energy", st2chip.energy, chip, inputs, profile=profile,
                       dt=float(graph.metadata["dt"]), device=args.device, batch_size=args.batch_size)
    _print(report.to_markdown())
    if args.output:
        write_folder(args.output, lambda tmp: [write_json(tmp / "energy.json", report.to_dict()),
                                               write_text(tmp / "energy.md", report.to_markdown())])
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    import st2chip
    from st2chip.graph.nirfile import write_nir
    _check_outputs(args, [args.file], files=("output",))
    converted = st2chip.import_model(args.file, args.framework, dt=args.dt, steps=args.steps,
                                     tau_quirk=args.tau_quirk)
    _print(f"importing {args.file} (from {args.framework}):")
    for line in converted.notes:
        _print(f"  {line}")
    path = write_nir(converted.graph, args.output)
    print(f"canonical NIR written to {path}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    import st2chip
    path = st2chip.export(args.checkpoint, args.output, dt=args.dt)
    what = ("deployment bundle (manifest.json, NIR and ONNX parts)" if path.is_dir() else "NIR graph")
    print(f"{what} written to {path}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from st2chip.cli.demo import run_demo
    _check_outputs(args, [], folders=("out",))
    return run_demo(out=Path(args.out), samples=args.samples, decay_groups=args.decay_groups,
                    epochs=args.epochs, seed=args.seed, retrain=args.retrain)


COMMANDS = {"demo": _cmd_demo, "export": _cmd_export, "import": _cmd_import, "map": _cmd_map,
            "simulate": _cmd_simulate, "verify": _cmd_verify, "energy": _cmd_energy}


def _positive_seconds(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise InputError(f"{what}: expected a positive number of seconds, got {text!r}")
    return value


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Print a warning as one ``st2chip: warning: ...`` line on stderr."""
    text = " ".join(str(message).split())
    if not issubclass(category, St2chipWarning):
        text = f"{category.__name__}: {text}"
    print(f"st2chip: warning: {printable(text)}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``st2chip`` console script.

    SIGTERM is handled like Ctrl-C (as ``KeyboardInterrupt(SIGTERM)``), so that
    whatever is running (Lava's processes above all) is stopped on the way out;
    the exit code is then 143 instead of 130.
    """
    import signal

    args = _parser().parse_args(argv)
    handler = COMMANDS.get(args.command) or getattr(args, "func")

    def on_sigterm(signum, frame):
        raise KeyboardInterrupt(signal.SIGTERM)

    try:
        previous = signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:  # not the main thread: signals stay as they are
        previous = None
    try:
        with warnings.catch_warnings(), _children_keep_cwd_off_path():
            warnings.showwarning = _one_line_warning
            return _run(handler, args)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


SAFE_PATH_ENV = "PYTHONSAFEPATH"


@contextlib.contextmanager
def _children_keep_cwd_off_path():
    """Every Python interpreter the command starts, directly or not (multiprocessing's resource tracker runs
    ``python -c``, Ray starts workers), keeps the working directory off its import path (Python 3.11's ``-P``):
    otherwise a folder holding a ``st2chip/`` or ``multiprocessing/`` package would run its code."""
    previous = os.environ.get(SAFE_PATH_ENV)
    os.environ[SAFE_PATH_ENV] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(SAFE_PATH_ENV, None)
        else:
            os.environ[SAFE_PATH_ENV] = previous


def _error(text: str) -> None:
    """The one ``st2chip: error:`` line, with what came from files (names, paths) escaped."""
    print(f"st2chip: error: {printable(text)}", file=sys.stderr)


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so that Python's final flush of what is still buffered cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout is not a file descriptor (captured in-process)
        pass


def _run(handler, args: argparse.Namespace) -> int:
    import signal

    from st2chip import limits, progress
    from st2chip.graph import nirfile

    progress.force(args.progress)
    try:  # a command reads files in a child first (bounded wait on a damaged file) and with its memory budget
        nirfile.set_read_timeout(_positive_seconds(os.environ.get(nirfile.READ_TIMEOUT_ENV, "120"),
                                                   nirfile.READ_TIMEOUT_ENV))
        if args.memory_budget is not None:
            limits.set_memory_budget(args.memory_budget)
        code = handler(args)
        sys.stdout.flush()  # a closed pipe shows here, not in Python's flush at exit
        return code
    except St2chipError as err:
        _error(str(err))
        return err.exit_code
    except BrokenPipeError:  # `st2chip ... | head`: the reader has gone; end quietly, as Unix tools do
        _discard_stdout()
        return 0
    except OSError as err:
        where = f"{err.filename}: " if getattr(err, "filename", None) else ""
        _error(where + " ".join(str(err.strerror or err).split()))
        return 2
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM as main() raises it: 128 + the signal
        print("st2chip: interrupted", file=sys.stderr)
        return 128 + (signal.SIGTERM if err.args == (signal.SIGTERM,) else signal.SIGINT)
    finally:
        progress.force(False)
        nirfile.set_read_timeout(None)
        if args.memory_budget is not None:
            limits.set_memory_budget(None)


if __name__ == "__main__":
    sys.exit(main())
