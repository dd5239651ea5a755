"""Checkpoints: a state_dict plus the config that rebuilds the model.

Saved with ``torch.save`` (atomically) and loaded with ``weights_only=True``, so
a checkpoint never executes code when read.
"""

from __future__ import annotations

import io
import math
import os
import zipfile
from pathlib import Path

import torch
from torch import nn

from st2chip import limits
from st2chip.errors import InputError
from st2chip.io import atomic_path
from st2chip.learn.data import DATASETS
from st2chip.learn.kinds import KINDS, MODEL_KINDS
from st2chip.learn.mlp import SpikingMLP


def save_checkpoint(model: nn.Module, kind: str, config: dict, path: str | os.PathLike,
                    extra: dict | None = None) -> Path:
    """Write ``{"kind", "config", "state_dict", "extra"}`` to ``path`` atomically.

    The archive is built in memory and written with plain file I/O, so a write that fails (a full disk, a
    file-size limit) is one ``OSError`` naming ``path`` with no temporary file left, never torch's
    ``inline_container`` error.
    """
    payload = {"kind": kind, "config": config,
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
               "extra": extra or {}}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(buffer.getbuffer())
    return Path(path)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint safely; any unreadable or foreign file is an :class:`InputError`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint file")
    _check_archive(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt files
        raise InputError(f"{path}: not a readable st2chip checkpoint ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else 'no detail'})") from None
    if not isinstance(payload, dict) or not {"kind", "config", "state_dict"} <= payload.keys():
        raise InputError(f"{path}: not an st2chip checkpoint (needs keys kind, config, state_dict)")
    return payload


def _check_archive(path: Path) -> None:
    """The uncompressed size of a checkpoint's zip records against the memory budget (a zip bomb)."""
    try:
        with zipfile.ZipFile(path) as zf:
            total = sum(info.file_size for info in zf.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return  # not a zip (legacy format) or broken: torch.load says what is wrong
    limits.check_bytes("its records, uncompressed,", total, str(path))


def model_classes(kind: str):
    """Config and model class of a checkpoint ``kind`` (one of :data:`~st2chip.learn.kinds.KINDS`), or None."""
    entry = MODEL_KINDS.get(kind)
    return None if entry is None else entry.classes()


def load_checkpoint(path: str | os.PathLike, kind: str | None = None) -> tuple[str, nn.Module, dict]:
    """Rebuild the model of a checkpoint (of ``kind`` when given); returns ``(kind, model, extra)``."""
    payload = read_checkpoint(path)
    if kind is not None and payload["kind"] != kind:
        raise InputError(f"{path}: checkpoint holds a '{payload['kind']}' model, expected '{kind}'")
    kind = payload["kind"]
    classes = model_classes(kind)
    if classes is None:
        raise InputError(f"{path}: checkpoint kind {kind!r} is not one of {', '.join(KINDS)}")
    config_cls, model_cls = classes
    check_config(kind, payload["config"], path)
    try:
        model = model_cls(config_cls(**payload["config"]))
        model.load_state_dict(payload["state_dict"])
    except (TypeError, ValueError, RuntimeError) as err:
        raise InputError(f"{path}: checkpoint does not match its config: {str(err).splitlines()[0]}") from None
    except MemoryError:
        raise InputError(f"{path}: ran out of memory building the model of its config; "
                         f"the memory budget is {limits.human(limits.memory_budget())}") from None
    return kind, model, check_extra(payload.get("extra", {}), path)


MAX_DECAY_GROUPS = 4096  # distinct 12-bit decays a layer can have


def _fraction(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


# keys of ``extra`` that st2chip reads back, with what each must be
_EXTRA_CHECKS = {
    "data": (lambda v: isinstance(v, str) and v in DATASETS, f"one of {', '.join(DATASETS)}"),
    "seed": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "epochs": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "a non-negative integer"),
    "lr": (_positive, "a positive finite number"),
    "test_accuracy": (_fraction, "a number from 0 to 1"),
    "train_accuracy": (_fraction, "a number from 0 to 1"),
}


def check_extra(extra: object, path: str | os.PathLike) -> dict:
    """A checkpoint's run summary ``extra``: a dict whose keys st2chip reads are typed and ranged (others are
    kept as they are); ``chip_aware.decay_groups`` (what ``st2chip quantize`` tied) from 1 to
    :data:`MAX_DECAY_GROUPS`. Anything else is an :class:`InputError` naming the file and the field."""
    where = str(path)
    if not isinstance(extra, dict):
        raise InputError(f"{where}: checkpoint field 'extra' must be a dict, got {type(extra).__name__}")
    for key, (ok, what) in _EXTRA_CHECKS.items():
        if key in extra and not ok(extra[key]):
            raise InputError(f"{where}: checkpoint field 'extra.{key}' must be {what}, got {extra[key]!r:.80}")
    if "chip_aware" in extra:
        chip = extra["chip_aware"]
        if not isinstance(chip, dict):
            raise InputError(f"{where}: checkpoint field 'extra.chip_aware' must be a dict, got {type(chip).__name__}")
        if "decay_groups" not in chip:
            raise InputError(f"{where}: checkpoint field 'extra.chip_aware' has no 'decay_groups'")
        groups = limits.positive_int(chip["decay_groups"], "checkpoint field 'extra.chip_aware.decay_groups'", where)
        if groups > MAX_DECAY_GROUPS:
            raise InputError(f"{where}: checkpoint field 'extra.chip_aware.decay_groups' must be at most "
                             f"{MAX_DECAY_GROUPS}, got {groups}")
        if "headroom" in chip and not _positive(chip["headroom"]):
            raise InputError(f"{where}: checkpoint field 'extra.chip_aware.headroom' must be a positive finite "
                             f"number, got {chip['headroom']!r:.80}")
    return dict(extra)


MAX_LIST = 10_000  # entries of a size list (layers, stem stages) in a config
_ST_INTS = ("image_size", "in_channels", "patch_size", "dim", "depth", "heads", "mlp_hidden", "steps", "classes")
_BYTES_PER_PARAM = 4 * 4  # float32 weight, its gradient and two optimizer moments (training and pruning)
_BYTES_PER_ACTIVATION = 4 * 8  # float32, several kept per layer (BN, neuron state, autograd)


def _ints(config: dict, key: str, where: str, at_least: int = 1) -> list[int]:
    """Config field ``key``: a list of ``at_least`` to :data:`MAX_LIST` positive integers."""
    value = config.get(key)
    if not isinstance(value, (list, tuple)):
        raise InputError(f"{where}: config field '{key}' must be a list of positive integers, got "
                         f"{type(value).__name__}")
    if not at_least <= len(value) <= MAX_LIST:
        raise InputError(f"{where}: config field '{key}' has {len(value):,} entries (from {at_least} to "
                         f"{MAX_LIST:,})")
    return [limits.positive_int(v, f"config field '{key}[{i}]'", where) for i, v in enumerate(value)]


def check_config(kind: str, config: object, path: str | os.PathLike) -> None:
    """Config sizes are positive integers and the model fits the memory budget, before it is built.

    The parameter count is computed from the config (the dense weights dominate:
    MLP layers; ST convolutions, block matrices and head), and one sample's
    activations over all steps for the widest layer.
    """
    where = str(path)
    if not isinstance(config, dict):
        raise InputError(f"{where}: checkpoint config must be a dict of fields, got {type(config).__name__}")
    classes = model_classes(kind)
    if classes is None:
        raise InputError(f"{where}: checkpoint kind {kind!r} is not one of {', '.join(KINDS)}")
    defaults = classes[0]().to_dict()  # absent fields take the dataclass defaults
    c = {**defaults, **config}
    if kind == "mlp":
        sizes = _ints(c, "sizes", where, at_least=2)
        steps = limits.positive_int(c.get("steps"), "config field 'steps'", where)
        params = sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:])) + 3 * sum(sizes[1:-1])
        activations = steps * sum(sizes)
    elif kind == "cnn":
        image = _ints(c, "image", where)
        channels = _ints(c, "channels", where)
        v = {k: limits.positive_int(c.get(k), f"config field '{k}'", where)
             for k in ("kernel", "pool", "classes", "steps")}
        if len(image) != 3:
            raise InputError(f"{where}: config field 'image' must be (C, H, W), got {len(image)} entries")
        widths = [image[0], *channels]
        pixels = image[1] * image[2]
        params = sum(v["kernel"] ** 2 * a * b + 3 * b for a, b in zip(widths[:-1], widths[1:])) \
            + (channels[-1] * pixels + 1) * v["classes"]
        activations = v["steps"] * pixels * sum(widths)
    elif kind == "rnn":
        v = {k: limits.positive_int(c.get(k), f"config field '{k}'", where)
             for k in ("inputs", "hidden", "classes", "steps", "levels", "hold")}
        h = v["hidden"]
        params = (v["inputs"] + h + 5) * h + (h + 1) * v["classes"]
        activations = v["steps"] * (v["inputs"] + 4 * h + v["classes"])
    else:
        v = {k: limits.positive_int(c.get(k), f"config field '{k}'", where) for k in _ST_INTS}
        stem = _ints(c, "stem_channels", where, at_least=0)
        ranks = c.get("ranks")
        if not isinstance(ranks, dict):
            raise InputError(f"{where}: config field 'ranks' must be a dict of layer name -> rank")
        if len(ranks) > 6 * v["depth"] or len(ranks) > MAX_LIST:
            raise InputError(f"{where}: config field 'ranks' names {len(ranks):,} layers; the model has "
                             f"{6 * v['depth']} block matrices")
        for name, rank in ranks.items():
            limits.positive_int(rank, f"config field 'ranks[{name!r}]'", where)
        widths = [v["in_channels"], *stem]
        d, h = v["dim"], v["mlp_hidden"]
        conv = sum(9 * a * b for a, b in zip(widths[:-1], widths[1:])) + widths[-1] * d * v["patch_size"] ** 2 \
            + 9 * d * d
        params = conv + v["depth"] * (4 * d * d + 2 * d * h + 12 * d + 2 * h) + (d + 1) * v["classes"]
        pixels = v["image_size"] ** 2
        tokens = (v["image_size"] // v["patch_size"]) ** 2
        activations = v["steps"] * (pixels * sum(widths) + tokens * v["depth"] * (8 * d + 2 * h))
    limits.check_alloc(f"the parameters of the {kind} model its config asks for", params,
                       _BYTES_PER_PARAM, where)
    limits.check_alloc(f"the activations of one sample through the {kind} model its config asks for",
                       activations, _BYTES_PER_ACTIVATION, where)


def load_mlp(path: str | os.PathLike) -> SpikingMLP:
    """Rebuild a :class:`SpikingMLP` from a checkpoint written by :func:`save_checkpoint`."""
    return load_checkpoint(path, "mlp")[1]
