r"""Chip-in-the-loop fine-tuning: train a model against the numbers the chip will hold.

Lowering changes a trained model three ways (:mod:`st2chip.chip.lower`): per-neuron
decays are grouped into a few values per layer, folded weights are rounded to 8-bit
mantissas with one exponent per synapse group, and the state runs in fixed point.
A recurrent network integrates the first two over its whole run: mapped directly, the
MNIST-1D RNN lost up to 4.3 points on the chip (docs/results.md). :func:`chip_finetune` removes
them from the comparison:

1. **Tied decays.** Each neuron's chip decays ``(du, dv)`` are clustered jointly
   into ``decay_groups`` pairs (k-means, seeded, fixed from then on); every neuron of
   a cluster uses the cluster's mean, rounded to the chip's 12-bit grid. The layer
   then has exactly that many distinct decay pairs, which lowering with
   ``--decay-groups`` at least as large keeps unchanged, one population each.
2. **Held weights.** Before every optimizer step the model is exported to NIR,
   lowered, and the weights the chip holds are read back
   (:func:`~st2chip.chip.held.held_parameters`); the forward pass uses them, the
   gradient passes straight through to the float weights (a straight-through
   estimator, as :mod:`torch.nn.utils.parametrize` parametrizations).
3. **Projection.** After the last epoch the model's weights and decays are
   replaced by what the chip holds (repeated until lowering reproduces them), so
   the float simulation and the chip compute with the same numbers; what remains
   between them is the chip's fixed-point state arithmetic and its 13-bit biases.

The model kinds it knows are listed in :data:`ADAPTERS`: the sLIF MLP and the recurrent CubaLIF network
(graphs of Affine paths). Any other model comes with its own
:class:`Adapter` (:mod:`st2chip.chip.finetune_graph`: a NIR graph from any framework).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import nir
import numpy as np
import torch
from sklearn.cluster import KMeans
from torch import nn
from torch.nn.utils import parametrize

from st2chip.chip import encoding
from st2chip.chip.held import held_parameters
from st2chip.chip.lower import DEFAULT_DECAY_GROUPS, HEADROOM, lower
from st2chip.graph.normalize import normalize
from st2chip.learn.data import Split
from st2chip.learn.training import TrainResult, evaluate, train_classifier

PROJECTION_ROUNDS = 10  # projections tried until lowering reproduces the held weights


Slot = tuple[nn.Module, str]  # a module and the name of one of its parameters


@dataclass(frozen=True)
class Adapter:
    """How one model kind meets the chip: its NIR export, which module holds each Affine node's ``weight``,
    and per neuron node the parameters of its voltage decay and current decay (``None``: the node has none),
    logits (``sigmoid(logit)`` is the decay) or, with ``logits=False``, the decays themselves."""

    to_nir: Callable[[nn.Module], nir.NIRGraph]
    weights: Callable[[nn.Module], dict[str, nn.Module]]
    decays: Callable[[nn.Module], dict[str, tuple[Slot, Slot | None]]]
    logits: bool = True


def _rnn_adapter() -> Adapter:
    from st2chip.converters.rnn import rnn_to_nir
    return Adapter(rnn_to_nir, lambda m: {"fc_in": m.fc_in, "rec": m.rec, "fc_out": m.fc_out},
                   lambda m: {"lif": ((m, "leak_logit"), (m, "syn_leak_logit"))})


def _mlp_adapter() -> Adapter:
    from st2chip.converters.mlp import mlp_to_nir
    # mlp_to_nir numbers its nodes from 1: fc1 -> lif1 -> ... -> fcN -> readout
    return Adapter(mlp_to_nir, lambda m: {f"fc{k}": lin for k, lin in enumerate(m.linears, start=1)},
                   lambda m: {f"lif{k}": ((n, "leak_logit"), None) for k, n in enumerate(m.neurons, start=1)})


ADAPTERS: dict[str, Callable[[], Adapter]] = {"mlp": _mlp_adapter, "rnn": _rnn_adapter}


class _Held(nn.Module):
    """A straight-through parametrization: the forward value is ``held``, the gradient reaches the parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.held: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.held is None else x + (self.held - x).detach()


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p) - np.log1p(-p)


