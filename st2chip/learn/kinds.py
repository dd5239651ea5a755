"""The model kinds st2chip trains, in one registry: a checkpoint's ``kind`` -> its config and model classes.

Every place that turns a kind into a class (checkpoints, export, fine-tuning) reads
:data:`MODEL_KINDS`; a new model is one entry here. Classes are imported on first use,
so that reading the registry stays cheap.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class ModelKind:
    """One kind of model: where its classes live and what it is."""

    name: str
    module: str
    config_class: str
    model_class: str
    description: str

    def classes(self) -> tuple[type, type[nn.Module]]:
        """``(config class, model class)``."""
        module = importlib.import_module(self.module)
        return getattr(module, self.config_class), getattr(module, self.model_class)


MODEL_KINDS: dict[str, ModelKind] = {kind.name: kind for kind in (
    ModelKind("mlp", "st2chip.learn.mlp", "MLPConfig", "SpikingMLP", "sLIF multilayer perceptron"),
    ModelKind("cnn", "st2chip.learn.cnn", "CNNConfig", "SpikingCNN", "sLIF convolutional network"),
    ModelKind("rnn", "st2chip.learn.rnn", "RNNConfig", "SpikingRNN", "recurrent sLIF (or CubaLIF) network"),
    ModelKind("st", "st2chip.learn.transformer", "STConfig", "SpikingTransformer",
              "spiking Transformer (Spikformer-style blocks)"),
)}
KINDS = tuple(MODEL_KINDS)
