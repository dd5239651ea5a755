"""One memory budget for everything st2chip reads from an untrusted file.

A tiny file can declare a huge size: an HDF5 dataset of 20000 x 20000 stored as
one fill value, an Input of 10^9 values, ``metadata["steps"] = 10^9``, a
checkpoint whose config asks for 20000-wide layers. Every reader checks the
declared size against one budget *before* it allocates, and refuses with an
:class:`~st2chip.errors.InputError` that names what, how much and the budget.

The budget is, in order of precedence:

1. :func:`set_memory_budget` (what a ``--memory-budget`` option would call);
2. the environment variable ``ST2CHIP_MEMORY_BUDGET``, in bytes or with a
   suffix: ``8G``, ``512M``, ``1.5GiB``, ``200000k`` (powers of 1024);
3. :data:`DEFAULT_FRACTION` (a quarter) of the machine's physical memory.

Base layer: imports only :mod:`st2chip.errors`, the standard library and numpy.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import math
import numbers
import os
import re
from typing import Any

from st2chip.errors import InputError

ENV_VAR = "ST2CHIP_MEMORY_BUDGET"
DEFAULT_FRACTION = 0.25
FALLBACK_BUDGET = 4 * 1024 ** 3  # when the physical memory cannot be read
# A graph's arrays are held about this many times over while it is read, normalized
# (float64) and lowered; a declared dataset counts this many float64 copies.
GRAPH_COPIES = 3
# What a run holds per sample, step and value of every node: its float64 output and voltage.
RUN_BYTES_PER_VALUE = 16

_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3, "t": 1024 ** 4, "p": 1024 ** 5}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmgtp]?)(i?b)?\s*$", re.IGNORECASE)

_override: int | None = None


def parse_size(text: str | int, what: str = ENV_VAR) -> int:
    """Bytes from ``"8G"``, ``"512M"``, ``"1.5GiB"``, ``"1000000"`` (suffixes are powers of 1024)."""
    if isinstance(text, bool):
        raise InputError(f"{what}: expected a size in bytes such as 8G or 512M, got {text!r}")
    if isinstance(text, numbers.Integral):
        value = float(int(text))
    else:
        match = _SIZE.match(str(text))
        if not match:
            raise InputError(f"{what}: expected a size in bytes such as 8G, 512M or 1000000, got {text!r}")
        value = float(match.group(1)) * _UNITS[match.group(2).lower()]
    if not math.isfinite(value) or value < 1:
        raise InputError(f"{what}: the memory budget must be at least 1 byte, got {text!r}")
    return int(value)


def physical_memory() -> int | None:
    """The machine's physical memory in bytes, or None where ``os.sysconf`` cannot tell."""
    try:
        pages, page = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    return pages * page if pages > 0 and page > 0 else None


def memory_budget() -> int:
    """Bytes st2chip may allocate for what one file declares (see the module docstring)."""
    if _override is not None:
        return _override
    env = os.environ.get(ENV_VAR)
    if env is not None and env.strip():
        return parse_size(env, ENV_VAR)
    total = physical_memory()
    return int(total * DEFAULT_FRACTION) if total else FALLBACK_BUDGET


def set_memory_budget(size: str | int | None) -> None:
    """Set the budget for this process (``None`` restores the environment/default rule)."""
    global _override
    _override = None if size is None else parse_size(size, "--memory-budget")


def human(n_bytes: float) -> str:
    """``3200000000`` -> ``'3.0 GiB'``."""
    value = float(n_bytes)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024 or unit == "PiB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} PiB"  # pragma: no cover


def _budget_hint() -> str:
    return (f"the memory budget is {human(memory_budget())} (set {ENV_VAR}, e.g. {ENV_VAR}=16G, "
            f"to allow more)")


def check_bytes(what: str, n_bytes: int, where: str | None = None) -> None:
    """Refuse ``n_bytes`` above the budget with an :class:`InputError` naming ``where`` and ``what``."""
    n_bytes = int(n_bytes)
    if n_bytes > memory_budget():
        prefix = f"{where}: " if where else ""
        raise InputError(f"{prefix}{what} would need {human(n_bytes)}; {_budget_hint()}")


def check_alloc(what: str, n_elements: int, itemsize: int = 8, where: str | None = None) -> None:
    """Refuse an allocation of ``n_elements`` x ``itemsize`` bytes above the budget.

    ``n_elements`` should be a Python int (computed with :func:`count`), so that a
    product of declared dimensions cannot overflow.
    """
    n = int(n_elements)
    size = int(itemsize)
    if n * size > memory_budget():
        prefix = f"{where}: " if where else ""
        raise InputError(f"{prefix}{what} ({n:,} x {size} bytes) would need {human(n * size)}; "
                         f"{_budget_hint()}")


def count(dims: Any) -> int:
    """Exact product of declared dimensions as a Python int (no int64 overflow)."""
    return math.prod(int(d) for d in dims)


def positive_int(value: Any, what: str, where: str | None = None) -> int:
    """``value`` as an int when it is a positive integer (not a bool, NaN or 1.5), else an InputError.

    Integral floats (``16.0``, as some files store numbers) are accepted.
    """
    prefix = f"{where}: " if where else ""
    ok = False
    if isinstance(value, (bool,)) or (hasattr(value, "dtype") and getattr(value.dtype, "kind", "") == "b"):
        ok = False
    elif isinstance(value, numbers.Integral):
        ok = True
    elif isinstance(value, numbers.Real):
        ok = math.isfinite(float(value)) and float(value) == int(float(value))
    if ok and int(value) >= 1:
        return int(value)
    raise InputError(f"{prefix}{what} must be a positive integer, got {value!r}")


def check_run(what: str, batch: int, steps: int, width: int, where: str | None = None) -> None:
    """A run of ``batch`` samples x ``steps`` steps over ``width`` node values, against the budget."""
    check_alloc(f"{what} ({batch} samples x {steps} steps x {width} values)", int(batch) * int(steps) * int(width),
                RUN_BYTES_PER_VALUE, where)


def release_freed() -> None:
    """Collect garbage and hand the heap's freed pages back to the OS.

    glibc keeps what numpy and torch free in pieces below its mmap threshold: a
    process that built and dropped an engine of gigabytes goes on holding them
    (3.5 of 7.9 GB after the engine's record of a Spikformer-4-384), and so does
    every process forked from it. ``malloc_trim`` returns them; a no-op without glibc.
    """
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Any:
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl without it)
        return None