class ChipInTheLoop:
    """Ties a model's decays into ``decay_groups`` pairs per layer and keeps its forward pass on the values the
    chip holds (see the module docstring); :meth:`project` refreshes them, :meth:`finish` makes them the model's."""

    def __init__(self, model: nn.Module, kind: str | Adapter, decay_groups: int, headroom: float = HEADROOM,
                 seed: int = 0) -> None:
        if not isinstance(kind, Adapter) and kind not in ADAPTERS:
            raise ValueError(f"chip-in-the-loop fine-tuning covers {', '.join(ADAPTERS)} models, not {kind!r}")
        if decay_groups < 1:
            raise ValueError(f"decay_groups must be at least 1, got {decay_groups}")
        self.model, self.adapter = model, kind if isinstance(kind, Adapter) else ADAPTERS[kind]()
        self.decay_groups, self.headroom = decay_groups, headroom
        self.weights = self.adapter.weights(model)
        self.decays = self.adapter.decays(model)
        self.params: dict[tuple[nn.Module, str], _Held] = {}
        for module in self.weights.values():
            self._parametrize(module, "weight")
        self.labels: dict[str, np.ndarray] = {}
        for layer, slots in self.decays.items():
            for slot in slots:
                if slot is not None:
                    self._parametrize(*slot)
            self.labels[layer] = self._cluster(layer, seed)
        self.report: dict = {}

    def _parametrize(self, module: nn.Module, name: str) -> None:
        held = _Held()
        parametrize.register_parametrization(module, name, held)
        self.params[(module, name)] = held

    def _raw(self, module: nn.Module, name: str) -> torch.Tensor:
        return getattr(module.parametrizations, name).original

    def _decay(self, slot: Slot) -> np.ndarray:
        """The decay factor a slot's raw parameter stands for, per neuron."""
        raw = self._raw(*slot).detach()
        return np.atleast_1d((torch.sigmoid(raw) if self.adapter.logits else raw).cpu().double().numpy())

    def _grid(self, layer: str) -> np.ndarray:
        """Per neuron of ``layer``: its float decays on the chip's scale, columns ``du``, ``dv`` (``du`` 0
        without a current decay)."""
        voltage, current = self.decays[layer]
        beta = self._decay(voltage)
        du = encoding.du_exact(self._decay(current)) if current is not None else np.zeros_like(beta)
        du, beta = np.broadcast_arrays(du, beta)
        return np.stack([du, encoding.dv_exact(beta)], axis=1)

    def _cluster(self, layer: str, seed: int) -> np.ndarray:
        points = np.rint(self._grid(layer))
        if np.unique(points, axis=0).shape[0] <= self.decay_groups:
            return np.unique(points, axis=0, return_inverse=True)[1].reshape(-1)
        return KMeans(self.decay_groups, n_init=10, random_state=seed).fit(points).labels_

    def _tie(self) -> None:
        """Every neuron's decays := its cluster's mean, on the chip's grid (the forward value of the logits)."""
        for layer, (voltage, current) in self.decays.items():
            grid, labels = self._grid(layer), self.labels[layer]
            means = np.zeros((labels.max() + 1, 2))
            np.add.at(means, labels, grid)
            means /= np.bincount(labels)[:, None]
            tied = encoding.to_decay(means[labels])
            tied[:, 1] = np.maximum(tied[:, 1], 1)  # a leaky neuron keeps a leak: dv = 0 is no decay (tau = inf)
            for slot, value in ((voltage, encoding.voltage_decay(tied[:, 1])),
                                (current, encoding.current_decay(tied[:, 0]))):
                if slot is not None:
                    raw = self._raw(*slot)
                    value = _logit(value) if self.adapter.logits else value
                    target = torch.as_tensor(value, dtype=raw.dtype, device=raw.device)
                    self.params[slot].held = target.reshape(raw.shape) if raw.dim() else target[0]

    @torch.no_grad()
    def project(self) -> None:
        """Lower the model as it stands (float weights, tied decays) and make the chip's weights its forward value."""
        self._tie()
        for module in self.weights.values():
            self.params[(module, "weight")].held = None
        graph = normalize(self.adapter.to_nir(self.model))
        chip = lower(graph, decay_groups=self.decay_groups, headroom=self.headroom)
        held = held_parameters(graph, chip)
        for node, module in self.weights.items():
            raw = self._raw(module, "weight")
            self.params[(module, "weight")].held = torch.as_tensor(held.weights[node], dtype=raw.dtype,
                                                                   device=raw.device)
        self.report = {name: {"weight_error": layer.weight_error, "decay_groups": layer.decay_groups}
                       for name, layer in chip.lowering.layers.items()}

    @torch.no_grad()
    def finish(self) -> dict:
        """Make the held values the model's parameters and remove the parametrizations; repeat the projection
        until lowering reproduces the weights. Returns the last lowering's per-layer report."""
        rounds, change = 0, float("inf")
        while rounds < PROJECTION_ROUNDS and change > 0:
            self.project()
            change = max(float((p.held - self._raw(m, n)).abs().max()) for (m, n), p in self.params.items())
            for (module, name), p in self.params.items():
                self._raw(module, name).copy_(p.held)
            rounds += 1
        for module, name in self.params:
            parametrize.remove_parametrizations(module, name, leave_parametrized=False)
        return {"rounds": rounds, "last_change": change, "layers": self.report}


def chip_finetune(model: nn.Module, kind: str | Adapter, train: Split, test: Split, *,
                  decay_groups: int = DEFAULT_DECAY_GROUPS, headroom: float = HEADROOM, epochs: int = 60,
                  lr: float = 1e-3, seed: int = 0, device: torch.device | str = "cpu",
                  param_groups: list[dict] | None = None, progress: bool = True) -> tuple[TrainResult, dict]:
    """Fine-tune ``model`` with the chip in the loop and leave it holding the chip's numbers (module docstring).
    ``param_groups``: the optimizer's groups (e.g. a learning rate of its own for decays), else all parameters.

    Returns the training result (accuracies of the projected model) and a summary:
    the rounds the final projection took, its last change (0: lowering reproduces the
    weights exactly) and each layer's report from the last lowering.
    """
    model.to(device)
    loop = ChipInTheLoop(model, kind, decay_groups, headroom, seed)
    loop.project()
    train_classifier(model, train, test, epochs=epochs, lr=lr, seed=seed, device=device, param_groups=param_groups,
                     after_step=lambda m: loop.project(), desc=f"chip-in-the-loop (K = {decay_groups})",
                     progress=progress)
    summary = loop.finish()
    result = TrainResult(evaluate(model, train, device=device), evaluate(model, test, device=device), epochs,
                         str(device))
    return result, summary
