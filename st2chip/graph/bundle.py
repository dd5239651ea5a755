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
regular file inside the bundle folder before it opens any part. An ONNX part reaches
onnxruntime only once its structure is what st2chip's exporter writes (the ops of
:data:`ONNX_OPS`, no control flow or nested graphs, bounded shapes within the memory
budget). Parts that do not load or run, images of the wrong shape and inputs larger than
:func:`st2chip.limits.memory_budget` are :class:`~st2chip.errors.InputError`\ s naming the
manifest entry or file.
"""

from __future__ import annotations

import dataclasses
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
MAX_CLASSES = 100_000
# config sizes every bundle holds, with their upper bounds (the composer reads heads and classes)
CONFIG_INTS = {"image_size": MAX_IMAGE_SIZE, "in_channels": MAX_CHANNELS, "classes": MAX_CLASSES,
               "heads": MAX_CHANNELS}
MAX_MANIFEST_BYTES = 16 * 2**20
MAX_PART_BYTES = 2**31  # onnxruntime's protobuf limit; a NIR part is never near it
# Every op st2chip's exporter writes (token reshape, attention product, readout; measured on dense, DSP and
# several-head bundles with torch.onnx's TorchScript exporter, opset 20). Nothing else runs: no control flow.
ONNX_OPS = frozenset({"Cast", "Concat", "Constant", "Div", "Gather", "MatMul", "Mul", "ReduceMean", "Reshape",
                      "Shape", "Slice", "Transpose", "Unsqueeze"})


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


def _check_shape(shape: object, where: str, steps: int, time_first: bool) -> None:
    """A port shape: ``[time_steps, "B", d, ...]`` (time-first, what every step reads), or, unless
    ``time_first``, ``["B", d, ...]`` (the scores); every ``d`` a positive integer."""
    forms = [[steps, "B"]] if time_first else [[steps, "B"], ["B"]]
    if isinstance(shape, list) and any(len(shape) > len(lead) and shape[:len(lead)] == lead
                                       and all(_is_int(d) and d >= 1 for d in shape[len(lead):]) for lead in forms):
        return
    want = " or ".join("[" + ", ".join(map(json.dumps, lead)) + ", d, ...]" for lead in forms)
    raise InputError(f"{where}: 'shape' must be {want} with every d a positive integer, got {shape!r:.80}")


def _check_int(value: object, key: str, lo: int, hi: int, where: str) -> None:
    if not _is_int(value):
        raise InputError(f"{where}: {key!r} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise InputError(f"{where}: {key!r} must be between {lo} and {hi}, got {value}")


def _check_config(config: object, src: str) -> None:
    """The config fields a bundle's readers use: sizes (:data:`CONFIG_INTS`) and ``attn_scale``."""
    if not isinstance(config, dict):
        raise InputError(f"{src}: 'config' must be an object, got {type(config).__name__}")
    for key, hi in CONFIG_INTS.items():
        if key not in config:
            raise InputError(f"{src}: config: missing key {key!r}")
        _check_int(config[key], key, 1, hi, f"{src}: config")
    if "attn_scale" not in config:
        raise InputError(f"{src}: config: missing key 'attn_scale'")
    scale = config["attn_scale"]
    if not _is_number(scale) or not math.isfinite(scale) or scale <= 0:
        raise InputError(f"{src}: config: 'attn_scale' must be a positive finite number, got {scale!r:.80}")


@dataclasses.dataclass
class _Tensors:
    """The tensors of a manifest as its steps produce them: who produces each, and its declared shape."""

    steps: int
    producer: dict[str, str] = dataclasses.field(default_factory=dict)
    shapes: dict[str, list] = dataclasses.field(default_factory=dict)

    def produce(self, p: dict, who: str, where: str) -> None:
        if p["tensor"] in self.producer:
            raise InputError(f"{where}: tensor {p['tensor']!r} is already produced by {self.producer[p['tensor']]}")
        self.producer[p["tensor"]] = who
        self.declare(p, where, time_first=False)

    def read(self, p: dict, where: str) -> None:
        if p["tensor"] not in self.producer:
            raise InputError(f"{where}: reads tensor {p['tensor']!r}, which no earlier step produces")
        self.declare(p, where, time_first=True)

    def declare(self, p: dict, where: str, time_first: bool) -> None:
        """A port's ``shape``, checked, and the same wherever its tensor is named."""
        if "shape" not in p:
            return
        _check_shape(p["shape"], where, self.steps, time_first)
        known = self.shapes.setdefault(p["tensor"], p["shape"])
        if known != p["shape"]:
            raise InputError(f"{where}: 'shape' {p['shape']!r} of tensor {p['tensor']!r} disagrees with the "
                             f"{known!r} declared for it before")


