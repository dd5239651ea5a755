"""Data sets and spike encoding.

The embedded default is scikit-learn's bundled ``load_digits`` (8x8 images,
1,797 samples), split once with a fixed seed so that every command sees the same
test set. CIFAR-10 is read from a local folder in torchvision's layout
(``<root>/cifar-10-batches-py``). MNIST-1D (Greydanus 2020), a sequence data set
where time matters, is generated locally by the ``mnist1d`` package from its
built-in templates. ``digits32`` is a stand-in with CIFAR-10's shape (the
digits upscaled to 32x32 and repeated over 3 channels), for runs at CIFAR size
where no CIFAR-10 folder is at hand: it has CIFAR-10's tensor shapes, not its
content. Nothing is downloaded.
"""

from __future__ import annotations

import io
import os
import random
import pickle
import pickletools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from st2chip import limits
from st2chip.errors import InputError

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2


@dataclass(frozen=True)
class Split:
    """Images scaled to [0, 1] (``N x 64`` for digits) with integer labels."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


def load_digits_split(seed: int = DIGITS_SPLIT_SEED) -> tuple[Split, Split]:
    """Train and test splits of the digits data, stratified, fixed by ``seed``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=DIGITS_TEST_FRACTION, random_state=seed, stratify=y)
    return Split(x_tr, y_tr), Split(x_te, y_te)


CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST = ("test_batch",)
DATASETS = ("digits", "cifar10", "mnist1d", "digits32")
DIGITS32_SCALE = 4  # 8x8 -> 32x32, nearest neighbour


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a data file never runs code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


# Bounds of one unpickled batch: a real one holds ~20,000 objects (labels, file names) nested 4 deep.
MAX_PICKLE_OBJECTS = 2_000_000  # objects once every shared reference is expanded
MAX_PICKLE_DEPTH = 64
MAX_PICKLE_OPCODES = 5_000_000


def _scan_pickle(raw: bytes, path: Path) -> None:
    """Walk the pickle's opcodes without building anything: refuse deep nesting and object blow-up.

    Each stack entry carries its nesting depth and the number of objects it
    expands to (shared references counted every time they are used, as
    ``np.asarray`` walks them), so a 300-byte pickle of tuples of tuples that
    expands to 2^32 elements is refused here.
    """
    mark = object()
    stack: list = []
    memo: dict = {}
    for n_ops, (op, arg, _) in enumerate(pickletools.genops(io.BytesIO(raw)), 1):
        if n_ops > MAX_PICKLE_OPCODES:
            raise InputError(f"{path}: not a CIFAR-10 batch (more than {MAX_PICKLE_OPCODES:,} pickle opcodes)")
        name = op.name
        if name == "MARK":
            stack.append(mark)
            continue
        if name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            if not stack or stack[-1] is mark:
                raise pickle.UnpicklingError(f"{name} with nothing to store")
            memo[arg if name != "MEMOIZE" else len(memo)] = stack[-1]
            continue
        if name in ("GET", "BINGET", "LONG_BINGET"):
            if arg not in memo:
                raise pickle.UnpicklingError(f"memo key {arg} missing")
            stack.append(memo[arg])
            continue
        if name == "DUP":
            if not stack:
                raise pickle.UnpicklingError("DUP on an empty stack")
            stack.append(stack[-1])
            continue
        popped = []
        before = [x.name for x in op.stack_before]
        if "mark" in before:
            while stack and stack[-1] is not mark:
                popped.append(stack.pop())
            if not stack:
                raise pickle.UnpicklingError(f"{name} without a MARK")
            stack.pop()
            extra = before.index("mark")
        else:
            extra = len(before)
        for _ in range(extra):
            if not stack or stack[-1] is mark:
                raise pickle.UnpicklingError(f"{name} on a short stack")
            popped.append(stack.pop())
        depth = 1 + max((d for d, _ in popped), default=0)
        size = 1 + sum(s for _, s in popped)
        if depth > MAX_PICKLE_DEPTH:
            raise InputError(f"{path}: not a CIFAR-10 batch (objects nested more than {MAX_PICKLE_DEPTH} deep)")
        if size > MAX_PICKLE_OBJECTS:
            raise InputError(f"{path}: not a CIFAR-10 batch (its objects expand to more than "
                             f"{MAX_PICKLE_OBJECTS:,}; shared references multiply them)")
        stack.extend((depth, size) for _ in op.stack_after)


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise InputError(f"{path}: CIFAR-10 batch file missing (expected torchvision's "
                         f"'{CIFAR10_FOLDER}' layout; nothing is downloaded)")
    limits.check_bytes("reading the batch file", 3 * path.stat().st_size, str(path))
    try:
        raw = path.read_bytes()
        _scan_pickle(raw, path)
        batch = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
        del raw
        if not isinstance(batch, dict):
            raise TypeError(f"holds a {type(batch).__name__}, not a dict")
        data, labels = batch[b"data"], batch[b"labels"]
        if not isinstance(data, np.ndarray) or data.dtype.kind not in "uif":
            raise TypeError(f"b'data' is a {type(data).__name__}, not a numeric numpy array")
        if not isinstance(labels, (list, np.ndarray)) or (
                isinstance(labels, list) and not all(type(v) is int for v in labels)):
            raise TypeError("b'labels' is not a list of integers")
        data = np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, IndexError,
            AttributeError, OverflowError) as err:
        raise InputError(f"{path}: not a CIFAR-10 batch ({' '.join(str(err).split())})") from None
    if len(data) != len(labels):
        raise InputError(f"{path}: {len(data)} images but {len(labels)} labels")
    return data, labels


