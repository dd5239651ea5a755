"""The chip families st2chip targets: one :class:`Target` record per chip, in :data:`TARGETS`.

A target says how a canonical NIR graph becomes that chip's IR (``lower``), how st2chip's own
bit-exact engine runs the IR (``run``), which vendor simulator the engine is checked against
(``oracle``) and which file holds the chip's limits (``resources``).

Shared by every target: reading and normalizing NIR, the float interpreter, the run inputs,
:class:`~st2chip.traces.Traces` and verify's checks. Per target: the lowering passes, the chip IR,
the engine arithmetic, the oracle, the resource file (and the energy profile). A new chip is one
more entry here, beside the others; ``--target NAME`` picks one on ``map``, ``simulate``,
``verify`` and ``energy``, ``target=NAME`` in :mod:`st2chip.api`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import nir
import numpy as np

from st2chip import defaults
from st2chip.errors import InputError
from st2chip.traces import Traces
from st2chip.xylo.spec import RESOURCES as XYLO_RESOURCES, XYLO_TARGETS, load_spec

LOIHI_RESOURCES = Path(__file__).parent / "chip" / "resources"

# Every lowering option of st2chip.lower (Loihi's): the CLI flag that sets it and its default.
LOWER_OPTIONS = {"decay_groups": ("--decay-groups", None), "lowrank": ("--lowrank", defaults.LOWRANK),
                 "headroom": ("--headroom", defaults.HEADROOM), "precision": ("--precision", defaults.PRECISION),
                 "resources": ("--resources", defaults.RESOURCES)}


@dataclass(frozen=True)
class Target:
    """One chip st2chip deploys to.

    ``lower(graph, **options)``: canonical NIR -> the chip IR (``ir``); ``options`` are those of
    :data:`LOWER_OPTIONS` the target takes (the others must stay at their defaults).
    ``run(chip, inputs, **run_options)``: the chip IR on st2chip's engine, ``inputs`` one array
    ``(batch, steps, n)`` per Input node; returns :class:`~st2chip.traces.Traces`.
    ``oracle``: the vendor simulator the engine is bit-exact against; ``resources``: the resource file;
    ``profile``: the energy profile ``st2chip energy`` prices a run with unless ``--profile`` names another.
    """

    name: str
    family: str
    ir: type
    lower: Callable[..., Any]
    run: Callable[..., Traces]
    oracle: str
    resources: Path
    profile: str
    options: tuple[str, ...] = ()


def _lower_loihi(graph: nir.NIRGraph, *, decay_groups: int | None = None, precision: str | int = defaults.PRECISION,
                 **options: Any):
    from st2chip.chip.lower import lower
    from st2chip.pipeline import decay_groups_of
    return lower(graph, decay_groups=decay_groups_of(graph, decay_groups), precision=str(precision), **options)


def _run_loihi(chip, inputs: dict[str, np.ndarray], **options: Any) -> Traces:
    from st2chip.pipeline import run_backend
    return run_backend("engine", None, chip, inputs, **options)


def _lower_xylo(graph: nir.NIRGraph, *, chip: str, **options: Any):
    from st2chip.xylo.lower import lower_xylo
    return lower_xylo(graph, load_spec(chip))


def _run_xylo(chip, inputs: dict[str, np.ndarray], *, batch_size: int = defaults.BATCH_SIZE,
              **options: Any) -> Traces:
    from st2chip.targets.xylo_run import run_traces
    return run_traces(chip, inputs, backend="engine", batch_size=batch_size, **options)


def _loihi2() -> Target:
    from st2chip.chip.chipgraph import ChipGraph
    return Target("loihi2", "loihi", ChipGraph, _lower_loihi, _run_loihi, "lava (Loihi2SimCfg fixed_pt)",
                  LOIHI_RESOURCES / "loihi2.json", defaults.PROFILE, options=tuple(LOWER_OPTIONS))


def _xylo(name: str) -> Target:
    from st2chip.xylo.xylograph import XyloGraph
    return Target(name, "xylo", XyloGraph, partial(_lower_xylo, chip=name), _run_xylo, "xylosim",
                  XYLO_RESOURCES / f"{name}.json", name)


TARGETS: dict[str, Target] = {"loihi2": _loihi2(), **{name: _xylo(name) for name in XYLO_TARGETS}}


def get_target(name: str) -> Target:
    """The target called ``name``; an :class:`InputError` naming ``--target`` and the choices otherwise."""
    if name in TARGETS:
        return TARGETS[name]
    hint = " (where the lava backend runs is --lava-target)" if name in ("lava-sim", "loihi2-hw") else ""
    raise InputError(f"--target {name}: not a chip st2chip targets; choose one of {', '.join(TARGETS)}{hint}")


def target_of(chip: Any) -> Target:
    """The first target whose IR ``chip`` is (every Xylo chip shares one IR and engine)."""
    for target in TARGETS.values():
        if isinstance(chip, target.ir):
            return target
    raise InputError(f"run: expected a chip IR ({', '.join(t.ir.__name__ for t in TARGETS.values())}), "
                     f"got {type(chip).__name__}")


def lower(graph: nir.NIRGraph, name: str, **options: Any):
    """Lower ``graph`` for target ``name``; an option it does not take, set away from its default, is an
    :class:`InputError` naming the flag."""
    target = get_target(name)
    for option, value in options.items():
        flag, default = LOWER_OPTIONS[option]
        if option not in target.options and value is not None and str(value) != str(default):
            raise InputError(f"{flag} applies to --target loihi2, not to --target {name}")
    return target.lower(graph, **{k: v for k, v in options.items() if k in target.options})
