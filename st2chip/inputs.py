"""Input spikes for a run: the user's own file (``--inputs``) or a built-in test split.

Without ``--inputs`` the graph's ``metadata["encoding"]`` picks the data: ``"sequence"``
the MNIST-1D test split (thermometer code, one value per step), ``"rows"`` the digits
test split read row by row (:func:`~st2chip.learn.data.rows_encode`), anything else the
digits test split rate-coded over ``metadata["steps"]`` (or ``--steps``).

``--inputs`` takes

- ``.npy``: one array of spikes ``(B, T, n)`` or ``(B, T, *input_shape)`` for a
  graph with one Input node;
- ``.npz``: one array per Input node, stored under the node's name, and an
  optional ``labels`` array ``(B,)`` of class indices.

``--inputs`` must be a regular file (a FIFO or device is refused before it is opened).
Every array's dtype and declared shape are checked against the memory budget before its
data is read; nothing is unpickled. Spikes are 0/1 (bool, integer or float dtype), labels
integers. The run length is the inputs' ``T`` unless ``--steps`` asks for fewer.
"""

from __future__ import annotations

import os
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable

import nir
import numpy as np

from st2chip import limits
from st2chip.text import message
from st2chip.errors import InputError

# Bytes per loaded value while an --inputs array is checked and converted to uint8
# spikes (the array itself, the 0/1 mask, the uint8 copy), on top of its own itemsize.
_CONVERT_BYTES = 2
# Bytes per (sample, step, pixel) while digits are rate-coded (float32 temporaries).
_ENCODE_BYTES = 20


@dataclass
class RunInputs:
    """Spikes per Input node ``(B, T, n)`` (uint8), labels when known, and where they came from."""

    spikes: dict[str, np.ndarray]
    labels: np.ndarray | None
    origin: str

    @property
    def samples(self) -> int:
        return int(next(iter(self.spikes.values())).shape[0])

    @property
    def steps(self) -> int:
        return int(next(iter(self.spikes.values())).shape[1])

    def describe(self) -> str:
        return f"{self.samples} samples x {self.steps} steps from {self.origin}"


def input_sizes(graph: nir.NIRGraph) -> dict[str, int]:
    """Input node name -> number of values, for a canonical graph."""
    return {name: int(np.prod(node.input_type["input"])) for name, node in graph.nodes.items()
            if isinstance(node, nir.Input)}


def as_levels(source: str, name: str, array: np.ndarray, size: int, top: int = 1) -> np.ndarray:
    """``(B, T, *shape)`` -> ``(B, T, size)`` integers in ``0 .. top`` (``top`` 1: spikes), uint8 where they
    fit; what is not that for this input is refused naming ``source`` (a file, or ``inputs`` for arrays)."""
    if array.ndim < 3:
        raise InputError(f"{source}: array for input '{name}' has shape {array.shape}; expected (batch, steps, "
                         f"{size}) or (batch, steps, *input_shape)")
    b, t = array.shape[:2]
    if b == 0 or t == 0:
        raise InputError(f"{source}: array for input '{name}' is empty (shape {array.shape})")
    if int(np.prod(array.shape[2:])) != size:
        raise InputError(f"{source}: array for input '{name}' has {int(np.prod(array.shape[2:]))} values per "
                         f"step (shape {array.shape}); the graph's input '{name}' takes {size}")
    values = array.reshape(b, t, size)
    if top == 1:
        bad, what = ~np.isin(values, (0, 1)), "spikes (0 or 1)"
    else:
        bad, what = (values < 0) | (values > top) | (values != np.round(values)), f"integer levels 0 .. {top}"
    if bad.any():
        i = tuple(int(k) for k in np.argwhere(bad)[0])
        raise InputError(f"{source}: input '{name}' must hold {what}; sample {i[0]}, step {i[1]}, "
                         f"value {i[2]} is {values[i]!r}")
    return values.astype(np.uint8 if top < 256 else np.int64)


