"""``st2chip compare``: one model on several chips side by side (a thin layer over :func:`st2chip.compare`)."""

from __future__ import annotations

import argparse

from st2chip import defaults


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``compare`` subcommand; it sets ``func(args) -> exit code``."""
    from st2chip.cli.main import EPILOG_EXIT
    p = subparsers.add_parser(
        "compare", help="one model on several chips side by side: fits, accuracy, operations, energy, latency",
        description="Lower a NIR graph for each target and run the same inputs on st2chip's bit-exact engine of "
                    "each chip: per target whether it fits (if not, every broken design rule or placement limit, "
                    "one line each: a row, not an error), float vs chip accuracy, synaptic operations and energy "
                    "per inference (the target's energy profile; Loihi 2 and Xylo Audio 3 figures are estimates) "
                    "and latency in steps. Prints the Markdown table; --out also writes compare.md, "
                    "compare.json and compare.png. "
                    "Example: st2chip compare model.nir --targets loihi2,xylo-audio3 --out runs/compare",
        epilog=EPILOG_EXIT)
    p.add_argument("model", help="NIR file (.nir), as written by st2chip export or st2chip import")
    p.add_argument("--targets", default=",".join(defaults.COMPARE_TARGETS), metavar="T1,T2",
                   help=f"comma-separated targets (default {','.join(defaults.COMPARE_TARGETS)}; choose from "
                        "loihi2, xylo-audio2, xylo-audio3, xylo-imu)")
    p.add_argument("--inputs", metavar="FILE",
                   help="spikes to run: .npy (B, T, n) for one Input node, or .npz with one array per Input node "
                        "name and optional 'labels' (default: the graph's test split, digits or MNIST-1D)")
    p.add_argument("--samples", type=int, default=None, help="samples to run (default: all)")
    p.add_argument("--steps", type=int, default=None, help="time steps per sample (default: the inputs' T)")
    p.add_argument("--dt", type=float, default=None,
                   help="time step in seconds (default: the graph's metadata); Xylo's energy is its power over "
                        "the steps' duration")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None,
                   help="where the engines run (default: cuda when present, else cpu)")
    p.add_argument("--batch-size", type=int, default=defaults.BATCH_SIZE,
                   help=f"engine samples per batch (default {defaults.BATCH_SIZE})")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="folder for compare.md, compare.json and compare.png (replaced atomically)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Compare, print the table, write the report folder; 0 even when a target does not fit (its row says why)."""
    import st2chip
    from st2chip.analysis.compare import write_compare_report
    from st2chip.cli.main import _check_outputs, _print, write_folder
    _check_outputs(args, [args.model, args.inputs], folders=("out",))
    graph = st2chip.load(args.model, dt=args.dt)
    report = st2chip.compare(graph, args.inputs, targets=args.targets.split(","), samples=args.samples,
                             steps=args.steps, device=args.device, batch_size=args.batch_size)
    _print(report.to_markdown())
    if args.out:
        write_folder(args.out, lambda tmp: write_compare_report(report, tmp).values())
    return 0
