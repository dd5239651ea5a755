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

Files are read with ``allow_pickle=False``. Spikes are 0/1 (any numeric or bool
dtype). The run length is the inputs' ``T`` unless ``--steps`` asks for fewer.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import nir
import numpy as np

from st2chip import limits
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


def _as_spikes(source: str, name: str, array: np.ndarray, size: int) -> np.ndarray:
    """``(B, T, *shape)`` -> uint8 ``(B, T, size)``, refusing what is not a spike train for this input."""
    if array.ndim < 3:
        raise InputError(f"{source}: array for input '{name}' has shape {array.shape}; expected (batch, steps, "
                         f"{size}) or (batch, steps, *input_shape)")
    b, t = array.shape[:2]
    if b == 0 or t == 0:
        raise InputError(f"{source}: array for input '{name}' is empty (shape {array.shape})")
    if int(np.prod(array.shape[2:])) != size:
        raise InputError(f"{source}: array for input '{name}' has {int(np.prod(array.shape[2:]))} values per "
                         f"step (shape {array.shape}); the graph's input '{name}' takes {size}")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise InputError(f"{source}: array for input '{name}' has dtype {array.dtype}; expected 0/1 spikes")
    values = array.reshape(b, t, size)
    bad = ~np.isin(values, (0, 1))
    if bad.any():
        i = tuple(int(k) for k in np.argwhere(bad)[0])
        raise InputError(f"{source}: input '{name}' must hold spikes (0 or 1); sample {i[0]}, step {i[1]}, "
                         f"value {i[2]} is {values[i]!r}")
    return values.astype(np.uint8)


def _header(fh, source: str, member: str | None = None) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from a ``.npy`` header, reading no data."""
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
    elif version in ((2, 0), (3, 0)):
        shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
    else:  # pragma: no cover - read_magic refuses other versions
        raise ValueError(f"unsupported .npy version {version}")
    return tuple(int(d) for d in shape), np.dtype(dtype)


def _check_declared(p: Path) -> None:
    """Every array's declared shape (``.npy`` header, each ``.npz`` member's) against the memory budget."""
    try:
        with open(p, "rb") as fh:
            magic = fh.read(6)
            fh.seek(0)
            if magic == b"\x93NUMPY":
                headers = {"": _header(fh, str(p))}
            elif magic[:2] == b"PK":
                headers = {}
                with zipfile.ZipFile(fh) as zf:
                    for info in zf.infolist():
                        if info.filename.endswith(".npy"):
                            with zf.open(info) as member:
                                headers[info.filename[:-4]] = _header(member, str(p), info.filename)
            else:
                return  # np.load says what is wrong with it
    except (IsADirectoryError, FileNotFoundError):
        return  # np.load says so, as before
    except (ValueError, OSError, EOFError, SyntaxError, TypeError, zipfile.BadZipFile) as err:
        raise InputError(f"{p}: not a readable .npy/.npz array file ({' '.join(str(err).split())})") from None
    total = 0
    for name, (shape, dtype) in headers.items():
        what = f"array '{name}' of shape {shape} ({dtype})" if name else f"the array of shape {shape} ({dtype})"
        n = limits.count(shape)
        itemsize = max(int(dtype.itemsize), 1) + _CONVERT_BYTES
        limits.check_alloc(f"loading {what}", n, itemsize, str(p))
        total += n * itemsize
        limits.check_bytes("loading all its arrays", total, str(p))


def load_inputs(path: str | os.PathLike, graph: nir.NIRGraph) -> RunInputs:
    """Read ``--inputs`` (``.npy`` or ``.npz``) for ``graph``; every problem names the file and the input."""
    p = Path(path)
    sizes = input_sizes(graph)
    _check_declared(p)
    try:
        loaded = np.load(p, allow_pickle=False)
    except FileNotFoundError:
        raise InputError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{p}: is a directory, not a .npy or .npz file") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise InputError(f"{p}: not a readable .npy/.npz array file ({' '.join(str(err).split())})") from None
    labels = None
    if isinstance(loaded, np.ndarray):
        if len(sizes) != 1:
            raise InputError(f"{p}: a .npy file feeds a graph with one Input node; this graph has {len(sizes)} "
                             f"({', '.join(sizes)}): use a .npz with one array per input name")
        (name, size), = sizes.items()
        spikes = {name: _as_spikes(str(p), name, loaded, size)}
    else:
        with loaded:
            keys = set(loaded.files)
            missing = [n for n in sizes if n not in keys]
            if missing:
                raise InputError(f"{p}: no array for input node(s) {', '.join(missing)}; the file holds "
                                 f"{', '.join(sorted(keys)) or 'nothing'}")
            unknown = sorted(keys - set(sizes) - {"labels"})
            if unknown:
                raise InputError(f"{p}: arrays {', '.join(unknown)} match no Input node of the graph "
                                 f"({', '.join(sizes)}) and are not 'labels'")
            spikes = {n: _as_spikes(str(p), n, loaded[n], s) for n, s in sizes.items()}
            if "labels" in keys:
                labels = _labels(str(p), loaded["labels"])
    shapes = {n: s.shape[:2] for n, s in spikes.items()}
    if len(set(shapes.values())) != 1:
        raise InputError(f"{p}: inputs disagree in (batch, steps): {shapes}")
    if labels is not None and labels.shape[0] != next(iter(shapes.values()))[0]:
        raise InputError(f"{p}: 'labels' has {labels.shape[0]} entries for {next(iter(shapes.values()))[0]} samples")
    return RunInputs(spikes, labels, str(p))


def _labels(source: str, labels: np.ndarray) -> np.ndarray:
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
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
    """The digits test split for a composed bundle (encoding ``direct``): each image as integer levels
    ``round(levels * x)`` (``levels`` from the metadata), the same at every one of ``steps`` steps."""
    from st2chip.learn.data import load_digits_split

    name, size = _only_input(graph, "digits (direct)")
    metadata = graph.metadata if isinstance(graph.metadata, dict) else {}
    levels = limits.positive_int(metadata.get("levels", 255), "metadata field 'levels'", "the graph")
    stored = steps if steps is not None else metadata.get("steps")
    if stored is None:
        raise InputError("encoding 'direct': the graph's metadata has no 'steps'; pass --steps T")
    steps = limits.positive_int(stored, "--steps" if steps is not None else "metadata field 'steps'", "the graph")
    _, test = load_digits_split()
    if size != test.x.shape[1]:
        raise InputError(f"input node '{name}' takes {size} values; the digits data set has {test.x.shape[1]} "
                         f"(8x8 images): give your own inputs with --inputs FILE.npy (integer levels)")
    count = len(test) if samples is None else max(min(int(samples), len(test)), 1)
    limits.check_alloc(f"{count} digits samples x {steps} steps", count * steps * size, _ENCODE_BYTES,
                       "the digits inputs")
    values = np.round(np.asarray(test.x[:count], np.float64) * levels).astype(np.uint8 if levels < 256 else np.int64)
    return RunInputs({name: np.repeat(values[:, None, :], steps, axis=1)}, test.y[:count],
                     f"the digits test split, direct ({levels} levels)")


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