_NPY_MAGIC = b"\x93NUMPY"
_SPIKE_KINDS = "biuf"  # dtype kinds an input may have: bool, signed/unsigned integer, float
_LABEL_KINDS = "iu"
_UNREADABLE = (ValueError, OSError, EOFError, SyntaxError, TypeError, RuntimeError, NotImplementedError,
               zipfile.BadZipFile, zlib.error)
_FILE_KINDS = {stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFCHR: "a character device",
               stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a directory"}


def _open_regular(p: Path) -> BinaryIO:
    """``p`` opened for reading when it is a regular file (symlinks followed), else an InputError.

    A FIFO with no writer would block ``open`` forever and a device may never end, so
    the type is checked before opening, and again on the open descriptor (opened
    non-blocking, so that a FIFO swapped in between cannot block either).
    """
    try:
        mode = os.stat(p).st_mode
    except FileNotFoundError:
        raise InputError(f"--inputs {p}: no such file") from None
    except OSError as err:
        raise InputError(f"--inputs {p}: cannot be read ({err.strerror})") from None
    _require_regular(p, mode)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as err:
        raise InputError(f"--inputs {p}: cannot be read ({err.strerror})") from None
    try:
        _require_regular(p, os.fstat(fd).st_mode)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def _require_regular(p: Path, mode: int) -> None:
    if not stat.S_ISREG(mode):
        kind = _FILE_KINDS.get(stat.S_IFMT(mode), "not a regular file")
        raise InputError(f"--inputs {p}: is {kind}, not a regular .npy or .npz file")


def _header(fh: BinaryIO) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from a ``.npy`` header, reading no data."""
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
    elif version in ((2, 0), (3, 0)):
        shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
    else:  # pragma: no cover - read_magic refuses other versions
        raise ValueError(f"unsupported .npy version {version}")
    return tuple(int(d) for d in shape), np.dtype(dtype)


def _check_declared(source: str, name: str | None, shape: tuple[int, ...], dtype: np.dtype, total: int) -> int:
    """Refuse a dtype an input (or ``labels``) cannot have and a declared shape over the memory budget,
    before any data is read; returns ``total`` plus this array's bytes (all arrays must fit together)."""
    what = f"array '{name}'" if name is not None else "the array"
    if name == "labels":
        if dtype.kind not in _LABEL_KINDS:
            raise InputError(f"{source}: array 'labels' has dtype {dtype}; labels must be integer class indices")
    elif dtype.kind not in _SPIKE_KINDS:
        raise InputError(f"{source}: {what} has dtype {dtype}"
                         f"{' (pickled Python objects, never loaded)' if dtype.hasobject else ''}; "
                         f"an input takes bool, integer or float spikes (0 or 1)")
    n = limits.count(shape)
    itemsize = max(int(dtype.itemsize), 1) + _CONVERT_BYTES
    limits.check_alloc(f"loading {what} of shape {shape} ({dtype})", n, itemsize, source)
    total += n * itemsize
    limits.check_bytes("loading all its arrays", total, source)
    return total


def _read_npy(fh: BinaryIO, source: str) -> np.ndarray:
    """The one array of a ``.npy`` file, its header checked before its data is read."""
    try:
        shape, dtype = _header(fh)
    except _UNREADABLE as err:
        raise InputError(f"{source}: not a readable .npy/.npz array file ({message(err)})") from None
    _check_declared(source, None, shape, dtype, 0)
    fh.seek(0)
    try:
        return np.lib.format.read_array(fh, allow_pickle=False)
    except _UNREADABLE as err:
        raise InputError(f"{source}: not a readable .npy array file ({message(err)})") from None


def _read_npz(fh: BinaryIO, source: str, sizes: dict[str, int]) -> dict[str, np.ndarray]:
    """Every member of a ``.npz`` (zip) file by name: names, dtypes and declared shapes of all of them
    are checked first (a member without ``.npy`` in its name too), then the data is read."""
    try:
        zf = zipfile.ZipFile(fh)
    except _UNREADABLE as err:
        raise InputError(f"{source}: not a readable .npy/.npz array file ({message(err)})") from None
    with zf:
        members: dict[str, zipfile.ZipInfo] = {}
        for info in zf.infolist():
            name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            if name in members:
                raise InputError(f"{source}: members '{members[name].filename}' and '{info.filename}' both "
                                 f"hold array '{name}'")
            members[name] = info
        _check_names(source, set(members), sizes)
        total = 0
        for name, info in members.items():
            shape, dtype = _member(zf, info, source, _header)
            total = _check_declared(source, name, shape, dtype, total)
        return {name: _member(zf, info, source, _read_member) for name, info in members.items()}


def _read_member(fh: BinaryIO) -> np.ndarray:
    return np.lib.format.read_array(fh, allow_pickle=False)


def _member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, source: str, read: Callable[[BinaryIO], Any]) -> Any:
    """``read`` applied to one ``.npz`` member, any failure an InputError naming file and member."""
    try:
        with zf.open(info) as fh:
            if fh.read(len(_NPY_MAGIC)) != _NPY_MAGIC:
                raise InputError(f"{source}: member '{info.filename}' is not a .npy array")
        with zf.open(info) as fh:
            return read(fh)
    except _UNREADABLE as err:
        raise InputError(f"{source}: member '{info.filename}' is not a readable .npy array "
                         f"({message(err)})") from None


