"""st2chip's Lava I/O processes: one source sends every input of a run, one recorder records every population.

Lava's own way to feed a network is a ``RingBuffer`` source per input, and to
record it a ``RingBuffer`` sink per population for its spikes and a ``Monitor``
per population for its voltage: an OS process each, every one of them served by
Lava's runtime at every step, and reading a sink or Monitor back after the run
(``Var.get``) sends every value as a message of its own through the runtime, two
hops each (about 60,000 values a second measured: 44 s of a 133 s layer-by-layer
check of the tiny spiking Transformer on 20 samples). A :class:`Source` has one
output port per input (``o0``, ``o1``, ...) and sends column ``t - 1`` of that
input's ``(n, steps)`` array at step ``t``, as a ``RingBuffer`` does (Lava layer
by layer replays 8 to 24 recorded sources per run: one process for them all). A
:class:`Recorder` has one input port per population (``s0``, ``s1``, ... on the
population's ``s_out``: 0/1 spikes, or a relay's graded values) and one reference
port per recorded voltage (``v0``, ... on the population's ``v``), reads them each
step as the sink (spike phase) and the Monitor (management phase after it) do,
and at the run's last step writes them to ``.npy`` files in a folder the caller
owns: ``s{i}.npy`` and ``v{i}.npy``, ``(steps, n)`` int32 each.

As for :mod:`st2chip.targets.lava_host`, each process and its model are made per
number of ports (:func:`source`, :func:`recorder`, through
:func:`~st2chip.targets.lava_ports.fixed_point_classes`) and kept in this module's
namespace, where Lava's compiler looks for models; the package is a folder of its
own because that search also scans the process module's folder.
"""

from __future__ import annotations

import os
from functools import cache

import numpy as np

from st2chip.targets.lava_compat import ensure_lava

ensure_lava()

from lava.magma.core.model.py.model import PyLoihiProcessModel  # noqa: E402
from lava.magma.core.model.py.ports import PyInPort, PyOutPort, PyRefPort  # noqa: E402
from lava.magma.core.model.py.type import LavaPyType  # noqa: E402
from lava.magma.core.process.ports.ports import InPort, OutPort, RefPort  # noqa: E402
from lava.magma.core.process.process import AbstractProcess  # noqa: E402

from st2chip.targets.lava_ports import fixed_point_classes  # noqa: E402


class Source(AbstractProcess):
    """Sends column ``t - 1`` of each of its arrays ``(n_i, steps)`` on port ``o{i}`` at step ``t``. Made through
    :func:`source`, which picks the subclass for the number of ports."""

    ports: tuple[int] = (0,)  # output ports: set by each generated subclass

    def __init__(self, *, data: list[np.ndarray]) -> None:
        super().__init__()
        if len(data) != self.ports[0]:
            raise ValueError(f"{type(self).__name__} takes {self.ports[0]} arrays, got {len(data)}")
        for i, array in enumerate(data):
            setattr(self, f"o{i}", OutPort(shape=(array.shape[0],)))
        self.proc_params["data"] = tuple(np.asarray(array, np.int32) for array in data)


class _SourceModel(PyLoihiProcessModel):
    """Sends each array's column for the step on its port."""

    def run_spk(self) -> None:
        for i, array in enumerate(self.proc_params["data"]):
            getattr(self, f"o{i}").send(array[:, self.time_step - 1])


@cache
def _source_classes(ports: int) -> tuple[type, type]:
    """The source subclass with ``ports`` outputs and its fixed-point model, registered in this module."""
    members = {f"o{i}": LavaPyType(PyOutPort.VEC_DENSE, np.int32) for i in range(ports)}
    return fixed_point_classes(__name__, Source, _SourceModel, (ports,), members)


def source(*, data: list[np.ndarray]) -> Source:
    """A source with one output port per array in ``data`` (``(n, steps)`` each: what it sends at each step)."""
    proc, _ = _source_classes(len(data))
    return proc(data=data)


class Recorder(AbstractProcess):
    """Records ``steps`` steps of its ``s*`` inputs and ``v*`` variables into ``folder`` (see the module).
    Made through :func:`recorder`, which picks the subclass for the number of ports."""

    ports: tuple[int, int] = (0, 0)  # spike inputs, voltage references: set by each generated subclass

    def __init__(self, *, spikes: list[int], voltages: list[int], steps: int, folder: str) -> None:
        super().__init__()
        if (len(spikes), len(voltages)) != self.ports:
            raise ValueError(f"{type(self).__name__} takes {self.ports} ports, got {(len(spikes), len(voltages))}")
        for i, n in enumerate(spikes):
            setattr(self, f"s{i}", InPort(shape=(n,)))
        for i, n in enumerate(voltages):
            setattr(self, f"v{i}", RefPort(shape=(n,)))
        self.proc_params["sizes"] = (tuple(spikes), tuple(voltages))
        self.proc_params["steps"], self.proc_params["folder"] = int(steps), folder


class _RecorderModel(PyLoihiProcessModel):
    """Fills one ``(steps, n)`` buffer per port, step ``t`` in row ``t - 1``, and saves them at the last step."""

    def __init__(self, proc_params: dict) -> None:
        super().__init__(proc_params)
        steps = proc_params["steps"]
        spikes, voltages = proc_params["sizes"]
        self.spikes = [np.zeros((steps, n), np.int32) for n in spikes]
        self.voltages = [np.zeros((steps, n), np.int32) for n in voltages]

    def run_spk(self) -> None:
        for i, buffer in enumerate(self.spikes):
            buffer[self.time_step - 1] = getattr(self, f"s{i}").recv()
        if not self.voltages:
            self._save_at_end()

    def post_guard(self) -> bool:
        """Voltages are read in the management phase after the spikes (each such phase is one more round of
        messages to every process of the run)."""
        return bool(self.voltages)

    def run_post_mgmt(self) -> None:
        for i, buffer in enumerate(self.voltages):
            buffer[self.time_step - 1] = getattr(self, f"v{i}").read()
        self._save_at_end()

    def _save_at_end(self) -> None:
        if self.time_step == self.proc_params["steps"]:
            folder = self.proc_params["folder"]
            for prefix, buffers in (("s", self.spikes), ("v", self.voltages)):
                for i, buffer in enumerate(buffers):
                    np.save(os.path.join(folder, f"{prefix}{i}.npy"), buffer)


@cache
def _classes(ports: tuple[int, int]) -> tuple[type, type]:
    """The recorder subclass with ``ports`` (spike inputs, voltage references) and its fixed-point model,
    registered in this module (where Lava's compiler searches for models)."""
    members = {**{f"s{i}": LavaPyType(PyInPort.VEC_DENSE, np.int32) for i in range(ports[0])},
               **{f"v{i}": LavaPyType(PyRefPort.VEC_DENSE, np.int32) for i in range(ports[1])}}
    return fixed_point_classes(__name__, Recorder, _RecorderModel, ports, members)


def recorder(*, spikes: list[int], voltages: list[int], steps: int, folder: str) -> Recorder:
    """A recorder with one spike input per size in ``spikes`` and one voltage reference per size in
    ``voltages``, recording ``steps`` steps into ``folder`` (which must exist)."""
    proc, _ = _classes((len(spikes), len(voltages)))
    return proc(spikes=spikes, voltages=voltages, steps=steps, folder=folder)


def load(folder: str, spikes: int, voltages: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """What a recorder with ``spikes`` and ``voltages`` ports wrote into ``folder``."""
    return ([np.load(os.path.join(folder, f"s{i}.npy")) for i in range(spikes)],
            [np.load(os.path.join(folder, f"v{i}.npy")) for i in range(voltages)])
