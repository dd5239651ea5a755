r"""Export st2chip models to NIR 1.0.

Mapping of the discrete-time sLIF (see :mod:`st2chip.neurons`) to NIR's
continuous-time LIF, :math:`\tau \dot v = (v_{leak} - v) + r I`, read with a
forward-Euler step of ``dt`` (stored in ``graph.metadata["dt"]``):

.. math::

    v[t] = \big(1 - \tfrac{dt}{\tau}\big) v[t-1] + \tfrac{dt}{\tau}\, r\, I[t]

so :math:`\tau_i = dt / (1 - \beta_i)`, :math:`r_i = \tau_i / dt = 1/(1-\beta_i)`,
:math:`v_{leak} = 0`, :math:`v_{threshold,i} = \theta_i`, :math:`v_{reset} = 0`;
and back, :math:`\beta_i = 1 - dt/\tau_i`. The integrating readout is
``nir.I`` with :math:`r = 1/dt` (:math:`v[t] = v[t-1] + I[t]`); its voltage after
the last step is ``T`` times the torch model's scores. A layer trained to send up to
``k > 1`` spikes per step gets ``metadata["max_spikes"] = k`` (the float interpreter's
count, :func:`~st2chip.learn.neurons.spike_count`).
"""

from __future__ import annotations

import nir
import numpy as np
import torch

from st2chip.errors import InputError
from st2chip.learn.mlp import SpikingMLP
from st2chip.learn.neurons import SLIF

DEFAULT_DT = 1e-3


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A float64 numpy copy of a (possibly grad-carrying, GPU) tensor."""
    return t.detach().cpu().double().numpy().copy()


def slif_to_nir(neuron: SLIF, shape: tuple[int, ...], dt: float) -> nir.LIF:
    """The NIR LIF of an sLIF layer (mapping above), parameters broadcast to ``shape``.

    A neuron that resets by subtraction gets ``metadata["reset"] = "subtract"``
    (st2chip's convention, :mod:`st2chip.graph.reading`; NIR 1.0 has no field for it), and one
    that sends up to ``k > 1`` spikes per step ``metadata["max_spikes"] = k``.
    """
    beta = np.broadcast_to(to_numpy(neuron.beta), shape).copy()
    theta = np.broadcast_to(to_numpy(neuron.theta), shape).copy()
    zeros = np.zeros(shape)
    metadata = spiking_metadata(neuron.reset, neuron.max_spikes)
    return nir.LIF(tau=dt / (1 - beta), r=1 / (1 - beta), v_leak=zeros, v_threshold=theta, v_reset=zeros.copy(),
                   metadata=metadata)


def spiking_metadata(reset: str, max_spikes: int) -> dict:
    """A spiking node's st2chip metadata: ``reset`` when it subtracts, ``max_spikes`` when above 1."""
    metadata: dict = {"reset": "subtract"} if reset == "subtract" else {}
    if max_spikes > 1:
        metadata["max_spikes"] = int(max_spikes)
    return metadata


def check_finite(model: torch.nn.Module) -> None:
    """Refuse a model with NaN or infinite parameters (an :class:`InputError` naming the parameter)."""
    for name, tensor in model.named_parameters():
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            raise InputError(f"parameter '{name}': {bad} of {tensor.numel()} values are NaN or infinite; "
                             f"nothing exported")


def mlp_to_nir(model: SpikingMLP, dt: float = DEFAULT_DT) -> nir.NIRGraph:
    """``Input -> (Affine -> LIF)* -> Affine -> I -> Output`` for a :class:`SpikingMLP` (reset by
    subtraction is marked on each LIF, see :func:`slif_to_nir`)."""
    check_finite(model)
    sizes = model.config.sizes
    nodes: dict[str, nir.NIRNode] = {"input": nir.Input(input_type={"input": np.array([sizes[0]])})}
    edges: list[tuple[str, str]] = []
    previous = "input"
    for k, (linear, neuron) in enumerate(zip(model.linears[:-1], model.neurons), start=1):
        nodes[f"fc{k}"] = nir.Affine(weight=to_numpy(linear.weight), bias=to_numpy(linear.bias))
        nodes[f"lif{k}"] = slif_to_nir(neuron, (linear.out_features,), dt)
        edges += [(previous, f"fc{k}"), (f"fc{k}", f"lif{k}")]
        previous = f"lif{k}"
    last = model.linears[-1]
    k = len(model.linears)
    nodes[f"fc{k}"] = nir.Affine(weight=to_numpy(last.weight), bias=to_numpy(last.bias))
    nodes["readout"] = nir.I(r=np.full(last.out_features, 1 / dt))
    nodes["output"] = nir.Output(output_type={"output": np.array([last.out_features])})
    edges += [(previous, f"fc{k}"), (f"fc{k}", "readout"), ("readout", "output")]
    metadata = {"dt": dt, "steps": model.config.steps, "encoding": model.config.encoding, "producer": "st2chip",
                "model": "mlp"}
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata)
