"""The frameworks ``st2chip import --from`` knows, and reading a file one of them wrote.

Kept free of framework imports so that ``st2chip --help`` stays fast: each
converter module is imported only when used. :data:`EXPORT_DT` repeats each
module's ``DEFAULT_DT`` (a test keeps them equal).
"""

from __future__ import annotations

import importlib
import os

from st2chip.converters.frontend import Converted, finish
from st2chip.errors import InputError
from st2chip.graph.nirfile import read_graph
from st2chip.graph.normalize import stored_dt

# the dt (seconds) each framework's NIR export assumes without storing it
EXPORT_DT = {"norse": 1e-3, "snntorch": 1e-4, "spikingjelly": 1e-4, "sinabs": 1.0, "rockpool": 1e-3, "nir": 1e-3}
FRAMEWORKS = tuple(EXPORT_DT)


def converter(framework: str):
    """The converter module of ``framework`` (``norse``, ``snntorch``, ``spikingjelly``)."""
    if framework not in FRAMEWORKS or framework == "nir":
        raise ValueError(f"no converter module for {framework!r}")
    return importlib.import_module(f"st2chip.converters.{framework}")


def import_file(path: str | os.PathLike, framework: str, *, dt: float | None = None,
                steps: int | None = None, tau_quirk: bool | None = None) -> Converted:
    """Read a ``.nir`` file as ``framework`` wrote it and return the canonical graph with the changes made.

    dt is ``dt`` (``--dt``), else the file's ``metadata["dt"]``, else the framework's
    export default (:data:`EXPORT_DT`); ``nir`` has no default, so a plain file that
    depends on dt and stores none is refused. The notes say which one was used.
    ``tau_quirk`` (norse only; ``--tau-quirk``): whether the file's time constants are
    norse 1.1's ``dt / tau_inv`` (None: decided per neuron from their size).
    """
    if tau_quirk is not None and framework != "norse":
        raise InputError(f"--tau-quirk applies to files from norse, not from {framework}")
    graph = read_graph(path)
    dt_from = "--dt"
    if dt is None and framework != "nir":
        stored = stored_dt(graph, str(path))
        dt, dt_from = (stored, "from the file") if stored is not None else \
            (EXPORT_DT[framework], f"{framework}'s export default; --dt to change")
    if framework == "nir":
        return finish(graph, dt=dt, steps=steps, source=str(path), dt_from=dt_from, export_dt=framework_dt())
    repair = converter(framework).repair
    graph, notes = repair(graph, dt, tau_quirk=tau_quirk) if framework == "norse" else repair(graph, dt)
    return finish(graph, dt=dt, steps=steps, notes=notes, source=str(path), producer=framework, dt_from=dt_from)


def framework_dt() -> dict[str, float]:
    """The dt each framework's export assumes (:data:`EXPORT_DT` less plain ``nir``), as a missing dt's error
    lists them."""
    return {framework: step for framework, step in EXPORT_DT.items() if framework != "nir"}


# st2chip's own model kinds (st2chip.learn.kinds) -> the function that exports one: a NIR graph, or for the
# spiking Transformer a deployment bundle folder ("module:function", imported when used)
GRAPH_EXPORTERS = {"mlp": "st2chip.converters.mlp:mlp_to_nir", "cnn": "st2chip.converters.cnn:cnn_to_nir",
                   "rnn": "st2chip.converters.rnn:rnn_to_nir"}
BUNDLE_EXPORTERS = {"st": "st2chip.converters.transformer:export_bundle"}


def exporter(kind: str):
    """The function that exports a model of ``kind``: ``f(model, dt)`` -> NIR graph, or for a bundle kind
    ``f(model, folder, dt)`` -> the folder written."""
    spec = GRAPH_EXPORTERS.get(kind) or BUNDLE_EXPORTERS.get(kind)
    if spec is None:
        raise ValueError(f"no exporter for model kind {kind!r}")
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)