def _check_names(source: str, keys: set[str], sizes: dict[str, int]) -> None:
    """One array per Input node, and nothing but those and ``labels``."""
    missing = [n for n in sizes if n not in keys]
    if missing:
        raise InputError(f"{source}: no array for input node(s) {', '.join(missing)}; the file holds "
                         f"{', '.join(sorted(keys)) or 'nothing'}")
    unknown = sorted(keys - set(sizes) - {"labels"})
    if unknown:
        raise InputError(f"{source}: arrays {', '.join(unknown)} match no Input node of the graph "
                         f"({', '.join(sizes)}) and are not 'labels'")



def load_inputs(path: str | os.PathLike, graph: nir.NIRGraph) -> RunInputs:
    """Read ``--inputs`` (``.npy`` or ``.npz``) for ``graph``; every problem names the file and the input.

    Only a regular file is opened; every array's name, dtype and declared size are
    checked before its data is read, and nothing is ever unpickled.
    """
    p = Path(path)
    source = str(p)
    sizes = input_sizes(graph)
    with _open_regular(p) as fh:
        magic = fh.read(len(_NPY_MAGIC))
        fh.seek(0)
        if magic == _NPY_MAGIC:
            if len(sizes) != 1:
                raise InputError(f"{p}: a .npy file feeds a graph with one Input node; this graph has "
                                 f"{len(sizes)} ({', '.join(sizes)}): use a .npz with one array per input name")
            (name, size), = sizes.items()
            spikes = {name: as_levels(source, name, _read_npy(fh, source), size)}
            labels = None
        elif magic[:2] == b"PK":
            arrays = _read_npz(fh, source, sizes)
            spikes = {n: as_levels(source, n, arrays[n], s) for n, s in sizes.items()}
            labels = _labels(source, arrays["labels"]) if "labels" in arrays else None
        else:
            raise InputError(f"{p}: not a readable .npy/.npz array file (it starts with neither the .npy "
                             f"magic nor a zip header)")
    shapes = {n: s.shape[:2] for n, s in spikes.items()}
    if len(set(shapes.values())) != 1:
        raise InputError(f"{p}: inputs disagree in (batch, steps): {shapes}")
    if labels is not None and labels.shape[0] != next(iter(shapes.values()))[0]:
        raise InputError(f"{p}: 'labels' has {labels.shape[0]} entries for {next(iter(shapes.values()))[0]} samples")
    return RunInputs(spikes, labels, source)


def _labels(source: str, labels: np.ndarray) -> np.ndarray:
    """Class indices (their integer dtype was checked with the header)."""
    if labels.ndim != 1:
        raise InputError(f"{source}: 'labels' must be a 1-D integer array of class indices, got "
                         f"{labels.dtype} {labels.shape}")
    return labels.astype(np.int64)


