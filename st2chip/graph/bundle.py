r"""Run a spiking Transformer deployment bundle part by part, from its files alone.

A bundle (written by :func:`st2chip.converters.transformer.export_bundle`) is a folder with
``manifest.json``, NIR files (``*.nir``: neuron–synapse parts) and ONNX files
(``*.onnx``: spike x spike attention products, token reshape, readout mean).
The manifest lists ordered ``steps``; each reads named tensors and writes named
tensors, all time-first ``(T, B, ...)``. Step kinds:

- ``nir``: a NIR graph run by :func:`st2chip.graph.simulate.run_graph` (st2chip's one
  NIR interpreter) in float32 over whole time sequences. Its Input/Output node
  names are the ``port`` of each tensor. A graph describes one sample (and, for
  token parts, one token): the leading axes of a tensor beyond the graph's
  per-sample type are time (axis 0) and batch (and tokens).
- ``onnx``: an ONNX model run with onnxruntime; ``port`` is the ONNX input/output name.
- ``op``: ``add`` (element-wise sum of the inputs: a residual sum of spike trains).

NIR semantics are those of :mod:`st2chip.graph.simulate`, with ``dt = manifest["dt"]``.

A bundle is untrusted input. :func:`read_manifest` checks the manifest's whole
structure before anything runs, and :func:`run_bundle` checks that every part the
manifest names is a plain relative path resolving (symlinks followed) to a
regular file inside the bundle folder before it opens any part; parts that do not
load or run, images of the wrong shape and inputs larger than
:func:`st2chip.limits.memory_budget` are :class:`~st2chip.errors.InputError`\ s naming the
manifest entry or file.
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

import nir
import numpy as np
import torch

from st2chip import limits
from st2chip.errors import InputError
from st2chip.graph.nirfile import one_line, read_graph
from st2chip.graph.simulate import run_graph

MANIFEST = "manifest.json"
FORMAT = "st2chip-bundle"
VERSION = 1

KINDS = ("nir", "onnx", "op")
OPS = ("add",)
MAX_TIME_STEPS = 100_000
MAX_IMAGE_SIZE = 4096
MAX_CHANNELS = 4096
MAX_MANIFEST_BYTES = 16 * 2**20
MAX_PART_BYTES = 2**31  # onnxruntime's protobuf limit; a NIR part is never near it


# ----------------------------------------------------------------------------------------------
# Paths: every file a bundle names stays inside the bundle folder.


def _real_folder(folder: Path) -> Path:
    if not folder.exists():
        raise InputError(f"{folder}: no such bundle folder")
    if not folder.is_dir():
        raise InputError(f"{folder}: is not a bundle folder (not a directory)")
    return Path(os.path.realpath(folder))


def _contained(folder: Path, real: Path, name: object, where: str) -> Path:
    """The resolved path of file ``name`` of the bundle, checked to be a regular file inside ``real``.

    Nothing is opened: only the path is resolved (``lstat``/``readlink``), and the
    target is ``stat``-ed only once it is known to lie inside the folder.
    """
    if not isinstance(name, str) or not name:
        raise InputError(f"{where}: 'file' must be a non-empty string, got {name!r}")
    if "\x00" in name or "\\" in name:
        raise InputError(f"{where}: 'file' {name!r} must be a plain relative path with '/' separators")
    if os.path.isabs(name) or name.startswith("/"):
        raise InputError(f"{where}: 'file' {name!r} is an absolute path; it leaves the bundle folder")
    if ".." in name.split("/"):
        raise InputError(f"{where}: 'file' {name!r} has a '..' component; it leaves the bundle folder")
    target = Path(os.path.realpath(real / name))
    if target != real and real not in target.parents:
        raise InputError(f"{where}: 'file' {name!r} is a symlink to outside the bundle folder ({target})")
    shown = folder / name
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        raise InputError(f"{where}: 'file' {name!r} is missing ({shown}: no such file)") from None
    except OSError as exc:
        raise InputError(f"{where}: 'file' {name!r} cannot be read ({one_line(exc)})") from None
    if stat.S_ISDIR(mode):
        raise InputError(f"{where}: 'file' {name!r} is a directory, not a file")
    if not stat.S_ISREG(mode):
        raise InputError(f"{where}: 'file' {name!r} is not a regular file")
    return target


# ----------------------------------------------------------------------------------------------
# The manifest.


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_shape(shape: object, where: str) -> None:
    if not isinstance(shape, list) or not all((_is_int(d) and d >= 0) or d == "B" for d in shape):
        raise InputError(f"{where}: 'shape' must be a list of non-negative integers and \"B\", got {shape!r}")


def _check_int(value: object, key: str, lo: int, hi: int, where: str) -> None:
    if not _is_int(value):
        raise InputError(f"{where}: {key!r} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise InputError(f"{where}: {key!r} must be between {lo} and {hi}, got {value}")


def _validate(m: object, src: str) -> None:
    """Check the whole manifest structure; the first problem is an :class:`InputError`."""
    if not isinstance(m, dict):
        raise InputError(f"{src}: not an {FORMAT} manifest (a JSON {type(m).__name__}, not an object)")
    if m.get("format") != FORMAT or not _is_int(m.get("version")) or m.get("version") != VERSION:
        raise InputError(f"{src}: not an {FORMAT} version {VERSION} manifest "
                         f"(format {m.get('format')!r}, version {m.get('version')!r})")
    for key in ("config", "dt", "time_steps", "input", "steps", "scores"):
        if key not in m:
            raise InputError(f"{src}: missing key {key!r}")
    config = m["config"]
    if not isinstance(config, dict):
        raise InputError(f"{src}: 'config' must be an object, got {type(config).__name__}")
    for key, hi in (("image_size", MAX_IMAGE_SIZE), ("in_channels", MAX_CHANNELS)):
        if key not in config:
            raise InputError(f"{src}: config: missing key {key!r}")
        _check_int(config[key], key, 1, hi, f"{src}: config")
    dt = m["dt"]
    if not _is_number(dt) or not math.isfinite(dt) or dt <= 0:
        raise InputError(f"{src}: 'dt' must be a positive finite number, got {dt!r}")
    _check_int(m["time_steps"], "time_steps", 1, MAX_TIME_STEPS, src)
    t, c, s = m["time_steps"], config["in_channels"], config["image_size"]

    inp = m["input"]
    if not isinstance(inp, dict) or not isinstance(inp.get("tensor"), str) or not inp["tensor"]:
        raise InputError(f"{src}: 'input' must be an object with a non-empty string 'tensor', got {inp!r}")
    if "shape" in inp:
        _check_shape(inp["shape"], f"{src}: input")
        if inp["shape"] != [t, "B", c, s, s]:
            raise InputError(f"{src}: input: 'shape' {inp['shape']!r} disagrees with time_steps and config "
                             f"({[t, 'B', c, s, s]!r})")
    produced = {inp["tensor"]: "the bundle input"}

    steps = m["steps"]
    if not isinstance(steps, list) or not steps:
        raise InputError(f"{src}: 'steps' must be a non-empty list, got {steps!r:.80}")
    for i, step in enumerate(steps):
        where = f"{src}: steps[{i}]"
        if not isinstance(step, dict):
            raise InputError(f"{where}: must be an object, got {type(step).__name__}")
        name = step.get("name")
        if not isinstance(name, str) or not name:
            raise InputError(f"{where}: 'name' must be a non-empty string, got {name!r}")
        where = f"{where} ({name!r})"
        for key in ("kind", "inputs", "outputs"):
            if key not in step:
                raise InputError(f"{where}: missing key {key!r}")
        kind = step["kind"]
        if kind not in KINDS:
            raise InputError(f"{where}: unknown kind {kind!r} (known: {', '.join(KINDS)})")
        if kind == "op":
            if step.get("op") not in OPS:
                raise InputError(f"{where}: unknown op {step.get('op')!r} (known: {', '.join(OPS)})")
        elif "file" not in step:
            raise InputError(f"{where}: missing key 'file'")
        elif not isinstance(step["file"], str) or not step["file"]:
            raise InputError(f"{where}: 'file' must be a non-empty string, got {step['file']!r}")
        for key in ("inputs", "outputs"):
            ports = step[key]
            if not isinstance(ports, list) or not ports:
                raise InputError(f"{where}: {key!r} must be a non-empty list, got {ports!r:.80}")
            seen: set[str] = set()
            for j, p in enumerate(ports):
                pw = f"{where}: {key}[{j}]"
                if not isinstance(p, dict) or not isinstance(p.get("tensor"), str) or not p["tensor"]:
                    raise InputError(f"{pw}: must be an object with a non-empty string 'tensor', got {p!r:.80}")
                port = p.get("port", p["tensor"])
                if not isinstance(port, str) or not port:
                    raise InputError(f"{pw}: 'port' must be a non-empty string, got {port!r}")
                if port in seen:
                    raise InputError(f"{pw}: port {port!r} appears twice")
                seen.add(port)
                if "shape" in p:
                    _check_shape(p["shape"], pw)
                if key == "inputs" and p["tensor"] not in produced:
                    raise InputError(f"{pw}: reads tensor {p['tensor']!r}, which no earlier step produces")
        if kind == "op" and len(step["outputs"]) != 1:
            raise InputError(f"{where}: an 'op' step has exactly one output, got {len(step['outputs'])}")
        for j, p in enumerate(step["outputs"]):
            if p["tensor"] in produced:
                raise InputError(f"{where}: outputs[{j}]: tensor {p['tensor']!r} is already produced by "
                                 f"{produced[p['tensor']]}")
            produced[p["tensor"]] = f"steps[{i}] ({name!r})"

    scores = m["scores"]
    if not isinstance(scores, dict) or not isinstance(scores.get("tensor"), str):
        raise InputError(f"{src}: 'scores' must be an object with a string 'tensor', got {scores!r:.80}")
    if scores["tensor"] not in produced:
        raise InputError(f"{src}: scores: tensor {scores['tensor']!r} is produced by no step")
    if "shape" in scores:
        _check_shape(scores["shape"], f"{src}: scores")


def read_manifest(folder: str | os.PathLike) -> dict:
    """The bundle's manifest, its whole structure checked; any problem is an :class:`InputError`.

    The message names the manifest file and the entry at fault, e.g.
    ``bundle/manifest.json: steps[3] ('blocks.0.product'): missing key 'file'``.
    Part files are checked by :func:`check_parts`.
    """
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise InputError(f"{path}: not a readable bundle manifest ({folder} is not a directory)")
    real = Path(os.path.realpath(folder))
    target = Path(os.path.realpath(real / MANIFEST))
    if real not in target.parents:
        raise InputError(f"{path}: not a readable bundle manifest (a symlink to outside the bundle folder: "
                         f"{target})")
    try:
        st = os.stat(target)
    except OSError as exc:
        raise InputError(f"{path}: not a readable bundle manifest ({one_line(exc)})") from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path}: not a readable bundle manifest (not a regular file)")
    if st.st_size > MAX_MANIFEST_BYTES:
        raise InputError(f"{path}: not a readable bundle manifest ({st.st_size:,} bytes; at most "
                         f"{MAX_MANIFEST_BYTES:,})")
    try:
        manifest = json.loads(target.read_bytes())
    except (OSError, ValueError, RecursionError) as err:
        raise InputError(f"{path}: not a readable bundle manifest ({one_line(err)})") from None
    _validate(manifest, str(path))
    return manifest


def check_parts(folder: str | os.PathLike, manifest: dict) -> dict[int, Path]:
    """Resolved path of every part file, by step index; each must be a regular file inside ``folder``.

    Run before any part is opened, so no file outside the bundle folder ever is.
    """
    folder = Path(folder)
    real = _real_folder(folder)
    src = folder / MANIFEST
    return {i: _contained(folder, real, step["file"], f"{src}: steps[{i}] ({step['name']!r})")
            for i, step in enumerate(manifest["steps"]) if step["kind"] != "op"}


# ----------------------------------------------------------------------------------------------
# Input images.


def _images(manifest: dict, x: np.ndarray | torch.Tensor) -> torch.Tensor:
    c = manifest["config"]
    ch, size = c["in_channels"], c["image_size"]
    try:
        arr = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise InputError(f"images are not a numeric array ({one_line(exc)})") from None
    want = f"(B, {ch * size * size}) or (B, {ch}, {size}, {size})"
    if not ((arr.ndim == 2 and arr.shape[1] == ch * size * size)
            or (arr.ndim == 4 and arr.shape[1:] == (ch, size, size))):
        raise InputError(f"images have shape {arr.shape}; the bundle's config wants {want}")
    if arr.shape[0] < 1:
        raise InputError(f"no images (shape {arr.shape}); the bundle's config wants {want}")
    if not np.isfinite(arr).all():
        raise InputError("images contain NaN or infinite values")
    return torch.as_tensor(arr).reshape(arr.shape[0], ch, size, size)


def _check_memory(what: str, shape: list, batch: int) -> None:
    dims = [batch if d == "B" else d for d in shape]
    limits.check_alloc(f"{what} ({' x '.join(map(str, dims))} float32)", limits.count(dims), 4)


def encode(manifest: dict, x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Direct encoding: images ``(B, C*H*W)`` or ``(B, C, H, W)`` repeated ``T`` times.

    Images of another shape, and an encoding over :func:`st2chip.limits.memory_budget`, are :class:`InputError`\\ s
    (checked before anything is allocated).
    """
    x = _images(manifest, x)
    c = manifest["config"]
    _check_memory(f"the encoded input {manifest['input']['tensor']!r}",
                  [manifest["time_steps"], "B", c["in_channels"], c["image_size"], c["image_size"]], x.shape[0])
    return x.unsqueeze(0).expand(manifest["time_steps"], *x.shape).contiguous()


