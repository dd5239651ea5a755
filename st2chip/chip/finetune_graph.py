r"""Chip-in-the-loop fine-tuning of a NIR graph from any framework (``st2chip quantize model.nir --inputs``).

The graph itself is the model: :class:`~st2chip.graph.torch_model.GraphModule`, the
float interpreter made trainable, runs it with surrogate gradients, and
:func:`~st2chip.chip.finetune.chip_finetune` trains it as it trains st2chip's own
checkpoints — decays tied into ``decay_groups`` pairs per layer, the forward pass on
the weights the chip holds (straight through), projected at the end until lowering
reproduces them. What trains: every Affine and convolution weight on a path between
two layers (held) and nonzero bias (float; the chip rounds it; a zero bias stays zero,
so that fine-tuning adds nothing to the chip), every leaky neuron's decays (tied; at a
tenth of the learning rate, :data:`DECAY_LR_SCALE`).
Gains, thresholds and resets stay as the graph has them. Paths with one trained node
each are covered, Flatten, Scale and pooling before it included
(:func:`~st2chip.chip.held.held_parameters` refuses others with the node named: pooling
after a convolution, a low-rank U·V product, a channel whose neurons the chip holds
differently).

The user's samples are split once (seeded): ``holdout`` of them are kept out of
training and measure the float (:func:`~st2chip.graph.simulate.simulate`) and chip
(st2chip's engine) accuracy of the graph before and after. The loss is the
cross-entropy of the graph's scores divided by one temperature, fixed before
training where it fits the training samples best (:func:`calibrate`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import nir
import numpy as np
import torch

from st2chip.chip.chipgraph import ChipGraph
from st2chip.chip.finetune import Adapter, chip_finetune
from st2chip.chip.lower import lower
from st2chip.errors import InputError
from st2chip.graph.simulate import simulate
from st2chip.graph.torch_model import AffineNode, GraphModule, LEAKY, MapNode
from st2chip.learn.data import Split
from st2chip.traces import Traces

ChipRun = Callable[[ChipGraph, dict[str, np.ndarray]], Traces]  # a backend: ChipGraph + inputs -> traces

DECAY_GROUPS_KEY = "decay_groups"  # graph metadata: the K the decays are tied into (map's default then)
TEMPERATURE_GRID = 61              # temperatures tried from 1e-3 to 1e3 times the scores' spread
DECAY_LR_SCALE = 0.1               # decays train at this fraction of --lr: Adam moves a parameter ~lr per step, and
                                   # a decay in its own units should move as a logit-trained one near 0.9 does


@dataclass(frozen=True)
class Accuracy:
    """Accuracy on the held-out samples: the float interpreter's and the chip's (engine), and how often their
    predictions agree."""

    float: float
    chip: float
    agreement: float


@dataclass
class GraphTuning:
    """What :func:`finetune_graph` did: the tuned canonical graph, the held-out accuracies before and after, the
    loss temperature (:func:`calibrate`) and the final projection's rounds, last change and per-layer report."""

    graph: nir.NIRGraph
    before: Accuracy
    after: Accuracy
    train_samples: int
    holdout_samples: int
    decay_groups: int
    epochs: int
    temperature: float
    rounds: int
    last_change: float
    layers: dict

    def to_dict(self) -> dict:
        """Everything but the graph, as JSON-ready values."""
        return {"before": asdict(self.before), "after": asdict(self.after), "train_samples": self.train_samples,
                "holdout_samples": self.holdout_samples, "decay_groups": self.decay_groups, "epochs": self.epochs,
                "temperature": self.temperature, "rounds": self.rounds, "last_change": self.last_change,
                "layers": self.layers}


def graph_adapter() -> Adapter:
    """How a :class:`GraphModule` meets the chip: its Affine and convolution nodes' weights, its leaky neurons'
    decays (raw)."""
    def weights(module: GraphModule) -> dict:
        return {n: m for n, m in zip(module.names, module.layers) if _trained(m)}

    def decays(module: GraphModule) -> dict:
        return {n: ((m, "decay"), (m, "syn_decay") if m.cuba else None) for n, m in module.neurons().items()
                if issubclass(m.kind, LEAKY)}

    return Adapter(lambda module: module.to_nir(), weights, decays, logits=False)


def _trained(module: torch.nn.Module) -> bool:
    """An Affine or convolution node (pooling nodes are MapNodes without weights)."""
    return isinstance(module, AffineNode) or (isinstance(module, MapNode) and hasattr(module, "weight"))