def limit(inputs: RunInputs, samples: int | None, steps: int | None) -> RunInputs:
    """The first ``samples`` samples and ``steps`` steps (``None``: all)."""
    if samples is not None and samples < 1:
        raise InputError(f"--samples must be at least 1, got {samples}")
    if steps is not None:
        if steps < 1:
            raise InputError(f"--steps must be at least 1, got {steps}")
        if steps > inputs.steps:
            raise InputError(f"--steps {steps} asks for more steps than the inputs hold ({inputs.steps}, "
                             f"{inputs.origin})")
    b = slice(None, samples)
    spikes = {n: x[b, :steps] for n, x in inputs.spikes.items()}
    labels = None if inputs.labels is None else inputs.labels[b]
    return RunInputs(spikes, labels, inputs.origin)


_DIGITS_TEST_SIZE = 360  # samples in the digits test split (an upper bound for the run check)


def _only_input(graph: nir.NIRGraph, data: str) -> tuple[str, int]:
    """Name and size of the graph's one Input node, which a built-in data set feeds."""
    sizes = input_sizes(graph)
    if len(sizes) != 1:
        raise InputError(f"the graph has {len(sizes)} Input nodes; the {data} data feed exactly one "
                         f"(give --inputs FILE.npz with one array per input)")
    return next(iter(sizes.items()))


def digits_inputs(graph: nir.NIRGraph, samples: int, steps: int) -> RunInputs:
    """Rate-coded digits test samples ``(B, T, 64)`` for the graph's one input, with labels."""
    from st2chip.learn.data import load_digits_split, rate_encode

    name, size = _only_input(graph, "digits")
    _, test = load_digits_split()
    if size != test.x.shape[1]:
        raise InputError(f"input node '{name}' takes {size} values; the digits data set has "
                         f"{test.x.shape[1]} (8x8 images): give your own spikes with --inputs FILE.npy")
    if samples < 1:
        raise InputError(f"--samples must be at least 1, got {samples}")
    if steps < 1:
        raise InputError(f"--steps must be at least 1, got {steps}")
    samples = min(samples, len(test))
    limits.check_alloc(f"rate-coding {samples} digits samples x {steps} steps", samples * steps * size, _ENCODE_BYTES,
                       "the digits inputs")
    spikes = rate_encode(test.x[:samples], steps).numpy().transpose(1, 0, 2).astype(np.uint8)
    return RunInputs({name: spikes}, test.y[:samples], "the digits test split")


def mnist1d_inputs(graph: nir.NIRGraph, samples: int | None, steps: int | None) -> RunInputs:
    """The MNIST-1D test split, thermometer-coded as a sequence model reads it, with labels."""
    from st2chip.learn.data import load_mnist1d_split, sequence_encode

    name, levels = _only_input(graph, "MNIST-1D")
    _, test = load_mnist1d_split()
    spikes = sequence_encode(test.x, levels).numpy().transpose(1, 0, 2).astype(np.uint8)
    return limit(RunInputs({name: spikes}, test.y, "the MNIST-1D test split"), samples, steps)


def mnist1d_training_inputs(graph: nir.NIRGraph) -> RunInputs:
    """The samples an MNIST-1D model (metadata ``encoding: sequence``) fine-tunes on without ``--inputs``: the
    MNIST-1D training split, thermometer-coded as the model reads it (verify's default is the test split)."""
    from st2chip.learn.data import load_mnist1d_split, sequence_encode
    sizes = input_sizes(graph)
    if graph.metadata.get("encoding") != "sequence" or len(sizes) != 1:
        raise InputError("quantize: a NIR graph fine-tunes on your samples: pass --inputs FILE.npz (spikes per Input "
                         "node and 'labels'); only an MNIST-1D model (metadata encoding 'sequence') has a default")
    (name, levels), = sizes.items()
    train, _ = load_mnist1d_split()
    spikes = sequence_encode(train.x, levels).numpy().transpose(1, 0, 2).astype(np.uint8)
    return RunInputs({name: spikes}, train.y, "the MNIST-1D training split")


