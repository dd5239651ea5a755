"""st2chip's Lava process for a host partition: a spiking Transformer's attention product.

:class:`HostProductProcess` receives, each step, the spikes of three layers
(``Q``, ``K``, ``V``: ``tokens * dim`` neurons each, token-major) and sends, in the
same step, on ``s_out``, the integer counts ``(Q K^T) V`` per head as a graded message (see
:class:`~st2chip.chip.chipgraph.HostProduct`). The synapse group after it (``Dense``
or ``Sparse`` with graded input) adds them to its target one step later, as every
group does: the same timing as st2chip's engine. On a Loihi 2 system this runs on
an embedded CPU or the host; here it is a Python process model like Lava's own.
Kept in a package of its own: Lava's model search scans the process module's folder.
"""

from __future__ import annotations

import numpy as np
import torch

from st2chip.attention import attention_counts
from st2chip.targets.lava_compat import ensure_lava

ensure_lava()

from lava.magma.core.decorator import implements, requires, tag  # noqa: E402
from lava.magma.core.model.py.model import PyLoihiProcessModel  # noqa: E402
from lava.magma.core.model.py.ports import PyInPort, PyOutPort  # noqa: E402
from lava.magma.core.model.py.type import LavaPyType  # noqa: E402
from lava.magma.core.process.ports.ports import InPort, OutPort  # noqa: E402
from lava.magma.core.process.process import AbstractProcess  # noqa: E402
from lava.magma.core.resources import CPU  # noqa: E402
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol  # noqa: E402


class HostProductProcess(AbstractProcess):
    """Per step: counts ``(Q K^T) V`` per head of the spikes on ``q``, ``k``, ``v``, sent on ``s_out``."""

    def __init__(self, *, heads: int, tokens: int, dim: int, name: str | None = None) -> None:
        super().__init__(name=name)
        if heads < 1 or tokens < 1 or dim < 1 or dim % heads:
            raise ValueError(f"need positive heads, tokens, dim with dim divisible by heads; got {heads}, "
                             f"{tokens}, {dim}")
        self.proc_params["heads"], self.proc_params["tokens"], self.proc_params["dim"] = heads, tokens, dim
        shape = (tokens * dim,)
        self.q, self.k, self.v = InPort(shape=shape), InPort(shape=shape), InPort(shape=shape)
        self.s_out = OutPort(shape=shape)


@implements(proc=HostProductProcess, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyHostProductModel(PyLoihiProcessModel):
    """The counts in int64 arithmetic (:func:`st2chip.attention.attention_counts`, exact), sent as int32
    (they never exceed ``tokens * dim / heads``)."""

    q: PyInPort = LavaPyType(PyInPort.VEC_DENSE, bool)
    k: PyInPort = LavaPyType(PyInPort.VEC_DENSE, bool)
    v: PyInPort = LavaPyType(PyInPort.VEC_DENSE, bool)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)

    def run_spk(self) -> None:
        q, k, v = (torch.from_numpy(port.recv().astype(np.int64)) for port in (self.q, self.k, self.v))
        counts = attention_counts(q, k, v, self.proc_params["tokens"], self.proc_params["heads"])
        self.s_out.send(counts.numpy().astype(np.int32))