def holdout_split(samples: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training and held-out samples: a seeded permutation, ``fraction`` of them held out."""
    if not 0 < fraction < 1:
        raise InputError(f"--holdout must lie strictly between 0 and 1, got {fraction:g}")
    count = int(round(fraction * samples))
    if count < 1 or count >= samples:
        raise InputError(f"--inputs: {samples} sample(s) cannot be split into training and a {fraction:.0%} "
                         f"held-out part; give more samples")
    order = np.random.default_rng(seed).permutation(samples)
    return np.sort(order[count:]), np.sort(order[:count])


def accuracy(graph: nir.NIRGraph, spikes: dict[str, np.ndarray], labels: np.ndarray, decay_groups: int,
             headroom: float, run_chip: ChipRun) -> Accuracy:
    """Float and chip accuracy of ``graph`` on ``spikes``, the chip lowered with ``decay_groups`` and run by
    ``run_chip`` (st2chip's engine, as the API passes it: the chip layer does not import a backend)."""
    floating = simulate(graph, side_by_side(graph, spikes), record=False).predictions()
    on_chip = run_chip(lower(graph, decay_groups=decay_groups, headroom=headroom), spikes).predictions()
    return Accuracy(float(np.mean(floating == labels)), float(np.mean(on_chip == labels)),
                    float(np.mean(floating == on_chip)))


def side_by_side(graph: nir.NIRGraph, spikes: dict[str, np.ndarray]) -> np.ndarray:
    """The Input nodes' spikes concatenated in graph order, as the interpreters take them."""
    names = [n for n, node in graph.nodes.items() if isinstance(node, nir.Input)]
    return np.concatenate([spikes[n] for n in names], axis=2)


def check_labels(labels: np.ndarray | None, classes: int) -> np.ndarray:
    """``labels`` as int64, each a class of a graph with ``classes`` scores; an :class:`InputError` naming
    ``--inputs`` otherwise (fine-tuning needs labels)."""
    if labels is None:
        raise InputError("--inputs: fine-tuning needs labels: store an integer array 'labels' (batch,) in the .npz")
    labels = np.asarray(labels)
    bad = (labels < 0) | (labels >= classes)
    if bad.any():
        i = int(np.argmax(bad))
        raise InputError(f"--inputs: label {int(labels[i])} of sample {i} is not a class of this graph "
                         f"(its Output nodes give {classes} scores: labels 0 .. {classes - 1})")
    return labels.astype(np.int64)


def _param_groups(module: GraphModule, lr: float) -> list[dict]:
    """Weights and biases at ``lr``, decays at ``lr * DECAY_LR_SCALE``."""
    trained = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    decays = [p for n, p in trained if n.endswith("decay")]
    return [{"params": [p for n, p in trained if not n.endswith("decay")]},
            *([{"params": decays, "lr": lr * DECAY_LR_SCALE}] if decays else [])]


@torch.no_grad()
def calibrate(module: GraphModule, x: np.ndarray, labels: np.ndarray, batch_size: int = 256) -> float:
    """Set ``module.temperature`` to the one that minimizes the cross-entropy of its scores on ``x`` (a log grid
    around their spread), and return it: a graph's scores come in its own units (spike counts, voltages), and
    the loss should neither saturate nor flatten on them."""
    scores = torch.cat([module.scores(module.run(module.encode(torch.from_numpy(x[k:k + batch_size]))))
                        for k in range(0, len(x), batch_size)]).double()
    target = torch.from_numpy(labels)
    spread = float(scores.std()) or 1.0
    grid = spread * np.geomspace(1e-3, 1e3, TEMPERATURE_GRID)
    losses = [float(torch.nn.functional.cross_entropy(scores / t, target)) for t in grid]
    module.temperature = float(grid[int(np.argmin(losses))])
    return module.temperature


def finetune_graph(graph: nir.NIRGraph, spikes: dict[str, np.ndarray], labels: np.ndarray | None, *,
                   decay_groups: int, headroom: float, epochs: int, lr: float, holdout: float,
                   run_chip: ChipRun, seed: int = 0, device: torch.device | str = "cpu",
                   progress: bool = True) -> GraphTuning:
    """Fine-tune canonical ``graph`` on ``spikes`` (Input name -> ``(B, T, n)``) and ``labels`` with the chip in
    the loop (module docstring). The returned graph records ``decay_groups`` in its metadata."""
    x = side_by_side(graph, spikes)
    module = GraphModule(graph)
    for node in graph_adapter().weights(module).values():  # no bias where the graph has none: nothing new on chip
        node.bias.requires_grad_(bool(node.bias.detach().any()))
    labels = check_labels(labels, int(module(module.encode(torch.from_numpy(x[:1]))).shape[1]))
    train, test = holdout_split(len(labels), holdout, seed)
    temperature = calibrate(module, x[train], labels[train])
    held_out = {n: s[test] for n, s in spikes.items()}
    before = accuracy(graph, held_out, labels[test], decay_groups, headroom, run_chip)
    _, summary = chip_finetune(module, graph_adapter(), Split(x[train], labels[train]),
                               Split(x[test], labels[test]), decay_groups=decay_groups, headroom=headroom,
                               epochs=epochs, lr=lr, seed=seed, device=device,
                               param_groups=_param_groups(module, lr), progress=progress)
    tuned = module.cpu().to_nir()
    tuned.metadata[DECAY_GROUPS_KEY] = int(decay_groups)
    after = accuracy(tuned, held_out, labels[test], decay_groups, headroom, run_chip)
    return GraphTuning(tuned, before, after, len(train), len(test), decay_groups, epochs, temperature,
                       summary["rounds"], summary["last_change"], summary["layers"])
