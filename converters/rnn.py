r"""Export a :class:`~st2chip.learn.rnn.SpikingRNN` to NIR 1.0: a graph with a cycle.

::

    input (n_in) -> fc_in (Affine, zero bias) -> lif (CubaLIF, hidden)
    lif -> rec (Affine, zero bias) -> lif          (the recurrence: a back edge)
    lif -> fc_out (Affine) -> readout (LI, or I for readout "integrate") -> output

NIR reads the recurrent edge in discrete time: at step ``t`` it carries the
hidden spikes of step ``t - 1`` (zero at the first step, :mod:`st2chip.graph.reading`).
The torch neuron :math:`i \leftarrow \alpha i + I`, :math:`v \leftarrow \beta v + i + b`
is NIR's forward-Euler CubaLIF
(:math:`i \leftarrow (1 - dt/\tau_{syn}) i + (dt/\tau_{syn}) w_{in} I`,
:math:`v \leftarrow (1 - dt/\tau_{mem}) v + (dt/\tau_{mem}) (v_{leak} + r i)`) with

- :math:`\tau_{syn} = dt / (1 - \alpha)`, :math:`w_{in} = 1 / (1 - \alpha)`,
- :math:`\tau_{mem} = dt / (1 - \beta)`, :math:`r = 1 / (1 - \beta)`,
- :math:`v_{leak} = b / (1 - \beta)`, :math:`v_{threshold} = \theta`, :math:`v_{reset} = 0`,

and ``metadata["reset"] = "subtract"`` on the node for reset by subtraction
(st2chip's convention; NIR 1.0 has no field for it), ``metadata["max_spikes"] = k`` for a
model trained to send up to ``k > 1`` spikes per step. The leaky readout
:math:`y \leftarrow c\, y + (1 - c) I` is an ``LI`` with :math:`\tau = dt / (1 - c)`,
:math:`r = 1`, :math:`v_{leak} = 0`, its voltage after the last step equal to the
torch scores; the ``integrate`` readout is an ``I`` with :math:`r = 1/dt`, its
voltage ``T`` times the scores. Metadata: ``dt``, ``steps``, ``encoding``
(``"rows"``, with ``levels`` and ``hold``, or ``"sequence"``, with ``levels``),
``producer = "st2chip"``, ``model = "rnn"``.
"""

from __future__ import annotations

import nir
import numpy as np

from st2chip.converters.mlp import DEFAULT_DT, check_finite, spiking_metadata, to_numpy
from st2chip.learn.rnn import SpikingRNN


def rnn_to_nir(model: SpikingRNN, dt: float = DEFAULT_DT) -> nir.NIRGraph:
    """``Input -> Affine -> CubaLIF (-> Affine -> itself) -> Affine -> LI/I -> Output`` for a :class:`SpikingRNN`."""
    check_finite(model)
    c = model.config
    n = (c.hidden,)
    alpha = np.broadcast_to(to_numpy(model.alpha), n).copy()
    beta = np.broadcast_to(to_numpy(model.beta), n).copy()
    theta = np.broadcast_to(to_numpy(model.theta), n).copy()
    bias = to_numpy(model.bias)
    lif = nir.CubaLIF(tau_syn=dt / (1 - alpha), tau_mem=dt / (1 - beta), r=1 / (1 - beta), v_leak=bias / (1 - beta),
                      v_threshold=theta, v_reset=np.zeros(n), w_in=1 / (1 - alpha),
                      metadata=spiking_metadata(c.reset, c.max_spikes))
    if c.readout == "integrate":
        readout: nir.NIRNode = nir.I(r=np.full(c.classes, 1 / dt))
    else:
        readout = nir.LI(tau=np.full(c.classes, dt / (1 - c.readout_leak)), r=np.ones(c.classes),
                         v_leak=np.zeros(c.classes))
    nodes: dict[str, nir.NIRNode] = {
        "input": nir.Input(input_type={"input": np.array([c.inputs])}),
        "fc_in": nir.Affine(weight=to_numpy(model.fc_in.weight), bias=np.zeros(c.hidden)),
        "lif": lif,
        "rec": nir.Affine(weight=to_numpy(model.rec.weight), bias=np.zeros(c.hidden)),
        "fc_out": nir.Affine(weight=to_numpy(model.fc_out.weight), bias=to_numpy(model.fc_out.bias)),
        "readout": readout,
        "output": nir.Output(output_type={"output": np.array([c.classes])}),
    }
    edges = [("input", "fc_in"), ("fc_in", "lif"), ("lif", "rec"), ("rec", "lif"), ("lif", "fc_out"),
             ("fc_out", "readout"), ("readout", "output")]
    metadata = {"dt": dt, "steps": c.steps, "encoding": c.encoding, "levels": c.levels, "producer": "st2chip",
                "model": "rnn"}
    if c.encoding == "rows":
        metadata["hold"] = c.hold
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata, type_check=False)