def _check_port(p: object, where: str) -> str:
    """A port object; returns its port name (the tensor's name when ``port`` is absent)."""
    if not isinstance(p, dict) or not isinstance(p.get("tensor"), str) or not p["tensor"]:
        raise InputError(f"{where}: must be an object with a non-empty string 'tensor', got {p!r:.80}")
    port = p.get("port", p["tensor"])
    if not isinstance(port, str) or not port:
        raise InputError(f"{where}: 'port' must be a non-empty string, got {port!r:.80}")
    return port


def _check_step(step: object, i: int, src: str, tensors: _Tensors) -> None:
    where = f"{src}: steps[{i}]"
    if not isinstance(step, dict):
        raise InputError(f"{where}: must be an object, got {type(step).__name__}")
    name = step.get("name")
    if not isinstance(name, str) or not name:
        raise InputError(f"{where}: 'name' must be a non-empty string, got {name!r:.80}")
    where = f"{where} ({name!r})"
    for key in ("kind", "inputs", "outputs"):
        if key not in step:
            raise InputError(f"{where}: missing key {key!r}")
    kind = step["kind"]
    if kind not in KINDS:
        raise InputError(f"{where}: unknown kind {kind!r:.80} (known: {', '.join(KINDS)})")
    if kind == "op":
        if step.get("op") not in OPS:
            raise InputError(f"{where}: unknown op {step.get('op')!r:.80} (known: {', '.join(OPS)})")
    elif "file" not in step:
        raise InputError(f"{where}: missing key 'file'")
    elif not isinstance(step["file"], str) or not step["file"]:
        raise InputError(f"{where}: 'file' must be a non-empty string, got {step['file']!r:.80}")
    for key in ("inputs", "outputs"):
        ports = step[key]
        if not isinstance(ports, list) or not ports:
            raise InputError(f"{where}: {key!r} must be a non-empty list, got {ports!r:.80}")
        seen: set[str] = set()
        for j, p in enumerate(ports):
            port = _check_port(p, f"{where}: {key}[{j}]")
            if port in seen:
                raise InputError(f"{where}: {key}[{j}]: port {port!r} appears twice")
            seen.add(port)
    if kind == "op" and len(step["outputs"]) != 1:
        raise InputError(f"{where}: an 'op' step has exactly one output, got {len(step['outputs'])}")
    for j, p in enumerate(step["inputs"]):
        tensors.read(p, f"{where}: inputs[{j}]")
    for j, p in enumerate(step["outputs"]):
        tensors.produce(p, f"steps[{i}] ({name!r})", f"{where}: outputs[{j}]")


def _validate(m: object, src: str) -> None:
    """Check the whole manifest structure; the first problem is an :class:`InputError`."""
    if not isinstance(m, dict):
        raise InputError(f"{src}: not an {FORMAT} manifest (a JSON {type(m).__name__}, not an object)")
    if m.get("format") != FORMAT or not _is_int(m.get("version")) or m.get("version") != VERSION:
        raise InputError(f"{src}: not an {FORMAT} version {VERSION} manifest "
                         f"(format {m.get('format')!r:.80}, version {m.get('version')!r:.80})")
    for key in ("config", "dt", "time_steps", "input", "steps", "scores"):
        if key not in m:
            raise InputError(f"{src}: missing key {key!r}")
    config = m["config"]
    _check_config(config, src)
    dt = m["dt"]
    if not _is_number(dt) or not math.isfinite(dt) or dt <= 0:
        raise InputError(f"{src}: 'dt' must be a positive finite number, got {dt!r:.80}")
    _check_int(m["time_steps"], "time_steps", 1, MAX_TIME_STEPS, src)
    t, c, s = m["time_steps"], config["in_channels"], config["image_size"]
    scores = m["scores"]
    if not isinstance(scores, dict) or not isinstance(scores.get("tensor"), str) or not scores["tensor"]:
        raise InputError(f"{src}: 'scores' must be an object with a non-empty string 'tensor', got {scores!r:.80}")
    tensors = _Tensors(t)

    inp = m["input"]
    if not isinstance(inp, dict) or not isinstance(inp.get("tensor"), str) or not inp["tensor"]:
        raise InputError(f"{src}: 'input' must be an object with a non-empty string 'tensor', got {inp!r:.80}")
    if "shape" in inp and inp["shape"] != [t, "B", c, s, s]:
        raise InputError(f"{src}: input: 'shape' {inp['shape']!r:.80} disagrees with time_steps and config "
                         f"({[t, 'B', c, s, s]!r})")
    tensors.produce(inp, "the bundle input", f"{src}: input")

    steps = m["steps"]
    if not isinstance(steps, list) or not steps:
        raise InputError(f"{src}: 'steps' must be a non-empty list, got {steps!r:.80}")
    for i, step in enumerate(steps):
        _check_step(step, i, src, tensors)

    if scores["tensor"] not in tensors.producer:
        raise InputError(f"{src}: scores: tensor {scores['tensor']!r} is produced by no step")
    tensors.declare(scores, f"{src}: scores", time_first=False)
    want = ["B", config["classes"]]
    if tensors.shapes.get(scores["tensor"], want) != want:
        raise InputError(f"{src}: scores: tensor {scores['tensor']!r} has shape "
                         f"{tensors.shapes[scores['tensor']]!r}; the config's classes make it {want!r}")


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