def load_cifar10_split(root: str | os.PathLike) -> tuple[Split, Split]:
    """Train (50,000) and test (10,000) CIFAR-10 images ``(N, 3, 32, 32)`` in [0, 1] from ``root``."""
    folder = Path(root) / CIFAR10_FOLDER
    if not folder.is_dir():
        raise InputError(f"{folder}: no CIFAR-10 folder here; pass --data-root pointing at the folder "
                         f"that holds '{CIFAR10_FOLDER}' (torchvision's layout; nothing is downloaded)")

    def split(names: tuple[str, ...]) -> Split:
        parts = [_cifar_batch(folder / name) for name in names]
        limits.check_alloc("the CIFAR-10 images as float32", sum(p[0].size for p in parts), 4 + 1, str(folder))
        x = np.concatenate([p[0] for p in parts]).astype(np.float32) / 255.0
        return Split(x, np.concatenate([p[1] for p in parts]))

    return split(CIFAR10_TRAIN), split(CIFAR10_TEST)


def load_digits32_split() -> tuple[Split, Split]:
    """The digits split upscaled to ``(N, 3, 32, 32)``: CIFAR-10's shape from shipped data (a stand-in, not CIFAR)."""
    def grow(part: Split) -> Split:
        images = part.x.reshape(-1, 1, 8, 8).repeat(DIGITS32_SCALE, axis=2).repeat(DIGITS32_SCALE, axis=3)
        return Split(np.ascontiguousarray(np.repeat(images, 3, axis=1)), part.y)

    train, test = load_digits_split()
    return grow(train), grow(test)


def load_split(name: str, root: str | os.PathLike | None = None) -> tuple[Split, Split]:
    """Train and test splits of a data set by name (``digits``, ``mnist1d``, ``digits32``, or ``cifar10`` with
    ``root``)."""
    if name == "digits":
        return load_digits_split()
    if name == "digits32":
        return load_digits32_split()
    if name == "mnist1d":
        return load_mnist1d_split()
    if name == "cifar10":
        if root is None:
            raise InputError("cifar10 needs --data-root (a local folder in torchvision's layout)")
        return load_cifar10_split(root)
    raise InputError(f"unknown data set '{name}' (choose from {', '.join(DATASETS)})")


def rate_encode(x: np.ndarray | torch.Tensor, steps: int) -> torch.Tensor:
    """Deterministic rate code: intensity ``p`` in [0, 1] spikes ``floor(p * t)`` times by step ``t``.

    Returns binary spikes of shape ``(steps, *x.shape)``. Deterministic, so the
    float model, the fixed-point reference and Lava see the same input spikes.
    """
    x = torch.as_tensor(x, dtype=torch.float32).clamp(0.0, 1.0)
    t = torch.arange(1, steps + 1, dtype=torch.float32).view(-1, *([1] * x.dim()))
    counts = torch.floor(x.unsqueeze(0) * t + 1e-6)
    previous = torch.cat([torch.zeros_like(counts[:1]), counts[:-1]])
    return (counts - previous).clamp(0, 1)


