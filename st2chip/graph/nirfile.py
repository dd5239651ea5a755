"""NIR files in and out: reading an untrusted ``.nir`` with one clear error, writing one atomically."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import traceback
from pathlib import Path

import h5py
import nir
import numpy as np

from st2chip import limits
from st2chip.errors import InputError
from st2chip.io import write_bytes

MAX_HDF5_LINKS = 200_000  # groups and datasets in one file (a real graph has a few per node)
MAX_HDF5_DEPTH = 64  # nested groups (two per nested NIRGraph level, plus metadata)
_NODE_GROUP = re.compile(r"^node(/nodes/[^/]+)*$")  # the groups that are NIR nodes


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
            raise InputError(f"{p}: is a deployment bundle, not a .nir file; st2chip map, simulate, verify "
                             f"and energy take the folder itself, this step takes one NIR part ({parts})")
        raise InputError(f"{p}: is a directory, not a .nir file")
    if p.stat().st_size == 0:
        raise InputError(f"{p}: file is empty")
    if _read_timeout is not None:
        _read_in_child(p, _read_timeout)
    try:
        with h5py.File(p, "r") as f:
            if "node" not in f or not isinstance(f.get("node", getlink=True), h5py.HardLink) \
                    or not isinstance(f["node"], h5py.Group):
                raise InputError(f"{p}: HDF5 file holds no NIR graph (no 'node' group)")
            check_hdf5(f, p)
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as exc:  # h5py: not HDF5, truncated, unreadable
        raise InputError(f"{p}: not a readable NIR (HDF5) file ({one_line(exc)})") from None
    try:
        graph = nir.read(p, type_check=False)
    except MemoryError:
        raise InputError(f"{p}: ran out of memory reading the NIR graph; "
                         f"the memory budget is {limits.human(limits.memory_budget())}") from None
    except Exception as exc:  # any parse failure of an untrusted file is the user's input
        raise InputError(f"{p}: cannot read NIR graph (nir: {_nir_complaint(exc)})") from None
    if not isinstance(graph, nir.NIRGraph):
        raise InputError(f"{p}: holds a single {type(graph).__name__} node, not a NIR graph")
    return graph


READ_TIMEOUT_ENV = "ST2CHIP_READ_TIMEOUT"
_read_timeout: float | None = None


def set_read_timeout(seconds: float | None) -> None:
    """Read every file first in a child process that is killed after ``seconds`` (None: read in-process).

    libhdf5 can loop forever, inside its C code, on a file whose heap was damaged
    (one flipped byte was enough); no Python-level check can stop that. The CLI
    turns this on, so a hostile file costs a bounded wait and an exit 2, not a hang.
    """
    global _read_timeout
    _read_timeout = seconds


def _read_in_child(p: Path, timeout: float) -> None:
    """Try the whole read in a child process first; a child that does not finish names the file.

    ``-P`` keeps the working directory off the child's import path: ``-m`` would
    put it first, and a folder holding a ``st2chip/`` package would then run its code.
    """
    try:
        subprocess.run([sys.executable, "-P", "-m", "st2chip.graph.nirfile", str(p)], capture_output=True,
                       timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise InputError(f"{p}: reading the NIR (HDF5) file did not finish within {timeout:g} s; its HDF5 "
                         f"structure is probably damaged (a very large file may need more: "
                         f"{READ_TIMEOUT_ENV}=seconds)") from None
    # a child that failed quickly failed on something the read below reports itself


def _nir_complaint(exc: BaseException) -> str:
    """What nir complained about: the message, or for a bare assertion its failing source line."""
    if isinstance(exc, AssertionError) and not str(exc).strip():
        frames = traceback.extract_tb(exc.__traceback__)
        line = frames[-1].line if frames else ""
        return f"assertion failed: {line}" if line else "AssertionError"
    if isinstance(exc, KeyError):
        return f"a required dataset is missing: {exc.args[0] if exc.args else ''!r}"
    return one_line(exc)


def _node_name(path: str) -> str:
    """HDF5 path of a node group (``node/nodes/a/nodes/b``) -> its flattened name (``a.b``)."""
    return ".".join(path.split("/")[2::2]) or "(the graph)"


def _known_types() -> list[str]:
    return sorted(k for k, v in vars(nir).items() if isinstance(v, type) and issubclass(v, nir.NIRNode)
                  and v is not nir.NIRNode)


def check_hdf5(f: h5py.File, p: Path) -> None:
    """Walk ``f`` without reading array data: every dataset's declared size against the memory budget.

    Also refuses what ``nir.read`` cannot survive: links to other files or back
    into the file (soft links, one object linked twice: nir would read a cycle
    forever), deep nesting, too many objects, and node groups whose ``type`` is
    not a NIR node type; and what would make h5py read another file (a dataset
    with external storage, a virtual dataset): a ``.nir`` is read only from itself.
    The whole file is walked before any value (a node's ``type``) is read.
    """
    budget_each = limits.GRAPH_COPIES
    seen: set = {f.id}
    nodes: list[tuple[str, h5py.Group]] = []
    links = 0
    total = 0
    stack: list[tuple[str, h5py.Group, int]] = [("", f, 0)]
    while stack:
        path, group, depth = stack.pop()
        if depth > MAX_HDF5_DEPTH:
            raise InputError(f"{p}: HDF5 groups are nested {depth} deep at '{path[:80]}...' "
                             f"(at most {MAX_HDF5_DEPTH})")
        for key in group.keys():
            links += 1
            if links > MAX_HDF5_LINKS:
                raise InputError(f"{p}: HDF5 file holds more than {MAX_HDF5_LINKS:,} groups and datasets")
            child = f"{path}/{key}" if path else key
            link = group.get(key, getlink=True)
            if not isinstance(link, h5py.HardLink):
                raise InputError(f"{p}: '{child}' is an HDF5 {type(link).__name__}; a NIR file holds no links")
            item = group.get(key)
            if item is None or item.id in seen:
                raise InputError(f"{p}: '{child}' links to an HDF5 object already in the file; "
                                 f"a NIR file holds each object once")
            seen.add(item.id)
            if isinstance(item, h5py.Group):
                stack.append((child, item, depth + 1))
            elif isinstance(item, h5py.Dataset):
                _check_stored_here(p, path, key, item)
                n = 0 if item.shape is None else limits.count(item.shape)
                nbytes = n * max(int(item.dtype.itemsize), 8) * budget_each
                limits.check_bytes(f"dataset '{child}' declares shape {item.shape} ({n:,} values); reading "
                                   f"it", nbytes, str(p))
                total += nbytes
                limits.check_bytes("all datasets together", total, str(p))
            else:  # committed datatypes and the like
                raise InputError(f"{p}: '{child}' is a {type(item).__name__}, not a group or dataset")
        if _NODE_GROUP.match(path):
            nodes.append((path, group))
    known = set(_known_types())
    for path, group in nodes:
        _check_node_type(p, path, group, known)


def _check_stored_here(p: Path, path: str, key: str, item: h5py.Dataset) -> None:
    """Refuse a dataset whose values h5py would read from another file (nothing is read to find out)."""
    where = f"'{path}/{key}'" if path else f"'{key}'"
    if _NODE_GROUP.match(path):
        where += f" (node '{_node_name(path)}', field '{key}')"
    if item.is_virtual:
        raise InputError(f"{p}: dataset {where} is a virtual dataset, whose values come from other files; "
                         f"a NIR file must hold its values itself")
    if item.id.get_create_plist().get_external_count() > 0:
        raise InputError(f"{p}: dataset {where} keeps its values in external files; a NIR file must hold its "
                         f"values itself")


def _shown(value: str, limit: int = 40) -> str:
    """A string from a file for a message: quoted, escaped and cut to ``limit`` characters."""
    return repr(value[:limit]) + ("..." if len(value) > limit else "")


def _check_node_type(p: Path, path: str, group: h5py.Group, known: set[str]) -> None:
    """A node group's ``type`` must name a NIR node type (nir.read only asserts it)."""
    name = _node_name(path)
    item = group.get("type")
    if not isinstance(item, h5py.Dataset):
        raise InputError(f"{p}: node '{name}' ({path}) has no 'type' dataset")
    if item.shape is None or limits.count(item.shape) != 1 or item.dtype.kind not in "SOUa":
        raise InputError(f"{p}: node '{name}' ({path}): 'type' is not one string "
                         f"(shape {item.shape}, dtype {item.dtype})")
    value = item[()]
    if isinstance(value, np.ndarray):
        value = value.reshape(-1)[0]
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if not isinstance(value, str) or value not in known:
        shown = _shown(value) if isinstance(value, str) else type(value).__name__
        raise InputError(f"{p}: node '{name}' ({path}) has unknown NIR node type {shown}; nir "
                         f"{getattr(nir, '__version__', '')} knows {', '.join(sorted(known))}")


def write_nir(graph: nir.NIRGraph, path: str | os.PathLike) -> Path:
    """Write ``graph`` atomically with ``nir.write``, built in memory first (see :func:`~st2chip.io.write_bytes`:
    a failing write is then one ``OSError`` naming ``path``, with no temporary left)."""
    image = io.BytesIO()
    nir.write(image, graph)
    return write_bytes(path, image.getbuffer())


if __name__ == "__main__":  # the child of :func:`_read_in_child`: exit 0 when the file reads, 2 when it does not
    try:
        read_graph(sys.argv[1])
    except InputError:
        sys.exit(2)