def rows_inputs(graph: nir.NIRGraph, samples: int | None, steps: int | None) -> RunInputs:
    """The digits test split read row by row (encoding ``rows``, :func:`~st2chip.learn.data.rows_encode`), with
    labels: ``levels`` = the input size / 8, ``hold`` from the metadata (else its ``steps`` / 8)."""
    from st2chip.learn.data import DIGITS_SIDE, load_digits_split, rows_encode

    name, size = _only_input(graph, "digits (rows)")
    metadata = graph.metadata if isinstance(graph.metadata, dict) else {}
    if size % DIGITS_SIDE:
        raise InputError(f"input node '{name}' takes {size} values; the 'rows' encoding feeds {DIGITS_SIDE} pixels "
                         f"x levels per step: give your own spikes with --inputs FILE.npy")
    hold = metadata.get("hold")
    if hold is None:
        stored = metadata.get("steps")
        if stored is None:
            raise InputError("encoding 'rows': the graph's metadata has neither 'hold' nor 'steps'; pass "
                             "--inputs FILE whose arrays are (batch, T, ...)")
        hold = limits.positive_int(stored, "metadata field 'steps'", "the graph") // DIGITS_SIDE
    hold = limits.positive_int(hold, "metadata field 'hold'", "the graph")
    _, test = load_digits_split()
    count = len(test) if samples is None else max(min(int(samples), len(test)), 1)
    limits.check_alloc(f"row-coding {count} digits samples x {DIGITS_SIDE * hold} steps",
                       count * DIGITS_SIDE * hold * size, _ENCODE_BYTES, "the digits inputs")
    spikes = rows_encode(test.x[:count], size // DIGITS_SIDE, hold).numpy().transpose(1, 0, 2).astype(np.uint8)
    return limit(RunInputs({name: spikes}, test.y[:count], "the digits test split, row by row"), samples, steps)


def direct_inputs(graph: nir.NIRGraph, samples: int | None, steps: int | None) -> RunInputs:
    """The test split of the bundle's data set (metadata ``data``: ``digits``, the default, or ``digits32``) for a
    composed bundle (encoding ``direct``): each image as integer levels ``round(levels * x)`` (``levels`` from the
    metadata), the same at every one of ``steps`` steps."""
    from st2chip.learn.data import load_split

    name, size = _only_input(graph, "digits (direct)")
    metadata = graph.metadata if isinstance(graph.metadata, dict) else {}
    data = metadata.get("data", "digits")
    if data not in ("digits", "digits32"):
        raise InputError(f"the bundle's model was trained on {data}, whose test split st2chip does not read by "
                         f"itself: give its images as --inputs FILE.npy (integer levels, one row per sample)")
    levels = limits.positive_int(metadata.get("levels", 255), "metadata field 'levels'", "the graph")
    stored = steps if steps is not None else metadata.get("steps")
    if stored is None:
        raise InputError("encoding 'direct': the graph's metadata has no 'steps'; pass --steps T")
    steps = limits.positive_int(stored, "--steps" if steps is not None else "metadata field 'steps'", "the graph")
    _, test = load_split(data)
    values = int(np.prod(test.x.shape[1:]))
    if size != values:
        raise InputError(f"input node '{name}' takes {size} values; the {data} images have {values}: give your "
                         f"own inputs with --inputs FILE.npy (integer levels)")
    count = len(test) if samples is None else max(min(int(samples), len(test)), 1)
    limits.check_alloc(f"{count} {data} samples x {steps} steps", count * steps * size, _ENCODE_BYTES,
                       f"the {data} inputs")
    return RunInputs({name: direct_levels(test.x[:count], levels, steps)}, test.y[:count],
                     f"the {data} test split, direct ({levels} levels)")


def direct_levels(images: np.ndarray, levels: int, steps: int) -> np.ndarray:
    """Encoding ``direct``: images in [0, 1] (any shape per sample) as integer levels ``round(levels * x)``,
    flattened and the same at each of ``steps`` steps: ``(batch, steps, values)``."""
    flat = np.asarray(images, np.float64).reshape(len(images), -1)
    values = np.round(flat * levels).astype(np.uint8 if levels < 256 else np.int64)
    return np.repeat(values[:, None, :], steps, axis=1)


def resolve_inputs(graph: nir.NIRGraph, path: str | None, samples: int | None, steps: int | None) -> RunInputs:
    """``--inputs`` when given (``--steps`` defaults to its T); else, for a graph whose metadata says
    ``encoding: sequence`` (an MNIST-1D model), the MNIST-1D test split; for ``encoding: rows`` (an RNN
    reading digits row by row), the digits test split in that code; for ``encoding: direct`` (a composed
    bundle), the digits test split as integer levels; else the whole digits test
    split, rate-coded (``--steps`` or the graph's metadata). ``samples`` keeps the first ones."""
    metadata = graph.metadata if isinstance(graph.metadata, dict) else {}
    if path is not None:
        inputs = limit(load_inputs(path, graph), samples, steps)
    elif metadata.get("encoding") == "sequence":
        inputs = mnist1d_inputs(graph, samples, steps)
    elif metadata.get("encoding") == "rows":
        inputs = rows_inputs(graph, samples, steps)
    elif metadata.get("encoding") == "direct":
        inputs = direct_inputs(graph, samples, steps)
    else:
        origin = "the digits inputs (--steps)"
        if steps is None:
            origin = "the digits inputs (steps from the graph's metadata field 'steps')"
            stored = graph.metadata.get("steps") if isinstance(graph.metadata, dict) else None
            if stored is None:
                raise InputError("the number of time steps is unknown: the graph's metadata has no 'steps'; "
                                 "pass --steps T, or --inputs FILE whose arrays are (batch, T, ...)")
            steps = limits.positive_int(stored, "metadata field 'steps'", "the graph")
        elif isinstance(steps, bool) or not isinstance(steps, (int, np.integer)):
            raise InputError(f"--steps must be a positive integer, got {steps!r}")
        samples = samples if samples is not None else _DIGITS_TEST_SIZE
        if isinstance(samples, (int, np.integer)) and not isinstance(samples, bool) and samples >= 1 and steps >= 1:
            _check_run(graph, min(int(samples), _DIGITS_TEST_SIZE), int(steps), origin)
        inputs = digits_inputs(graph, samples, int(steps))
    _check_run(graph, inputs.samples, inputs.steps, inputs.origin)
    return inputs




def graph_width(graph: nir.NIRGraph) -> int:
    """Values every step of a run computes: the output size of every node of a canonical graph."""
    width = 0
    for node in graph.nodes.values():
        try:
            if isinstance(node, nir.Input):
                width += limits.count(np.asarray(node.input_type["input"]).reshape(-1))
            elif isinstance(node, nir.Output):
                width += limits.count(np.asarray(node.output_type["output"]).reshape(-1))
            elif isinstance(node, (nir.Affine, nir.Linear)):
                width += int(np.shape(node.weight)[0])
            elif isinstance(node, (nir.Conv1d, nir.Conv2d, nir.SumPool2d, nir.AvgPool2d)):
                width += limits.count(np.asarray(node.output_type["output"]).reshape(-1))
            else:
                width += max((int(np.size(v)) for k, v in vars(node).items()
                              if k not in ("metadata", "input_type", "output_type")), default=0)
        except (AttributeError, KeyError, IndexError, TypeError, ValueError):
            continue  # not canonical; normalize checks it
    return width


def _check_run(graph: nir.NIRGraph, samples: int, steps: int, where: str) -> None:
    """Samples x steps x every node's values (outputs and voltages, float64) against the memory budget."""
    limits.check_run("a run", samples, steps, max(graph_width(graph), 1), where)