# --- MNIST-1D -------------------------------------------------------------------------------
#
# MNIST-1D (Greydanus 2020, https://github.com/greydanus/mnist1d): 10 one-dimensional
# "digit" templates of 12 points, padded, sheared, scaled, translated, smoothed-noised
# and resampled to 40 values. The data are generated by ``mnist1d.data.make_dataset``,
# which is pure numpy/scipy and does no I/O. ``mnist1d.data.get_dataset`` (which
# downloads a pickle from GitHub and writes it to the working directory) is never
# called, and the arguments below carry no ``url``.

MNIST1D_SEED = 42  # mnist1d's own default: the arrays equal make_dataset(get_dataset_args())
MNIST1D_STEPS = 40  # values per sequence = time steps (one value per step)
MNIST1D_LEVELS = 16  # input neurons of the thermometer code (sequence_encode)
MNIST1D_CLASSES = 10
# mnist1d 0.0.2's get_dataset_args() without 'url' and 'seed': 5,000 sequences, 80/20 split.
MNIST1D_ARGS = {"num_samples": 5000, "train_split": 0.8, "template_len": 12, "padding": [36, 60],
                "scale_coeff": 0.4, "max_translation": 48, "corr_noise_scale": 0.25,
                "iid_noise_scale": 2e-2, "shear_scale": 0.75, "shuffle_seq": False,
                "final_seq_length": MNIST1D_STEPS}
_MNIST1D_CACHE: dict[int, tuple[Split, Split]] = {}