# ----------------------------------------------------------------------------------------------
# Loading and running parts.


def _hdf5_escape(path: Path) -> str | None:
    """Why the HDF5 file at ``path`` would make h5py read another file (external link, external or
    virtual dataset), or ``None``. A file h5py cannot open is left to :func:`read_graph` to report."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except Exception:  # noqa: BLE001 -- read_graph reports it
        return None
    with f:
        found: list[str] = []

        def link(name: str) -> None:
            if not found and isinstance(f.get(name, getlink=True), h5py.ExternalLink):
                found.append(f"external link {name!r}")

        def item(name: str, obj) -> None:
            if not found and isinstance(obj, h5py.Dataset):
                if obj.is_virtual:
                    found.append(f"virtual dataset {name!r}")
                elif obj.id.get_create_plist().get_external_count() > 0:
                    found.append(f"dataset {name!r} with external storage")

        try:
            f.visit_links(link)
            if not found:
                f.visititems(item)
        except Exception as exc:  # noqa: BLE001 -- a damaged file
            return f"unreadable HDF5 structure ({one_line(exc)})"
        return found[0] if found else None


def _load_nir(path: Path, where: str) -> nir.NIRGraph:
    escape = _hdf5_escape(path)
    if escape is not None:
        raise InputError(f"{where}: NIR part refused: {escape} would read a file outside the part")
    try:
        return read_graph(path)
    except InputError as exc:
        raise InputError(f"{where}: NIR part does not load: {exc}") from None


def _onnx_tensors(graph):
    """Every tensor of an ONNX graph: initializers and node attributes, subgraphs included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _onnx_tensors(attr.g)
            for g in attr.graphs:
                yield from _onnx_tensors(g)


