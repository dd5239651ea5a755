"""NIR files in and out: reading an untrusted ``.nir`` with one clear error, writing one atomically."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import nir

from st2chip.errors import InputError
from st2chip.io import atomic_path


def one_line(exc: BaseException) -> str:
    """An exception as one line: its type and its message with whitespace collapsed."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def read_graph(path: str | os.PathLike) -> nir.NIRGraph:
    """Read a ``.nir`` file as written; any problem becomes a one-line :class:`InputError` naming the file.

    nir's type check is off: it rejects some frontends' graphs (snnTorch 1.0,
    batch dims in Input shapes) and silently adds Input/Output nodes, while
    normalize infers and checks shapes itself.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file")
    if p.is_dir():
        if (p / "manifest.json").is_file():
            parts = ", ".join(sorted(f.name for f in p.glob("*.nir"))) or "none"
            raise InputError(f"{p}: is a deployment bundle, not a .nir file; map one of its NIR parts "
                             f"({parts})")
        raise InputError(f"{p}: is a directory, not a .nir file")
    if p.stat().st_size == 0:
        raise InputError(f"{p}: file is empty")
    try:
        with h5py.File(p, "r") as f:
            if "node" not in f:
                raise InputError(f"{p}: HDF5 file holds no NIR graph (no 'node' group)")
    except OSError as exc:  # h5py: not HDF5, truncated, unreadable
        raise InputError(f"{p}: not a readable NIR (HDF5) file ({one_line(exc)})") from None
    try:
        graph = nir.read(p, type_check=False)
    except Exception as exc:  # any parse failure of an untrusted file is the user's input
        raise InputError(f"{p}: cannot read NIR graph ({one_line(exc)})") from None
    if not isinstance(graph, nir.NIRGraph):
        raise InputError(f"{p}: holds a single {type(graph).__name__} node, not a NIR graph")
    return graph


def write_nir(graph: nir.NIRGraph, path: str | os.PathLike) -> Path:
    """Write ``graph`` atomically with ``nir.write``."""
    with atomic_path(path) as tmp:
        nir.write(tmp, graph)
    return Path(path)
