"""Seeded supervised training of spiking classifiers, with a progress bar.

Models passed here expose ``encode(x) -> model input`` and ``forward(input) ->
scores``; the same loop trains the sLIF MLP and the spiking Transformer.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from st2chip.progress import shown as progress_shown
from st2chip.learn.data import Split


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch generator for data order."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class TrainResult:
    train_accuracy: float
    test_accuracy: float
    epochs: int
    device: str


@torch.no_grad()
def evaluate(model: nn.Module, split: Split, batch_size: int = 256,
             device: torch.device | str = "cpu") -> float:
    """Test accuracy of ``model`` on ``split``."""
    model.eval()
    correct = 0
    for start in range(0, len(split), batch_size):
        x = torch.as_tensor(split.x[start:start + batch_size], device=device)
        y = torch.as_tensor(split.y[start:start + batch_size], device=device)
        scores = model(model.encode(x))
        correct += int((scores.argmax(1) == y).sum())
    return correct / max(len(split), 1)


@torch.no_grad()
def recalibrate_norms(model: nn.Module, split: Split, batch_size: int = 256,
                      device: torch.device | str = "cpu") -> None:
    """Recompute every BatchNorm's running statistics over ``split`` (a cumulative average, the rest of the model
    in eval mode); weights are untouched.

    Training normalizes with each batch's statistics and keeps running averages (momentum 0.1) for evaluation and
    export. After pruning, a short fine-tuning (22 batches) leaves a tenth of the unpruned model's statistics in
    them: a Spikformer-4-384 pruned to 90 % scored 47.2 % in eval mode after a fine-tuning that ended at a
    training loss of 0.19, and 96.7 % with its statistics recomputed.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return
    model.eval()
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
        m.train()
    for start in range(0, len(split), batch_size):
        model(model.encode(torch.as_tensor(split.x[start:start + batch_size], device=device)))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
        m.eval()


def train_classifier(model: nn.Module, train: Split, test: Split, *, epochs: int = 30,
                     lr: float = 1e-2, batch_size: int = 64, seed: int = 0,
                     device: torch.device | str | None = None,
                     param_groups: Iterable[dict] | None = None,
                     penalty: Callable[[nn.Module], torch.Tensor] | None = None,
                     after_step: Callable[[nn.Module], None] | None = None,
                     after_epoch: Callable[[int, nn.Module], None] | None = None,
                     schedule: str = "cosine", desc: str = "train", progress: bool | None = None) -> TrainResult:
    """Train with Adam + cosine (or ``schedule="constant"``) learning rate and cross-entropy (+ ``penalty(model)``).

    ``param_groups`` overrides the optimizer's groups (e.g. a separate learning
    rate for sLIF thresholds and leaks); ``after_step`` runs after every
    optimizer step (e.g. to re-apply pruning masks); ``after_epoch(epoch, model)``
    after every epoch (1-based). With a constant rate, the model after epoch ``k``
    is the model a ``k``-epoch run gives, so one run measures every budget up to ``epochs``.
    The data order depends on ``seed`` only.
    """
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule must be 'cosine' or 'constant', not {schedule!r}")
    generator = seed_everything(seed)
    device = torch.device(device) if device is not None else default_device()
    model.to(device)
    groups = list(param_groups) if param_groups is not None else [
        {"params": [p for p in model.parameters() if p.requires_grad]}]
    optimizer = torch.optim.Adam(groups, lr=lr)
    steps_per_epoch = (len(train) + batch_size - 1) // batch_size
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch)
                 if schedule == "cosine" else torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0))
    x_all = torch.as_tensor(train.x)
    y_all = torch.as_tensor(train.y)
    loss_fn = nn.CrossEntropyLoss()
    bar = tqdm(range(epochs), desc=desc, disable=not progress_shown(progress), leave=False)
    for epoch in bar:
        model.train()
        order = torch.randperm(len(train), generator=generator)
        total, count = 0.0, 0
        for start in range(0, len(train), batch_size):
            idx = order[start:start + batch_size]
            x, y = x_all[idx].to(device), y_all[idx].to(device)
            loss = loss_fn(model(model.encode(x)), y)
            if penalty is not None:
                loss = loss + penalty(model)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if after_step is not None:
                after_step(model)
            total += loss.detach().item() * len(idx)
            count += len(idx)
        bar.set_postfix(loss=f"{total / count:.4f}")
        if after_epoch is not None:
            recalibrate_norms(model, train, device=device)
            after_epoch(epoch + 1, model)
    if after_epoch is None:
        recalibrate_norms(model, train, device=device)
    return TrainResult(evaluate(model, train, device=device), evaluate(model, test, device=device),
                       epochs, str(device))
