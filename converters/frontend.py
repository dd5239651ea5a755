"""What every framework converter shares: the result type and the last step to canonical NIR.

A framework converter is one module in ``converters/`` (``norse``, ``snntorch``,
``spikingjelly``) with

- ``NAME``: the ``--from`` name of ``st2chip import``;
- ``DEFAULT_DT``: the step (seconds) the framework's export assumes when the graph
  does not store one;
- ``repair(graph, dt) -> (graph, notes)``: absorbs the framework's quirks in a graph
  as the framework exported it (or as read back from its ``.nir`` file), returning
  a graph that :func:`~st2chip.graph.normalize.normalize` accepts and one line per change;
- ``to_nir(model, ...) -> Converted``: runs the framework's own export on a model
  object, then ``repair`` and :func:`finish`.

Quirks are absorbed here (or in normalize), never in the backends.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import nir
import numpy as np

from st2chip.errors import InputError
from st2chip.graph.normalize import normalize


@dataclass
class Converted:
    """A canonical NIR graph (``metadata`` holds ``dt`` and, when known, ``steps``) and what was changed."""

    graph: nir.NIRGraph
    notes: list[str] = field(default_factory=list)


def finish(graph: nir.NIRGraph, *, dt: float | None, steps: int | None = None, notes: list[str] | None = None,
           source: str | None = None, producer: str | None = None, dt_from: str = "as exported",
           export_dt: Mapping[str, float] | None = None) -> Converted:
    """Normalize a repaired graph with ``dt`` (and ``steps``) recorded in its metadata.

    The notes say where dt came from: ``dt_from`` (``--dt``, the file, the framework's
    export default); with ``dt=None``, the graph's own metadata, and a graph that depends
    on dt and stores none is refused, naming each framework's convention in ``export_dt``.
    """
    notes = list(notes or [])
    canonical = normalize(graph, dt=dt, source=source, notes=notes, dt_from=dt_from, export_dt=export_dt)
    if steps is not None:
        if int(steps) < 1:
            raise InputError(f"--steps must be at least 1, got {steps}")
        canonical.metadata["steps"] = int(steps)
        notes.append(f"steps = {int(steps)} recorded in the metadata")
    if producer is not None:
        canonical.metadata.setdefault("producer", producer)
    return Converted(canonical, notes)


def as_f64(value: Any) -> np.ndarray:
    """A float64 numpy copy of a tensor, array or number (what every converter reads parameters as)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().double().numpy()
    return np.array(value, dtype=np.float64)


def value_span(values: np.ndarray) -> str:
    """``lo..hi`` of ``values`` for a note (one number when they are all equal)."""
    lo, hi = float(np.min(values)), float(np.max(values))
    return f"{lo:.6g}" if lo == hi else f"{lo:.6g}..{hi:.6g}"


def positive_dt(dt: float) -> float:
    """``dt`` as a float, or an InputError naming ``--dt`` when it is not a positive number of seconds."""
    dt = float(dt)
    if not (math.isfinite(dt) and dt > 0):
        raise InputError(f"--dt must be a positive number of seconds, got {dt}")
    return dt
