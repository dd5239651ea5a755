"""Lava process classes made for a number of ports, registered where Lava's compiler looks for their models.

A Lava process declares its ports as attributes and its ProcessModel declares a
matching ``LavaPyType`` per port as a class member, so a process whose port count
depends on the graph (a host product's inputs per layer, a recorder's port per
population) is a subclass made for that count, with a fixed-point model made beside
it. Lava's compiler finds a process's models by scanning the module that defines the
process, so both classes are set in that module (``module``), named after the base
classes and the port counts.
"""

from __future__ import annotations

import sys

from st2chip.targets.lava_compat import ensure_lava

ensure_lava()

from lava.magma.core.decorator import implements, requires, tag  # noqa: E402
from lava.magma.core.model.py.type import LavaPyType  # noqa: E402
from lava.magma.core.resources import CPU  # noqa: E402
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol  # noqa: E402


def fixed_point_classes(module: str, process: type, model: type, ports: tuple[int, ...],
                        members: dict[str, LavaPyType]) -> tuple[type, type]:
    """``process``'s subclass with ``ports`` (its class attribute ``ports``) and ``model``'s subclass with the
    port ``members``, tagged ``fixed_pt`` on a CPU under Loihi's protocol, both set in ``module``."""
    suffix = "_".join(map(str, ports))
    proc = type(f"{process.__name__}_{suffix}", (process,), {"ports": ports, "__module__": module})
    made = type(f"Py{model.__name__.lstrip('_')}_{suffix}", (model,), {**members, "__module__": module})
    made = implements(proc=proc, protocol=LoihiProtocol)(requires(CPU)(tag("fixed_pt")(made)))
    namespace = sys.modules[module]
    setattr(namespace, proc.__name__, proc)
    setattr(namespace, made.__name__, made)
    return proc, made
