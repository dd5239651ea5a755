"""st2chip: trained, pruned spiking networks (sLIF spiking Transformers first) to Loihi-class chips.

The Python API (:mod:`st2chip.api`) is re-exported here and imported on first use, so that
``import st2chip`` stays cheap for the command line and for st2chip's own child processes::

    import st2chip
    chip = st2chip.lower(st2chip.load("model.nir"))
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("st2chip")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "unknown"

__all__ = ["load", "lower", "place", "run", "simulate", "verify", "energy", "compare", "import_model", "export",
           "quantize", "quantize_graph", "inputs_for"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from st2chip import api
        return getattr(api, name)
    raise AttributeError(f"module 'st2chip' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
