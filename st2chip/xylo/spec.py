"""The limits of one Xylo chip, read from its resource file (``st2chip/xylo/resources/<name>.json``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from st2chip.errors import InputError

RESOURCES = Path(__file__).with_name("resources")
XYLO_TARGETS = ("xylo-audio2", "xylo-audio3", "xylo-imu")


@dataclass(frozen=True)
class XyloSpec:
    """One Xylo chip: how many input channels, hidden and output neurons it holds, and where that is published."""

    name: str
    inputs: int
    hidden: int
    outputs: int
    description: str = ""
    source: str = ""
    input_expansion: int | None = None   # hidden neurons the input weights reach (the first ones); None: all
    output_expansion: int | None = None  # hidden neurons the output weights read (the last ones); None: all


def load_spec(name: str) -> XyloSpec:
    """The spec of Xylo chip ``name`` (one of :data:`XYLO_TARGETS`)."""
    if name not in XYLO_TARGETS:
        raise InputError(f"--target {name}: not a Xylo chip; choose one of {', '.join(XYLO_TARGETS)}")
    data = json.loads((RESOURCES / f"{name}.json").read_text())
    return XyloSpec(name=name, inputs=int(data["inputs"]), hidden=int(data["hidden"]), outputs=int(data["outputs"]),
                    description=data.get("description", ""), source=data.get("source", ""),
                    input_expansion=_optional(data.get("input_expansion")),
                    output_expansion=_optional(data.get("output_expansion")))


def _optional(value) -> int | None:
    return None if value is None else int(value)