def _load_onnx(path: Path, where: str):
    import onnx
    import onnxruntime as ort

    size = path.stat().st_size
    if size > MAX_PART_BYTES:
        raise InputError(f"{where}: ONNX part is {size:,} bytes; at most {MAX_PART_BYTES:,}")
    data = path.read_bytes()
    try:
        model = onnx.load_from_string(data)
    except Exception as exc:  # noqa: BLE001 -- untrusted bytes
        raise InputError(f"{where}: ONNX part does not load ({one_line(exc)})") from None
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in _onnx_tensors(model.graph)):
        raise InputError(f"{where}: ONNX part refused: it keeps tensors in external data files")
    try:  # from bytes: onnxruntime has no model path, so it reads no other file
        return ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 -- onnxruntime's errors are plain Exception subclasses
        raise InputError(f"{where}: ONNX part does not load ({one_line(exc)})") from None


def _check_output(where: str, p: dict, value: torch.Tensor, batch: int) -> None:
    shape = p.get("shape")
    if shape is None:
        return
    want = tuple(batch if d == "B" else d for d in shape)
    if tuple(value.shape) != want:
        raise InputError(f"{where}: output {p['tensor']!r} has shape {tuple(value.shape)}, the manifest says "
                         f"{want}")


def run_bundle(folder: str | os.PathLike, x: np.ndarray | torch.Tensor) -> np.ndarray:
    """Class scores ``(B, classes)`` of images ``x`` by executing the bundle's steps in order.

    Before any part is opened: the manifest is checked (:func:`read_manifest`), every
    part file is checked to lie inside ``folder`` (:func:`check_parts`), the images'
    shape against the config, and every declared tensor's size against :func:`st2chip.limits.memory_budget`.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    parts = check_parts(folder, manifest)
    src = folder / MANIFEST
    images = _images(manifest, x)
    batch = images.shape[0]
    for i, step in enumerate(manifest["steps"]):
        for p in step["outputs"]:
            if "shape" in p:
                _check_memory(f"{src}: steps[{i}] ({step['name']!r}): tensor {p['tensor']!r}", p["shape"], batch)
    dt = float(manifest["dt"])
    env: dict[str, torch.Tensor] = {manifest["input"]["tensor"]: encode(manifest, images)}
    for i, step in enumerate(manifest["steps"]):
        where = f"{src}: steps[{i}] ({step['name']!r})"
        if step["kind"] != "op":
            where = f"{where}: {folder / step['file']}"
        args = {p.get("port", p["tensor"]): env[p["tensor"]] for p in step["inputs"]}
        try:
            if step["kind"] == "nir":
                graph = _load_nir(parts[i], where)
                values = run_graph(graph, args, dt, dtype=torch.float32).values
                results = {n: values[n] for n, node in graph.nodes.items()
                           if isinstance(node, nir.Output) and n in values}
            elif step["kind"] == "onnx":
                session = _load_onnx(parts[i], where)
                needed = sorted(inp.name for inp in session.get_inputs())
                if needed != sorted(args):
                    raise InputError(f"{where}: ONNX part takes inputs {needed}, the manifest gives "
                                     f"{sorted(args)}")
                names = [o.name for o in session.get_outputs()]
                arrays = session.run(names, {k: v.numpy() for k, v in args.items()})
                results = {n: torch.from_numpy(np.asarray(a)) for n, a in zip(names, arrays)}
            else:  # op add (the only op read_manifest lets through)
                results = {step["outputs"][0]["tensor"]: torch.stack(list(args.values())).sum(0)}
        except InputError as exc:
            if str(exc).startswith(where):
                raise
            raise InputError(f"{where}: {exc}") from None
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 -- an untrusted part that does not run is bad input
            raise InputError(f"{where}: part does not run ({one_line(exc)})") from None
        for p in step["outputs"]:
            port = p.get("port", p["tensor"])
            if port not in results:
                raise InputError(f"{where}: produces no output {port!r} (it has {sorted(results)})")
            _check_output(where, p, results[port], batch)
            env[p["tensor"]] = results[port]
    return env[manifest["scores"]["tensor"]].numpy()