def _load_nir(path: Path, where: str) -> nir.NIRGraph:
    """A NIR part, read as every .nir file is (read_graph refuses links, external storage and virtual
    datasets that would read a file outside the part)."""
    try:
        return read_graph(path)
    except InputError as exc:
        raise InputError(f"{where}: NIR part does not load: {exc}") from None


def _onnx_tensors(graph):
    """Every tensor of an ONNX graph (one :func:`_onnx_structure` let through): initializers and node
    attributes."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors


def _onnx_size(what: str, dims, elem_type: int, where: str) -> None:
    """A tensor of ``dims`` (all fixed) against the memory budget."""
    import onnx

    try:
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(elem_type).itemsize
    except (KeyError, TypeError, ValueError):
        itemsize = 8
    limits.check_alloc(f"ONNX part refused: {what}", limits.count(dims), itemsize, where)


def _onnx_shapes(model, where: str) -> None:
    """Every graph input bounded (fixed sizes after the time and batch axes), and every fixed size ONNX's
    shape inference finds (inputs, intermediate values, outputs, constants) within the memory budget."""
    import onnx

    graph = model.graph
    for value in graph.input:
        dims = value.type.tensor_type.shape.dim
        if not value.type.tensor_type.HasField("shape") or len(dims) < 3 \
                or not all(d.HasField("dim_value") and d.dim_value >= 1 for d in dims[2:]):
            raise InputError(f"{where}: ONNX part refused: input {value.name!r:.80} must be (T, B, sizes...) with "
                             f"fixed positive sizes after time and batch")
    for tensor in _onnx_tensors(graph):
        if any(d < 0 for d in tensor.dims):
            raise InputError(f"{where}: ONNX part refused: tensor {tensor.name!r:.80} has a negative size")
        _onnx_size(f"constant {tensor.name!r:.80} {list(tensor.dims)}", tensor.dims, tensor.data_type, where)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True).graph
    except Exception as exc:  # noqa: BLE001 -- an inconsistent untrusted model
        raise InputError(f"{where}: ONNX part does not check ({one_line(exc)})") from None
    for value in [*inferred.input, *inferred.value_info, *inferred.output]:
        fixed = [d.dim_value for d in value.type.tensor_type.shape.dim if d.HasField("dim_value")]
        if any(d < 0 for d in fixed):
            raise InputError(f"{where}: ONNX part refused: tensor {value.name!r:.80} has a negative size {fixed}")
        _onnx_size(f"tensor {value.name!r:.80} (fixed sizes {fixed})", fixed, value.type.tensor_type.elem_type,
                   where)


def _onnx_structure(model, where: str) -> None:
    """Only what st2chip's exporter writes: standard ops of :data:`ONNX_OPS`, no nested graphs (If, Loop,
    Scan bodies), no local functions; an ONNX part could otherwise loop for ever or allocate without bound."""
    import onnx

    if model.functions:
        raise InputError(f"{where}: ONNX part refused: it defines local functions "
                         f"({', '.join(repr(f.name) for f in model.functions[:3])}); st2chip's parts have none")
    for node in model.graph.node:
        what = f"node {node.name!r:.80} ({node.domain + '.' if node.domain else ''}{node.op_type:.80})"
        if node.domain not in ("", "ai.onnx") or node.op_type not in ONNX_OPS:
            raise InputError(f"{where}: ONNX part refused: {what} is not an op st2chip's parts use "
                             f"({', '.join(sorted(ONNX_OPS))})")
        for attr in node.attribute:
            if attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) or attr.HasField("g") \
                    or len(attr.graphs):
                raise InputError(f"{where}: ONNX part refused: {what} holds a nested graph (attribute "
                                 f"{attr.name!r:.80})")
            if attr.HasField("sparse_tensor") or len(attr.sparse_tensors):
                raise InputError(f"{where}: ONNX part refused: {what} holds a sparse tensor (attribute "
                                 f"{attr.name!r:.80})")
    if len(model.graph.sparse_initializer):
        raise InputError(f"{where}: ONNX part refused: it holds sparse initializers; st2chip's parts have none")


def _load_onnx(path: Path, where: str):
    """An onnxruntime session of the part at ``path``, once its structure is what st2chip's exporter writes
    (:func:`_onnx_structure`, :func:`_onnx_shapes`) and it keeps no data in other files."""
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
    _onnx_structure(model, where)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in _onnx_tensors(model.graph)):
        raise InputError(f"{where}: ONNX part refused: it keeps tensors in external data files")
    _onnx_shapes(model, where)
    options = ort.SessionOptions()
    options.log_severity_level = 4  # fatal only: a failing part is st2chip's one error line, not also onnxruntime's log
    try:  # from bytes: onnxruntime has no model path, so it reads no other file
        return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
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
