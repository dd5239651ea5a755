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
:func:`paired_finetune` runs both arms from one pruned model (same masks, same
seed, so the same data order) and records the test accuracy after every
fine-tuning budget; :func:`paired_difference` turns the per-seed differences into
a mean with a paired-t confidence interval.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from scipy import stats
from torch import nn
from torch.nn.utils import prune

from st2chip.learn.data import Split
from st2chip.learn.neurons import SLIF
from st2chip.learn.pruning import copy_model, make_permanent
from st2chip.learn.training import TrainResult, evaluate, train_classifier

ARMS = {"lif": False, "slif": True}  # arm name -> learn_intrinsic


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
             schedule: str = "cosine", after_epoch: Callable[[int, nn.Module], None] | None = None,
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
                              param_groups=groups, desc=desc, schedule=schedule, after_epoch=after_epoch,
                              progress=progress)
    return model, result


@dataclass
class ArmRun:
    """One fine-tuning arm: test accuracy after each budget (epochs) and, if kept, the model then (masks permanent)."""

    accuracy: dict[int, float]
    snapshots: dict[int, nn.Module]
    model: nn.Module


def paired_finetune(model: nn.Module, train: Split, test: Split, *, budgets: Sequence[int], seed: int,
                    lr: float = 2e-3, intrinsic_lr: float = 1e-2, device: torch.device | str = "cpu",
                    keep_models: bool = False) -> dict[str, ArmRun]:
    """Fine-tune copies of one pruned ``model`` in the LIF and the sLIF arm, paired.

    Both arms start from the same weights and pruning masks and train with the same
    ``seed`` (so the same data order) at a constant learning rate for ``max(budgets)``
    epochs; the test accuracy after each budget is what a run of that many epochs
    gives. ``keep_models`` keeps a copy of each arm's model at every budget, masks
    made permanent (for mapping to the chip later).
    """
    wanted = set(budgets)
    runs = {}
    for arm, learn in ARMS.items():
        accuracy: dict[int, float] = {}
        snapshots: dict[int, nn.Module] = {}

        def record(epoch: int, m: nn.Module) -> None:
            if epoch in wanted:
                accuracy[epoch] = evaluate(m, test, device=device)
                if keep_models:
                    snapshots[epoch] = make_permanent(copy.deepcopy(m))

        tuned, _ = finetune(copy_model(model), train, test, learn_intrinsic=learn, epochs=max(wanted), lr=lr,
                            intrinsic_lr=intrinsic_lr, seed=seed, device=device, schedule="constant",
                            after_epoch=record, progress=False)
        runs[arm] = ArmRun(accuracy, snapshots, tuned)
    return runs


@dataclass
class PairedStats:
    """Mean paired difference (treatment - control) with a ``confidence`` interval (paired t) and seed spread."""

    n: int
    mean: float
    low: float
    high: float
    std: float
    p_value: float
    confidence: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def paired_difference(treatment: Sequence[float], control: Sequence[float],
                      confidence: float = 0.95) -> PairedStats:
    """Paired-t statistics of ``treatment[i] - control[i]`` (one pair per seed), via ``scipy.stats.ttest_rel``.

    ``std`` is the sample standard deviation of the differences (the seed spread).
    With identical differences (no spread) the interval collapses to the mean.
    """
    a, b = np.asarray(treatment, float), np.asarray(control, float)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"need two equal-length sequences of at least 2 paired values, got {a.shape} and {b.shape}")
    diff = a - b
    mean, std = float(diff.mean()), float(diff.std(ddof=1))
    if std == 0.0:
        return PairedStats(len(diff), mean, mean, mean, 0.0, 0.0 if mean else 1.0, confidence)
    test = stats.ttest_rel(a, b)
    ci = test.confidence_interval(confidence_level=confidence)
    return PairedStats(len(diff), mean, float(ci.low), float(ci.high), std, float(test.pvalue), confidence)
