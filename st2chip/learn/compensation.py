r"""sLIF compensation: win back accuracy lost to pruning by learning neuron parameters.

After pruning, st2chip fine-tunes the network in one of two arms, with the same
data order, epochs and weight learning rate:

- **LIF** (the control): thresholds :math:`\theta` and leaks :math:`\beta` stay as
  they are (frozen); only synaptic weights (and batch norms) learn.
- **sLIF**: every plain LIF layer first becomes an sLIF layer with per-neuron
  :math:`\theta_i = \theta` and :math:`\rho_i = \operatorname{logit}\beta` (so the
  function is unchanged at the start, :func:`to_slif`); then :math:`\theta_i` and
  :math:`\rho_i` learn together with the weights, in their own optimizer group
  with learning rate ``intrinsic_lr``.

The difference in test accuracy between the arms is the compensation.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn
from torch.nn.utils import prune

from st2chip.learn.data import Split
from st2chip.learn.neurons import SLIF
from st2chip.learn.training import TrainResult, train_classifier


def intrinsic_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Thresholds and leak logits of every spiking neuron layer."""
    return [p for m in model.modules() if isinstance(m, SLIF) for p in (m.threshold, m.leak_logit)]


def to_slif(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose plain-LIF layers are per-neuron sLIF layers computing the same function.

    The model is rebuilt from ``replace(model.config, neuron="slif")``; shared
    thresholds and leaks are broadcast to every neuron, and pruning masks carry over.
    """
    new = type(model)(dataclasses.replace(model.config, neuron="slif")).to(next(model.parameters()).device)
    old_modules = dict(model.named_modules())
    for name, m in new.named_modules():
        old = old_modules[name]
        if prune.is_pruned(old) and hasattr(old, "weight_mask"):
            prune.custom_from_mask(m, "weight", old.weight_mask)
    state = model.state_dict()
    target = new.state_dict()
    for key, value in state.items():
        if value.shape != target[key].shape:
            state[key] = value.expand(target[key].shape).clone()
    new.load_state_dict(state)
    return new


def finetune(model: nn.Module, train: Split, test: Split, *, learn_intrinsic: bool, epochs: int = 10,
             lr: float = 2e-3, intrinsic_lr: float = 1e-2, seed: int = 0,
             device: torch.device | str | None = None, desc: str = "finetune", train_norm: bool = True,
             progress: bool = True) -> tuple[nn.Module, TrainResult]:
    """Fine-tune a (pruned) model in the sLIF arm (``learn_intrinsic``) or the frozen LIF arm.

    ``train_norm=False`` freezes the batch-norm scales and shifts, which can otherwise
    emulate a per-neuron threshold (see docs/pruning.md). Returns the fine-tuned model (a new module in the sLIF arm, see :func:`to_slif`)
    and its training result. Pruning masks and low-rank factors stay as they are.
    """
    if learn_intrinsic:
        if any(isinstance(m, SLIF) and m.is_plain for m in model.modules()):
            model = to_slif(model)
        intrinsic = intrinsic_parameters(model)
        for p in intrinsic:
            p.requires_grad_(True)
    else:
        intrinsic = []
        for p in intrinsic_parameters(model):
            p.requires_grad_(False)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            for p in m.parameters():
                p.requires_grad_(train_norm)
    ids = {id(p) for p in intrinsic}
    weights = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    groups = [{"params": weights, "lr": lr}]
    if intrinsic:
        groups.append({"params": intrinsic, "lr": intrinsic_lr})
    result = train_classifier(model, train, test, epochs=epochs, lr=lr, seed=seed, device=device,
                              param_groups=groups, desc=desc, progress=progress)
    return model, result
