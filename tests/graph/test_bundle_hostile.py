"""Hostile deployment bundles: every problem is one InputError naming the file and entry, and no
file outside the bundle folder is ever opened."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from st2chip import limits

import st2chip.graph.bundle as bundle_mod
from st2chip.converters.transformer import export_bundle
from st2chip.errors import InputError
from st2chip.graph.bundle import MAX_TIME_STEPS, read_manifest, run_bundle
from st2chip.learn.transformer import SpikingTransformer, STConfig

# ---------------------------------------------------------------------------------------------
# Recording every file the run opens: Python-level opens through an audit hook (io.open, os.open,
# Path.read_bytes, ...), and the C-level openers (h5py, onnxruntime) through wrappers.

_OPENED: list[str] | None = None



@pytest.fixture(autouse=True)
def _default_budget():
    yield
    limits.set_memory_budget(None)

def _audit(event: str, args: tuple) -> None:
    if _OPENED is not None and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


@pytest.fixture
def opened(monkeypatch):
    """Paths (resolved) the code under test opens while the fixture is active."""
    global _OPENED
    paths: list[str] = []
    import nir
    import onnxruntime as ort

    def spy(fn, first_is_path=True):
        def wrapped(*args, **kwargs):
            if args and isinstance(args[0], (str, os.PathLike)):
                paths.append(os.fspath(args[0]))
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(h5py, "File", spy(h5py.File))
    monkeypatch.setattr(nir, "read", spy(nir.read))
    monkeypatch.setattr(ort, "InferenceSession", spy(ort.InferenceSession))
    monkeypatch.setattr(bundle_mod, "read_graph", spy(bundle_mod.read_graph))
    _OPENED = paths
    yield paths
    _OPENED = None


def _outside_touched(paths: list[str], outside: Path) -> list[str]:
    root = os.path.realpath(outside)
    return [p for p in paths if os.path.realpath(p) == root or os.path.realpath(p).startswith(root + os.sep)]


# ---------------------------------------------------------------------------------------------
# One small valid bundle, copied and mutated per case.


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    torch.manual_seed(0)
    model = SpikingTransformer(STConfig.tiny_digits(dim=16, mlp_hidden=16, steps=2)).eval()
    folder = export_bundle(model, tmp_path_factory.mktemp("src") / "bundle")
    images = np.random.default_rng(0).uniform(0, 1, (3, 64)).astype(np.float32)
    return folder, images, run_bundle(folder, images)


@pytest.fixture
def case(tmp_path, source):
    """(bundle copy, outside folder with a valid-looking sentinel part of each kind, images)."""
    folder = tmp_path / "bundle"
    shutil.copytree(source[0], folder)
    outside = tmp_path / "outside"
    outside.mkdir()
    for name in ("part.nir", "part.onnx"):  # real parts: loading them would succeed
        shutil.copy(folder / ("sps.nir" if name.endswith("nir") else "readout.onnx"), outside / name)
    shutil.copy(folder / "manifest.json", outside / "manifest.json")
    return folder, outside, source[1]


def _edit(folder: Path, fn) -> None:
    m = json.loads((folder / "manifest.json").read_text())
    fn(m)
    (folder / "manifest.json").write_text(json.dumps(m))


def _set(path: list, value):
    def fn(m):
        target = m
        for k in path[:-1]:
            target = target[k]
        target[path[-1]] = value
    return fn


def _del(path: list):
    def fn(m):
        target = m
        for k in path[:-1]:
            target = target[k]
        del target[path[-1]]
    return fn


def _symlink_part(part: str, to: str):
    def fn(folder: Path, outside: Path):
        (folder / part).unlink()
        (folder / part).symlink_to(outside / to)
    return fn


def _symlink_dir(folder: Path, outside: Path):
    (folder / "sub").symlink_to(outside, target_is_directory=True)
    _edit(folder, _set(["steps", 0, "file"], "sub/part.nir"))


def _manifest_symlink(folder: Path, outside: Path):
    (folder / "manifest.json").unlink()
    (folder / "manifest.json").symlink_to(outside / "manifest.json")
    _edit(outside, _set(["steps", 0, "file"], str(outside / "part.nir")))


def _relative_up(folder: Path, outside: Path):
    _edit(folder, _set(["steps", 0, "file"], "../outside/part.nir"))


def _relative_up_deep(folder: Path, outside: Path):
    _edit(folder, _set(["steps", 2, "file"], "x/../../outside/part.onnx"))


def _absolute(folder: Path, outside: Path):
    _edit(folder, _set(["steps", 0, "file"], str(outside / "part.nir")))


def _etc_passwd(folder: Path, outside: Path):
    _edit(folder, _set(["steps", 2, "file"], "/etc/passwd"))


CONTAINMENT = [
    ("dotdot", _relative_up, r"steps\[0\] \('sps'\): 'file' '../outside/part.nir' .*leaves the bundle folder"),
    ("dotdot-deep", _relative_up_deep, r"steps\[2\] \('sps.tokens'\): .*'\.\.' component.*leaves the bundle"),
    ("absolute", _absolute, r"steps\[0\] \('sps'\): .*absolute path; it leaves the bundle folder"),
    ("etc-passwd", _etc_passwd, r"steps\[2\] \('sps.tokens'\): 'file' '/etc/passwd' is an absolute path"),
    ("symlink-nir", _symlink_part("sps.nir", "part.nir"), r"steps\[0\] \('sps'\): .*symlink to outside"),
    ("symlink-onnx", _symlink_part("readout.onnx", "part.onnx"),
     r"steps\[10\] \('readout'\): 'file' 'readout.onnx' is a symlink to outside"),
    ("symlink-dir", _symlink_dir, r"steps\[0\] \('sps'\): 'file' 'sub/part.nir' is a symlink to outside"),
    ("manifest-symlink", _manifest_symlink, r"manifest.json: .*symlink to outside the bundle folder"),
]


@pytest.mark.parametrize("mutate, pattern", [c[1:] for c in CONTAINMENT], ids=[c[0] for c in CONTAINMENT])
def test_containment(case, opened, mutate, pattern):
    folder, outside, images = case
    mutate(folder, outside)
    opened.clear()
    with pytest.raises(InputError, match=pattern) as err:
        run_bundle(folder, images)
    assert "manifest.json" in str(err.value)
    assert _outside_touched(opened, outside) == []
    assert not [p for p in opened if p.startswith("/etc")]
    assert not [p for p in opened if p.endswith((".nir", ".onnx"))]  # checked before any part is opened


def _replace(part: str, data: bytes):
    def fn(folder: Path):
        (folder / part).write_bytes(data)
    return fn


def _as_dir(part: str):
    def fn(folder: Path):
        (folder / part).unlink()
        (folder / part).mkdir()
    return fn


def _missing(part: str):
    def fn(folder: Path):
        (folder / part).unlink()
    return fn


def _fifo(folder: Path):
    (folder / "head.nir").unlink()
    os.mkfifo(folder / "head.nir")


def _swap(part: str, other: str):
    def fn(folder: Path):
        shutil.copy(folder / other, folder / part)
    return fn


def _external_link(folder: Path):
    with h5py.File(folder / "head.nir", "a") as f:
        f["node"]["nodes"]["evil"] = h5py.ExternalLink(str(folder.parent / "outside" / "part.nir"), "/node")


PARTS = [
    ("directory", _as_dir("sps.nir"), r"steps\[0\] \('sps'\): 'file' 'sps.nir' is a directory"),
    ("missing", _missing("blocks.0.qkv.nir"), r"steps\[3\] \('blocks.0.qkv'\): 'file' 'blocks.0.qkv.nir' is missing"),
    ("fifo", _fifo, r"steps\[9\] \('head'\): 'file' 'head.nir' is not a regular file"),
    ("garbage-nir", _replace("blocks.0.mlp.nir", b"\x89garbage" * 64),
     r"steps\[7\] \('blocks.0.mlp'\): .*/blocks.0.mlp.nir: NIR part does not load"),
    ("empty-nir", _replace("head.nir", b""), r"steps\[9\] \('head'\): .*/head.nir: NIR part does not load: .*file is empty"),
    ("garbage-onnx", _replace("blocks.0.product.onnx", b"\x08\x07garbage" * 64),
     r"steps\[4\] \('blocks.0.product'\): .*/blocks.0.product.onnx: ONNX part does not load"),
    ("empty-onnx", _replace("readout.onnx", b""), r"steps\[10\] \('readout'\): .*/readout.onnx: ONNX part does not load"),
    ("wrong-onnx", _swap("blocks.0.product.onnx", "readout.onnx"),
     r"steps\[4\] \('blocks.0.product'\): .*/blocks.0.product.onnx: ONNX part takes inputs \['y'\], the manifest gives \['k', 'q', 'v'\]"),
    ("wrong-nir", _swap("sps.nir", "head.nir"), r"steps\[0\] \('sps'\): .*/sps.nir: part does not run \(RuntimeError"),
    ("hdf5-external-link", _external_link, r"steps\[9\] \('head'\): .*/head.nir: NIR part refused: external link"),
]


@pytest.mark.parametrize("mutate, pattern", [c[1:] for c in PARTS], ids=[c[0] for c in PARTS])
def test_bad_parts(case, opened, mutate, pattern):
    folder, outside, images = case
    mutate(folder)
    opened.clear()
    with pytest.raises(InputError, match=pattern):
        run_bundle(folder, images)
    assert _outside_touched(opened, outside) == []


M = "manifest.json"
MANIFESTS = [
    ("list", lambda m: None, "[1, 2]", r"manifest.json: not an st2chip-bundle manifest \(a JSON list"),
    ("invalid-json", lambda m: None, '{"format": ', r"manifest.json: not a readable bundle manifest"),
    ("empty", lambda m: None, "", r"manifest.json: not a readable bundle manifest"),
    ("foreign-format", _set(["format"], "onnx-bundle"), None, r"not an st2chip-bundle version 1 manifest"),
    ("version-2", _set(["version"], 2), None, r"not an st2chip-bundle version 1 manifest"),
    ("version-true", _set(["version"], True), None, r"not an st2chip-bundle version 1 manifest"),
    ("no-steps", _del(["steps"]), None, r"manifest.json: missing key 'steps'"),
    ("no-dt", _del(["dt"]), None, r"manifest.json: missing key 'dt'"),
    ("no-config-size", _del(["config", "image_size"]), None, r"config: missing key 'image_size'"),
    ("image-size-0", _set(["config", "image_size"], 0), None, r"config: 'image_size' must be between 1 and"),
    ("channels-str", _set(["config", "in_channels"], "1"), None, r"config: 'in_channels' must be an integer"),
    ("no-file", _del(["steps", 3, "file"]), None, r"steps\[3\] \('blocks.0.qkv'\): missing key 'file'"),
    ("file-int", _set(["steps", 3, "file"], 7), None, r"steps\[3\] \('blocks.0.qkv'\): 'file' must be a non-empty"),
    ("no-inputs", _del(["steps", 4, "inputs"]), None, r"steps\[4\] \('blocks.0.product'\): missing key 'inputs'"),
    ("no-name", _del(["steps", 2, "name"]), None, r"steps\[2\]: 'name' must be a non-empty string"),
    ("unknown-tensor", _set(["steps", 4, "inputs", 1, "tensor"], "nope"), None,
     r"steps\[4\] \('blocks.0.product'\): inputs\[1\]: reads tensor 'nope', which no earlier step produces"),
    ("later-tensor", _set(["steps", 0, "inputs", 0, "tensor"], "scores"), None,
     r"steps\[0\] \('sps'\): inputs\[0\]: reads tensor 'scores'"),
    ("unknown-kind", _set(["steps", 1, "kind"], "python"), None, r"steps\[1\] \('sps.residual'\): unknown kind"),
    ("unknown-op", _set(["steps", 1, "op"], "exec"), None, r"steps\[1\] \('sps.residual'\): unknown op 'exec'"),
    ("step-not-dict", _set(["steps", 5], "blocks.0.proj.nir"), None, r"steps\[5\]: must be an object"),
    ("steps-dict", _set(["steps"], {"a": 1}), None, r"'steps' must be a non-empty list"),
    ("steps-empty", _set(["steps"], []), None, r"'steps' must be a non-empty list"),
    ("port-twice", _set(["steps", 4, "inputs", 1, "port"], "q"), None, r"inputs\[1\]: port 'q' appears twice"),
    ("tensor-twice", _set(["steps", 3, "outputs", 0, "tensor"], "u0"), None,
     r"steps\[3\] \('blocks.0.qkv'\): outputs\[0\]: tensor 'u0' is already produced by steps\[2\]"),
    ("bad-shape", _set(["steps", 3, "outputs", 0, "shape"], [2, "N", 16]), None, r"outputs\[0\]: 'shape' must be"),
    ("scores-unknown", _set(["scores", "tensor"], "logits"), None, r"scores: tensor 'logits' is produced by no step"),
    ("input-shape", _set(["input", "shape"], [3, "B", 1, 8, 8]), None, r"input: 'shape' .* disagrees"),
    ("dt-string", _set(["dt"], "0.001"), None, r"'dt' must be a positive finite number, got '0.001'"),
    ("dt-zero", _set(["dt"], 0), None, r"'dt' must be a positive finite number, got 0"),
    ("dt-negative", _set(["dt"], -1e-3), None, r"'dt' must be a positive finite number"),
    ("dt-nan", lambda m: None, "NaN", r"'dt' must be a positive finite number, got nan"),
    ("steps-minus-1", _set(["time_steps"], -1), None, rf"'time_steps' must be between 1 and {MAX_TIME_STEPS}, got -1"),
    ("steps-0", _set(["time_steps"], 0), None, rf"'time_steps' must be between 1 and {MAX_TIME_STEPS}, got 0"),
    ("steps-1e9", _set(["time_steps"], 10**9), None, rf"'time_steps' must be between 1 and {MAX_TIME_STEPS}"),
    ("steps-1.5", _set(["time_steps"], 1.5), None, r"'time_steps' must be an integer, got 1.5"),
    ("steps-str", _set(["time_steps"], "2"), None, r"'time_steps' must be an integer, got '2'"),
    ("steps-bool", _set(["time_steps"], True), None, r"'time_steps' must be an integer, got True"),
]


@pytest.mark.parametrize("mutate, raw, pattern", [c[1:] for c in MANIFESTS], ids=[c[0] for c in MANIFESTS])
def test_bad_manifest(case, opened, mutate, raw, pattern):
    folder, outside, images = case
    if raw is None:
        _edit(folder, mutate)
    elif raw == "NaN":
        text = (folder / M).read_text()
        (folder / M).write_text(text.replace('"dt": 0.001', '"dt": NaN'))
    else:
        (folder / M).write_text(raw)
    opened.clear()
    with pytest.raises(InputError, match=pattern) as err:
        run_bundle(folder, images)
    assert str(err.value).startswith(str(folder / M))
    assert "\n" not in str(err.value)
    assert not [p for p in opened if p.endswith((".nir", ".onnx"))]  # refused before any part is read
    with pytest.raises(InputError, match=pattern):
        read_manifest(folder)


@pytest.mark.parametrize("images, pattern", [
    (np.zeros((3, 63)), r"images have shape \(3, 63\); the bundle's config wants \(B, 64\) or \(B, 1, 8, 8\)"),
    (np.zeros((3, 1, 8, 9)), r"images have shape \(3, 1, 8, 9\)"),
    (np.zeros((3, 8, 8)), r"images have shape \(3, 8, 8\)"),
    (np.zeros((0, 64)), r"no images"),
    (np.full((2, 64), np.nan), r"NaN or infinite"),
    (np.array([["a"] * 64]), r"images are not a numeric array"),
], ids=["width", "4d", "3d", "empty", "nan", "strings"])
def test_bad_images(case, opened, images, pattern):
    folder, outside, _ = case
    with pytest.raises(InputError, match=pattern):
        run_bundle(folder, images)
    assert not [p for p in opened if p.endswith((".nir", ".onnx"))]


def test_memory_budget_refuses_before_allocating(case, monkeypatch, opened):
    folder, outside, images = case
    limits.set_memory_budget(1000)
    with pytest.raises(InputError, match=r"\(2 x 3 x 1 x 8 x 8 float32\) \(384 x 4 bytes\) would need 1.5 KiB; "
                                         r".*budget"):
        bundle_mod.encode(read_manifest(folder), images)
    with pytest.raises(InputError, match=r"steps\[\d+\] \('.*'\): tensor '.*' .*budget"):
        run_bundle(folder, images)
    assert not [p for p in opened if p.endswith((".nir", ".onnx"))]


def test_big_time_steps_within_bound_is_refused_by_budget(case, monkeypatch):
    folder, outside, images = case
    limits.set_memory_budget(2**20)
    _edit(folder, lambda m: (m.__setitem__("time_steps", MAX_TIME_STEPS), m["input"].__setitem__(
        "shape", [MAX_TIME_STEPS, "B", 1, 8, 8])))
    with pytest.raises(InputError, match=r"budget"):
        run_bundle(folder, images)


def test_valid_copy_still_runs_identically(case, source, opened):
    folder, outside, images = case
    np.testing.assert_array_equal(run_bundle(folder, images), source[2])
    np.testing.assert_array_equal(run_bundle(folder, images.reshape(3, 1, 8, 8)), source[2])
    assert _outside_touched(opened, outside) == []