def load_mnist1d_split(seed: int = MNIST1D_SEED) -> tuple[Split, Split]:
    """Train (4,000) and test (1,000) MNIST-1D sequences ``(N, 40)`` in [0, 1], 10 classes.

    Generated locally by ``mnist1d.data.make_dataset`` with :data:`MNIST1D_ARGS`
    (mnist1d's defaults) and ``seed`` (default 42, mnist1d's own, so the arrays are
    those of ``make_dataset(get_dataset_args())``); the same seed gives identical
    arrays. make_dataset standardizes all 5,000 sequences to mean 0 and standard
    deviation 1; here the values are then mapped to [0, 1] by the training split's
    minimum and maximum, ``x' = clip((x - min_train) / (max_train - min_train), 0, 1)``
    (test values outside the training range are clipped). float32 values, int64
    labels. make_dataset reseeds Python's and numpy's global generators; their states
    are restored afterwards. Cached per seed in-process (each call returns copies).
    Nothing is downloaded: make_dataset builds the data from built-in templates.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2 ** 32:
        raise InputError(f"the MNIST-1D seed must be an integer in [0, 2^32), got {seed!r}")
    seed = int(seed)
    if seed not in _MNIST1D_CACHE:
        try:
            from mnist1d.data import make_dataset
            from mnist1d.utils import ObjectView
        except ImportError:
            raise InputError("MNIST-1D needs the 'mnist1d' package (pip install mnist1d==0.0.2.post1; "
                             "it generates the data locally, nothing is downloaded)") from None
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            data = make_dataset(ObjectView({**MNIST1D_ARGS, "seed": seed}))
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
        x_tr, x_te = np.asarray(data["x"], dtype=np.float64), np.asarray(data["x_test"], dtype=np.float64)
        lo, hi = float(x_tr.min()), float(x_tr.max())

        def split(x: np.ndarray, y: np.ndarray) -> Split:
            scaled = np.clip((x - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
            return Split(scaled, np.asarray(y, dtype=np.int64))

        _MNIST1D_CACHE[seed] = (split(x_tr, data["y"]), split(x_te, data["y_test"]))
    train, test = _MNIST1D_CACHE[seed]
    return Split(train.x.copy(), train.y.copy()), Split(test.x.copy(), test.y.copy())


def sequence_encode(x: np.ndarray | torch.Tensor, levels: int = MNIST1D_LEVELS) -> torch.Tensor:
    """Thermometer code of sequences over time: ``x`` ``(B, T)`` in [0, 1] -> spikes ``(T, B, levels)``.

    Step ``t`` carries the sequence's value ``x[b, t]`` and nothing else: input
    neuron ``k`` (``0 <= k < levels``) spikes at step ``t`` iff
    ``x[b, t] >= (k + 0.5) / levels``, so ``round(x * levels)`` neurons fire
    (value 0: none, value 1: all), from the lowest level up. A ``(T,)`` input gives
    ``(T, levels)``. Deterministic, so the float model, the fixed-point reference and
    Lava see the same spikes; values are clipped to [0, 1].

    Why not :func:`rate_encode`: a rate code turns a static image into a spike
    count per pixel, and any network that counts spikes can read it. Here the
    position in the sequence *is* the time step, so a class can only be told from
    the order of values; the network has to keep what it saw in its membrane
    (the leak ``beta`` sets how long) or in recurrent state, which is what a chip's
    neurons are for. Nearby values share most active neurons, so the code is
    smooth in the value, unlike a one-hot population code.
    """
    if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or levels < 1:
        raise InputError(f"levels must be a positive integer, got {levels!r}")
    x = torch.as_tensor(x, dtype=torch.float32).clamp(0.0, 1.0)
    if x.dim() not in (1, 2):
        raise InputError(f"sequence_encode takes (B, T) or (T,) values, got shape {tuple(x.shape)}")
    thresholds = (torch.arange(int(levels), dtype=torch.float32, device=x.device) + 0.5) / int(levels)
    return (x.movedim(-1, 0).unsqueeze(-1) >= thresholds).to(torch.float32)


# --- Digits read row by row (the RNN's "rows" encoding) --------------------------------------

DIGITS_SIDE = 8  # the digits images are 8x8
ROWS_LEVELS = 4  # thermometer levels per pixel
ROWS_HOLD = 2  # steps each row is held


def rows_encode(x: np.ndarray | torch.Tensor, levels: int = ROWS_LEVELS, hold: int = ROWS_HOLD,
                side: int = DIGITS_SIDE) -> torch.Tensor:
    """Images read row by row (encoding ``"rows"``): ``x`` ``(B, side*side)`` in [0, 1] -> spikes
    ``(side*hold, B, side*levels)``.

    Row ``r`` of the image (pixels ``x[b, r*side:(r+1)*side]``, C order) is shown at
    steps ``r*hold, ..., r*hold + hold - 1``, the same spikes at each of them, and
    nothing else is: the top row first, so ``T = side * hold`` (16 for the 8x8
    digits with the default ``hold = 2``). Within a step, pixel ``c`` of the row
    drives input neurons ``c*levels + k`` (``0 <= k < levels``), a thermometer code
    as in :func:`sequence_encode`: neuron ``k`` fires iff the pixel value is at least
    ``(k + 0.5) / levels``. With the default ``levels = 4`` that is 32 input neurons.
    A recurrent network must keep the rows it has seen in its state to tell the
    digit; deterministic, so the float model, the fixed-point reference and Lava see
    the same spikes. Values are clipped to [0, 1]; a ``(side*side,)`` input gives
    ``(T, side*levels)``.
    """
    for name, value in (("levels", levels), ("hold", hold), ("side", side)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise InputError(f"{name} must be a positive integer, got {value!r}")
    levels, hold, side = int(levels), int(hold), int(side)
    x = torch.as_tensor(x, dtype=torch.float32).clamp(0.0, 1.0)
    single = x.dim() == 1
    if single:
        x = x.unsqueeze(0)
    if x.dim() != 2 or x.shape[1] != side * side:
        raise InputError(f"rows_encode takes (B, {side * side}) images, got shape {tuple(x.shape)}")
    thresholds = (torch.arange(levels, dtype=torch.float32, device=x.device) + 0.5) / levels
    rows = x.reshape(x.shape[0], side, side)  # (B, row, column)
    code = (rows.unsqueeze(-1) >= thresholds).to(torch.float32)  # (B, row, column, level)
    spikes = code.reshape(x.shape[0], side, side * levels).movedim(1, 0)  # (row, B, column*levels + level)
    spikes = spikes.repeat_interleave(hold, dim=0)
    return spikes[:, 0] if single else spikes
