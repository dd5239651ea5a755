"""``st2chip train``, ``prune`` and ``quantize``: train a spiking classifier, prune it, fine-tune it with the
chip in the loop, write checkpoints.

Checkpoints are written and read by :mod:`st2chip.checkpoint` (``kind`` is ``"mlp"``,
``"cnn"``, ``"rnn"`` or ``"st"``; ``config`` rebuilds the model, including low-rank ranks
after DSP; the run's summary, with the measured training time, is stored as ``extra``).
The seed fixes the initial weights as well as the data order.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import asdict

import torch
from torch import nn

from st2chip.defaults import DEFAULT_DECAY_GROUPS, HEADROOM, QUANTIZE_EPOCHS, QUANTIZE_HOLDOUT, QUANTIZE_LR, TARGET
from st2chip.learn import compensation, pruning
from st2chip.learn.cnn import CNNConfig
from st2chip.learn.data import (DATASETS, DIGITS_SIDE, MNIST1D_CLASSES, MNIST1D_LEVELS, MNIST1D_STEPS, ROWS_HOLD,
                                ROWS_LEVELS, load_split)
from st2chip.learn.kinds import KINDS
from st2chip.learn.checkpoint import (MAX_DECAY_GROUPS, check_config, load_checkpoint, model_classes,
                                      save_checkpoint)
from st2chip.errors import InputError
from st2chip.learn.mlp import MLPConfig
from st2chip.learn.neurons import MAX_SPIKES
from st2chip.learn.rnn import READOUTS, RNNConfig
from st2chip.analysis.model_sops import count_sops
from st2chip.learn.training import default_device, evaluate, seed_everything, train_classifier
from st2chip.learn.transformer import STConfig

MODELS = KINDS
# (epochs, Adam learning rate) when --epochs / --lr are not given, per model and data set
DEFAULTS = {("mlp", "digits"): (30, 5e-3), ("mlp", "mnist1d"): (30, 5e-3), ("cnn", "digits"): (30, 5e-3),
            ("rnn", "digits"): (40, 1e-2), ("rnn", "mnist1d"): (120, 1e-2), ("st", "digits"): (30, 5e-3),
            ("st", "cifar10"): (30, 5e-3), ("st", "digits32"): (3, 5e-3)}
IMAGES32 = ("cifar10", "digits32")  # data sets of 32x32x3 images: the ST's CIFAR-size presets
ST_PRESETS = {"cifar10": STConfig.cifar10, "spikformer-4-384": STConfig.spikformer_4_384}


def _reset(args: argparse.Namespace) -> dict:
    reset = getattr(args, "reset", None)
    return {} if reset is None else {"reset": reset}


def _max_spikes(args: argparse.Namespace) -> dict:
    """``--max-spikes K`` as a config field (none when not given: the config's default, one spike per step)."""
    k = args.max_spikes
    if k is None:
        return {}
    if not 1 <= k <= MAX_SPIKES:
        raise InputError(f"--max-spikes must be from 1 to {MAX_SPIKES}, got {k}")
    if k > 1 and args.model not in ("mlp", "rnn"):
        raise InputError(f"--max-spikes {k} applies to --model mlp and rnn, not to --model {args.model}")
    if k > 1 and args.reset != "subtract":
        raise InputError(f"--max-spikes {k} needs --reset subtract (a reset to zero leaves nothing for a second "
                         f"spike in the same step)")
    return {"max_spikes": k}


def _config(args: argparse.Namespace):
    """The config of the model the flags ask for (the model is built once its size is checked)."""
    neuron = args.neuron
    spikes = _max_spikes(args)
    if args.model in ("mlp", "cnn", "st") and (args.levels is not None or args.readout is not None):
        raise InputError("--levels and --readout are options of --model rnn")
    if args.model != "cnn" and args.channels is not None:
        raise InputError("--channels is an option of --model cnn")
    if args.model == "st" and args.reset not in (None, "zero"):
        raise InputError("--reset subtract applies to --model mlp, cnn and rnn (the ST's export resets to zero)")
    if args.data == "mnist1d":
        if args.model not in ("mlp", "rnn"):
            raise InputError("--data mnist1d is a sequence data set (40 values fed over 40 time steps); "
                             "train it with --model mlp or --model rnn (the CNN and the ST take images)")
        if args.steps not in (None, MNIST1D_STEPS):
            raise InputError(f"--data mnist1d feeds one value per step: its T is {MNIST1D_STEPS}, "
                             f"not --steps {args.steps}")
        if args.model == "rnn":
            return RNNConfig.mnist1d(hidden=args.hidden, neuron=neuron, levels=_or(args.levels, MNIST1D_LEVELS),
                                     **_rnn_options(args))
        return MLPConfig(sizes=[MNIST1D_LEVELS, args.hidden, MNIST1D_CLASSES], steps=MNIST1D_STEPS, neuron=neuron,
                         encoding="sequence", **_reset(args), **spikes)
    if args.model in ("mlp", "cnn", "rnn") and args.data != "digits":
        raise InputError(f"--model {args.model} takes the 8x8 digits (or, for mlp and rnn, the mnist1d sequences); "
                         f"use --model st for {args.data}")
    if args.preset is not None and (args.model != "st" or args.data not in IMAGES32):
        raise InputError(f"--preset {args.preset} is a 32x32x3 spiking Transformer: use it with --model st and "
                         f"--data {' or '.join(IMAGES32)}")
    if args.model == "mlp":
        return MLPConfig(sizes=[64, args.hidden, 10], steps=_or(args.steps, 16), neuron=neuron, **_reset(args),
                         **spikes)
    if args.model == "cnn":
        channels = {} if args.channels is None else {"channels": list(args.channels)}
        return CNNConfig(steps=_or(args.steps, 16), neuron=neuron, **channels, **_reset(args))
    if args.model == "rnn":
        steps = _or(args.steps, DIGITS_SIDE * ROWS_HOLD)
        if steps % DIGITS_SIDE:
            raise InputError(f"--model rnn reads the digits row by row, each of the {DIGITS_SIDE} rows held for "
                             f"the same number of steps: --steps must be a multiple of {DIGITS_SIDE}, not {steps}")
        return RNNConfig.digits(hidden=args.hidden, neuron=neuron, levels=_or(args.levels, ROWS_LEVELS),
                                hold=steps // DIGITS_SIDE, **_rnn_options(args))
    overrides = {k: v for k, v in (("dim", args.dim), ("depth", args.depth), ("heads", args.heads),
                                   ("steps", args.steps), ("mlp_hidden", args.mlp_hidden)) if v is not None}
    if args.data in IMAGES32:
        preset = ST_PRESETS[args.preset or "cifar10"]
    else:
        preset = STConfig.tiny_digits
    return preset(neuron=neuron, **overrides)


def _or(value: int | None, default: int) -> int:
    """A flag's value, or ``default`` when it is not given (0 is a value: the size checks refuse it)."""
    return default if value is None else value


def _rnn_options(args: argparse.Namespace) -> dict:
    options = {**_reset(args), **_max_spikes(args)}
    if args.readout is not None:
        options["readout"] = args.readout
    return options


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _device(value: str | None) -> torch.device:
    """``--device``: ``cpu``, or ``cuda`` / ``cuda:N`` where such a GPU is present (default: cuda if present)."""
    if value is None:
        return default_device()
    kind, colon, index = value.partition(":")
    if kind == "cpu" and not colon:
        return torch.device("cpu")
    if kind != "cuda" or (colon and not index.isdigit()):
        raise InputError(f"--device must be cpu or cuda (or cuda:N), got {value!r:.80}")
    if not torch.cuda.is_available():
        raise InputError(f"--device {value}: no CUDA GPU is available on this machine; use --device cpu")
    if colon and int(index) >= torch.cuda.device_count():
        raise InputError(f"--device {value}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                         f"numbered from 0")
    return torch.device(value)


def _at_least(args: argparse.Namespace, low: int, *names: str) -> None:
    """Each of the size flags ``names`` that is given is at least ``low`` (a list flag: each of its values)."""
    for name in names:
        value = getattr(args, name, None)
        for v in value if isinstance(value, list) else [value]:
            if v is not None and v < low:
                raise InputError(f"--{name.replace('_', '-')} must be at least {low}, got {v}")


def _rate(args: argparse.Namespace, name: str, high: float = math.inf, *, zero: bool = False) -> None:
    """A real flag (a learning rate, a penalty, a threshold), when given, is finite, above 0 (or at least 0 with
    ``zero``) and at most ``high``."""
    value = getattr(args, name)
    if value is None or (math.isfinite(value) and (value >= 0 if zero else value > 0) and value <= high):
        return
    bounds = ("at least 0" if zero else "above 0") + (f" and at most {high:g}" if high < math.inf else "")
    raise InputError(f"--{name.replace('_', '-')} must be a finite number {bounds}, got {value}")


def _common_flags(args: argparse.Namespace) -> torch.device:
    """The flags every command here takes (:func:`_common`) checked; returns the ``--device``."""
    _at_least(args, 1, "epochs")
    _rate(args, "lr")
    if not 0 <= args.seed < 2**32:
        raise InputError(f"--seed must be from 0 to 2**32 - 1 (numpy's seeds), got {args.seed}")
    return _device(args.device)


# the size flags that shape each model (each at least 1), named in a refusal by the memory budget
MODEL_FLAGS = {"mlp": ("hidden", "steps"), "cnn": ("channels", "steps"), "rnn": ("hidden", "levels", "steps"),
               "st": ("dim", "depth", "heads", "mlp_hidden", "steps")}


def _model(args: argparse.Namespace) -> nn.Module:
    """The model the flags ask for, its size checked against the memory budget before it is allocated."""
    try:
        config = _config(args)
    except ValueError as err:  # a config the model refuses (a leak outside (0, 1), heads not dividing dim, ...)
        raise InputError(f"cannot build --model {args.model}: {err}") from None
    given = [f"--{n.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
             for n in MODEL_FLAGS[args.model] if (v := getattr(args, n)) is not None]
    check_config(args.model, config.to_dict(), " ".join(["train --model", args.model, *given]))
    try:
        return model_classes(args.model)[1](config)
    except ValueError as err:
        raise InputError(f"cannot build --model {args.model}: {err}") from None


def run_train(args: argparse.Namespace) -> int:
    """Train a model on digits (or MNIST-1D, or CIFAR-10) and write its checkpoint."""
    _at_least(args, 1, *dict.fromkeys(n for flags in MODEL_FLAGS.values() for n in flags))
    device = _common_flags(args)
    epochs, lr = DEFAULTS.get((args.model, args.data), (30, 5e-3))
    epochs = epochs if args.epochs is None else args.epochs
    lr = lr if args.lr is None else args.lr
    seed_everything(args.seed)  # the initial weights come from the seed too
    model = _model(args)
    train, test = load_split(args.data, args.data_root)
    start = time.perf_counter()
    result = train_classifier(model, train, test, epochs=epochs, lr=lr, seed=args.seed,
                              device=device, desc=f"train {args.model}")
    seconds = time.perf_counter() - start
    summary = {"test_accuracy": result.test_accuracy, "train_accuracy": result.train_accuracy,
               "epochs": epochs, "lr": lr, "seed": args.seed, "device": result.device, "data": args.data,
               "seconds": round(seconds, 1)}
    save_checkpoint(model, args.model, asdict(model.config), args.out, summary)
    print(f"trained {args.model} ({args.neuron}, {_n_params(model):,} parameters) on {args.data} for {epochs} "
          f"epochs on {result.device} in {seconds:.0f} s: test accuracy {100 * result.test_accuracy:.1f}% "
          f"(train {100 * result.train_accuracy:.1f}%) -> {args.out}")
    return 0


def run_prune(args: argparse.Namespace) -> int:
    """Prune a trained checkpoint by L1P or DSP, fine-tune (sLIF or LIF arm), write a new checkpoint."""
    _at_least(args, 1, "rank")
    _at_least(args, 0, "penalty_epochs")
    _rate(args, "intrinsic_lr")
    _rate(args, "penalty", zero=True)
    _rate(args, "threshold", 1.0, zero=True)
    device = _common_flags(args)
    kind, model, extra = load_checkpoint(args.checkpoint)
    data = extra.get("data", "digits")
    train, test = load_split(data, args.data_root)
    model.to(device)
    before = evaluate(model, test, device=device)
    if args.method == "l1p":
        if args.sparsity is None:
            raise InputError("prune --method l1p needs --sparsity (a fraction in [0, 1))")
        if not 0.0 <= args.sparsity < 1.0:
            raise InputError(f"--sparsity must lie in [0, 1), got {args.sparsity}")
        if args.penalty_epochs:
            train_classifier(model, train, test, epochs=args.penalty_epochs, lr=args.lr, seed=args.seed,
                             device=device, penalty=pruning.l1_penalty(args.penalty), desc="L1 penalty")
        pruning.magnitude_prune(model, args.sparsity, args.scope)
    else:
        if kind != "st":
            raise InputError(f"{args.checkpoint}: DSP prunes ST block matrices; this checkpoint is kind {kind!r}")
        if args.rank is None and args.threshold is None:
            raise InputError("prune --method dsp needs --rank R and/or --threshold F")
        pruning.factorize(model)
        if args.penalty_epochs:
            train_classifier(model, train, test, epochs=args.penalty_epochs, lr=args.lr, seed=args.seed,
                             device=device, penalty=pruning.group_penalty(args.penalty), desc="group penalty")
        pruning.truncate(model, rank=args.rank, threshold=args.threshold or 0.0)
    pruned = evaluate(model, test, device=device)
    model, result = compensation.finetune(
        model, train, test, learn_intrinsic=args.compensate == "slif", epochs=args.epochs, lr=args.lr,
        intrinsic_lr=args.intrinsic_lr, seed=args.seed, device=device, desc=f"fine-tune ({args.compensate})")
    pruning.make_permanent(model)
    sops = count_sops(model, test, device=device)
    nonzero, total = pruning.nonzero_weights(model)
    summary = {"method": args.method, "compensate": args.compensate, "test_accuracy": result.test_accuracy,
               "accuracy_before": before, "accuracy_pruned": pruned, "sparsity": pruning.weight_sparsity(model),
               "nonzero_block_weights": nonzero, "block_weights": total, "ranks": dict(getattr(model.config, "ranks", {})),
               "sops_per_sample": sops.sops, "energy_pj_per_sample": sops.energy_pj(), "device": result.device,
               "data": data}
    save_checkpoint(model, kind, asdict(model.config), args.out, summary)
    what = (f"sparsity {100 * summary['sparsity']:.1f}% ({args.scope})" if args.method == "l1p"
            else f"ranks {sorted(set(summary['ranks'].values()))}")
    print(f"{args.method} {kind}: {what}, {nonzero:,}/{total:,} non-zero block weights; test accuracy "
          f"{100 * before:.1f}% -> {100 * pruned:.1f}% pruned -> {100 * result.test_accuracy:.1f}% after "
          f"{args.epochs} epochs {args.compensate} fine-tuning; {sops.sops:,.0f} SOPs and "
          f"{sops.energy_pj() / 1e3:,.1f} nJ per sample (45nm) -> {args.out}")
    return 0


def _is_graph(path: str) -> bool:
    """Whether ``quantize``'s model is a NIR graph (a ``.nir`` file or a bundle folder) rather than a checkpoint."""
    return os.path.isdir(path) or path.lower().endswith(".nir")


def _quantize_graph(args: argparse.Namespace, device: torch.device) -> int:
    """``st2chip quantize model.nir --inputs train.npz -o tuned.nir``: fine-tune a NIR graph from any framework."""
    if args.data_root is not None:
        raise InputError("--data-root applies to checkpoints; a NIR graph fine-tunes on --inputs")
    from st2chip.api import quantize_graph
    tuning = quantize_graph(args.checkpoint, args.inputs, output=args.out, decay_groups=args.decay_groups,
                            headroom=HEADROOM if args.headroom is None else args.headroom, epochs=args.epochs,
                            lr=args.lr, holdout=QUANTIZE_HOLDOUT if args.holdout is None else args.holdout,
                            seed=args.seed, device=device, progress=True)
    exact = "exactly" if tuning.last_change == 0 else f"up to {tuning.last_change:.2g} (not converged)"
    _print_tuning(f"chip-in-the-loop {args.checkpoint}: {args.decay_groups} decay groups per layer,", tuning, args,
                  f"the chip holds its weights {exact}", "--inputs FILE")
    return 0


def _print_tuning(head: str, tuning, args: argparse.Namespace, held: str, verify_flags: str) -> None:
    """One line: what fine-tuning a graph did to its held-out float and chip accuracy, and what to run next."""
    before, after = tuning.before, tuning.after
    pct = lambda a: f"{100 * a:.1f}%"  # noqa: E731
    print(f"{head} {args.epochs} epochs on {tuning.train_samples} samples; on {tuning.holdout_samples} held-out "
          f"samples float {pct(before.float)} -> {pct(after.float)}, chip {pct(before.chip)} -> {pct(after.chip)} "
          f"(same prediction {pct(before.agreement)} -> {pct(after.agreement)}); {held} -> {args.out} "
          f"(st2chip verify {args.out} {verify_flags})")


def _quantize_xylo(args: argparse.Namespace, device: torch.device) -> int:
    """``st2chip quantize model.nir --target xylo-audio3 -o tuned.nir``: fine-tune a NIR graph as Xylo computes it."""
    if not _is_graph(args.checkpoint):
        raise InputError(f"--target {args.target}: quantize fine-tunes a NIR graph for Xylo; export the checkpoint "
                         f"first (st2chip export {args.checkpoint} --out model.nir)")
    from st2chip.api import quantize_graph
    from st2chip.cli.main import loihi_only
    loihi_only(args, {"--decay-groups": DEFAULT_DECAY_GROUPS, "--headroom": None, "--data-root": None})
    tuning = quantize_graph(args.checkpoint, args.inputs, output=args.out, target=args.target, epochs=args.epochs,
                            lr=args.lr, holdout=QUANTIZE_HOLDOUT if args.holdout is None else args.holdout,
                            seed=args.seed, device=device, progress=True)
    moved = "exactly" if tuning.changed == 0 else f"but for {tuning.changed} weight(s) the last rescaling moved"
    _print_tuning(f"{args.target} in the loop {args.checkpoint}:", tuning, args,
                  f"the chip holds the trained weights {moved}", f"--target {args.target}")
    return 0


def run_quantize(args: argparse.Namespace) -> int:
    """Fine-tune a checkpoint, or a NIR graph on ``--inputs``, with the chip in the loop (tied decays, the chip's
    weights); write a new one."""
    _at_least(args, 1, "decay_groups")
    if args.decay_groups > MAX_DECAY_GROUPS:
        raise InputError(f"--decay-groups must be at most {MAX_DECAY_GROUPS} (distinct 12-bit decays), got "
                         f"{args.decay_groups}")
    _rate(args, "headroom")
    device = _common_flags(args)
    from st2chip.families import get_target
    if get_target(args.target).family == "xylo":
        return _quantize_xylo(args, device)
    if _is_graph(args.checkpoint):
        return _quantize_graph(args, device)
    if args.inputs is not None or args.holdout is not None:
        raise InputError(f"--inputs and --holdout fine-tune a NIR graph (.nir file or bundle folder); "
                         f"{args.checkpoint} is a checkpoint, which fine-tunes on its own data set")
    import st2chip
    summary = st2chip.quantize(args.checkpoint, args.out, decay_groups=args.decay_groups,
                               headroom=HEADROOM if args.headroom is None else args.headroom, epochs=args.epochs,
                               lr=args.lr, seed=args.seed, device=device, data_root=args.data_root)
    chip = summary["chip_aware"]
    exact = "exactly" if chip["last_change"] == 0 else f"up to {chip['last_change']:.2g} (not converged)"
    print(f"chip-in-the-loop {summary['kind']}: {args.decay_groups} decay groups per layer, {args.epochs} epochs; "
          f"test accuracy {100 * chip['accuracy_before']:.1f}% -> {100 * summary['test_accuracy']:.1f}%; the chip "
          f"holds its weights {exact} -> {args.out} (export it, then st2chip verify)")
    return 0


def _common(p: argparse.ArgumentParser, epochs: int | None, lr: float | None) -> None:
    """``--epochs``/``--lr`` (None: per model and data set, :data:`DEFAULTS`) and the options every command takes."""
    def per_model(i: int) -> str:
        return ", ".join(f"{m}/{d} {v[i]:g}" for (m, d), v in DEFAULTS.items())
    p.add_argument("--epochs", type=int, default=epochs,
                   help=f"training epochs (default {epochs if epochs is not None else per_model(0)})")
    p.add_argument("--lr", type=float, default=lr,
                   help=f"Adam learning rate of the weights (default {lr if lr is not None else per_model(1)})")
    p.add_argument("--seed", type=int, default=0, help="seed of initialization and data order (default 0)")
    p.add_argument("--device", default=None, help="cpu or cuda (cuda:N) (default: cuda when present, else cpu)")
    p.add_argument("--data-root", default=None,
                   help="folder holding torchvision's 'cifar-10-batches-py' (cifar10 only; nothing is downloaded)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train``, ``prune`` and ``quantize`` subcommands; each sets ``func(args) -> exit code``."""
    fmt = argparse.RawDescriptionHelpFormatter
    t = subparsers.add_parser(
        "train", help="train a spiking classifier on digits and write a checkpoint", formatter_class=fmt,
        description="Train a spiking MLP, CNN, recurrent network (RNN) or spiking Transformer (ST) on\n"
                    "the embedded 8x8 digits data (the RNN reads them row by row: encoding 'rows'),\n"
                    "an MLP or RNN on MNIST-1D sequences generated locally (--data mnist1d: 40 values over\n"
                    "40 steps, thermometer-coded into 16 input neurons), or an ST on CIFAR-10 from a\n"
                    "local folder (--data cifar10 --data-root DIR).\n\n"
                    "examples:\n  st2chip train --model st --neuron lif --epochs 30 --out st.pt\n"
                    "  st2chip train --model cnn --out cnn.pt\n"
                    "  st2chip train --model rnn --reset subtract --out rnn.pt\n"
                    "  st2chip train --model rnn --data mnist1d --out rnn-mnist1d.pt\n"
                    "  st2chip train --model mlp --data mnist1d --reset subtract --max-spikes 31 --out m.pt"
                    "   # for Xylo")
    t.add_argument("--model", choices=MODELS, default="st", help="mlp, cnn, rnn or st (default st)")
    t.add_argument("--neuron", choices=["slif", "lif"], default="slif",
                   help="sLIF (per-neuron learnable threshold and leak) or plain LIF (default slif)")
    t.add_argument("--out", required=True, help="checkpoint file to write")
    t.add_argument("--data", choices=DATASETS, default="digits",
                   help="digits (embedded, default), mnist1d (generated locally; MLP and RNN), cifar10 "
                        "(from --data-root; ST only) or digits32 (the digits upscaled to 32x32x3: a stand-in "
                        "with CIFAR-10's shape, not its content; ST only)")
    t.add_argument("--preset", choices=list(ST_PRESETS), default=None,
                   help="the ST's size on 32x32x3 data (--data cifar10 or digits32): cifar10 (dim 256, 2 blocks; "
                        "default) or spikformer-4-384 (dim 384, 4 blocks, 12 heads)")
    t.add_argument("--steps", type=int, default=None,
                   help="time steps T (default: the preset's: 16 for mlp, cnn and rnn (each digits row held "
                        "2 steps; a multiple of 8), 4 for st; mnist1d: 40, one per value)")
    t.add_argument("--reset", choices=["zero", "subtract"], default=None,
                   help="membrane reset after a spike: to zero (default; what the chip does) or by subtracting "
                        "the threshold (mlp, cnn, rnn)")
    t.add_argument("--max-spikes", type=int, default=None, metavar="K",
                   help=f"mlp, rnn with --reset subtract: a hidden neuron sends up to K spikes per step "
                        f"(1..{MAX_SPIKES}; default 1), subtracting the threshold for each, as Xylo's do (K = 31: "
                        f"train for Xylo); the export records K; Loihi 2 takes K = 1 only")
    t.add_argument("--dim", type=int, default=None, help="ST token width (default 32)")
    t.add_argument("--depth", type=int, default=None, help="ST blocks (default 1)")
    t.add_argument("--heads", type=int, default=None, help="ST attention heads (default 2)")
    t.add_argument("--mlp-hidden", type=int, default=None, help="ST MLP hidden width (default 64)")
    t.add_argument("--hidden", type=int, default=128, help="MLP or RNN hidden width (default 128)")
    t.add_argument("--channels", type=int, nargs="+", default=None, metavar="C",
                   help="CNN: output channels of each conv stage, each followed by 2x2 sum pooling (default 8 16)")
    t.add_argument("--levels", type=int, default=None,
                   help=f"RNN: thermometer levels per value (default {ROWS_LEVELS} per digits pixel, "
                        f"{MNIST1D_LEVELS} for mnist1d)")
    t.add_argument("--readout", choices=READOUTS, default=None,
                   help="RNN: leaky readout (LI, decay 0.7 per step; default on digits) or integrate over all steps "
                        "(I; default on mnist1d)")
    _common(t, epochs=None, lr=None)
    t.set_defaults(func=run_train)

    p = subparsers.add_parser(
        "prune", help="prune a trained checkpoint (L1P or DSP) and fine-tune it", formatter_class=fmt,
        description="Prune the block weight matrices of a trained checkpoint and fine-tune it, with sLIF\n"
                    "compensation (thresholds and leaks learn) or plain LIF (frozen). See docs/pruning.md.\n\n"
                    "examples:\n  st2chip prune st.pt --method l1p --sparsity 0.9 --out st-l1p90.pt\n"
                    "  st2chip prune st.pt --method dsp --rank 4 --compensate lif --out st-r4.pt")
    p.add_argument("checkpoint", help="checkpoint written by 'st2chip train'")
    p.add_argument("--method", choices=["l1p", "dsp"], required=True,
                   help="l1p: unstructured magnitude pruning; dsp: low-rank factors U, V")
    p.add_argument("--sparsity", type=float, default=None, help="l1p: fraction of block weights set to zero")
    p.add_argument("--scope", choices=["global", "layer"], default="global",
                   help="l1p: one magnitude threshold over all matrices, or one per matrix (default global)")
    p.add_argument("--rank", type=int, default=None, help="dsp: keep at most R rank components per matrix")
    p.add_argument("--threshold", type=float, default=None,
                   help="dsp: drop components with singular value below F * the largest")
    p.add_argument("--penalty", type=float, default=1e-4,
                   help="strength of the L1 (l1p) or group (dsp) penalty before pruning (default 1e-4)")
    p.add_argument("--penalty-epochs", type=int, default=5, help="epochs trained with the penalty (default 5)")
    p.add_argument("--compensate", choices=["slif", "lif"], default="slif",
                   help="fine-tune with learning thresholds/leaks (slif) or frozen ones (lif) (default slif)")
    p.add_argument("--intrinsic-lr", type=float, default=1e-2,
                   help="learning rate of thresholds and leaks in the slif arm (default 1e-2)")
    p.add_argument("--out", required=True, help="checkpoint file to write")
    _common(p, epochs=10, lr=2e-3)
    p.set_defaults(func=run_prune)

    q = subparsers.add_parser(
        "quantize",
        help="fine-tune a checkpoint or a NIR graph with the chip in the loop (tied decays, the chip's weights)",
        formatter_class=fmt,
        description="Quantization-aware fine-tuning against the numbers the chip will hold. Each neuron's\n"
                    "decays are tied into K (current, voltage) pairs per layer (k-means, seeded); every step\n"
                    "lowers the model, reads back the 8-bit weights the chip holds and trains on them\n"
                    "(straight-through gradients). The checkpoint written holds exactly those weights and\n"
                    "decays: its float simulation and the chip differ only by fixed-point state arithmetic\n"
                    "and 13-bit biases.\n"
                    "Its export records K, which map, simulate, verify and energy then use by default.\n"
                    "Covers the sLIF MLP (mlp) and the recurrent network (rnn): graphs of Affine paths.\n"
                    "A NIR graph from any framework (a .nir file) fine-tunes the same way on your labelled\n"
                    "samples (--inputs FILE.npz: one spike array per Input node and 'labels'); a seeded\n"
                    "--holdout part of them measures float and chip accuracy before and after, and -o gets\n"
                    "the NIR graph the chip holds exactly.\n\n"
                    "examples:\n  st2chip train --model rnn --data mnist1d --out rnn.pt\n"
                    "  st2chip quantize rnn.pt --decay-groups 4 --out rnn-q.pt\n"
                    "  st2chip export rnn-q.pt --out rnn-q.nir && st2chip verify rnn-q.nir\n"
                    "  st2chip quantize model.nir --inputs train.npz --decay-groups 4 -o tuned.nir")
    q.add_argument("checkpoint", metavar="model",
                   help="checkpoint written by 'st2chip train' (kind mlp or rnn), or a NIR graph (.nir file)")
    q.add_argument("--inputs", default=None, metavar="FILE",
                   help="a NIR graph's training samples: .npz with one spike array (batch, steps, n) per Input "
                        "node and integer 'labels' (batch,) (required with a NIR graph)")
    from st2chip.families import TARGETS
    q.add_argument("--target", default=TARGET, metavar="|".join(TARGETS),
                   help=f"the chip to fine-tune for (default {TARGET}); a Xylo chip trains the NIR graph as the chip "
                        "computes it (synaptic filter, shift leaks, 8-bit weights, up to 31 spikes per step) and "
                        "writes that graph; an MNIST-1D model trains on its training split without --inputs")
    q.add_argument("--holdout", type=float, default=None, metavar="F",
                   help=f"fraction of --inputs held out (seeded) to measure float and chip accuracy before and "
                        f"after (default {QUANTIZE_HOLDOUT:g})")
    q.add_argument("--decay-groups", type=int, default=DEFAULT_DECAY_GROUPS, metavar="K",
                   help=f"distinct (current, voltage) decay pairs per layer, one population each (default "
                        f"{DEFAULT_DECAY_GROUPS}, map's default)")
    q.add_argument("--headroom", type=float, default=None, metavar="H",
                   help=f"the lowering's headroom, as in st2chip map (default {HEADROOM:g}, map's default); map, "
                        f"verify and energy with the same --headroom")
    q.add_argument("-o", "--out", required=True, help="checkpoint (or, for a NIR graph, .nir file) to write")
    _common(q, epochs=QUANTIZE_EPOCHS, lr=QUANTIZE_LR)
    q.set_defaults(func=run_quantize)
