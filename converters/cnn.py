r"""Export a :class:`~st2chip.learn.cnn.SpikingCNN` to NIR 1.0.

The graph, for the default two-stage model::

    input (1, 8, 8) -> conv1 (Conv2d) -> lif1 (LIF, (8, 8, 8)) -> pool1 (SumPool2d 2x2)
    -> conv2 (Conv2d) -> lif2 (LIF, (16, 4, 4)) -> pool2 (SumPool2d 2x2)
    -> flatten (Flatten of (16, 2, 2), C order) -> fc (Affine 64 -> 10) -> readout (I, r = 1/dt) -> output

Each sLIF layer maps to a LIF as in :mod:`st2chip.converters.mlp`
(:math:`\tau = dt/(1-\beta)`, :math:`r = 1/(1-\beta)`, :math:`v_{leak} = 0`,
:math:`v_{threshold} = \theta`; ``metadata["reset"] = "subtract"`` for reset by
subtraction), its per-channel parameters broadcast to ``(C, H, W)``. A
``Conv2d`` carries its ``input_shape`` ``(H, W)``, stride 1, ``same`` padding
``k // 2`` as numbers, dilation 1, one group and its bias. The readout's voltage
after the last step is ``T`` times the torch model's scores. Metadata:
``dt``, ``steps``, ``encoding = "rate"``, ``producer = "st2chip"``, ``model = "cnn"``.
"""

from __future__ import annotations

import nir
import numpy as np

from st2chip.converters.mlp import DEFAULT_DT, check_finite, slif_to_nir, to_numpy
from st2chip.learn.cnn import SpikingCNN


def cnn_to_nir(model: SpikingCNN, dt: float = DEFAULT_DT) -> nir.NIRGraph:
    """``Input -> (Conv2d -> LIF -> SumPool2d)* -> Flatten -> Affine -> I -> Output`` for a :class:`SpikingCNN`."""
    check_finite(model)
    c = model.config
    shapes = c.stage_shapes()
    nodes: dict[str, nir.NIRNode] = {"input": nir.Input(input_type={"input": np.array(c.image)})}
    edges: list[tuple[str, str]] = []
    previous, (h, w) = "input", c.image[1:]
    p = c.pool
    for k, (conv, neuron) in enumerate(zip(model.convs, model.neurons), start=1):
        pad = c.kernel // 2
        nodes[f"conv{k}"] = nir.Conv2d(input_shape=(int(h), int(w)), weight=to_numpy(conv.weight), stride=(1, 1),
                                       padding=(pad, pad), dilation=(1, 1), groups=1, bias=to_numpy(conv.bias))
        nodes[f"lif{k}"] = slif_to_nir(neuron, shapes[k - 1], dt)
        nodes[f"pool{k}"] = nir.SumPool2d(kernel_size=np.array([p, p]), stride=np.array([p, p]),
                                          padding=np.array([0, 0]))
        edges += [(previous, f"conv{k}"), (f"conv{k}", f"lif{k}"), (f"lif{k}", f"pool{k}")]
        previous, (h, w) = f"pool{k}", shapes[k][1:]
    nodes["flatten"] = nir.Flatten(input_type={"input": np.array(shapes[-1])}, start_dim=0, end_dim=-1)
    nodes["fc"] = nir.Affine(weight=to_numpy(model.fc.weight), bias=to_numpy(model.fc.bias))
    nodes["readout"] = nir.I(r=np.full(c.classes, 1 / dt))
    nodes["output"] = nir.Output(output_type={"output": np.array([c.classes])})
    edges += [(previous, "flatten"), ("flatten", "fc"), ("fc", "readout"), ("readout", "output")]
    metadata = {"dt": dt, "steps": c.steps, "encoding": c.encoding, "producer": "st2chip", "model": "cnn"}
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata, type_check=False)
