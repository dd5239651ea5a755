r"""Fine-tuning for a Xylo chip (``st2chip quantize model.nir --target xylo-audio3``): train what the chip computes.

The graph is first rewritten into its Xylo meaning (:func:`~st2chip.xylo.meaning.xylo_meaning`: the
chip's synaptic filter, shift leaks, integer thresholds and biases, up to 31 spikes per step), and that
graph trains in st2chip's trainable interpreter (:class:`~st2chip.graph.torch_model.GraphModule`) as
:mod:`st2chip.chip.finetune_graph` trains one for Loihi: the same seeded holdout split, loss
temperature and float/chip accuracy before and after. What trains: the Affine weights, their forward
pass on Xylo's grid :math:`w_8 2^{\sigma} / s` (8-bit :math:`w_8`, straight-through rounding). Each layer's
scale :math:`s` and each matrix's shift :math:`\sigma` come from the first lowering and follow the lowering
of the held weights after every optimizer step (a readout's scale keeps its reachable ``|v|`` in 16 bits, so
it moves with its weights; a lowering of the small Xylo graph takes milliseconds). Decays stay on their
shift grid, thresholds and biases as the chip holds them.

After the last epoch the weights are set to the held ones and the graph rewritten as the chip computes it
(:func:`~st2chip.xylo.meaning.xylo_meaning`); ``changed`` counts the chip weights that then differ from the
trained held ones (0: the chip holds exactly what trained).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import nir
import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from st2chip.chip.finetune_graph import Accuracy, calibrate, check_labels, holdout_split, side_by_side
from st2chip.graph.simulate import simulate
from st2chip.graph.torch_model import AffineNode, GraphModule, NeuronNode
from st2chip.learn.data import Split
from st2chip.learn.training import train_classifier
from st2chip.traces import Traces
from st2chip.xylo.lower import lower_xylo
from st2chip.xylo.lowering.passes import plan_xylo
from st2chip.xylo.lowering.weights import matrix_of
from st2chip.xylo.meaning import WEIGHT_MARGIN, layer_affines, xylo_meaning
from st2chip.xylo.spec import XyloSpec
from st2chip.xylo.xylograph import WEIGHT_RANGE, XyloGraph

XyloRunner = Callable[[XyloGraph, dict[str, np.ndarray]], Traces]  # the chip's engine, as the API passes it


@dataclass
class XyloTuning:
    """What :func:`finetune_xylo` did: the tuned graph (Xylo's meaning, which lowering reproduces), held-out
    accuracies before (the graph as given) and after, and how many chip weights the final rewrite moved."""

    graph: nir.NIRGraph
    before: Accuracy
    after: Accuracy
    train_samples: int
    holdout_samples: int
    epochs: int
    temperature: float
    changed: int
    layers: dict

    def to_dict(self) -> dict:
        """Everything but the graph, as JSON-ready values."""
        return {"before": asdict(self.before), "after": asdict(self.after), "train_samples": self.train_samples,
                "holdout_samples": self.holdout_samples, "epochs": self.epochs, "temperature": self.temperature,
                "changed": self.changed, "layers": self.layers}


class OnGrid(nn.Module):
    """A straight-through parametrization: forward ``clip(round(w / step), -128, 127) * step``, gradient to ``w``."""

    def __init__(self, step: float) -> None:
        super().__init__()
        self.step = step

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w + (held(w, self.step) - w).detach()


def held(w: torch.Tensor, step: float) -> torch.Tensor:
    """``w`` on Xylo's weight grid: 8-bit multiples of ``step`` (:math:`2^{\\sigma} / s`)."""
    return torch.clamp(torch.round(w / step), *WEIGHT_RANGE) * step


def weight_steps(graph: nir.NIRGraph, spec: XyloSpec) -> dict[str, float]:
    """Per Affine node of a meaning graph: the weight one chip LSB stands for, :math:`2^{\\sigma} / s` of the
    matrix it lies in and the layer it feeds, as the lowering chooses them."""
    plan = plan_xylo(graph, spec)
    steps = {}
    for layer in plan.layers:
        affines = layer_affines(graph, layer.name)
        for chain in layer.chains:
            matrix = matrix_of(plan, chain, layer)
            if matrix is not None:
                steps[affines[(chain.source, chain.recurrent)]] = 2.0 ** plan.shifts[matrix] / plan.quantized[
                    layer.name].scale
    return steps


def xylo_accuracy(graph: nir.NIRGraph, spec: XyloSpec, spikes: dict[str, np.ndarray], labels: np.ndarray,
                  run_chip: XyloRunner) -> Accuracy:
    """Float and chip accuracy of ``graph`` on ``spikes``, the chip run by ``run_chip`` (st2chip's Xylo engine, as
    the API passes it: the Xylo layer does not import a backend)."""
    floating = simulate(graph, side_by_side(graph, spikes), record=False).predictions()
    on_chip = run_chip(lower_xylo(graph, spec), spikes).predictions()
    return Accuracy(float(np.mean(floating == labels)), float(np.mean(on_chip == labels)),
                    float(np.mean(floating == on_chip)))


def finetune_xylo(graph: nir.NIRGraph, spikes: dict[str, np.ndarray], labels: np.ndarray | None, *, spec: XyloSpec,
                  epochs: int, lr: float, holdout: float, run_chip: XyloRunner, seed: int = 0,
                  device: torch.device | str = "cpu", progress: bool = True) -> XyloTuning:
    """Fine-tune canonical ``graph`` for Xylo chip ``spec`` on ``spikes`` (Input name -> ``(B, T, n)``) and
    ``labels`` (module docstring), ``run_chip`` running the chip (see :func:`xylo_accuracy`)."""
    x = side_by_side(graph, spikes)
    meaning = xylo_meaning(graph, spec)
    steps = weight_steps(meaning, spec)
    module = GraphModule(meaning)
    _train_weights_only(module, steps)
    labels = check_labels(labels, int(module(module.encode(torch.from_numpy(x[:1]))).shape[1]))
    train, test = holdout_split(len(labels), holdout, seed)
    temperature = calibrate(module, x[train], labels[train])
    held_out = {n: s[test] for n, s in spikes.items()}
    before = xylo_accuracy(graph, spec, held_out, labels[test], run_chip)
    train_classifier(module, Split(x[train], labels[train]), Split(x[test], labels[test]), epochs=epochs, lr=lr,
                     seed=seed, device=device, desc=f"{spec.name} in the loop", progress=progress,
                     after_step=lambda m: _follow(m, steps, spec))
    trained = _held_graph(module.cpu(), steps)
    tuned = xylo_meaning(trained, spec)
    chip = lower_xylo(tuned, spec)
    after = xylo_accuracy(tuned, spec, held_out, labels[test], run_chip)
    return XyloTuning(tuned, before, after, len(train), len(test), epochs, temperature,
                      _changed(trained, tuned, steps, spec), dict(chip.report))


def _train_weights_only(module: GraphModule, steps: dict[str, float]) -> None:
    """Affine weights train on the chip's grid (:class:`OnGrid`); biases (zero in a meaning graph) and decays
    (on their shift grid) stay."""
    for name, node in zip(module.names, module.layers):
        if isinstance(node, AffineNode):
            node.bias.requires_grad_(False)
            if name in steps:
                parametrize.register_parametrization(node, "weight", OnGrid(steps[name]))
            else:
                node.weight.requires_grad_(False)
        elif isinstance(node, NeuronNode):
            for p in node.parameters():
                p.requires_grad_(False)


@torch.no_grad()
def _follow(module: GraphModule, steps: dict[str, float], spec: XyloSpec) -> None:
    """Move each weight grid to where the lowering puts it for the weights the module now holds (a layer's
    scale follows its weights: a readout's keeps its reachable ``|v|`` in 16 bits)."""
    steps.update(weight_steps(module.to_nir(), spec))
    for name, step in steps.items():
        module.module(name).parametrizations.weight[0].step = step


@torch.no_grad()
def _held_graph(module: GraphModule, steps: dict[str, float]) -> nir.NIRGraph:
    """The trained graph with every Affine weight on its grid (float64), a hair inside it as the meaning holds
    it."""
    for name in steps:
        node = module.module(name)
        parametrize.remove_parametrizations(node, "weight", leave_parametrized=False)
    graph = module.to_nir()
    for name, step in steps.items():
        w = torch.from_numpy(np.asarray(graph.nodes[name].weight, dtype=np.float64))
        graph.nodes[name].weight = held(w, step).numpy() * (1 - WEIGHT_MARGIN)
    return graph


def _changed(trained: nir.NIRGraph, tuned: nir.NIRGraph, steps: dict[str, float], spec: XyloSpec) -> int:
    """Chip weights (8-bit) of the tuned graph that differ from the trained held ones."""
    new_steps = weight_steps(tuned, spec)
    count = 0
    for name, step in steps.items():
        a = np.rint(np.asarray(trained.nodes[name].weight) / step)
        b = np.rint(np.asarray(tuned.nodes[name].weight) / new_steps[name])
        count += int(np.count_nonzero(a != b))
    return count

