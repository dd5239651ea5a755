"""Checkpoints: a state_dict plus the config that rebuilds the model.

Saved with ``torch.save`` (atomically) and loaded with ``weights_only=True``, so
a checkpoint never executes code when read.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from st2chip.errors import InputError
from st2chip.io import atomic_path
from st2chip.learn.mlp import MLPConfig, SpikingMLP


def save_checkpoint(model: nn.Module, kind: str, config: dict, path: str | os.PathLike,
                    extra: dict | None = None) -> Path:
    """Write ``{"kind", "config", "state_dict", "extra"}`` to ``path`` atomically."""
    payload = {"kind": kind, "config": config,
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
               "extra": extra or {}}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint safely; any unreadable or foreign file is an :class:`InputError`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt files
        raise InputError(f"{path}: not a readable st2chip checkpoint ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else 'no detail'})") from None
    if not isinstance(payload, dict) or not {"kind", "config", "state_dict"} <= payload.keys():
        raise InputError(f"{path}: not an st2chip checkpoint (needs keys kind, config, state_dict)")
    return payload


def _model_classes(kind: str):
    """Config and model class of a checkpoint ``kind`` (``mlp`` or ``st``)."""
    if kind == "mlp":
        return MLPConfig, SpikingMLP
    if kind == "st":
        from st2chip.learn.transformer import SpikingTransformer, STConfig
        return STConfig, SpikingTransformer
    return None


def load_checkpoint(path: str | os.PathLike, kind: str | None = None) -> tuple[str, nn.Module, dict]:
    """Rebuild the model of a checkpoint (of ``kind`` when given); returns ``(kind, model, extra)``."""
    payload = read_checkpoint(path)
    if kind is not None and payload["kind"] != kind:
        raise InputError(f"{path}: checkpoint holds a '{payload['kind']}' model, expected '{kind}'")
    kind = payload["kind"]
    classes = _model_classes(kind)
    if classes is None:
        raise InputError(f"{path}: checkpoint kind {kind!r} is not one of mlp, st")
    config_cls, model_cls = classes
    try:
        model = model_cls(config_cls(**payload["config"]))
        model.load_state_dict(payload["state_dict"])
    except (TypeError, ValueError, RuntimeError) as err:
        raise InputError(f"{path}: checkpoint does not match its config: {str(err).splitlines()[0]}") from None
    return kind, model, dict(payload.get("extra", {}))


def load_mlp(path: str | os.PathLike) -> SpikingMLP:
    """Rebuild a :class:`SpikingMLP` from a checkpoint written by :func:`save_checkpoint`."""
    return load_checkpoint(path, "mlp")[1]
