"""st2chip's Lava process for a host partition: a spiking Transformer's attention product.

A host process receives, each step, the spikes of three layers (``Q``, ``K``,
``V``: ``tokens * dim`` neurons each, token-major) and sends, in the same step, on
``s_out``, the integer counts ``(Q K^T) V`` per head as a graded message (see
:class:`~st2chip.chip.chipgraph.HostProduct`). Lowering may split a layer into
several populations (decay groups, outliers), each holding some of the layer's
neurons; the process then has one input port per population (``q0``, ``q1``, ...,
``k0``, ...), and each port's values land at the layer positions its population
holds. The synapse group after it (``Dense`` or ``Sparse`` with graded input)
adds the counts to its target one step later, as every group does: the same
timing as st2chip's engine. On a Loihi 2 system this runs on an embedded CPU or
the host; here it is a Python process model like Lava's own.

Lava's compiler finds a process's models among the classes of the process's
module, and a model declares its ports as class attributes: so the process and
its model are made here per number of ports (:func:`host_product`) and kept in
this module's namespace, where the compiler looks. The package is its own
folder because Lava's model search also scans the process module's folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import numpy as np
import torch

from st2chip.attention import attention_counts
from st2chip.targets.lava_compat import ensure_lava

ensure_lava()

from lava.magma.core.model.py.model import PyLoihiProcessModel  # noqa: E402
from lava.magma.core.model.py.ports import PyInPort, PyOutPort  # noqa: E402
from lava.magma.core.model.py.type import LavaPyType  # noqa: E402
from lava.magma.core.process.ports.ports import InPort, OutPort  # noqa: E402
from lava.magma.core.process.process import AbstractProcess  # noqa: E402

from st2chip.targets.lava_ports import fixed_point_classes  # noqa: E402

ROLES = ("q", "k", "v")


class HostProductProcess(AbstractProcess):
    """Per step: counts ``(Q K^T) V`` per head of the spikes on its ``q*``, ``k*``, ``v*`` ports, sent on
    ``s_out``. Made through :func:`host_product`, which picks the subclass for the number of ports."""

    ports: tuple[int, int, int] = (0, 0, 0)  # input ports per role, set by each generated subclass

    def __init__(self, *, heads: int, tokens: int, dim: int, parts: Sequence[Sequence[np.ndarray]],
                 name: str | None = None) -> None:
        super().__init__(name=name)
        if heads < 1 or tokens < 1 or dim < 1 or dim % heads:
            raise ValueError(f"need positive heads, tokens, dim with dim divisible by heads; got {heads}, "
                             f"{tokens}, {dim}")
        size = tokens * dim
        if tuple(len(p) for p in parts) != self.ports:
            raise ValueError(f"{type(self).__name__} takes {self.ports} parts per role, got "
                             f"{tuple(len(p) for p in parts)}")
        parts = tuple(tuple(np.asarray(i, np.int64) for i in role) for role in parts)
        for role, indices in zip(ROLES, parts):
            covered = np.sort(np.concatenate(indices))
            if not np.array_equal(covered, np.arange(size)):
                raise ValueError(f"the '{role}' parts must hold each of the {size} positions exactly once")
            for i, index in enumerate(indices):
                setattr(self, f"{role}{i}", InPort(shape=(index.size,)))
        self.proc_params["heads"], self.proc_params["tokens"], self.proc_params["dim"] = heads, tokens, dim
        self.proc_params["parts"] = parts
        self.s_out = OutPort(shape=(size,))


class _HostProductModel(PyLoihiProcessModel):
    """The counts in int64 arithmetic (:func:`st2chip.attention.attention_counts`, exact), sent as int32
    (they never exceed ``tokens * dim / heads``)."""

    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)

    def run_spk(self) -> None:
        tokens, dim = self.proc_params["tokens"], self.proc_params["dim"]
        signals = []
        for role, indices in zip(ROLES, self.proc_params["parts"]):
            x = np.zeros(tokens * dim, np.int64)
            for i, index in enumerate(indices):
                x[index] = getattr(self, f"{role}{i}").recv()
            signals.append(torch.from_numpy(x))
        counts = attention_counts(*signals, tokens, self.proc_params["heads"])
        self.s_out.send(counts.numpy().astype(np.int32))


@cache
def _classes(ports: tuple[int, int, int]) -> tuple[type, type]:
    """The process subclass with ``ports`` input ports per role and its fixed-point model, registered in
    this module (where Lava's compiler searches for models)."""
    members = {f"{role}{i}": LavaPyType(PyInPort.VEC_DENSE, bool) for role, n in zip(ROLES, ports) for i in range(n)}
    return fixed_point_classes(__name__, HostProductProcess, _HostProductModel, ports, members)


def host_product(*, heads: int, tokens: int, dim: int, parts: Sequence[Sequence[np.ndarray]],
                 name: str | None = None) -> HostProductProcess:
    """A host product process whose ``q``, ``k`` and ``v`` inputs arrive in ``parts``: per role, the layer
    positions each input port (``q0``, ``q1``, ...) holds, in the order its values arrive."""
    proc, _ = _classes(tuple(len(p) for p in parts))
    return proc(heads=heads, tokens=tokens, dim=dim, parts=parts, name=name)
