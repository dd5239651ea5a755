"""Hostile deployment bundles: every problem is one InputError naming the file and entry, and no
file outside the bundle folder is ever opened."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto
from onnx import helper as oh

from st2chip import limits

import st2chip.graph.bundle as bundle_mod
from st2chip.converters.transformer import export_bundle
from st2chip.errors import InputError, St2chipError
from st2chip.cli.main import main
from st2chip.graph.bundle import MAX_TIME_STEPS, read_manifest, run_bundle
from st2chip.graph.bundle_graph import bundle_graph
from st2chip.graph.simulate import simulate
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
    ("hdf5-external-link", _external_link, r"steps\[9\] \('head'\): .*/head.nir: NIR part does not load: .*ExternalLink; a NIR file holds "
     r"no links"),
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


def _time_steps(t: int):
    """Set ``time_steps`` and the time axis of every declared shape to ``t``."""
    def fn(m):
        m["time_steps"] = t
        ports = [m["input"], *(p for step in m["steps"] for key in ("inputs", "outputs") for p in step[key])]
        for p in ports:
            if p.get("shape", [None])[0] != "B":
                p["shape"][0] = t
    return fn


def test_big_time_steps_within_bound_is_refused_by_budget(case, monkeypatch):
    folder, outside, images = case
    limits.set_memory_budget(2**20)
    _edit(folder, _time_steps(MAX_TIME_STEPS))
    with pytest.raises(InputError, match=r"budget"):
        run_bundle(folder, images)


def test_valid_copy_still_runs_identically(case, source, opened):
    folder, outside, images = case
    np.testing.assert_array_equal(run_bundle(folder, images), source[2])
    np.testing.assert_array_equal(run_bundle(folder, images.reshape(3, 1, 8, 8)), source[2])
    assert _outside_touched(opened, outside) == []


# ---------------------------------------------------------------------------------------------
# Manifest fields the composer reads (st2chip map|simulate|verify bundle/): one line, exit 2, nothing written.


def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _every(tensor: str, shape: list):
    """Declare ``shape`` at every port of ``tensor`` (consistent, so only the parts can contradict it)."""
    def fn(m):
        for step in m["steps"]:
            for p in step["inputs"] + step["outputs"]:
                if p["tensor"] == tensor:
                    p["shape"] = shape
    return fn


def _config(shape: list | None = None, **fields):
    """Change config fields; with ``shape``, declare it for the input image wherever it is named."""
    def fn(m):
        m["config"].update(fields)
        if shape is not None:
            m["input"]["shape"] = shape
            _every("x", shape)(m)
    return fn


def _classes_11(m):
    m["config"]["classes"] = 11
    m["scores"].pop("shape")
    m["steps"][10]["outputs"][0].pop("shape")


COMPOSER = [
    ("no-classes", _del(["config", "classes"]), r"manifest.json: config: missing key 'classes'"),
    ("no-heads", _del(["config", "heads"]), r"manifest.json: config: missing key 'heads'"),
    ("no-attn-scale", _del(["config", "attn_scale"]), r"manifest.json: config: missing key 'attn_scale'"),
    ("heads-str", _set(["config", "heads"], "2"), r"config: 'heads' must be an integer, got '2'"),
    ("attn-scale-str", _set(["config", "attn_scale"], "0.25"),
     r"config: 'attn_scale' must be a positive finite number, got '0.25'"),
    ("classes-negative", _set(["config", "classes"], -3), r"config: 'classes' must be between 1 and 100000, got -3"),
    ("shape-2d", _set(["steps", 4, "inputs", 0, "shape"], [2, "B"]),
     r"steps\[4\] \('blocks.0.product'\): inputs\[0\]: 'shape' must be \[2, \"B\", d, \.\.\.\]"),
    ("shape-3d", _set(["steps", 10, "inputs", 0, "shape"], [2, "B", 16]),
     r"steps\[10\] \('readout'\): inputs\[0\]: 'shape' \[2, 'B', 16\] of tensor 'head.y' disagrees with the "
     r"\[2, 'B', 16, 10\]"),
    ("shape-batch-first", _set(["steps", 4, "inputs", 0, "shape"], ["B", "B", 16, 16]),
     r"steps\[4\] \('blocks.0.product'\): inputs\[0\]: 'shape' must be"),
    ("image-size-not-the-parts", _config([2, "B", 1, 16, 16], image_size=16),
     r"steps\[0\] \('sps'\): .*/sps.nir: Input node 'input' takes 64 values; tensor 'x' has 1 x 256"),
    ("classes-not-the-parts", _classes_11,
     r"steps\[10\] \('readout'\): .*/readout.onnx: the readout's input has 10 values per token; "
     r"the config's classes is 11"),
    ("heads-not-dividing", _set(["config", "heads"], 3),
     r"steps\[4\] \('blocks.0.product'\): .*/blocks.0.product.onnx: q, k and v must be .* divisible by "
     r"the config's heads 3"),
    ("huge-tokens", _every("blocks.0.q", [2, "B", 100_000, 10_000]),
     r"steps\[3\] \('blocks.0.qkv'\): .*/blocks.0.qkv.nir: tensor 'blocks.0.q' is 16 tokens x 16 per sample "
     r"and step by the parts; the manifest declares shape \[2, 'B', 100000, 10000\]"),
    ("huge-readout", _every("head.y", [2, "B", 10**6, 10]),
     r"steps\[9\] \('head'\): .*/head.nir: tensor 'head.y' is 16 tokens"),
    ("huge-image", _config([2, "B", 4096, 4096, 4096], image_size=4096, in_channels=4096),
     r"manifest.json: the image input of 4096 x 4096 x 4096 levels .*would need 1.5 TiB; the memory budget"),
]


@pytest.mark.parametrize("mutate, pattern", [c[1:] for c in COMPOSER], ids=[c[0] for c in COMPOSER])
def test_composer_refuses_manifest_fields_in_one_line(case, opened, capsys, mutate, pattern):
    folder, outside, images = case
    _edit(folder, mutate)
    before = _tree(folder.parent)
    assert main(["map", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"st2chip: error: {folder / M}: ") and err.count("\n") == 1, err
    assert re.search(pattern, err) and "Traceback" not in err, err
    assert _tree(folder.parent) == before  # nothing written, nothing changed
    assert _outside_touched(opened, outside) == []
    try:  # the part-by-part runner reads fewer fields; any refusal is an InputError
        run_bundle(folder, images)
    except InputError as exc:
        assert "\n" not in str(exc)


def test_declared_shapes_are_optional_the_composer_takes_sizes_from_the_parts(case, source):
    folder, _, images = case
    full = simulate(bundle_graph(folder), np.repeat(np.round(images * 255)[:, None, :], 2, axis=1)).scores

    def drop(m):
        for p in [m["input"], m["scores"], *(p for step in m["steps"] for p in step["inputs"] + step["outputs"])]:
            p.pop("shape", None)
    _edit(folder, drop)
    bare = simulate(bundle_graph(folder), np.repeat(np.round(images * 255)[:, None, :], 2, axis=1)).scores
    np.testing.assert_array_equal(bare, full)
    np.testing.assert_array_equal(run_bundle(folder, images), source[2])


# ---------------------------------------------------------------------------------------------
# ONNX parts are checked by structure before onnxruntime sees them: only the ops st2chip's exporter writes,
# no control flow or nested graphs, bounded shapes within the memory budget.

def _onnx(nodes: list, y: list | None = None, inits: tuple = (), functions: tuple = ()) -> bytes:
    """A stand-in for readout.onnx: input ``y`` (T, B, 16, 10), output ``scores``."""
    graph = oh.make_graph(nodes, "part", [oh.make_tensor_value_info("y", TensorProto.FLOAT, y or ["T", "B", 16, 10])],
                          [oh.make_tensor_value_info("scores", TensorProto.FLOAT, None)], initializer=list(inits))
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 20)], functions=list(functions)).SerializeToString()


def _const(name: str, dtype: int, dims: list, values: list) -> onnx.NodeProto:
    return oh.make_node("Constant", [], [name], name=name, value=oh.make_tensor(name, dtype, dims, values))


def _mean(out: str = "scores") -> list:
    return [_const("axes", TensorProto.INT64, [2], [0, 2]),
            oh.make_node("ReduceMean", ["y", "axes"], [out], name="mean", keepdims=0)]


def _body(n_in: int, n_out: int, name: str = "body") -> onnx.GraphProto:
    ins = [oh.make_tensor_value_info(f"i{k}", TensorProto.FLOAT, None) for k in range(n_in)]
    outs = [oh.make_tensor_value_info(f"o{k}", TensorProto.FLOAT, None) for k in range(n_out)]
    return oh.make_graph([oh.make_node("Identity", [f"i{k % n_in}"], [f"o{k}"]) for k in range(n_out)], name, ins, outs)


def _loop() -> bytes:
    """The mean, then a Loop of 2^62 iterations that changes nothing: onnxruntime would spin for ever."""
    ins = [oh.make_tensor_value_info("i", TensorProto.INT64, []), oh.make_tensor_value_info("c", TensorProto.BOOL, []),
           oh.make_tensor_value_info("v", TensorProto.FLOAT, None)]
    outs = [oh.make_tensor_value_info("c_out", TensorProto.BOOL, []),
            oh.make_tensor_value_info("v_out", TensorProto.FLOAT, None)]
    body = oh.make_graph([oh.make_node("Identity", ["c"], ["c_out"]), oh.make_node("Identity", ["v"], ["v_out"])],
                         "body", ins, outs)
    return _onnx([*_mean("m"), _const("n", TensorProto.INT64, [], [2**62]),
                  _const("cond", TensorProto.BOOL, [], [True]),
                  oh.make_node("Loop", ["n", "cond", "m"], ["scores"], name="spin", body=body)])


def _if() -> bytes:
    return _onnx([*_mean("m"), _const("cond", TensorProto.BOOL, [], [True]),
                  oh.make_node("If", ["cond"], ["scores"], name="branch", then_branch=_body(0 + 1, 1, "then"),
                               else_branch=_body(1, 1, "else"))])


def _scan() -> bytes:
    return _onnx([*_mean("m"), oh.make_node("Scan", ["m"], ["scores"], name="scan", body=_body(1, 1),
                                            num_scan_inputs=1)])


def _custom_op() -> bytes:
    return _onnx([oh.make_node("Exec", ["y"], ["scores"], name="shell", domain="com.evil")])


def _expand() -> bytes:
    return _onnx([_const("big", TensorProto.INT64, [4], [2**20, 2**20, 16, 10]),
                  oh.make_node("Expand", ["y", "big"], ["scores"], name="grow")])


def _graph_attribute() -> bytes:
    node = oh.make_node("Identity", ["y"], ["scores"], name="carrier")
    node.attribute.append(oh.make_attribute("payload", _body(1, 1)))
    node.op_type = "Transpose"
    return _onnx([node])


def _local_function() -> bytes:
    fn = oh.make_function("evil", "Mean", ["x"], ["z"], [oh.make_node("Identity", ["x"], ["z"])],
                          [oh.make_opsetid("", 20)])
    return _onnx(_mean(), functions=(fn,))


def _huge_intermediate() -> bytes:
    """(T, B, 100000, 1) times its transpose: 10^10 values per step and sample."""
    return _onnx([oh.make_node("Transpose", ["y"], ["yt"], name="t", perm=[0, 1, 3, 2]),
                  oh.make_node("MatMul", ["y", "yt"], ["scores"], name="outer")], y=["T", "B", 100_000, 1])


def _huge_constant() -> bytes:
    big = onnx.TensorProto(name="big", data_type=TensorProto.FLOAT, dims=[2**40])  # declared, no data
    return _onnx([oh.make_node("Mul", ["y", "big"], ["scores"], name="times")], inits=(big,))


ONNX_PARTS = [
    ("loop-2^62", _loop, r"node 'spin' \(Loop\) is not an op st2chip's parts use"),
    ("if", _if, r"node 'branch' \(If\) is not an op"),
    ("scan", _scan, r"node 'scan' \(Scan\) is not an op"),
    ("custom-domain", _custom_op, r"node 'shell' \(com.evil.Exec\) is not an op"),
    ("expand", _expand, r"node 'grow' \(Expand\) is not an op"),
    ("graph-attribute", _graph_attribute, r"node 'carrier' \(Transpose\) holds a nested graph \(attribute 'payload'\)"),
    ("local-function", _local_function, r"it defines local functions \('Mean'\)"),
    ("unbounded-input", lambda: _onnx(_mean(), y=["T", "B", "N", "C"]),
     r"input 'y' must be \(T, B, sizes\.\.\.\) with fixed positive sizes"),
    ("huge-intermediate", _huge_intermediate, r"tensor 'scores' \(fixed sizes \[100000, 100000\]\).* would need"),
    ("huge-constant", _huge_constant, r"constant 'big' \[1099511627776\].* would need 4.0 TiB"),
]


@pytest.fixture
def sessions(monkeypatch) -> list:
    """Models onnxruntime was asked to open while the fixture is active (the real InferenceSession runs)."""
    made: list = []
    real = ort.InferenceSession

    def spy(*args, **kwargs):
        made.append(args[0])
        return real(*args, **kwargs)
    monkeypatch.setattr(ort, "InferenceSession", spy)
    return made


@pytest.mark.parametrize("build, pattern", [c[1:] for c in ONNX_PARTS], ids=[c[0] for c in ONNX_PARTS])
def test_onnx_parts_are_checked_by_structure_before_onnxruntime(case, sessions, build, pattern):
    folder, _, images = case
    (folder / "readout.onnx").write_bytes(build())
    part = re.escape(str(folder / "readout.onnx"))
    for run in (lambda: run_bundle(folder, images), lambda: bundle_graph(folder)):
        sessions.clear()
        with pytest.raises(InputError, match=rf"steps\[10\] \('readout'\): {part}: ONNX part refused: {pattern}") \
                as err:
            run()
        assert "\n" not in str(err.value)
        assert not any(s == (folder / "readout.onnx").read_bytes() for s in sessions)  # never handed to onnxruntime


def test_an_onnx_part_that_fails_is_one_line_without_onnxruntimes_log(case, capfd):
    """A Reshape that cannot hold its input: onnxruntime logs it in colour unless told not to."""
    folder, _, _ = case
    (folder / "readout.onnx").write_bytes(_onnx([_const("s", TensorProto.INT64, [2], [3, 7]),
                                                 oh.make_node("Reshape", ["y", "s"], ["scores"], name="r")]))
    assert main(["map", str(folder)]) == 2
    err = capfd.readouterr().err
    assert err.startswith(f"st2chip: error: {folder / M}: steps[10] ('readout'): ") and err.count("\n") == 1, err
    assert "ONNX part does not run" in err and "\x1b" not in err and "[E:onnxruntime" not in err


# ---------------------------------------------------------------------------------------------
# Fuzzing: any manifest field replaced by any JSON value is run, or refused with one line, by both readers.

EXAMPLES = int(os.environ.get("ST2CHIP_FUZZ_EXAMPLES", "40"))
JSON_VALUES = st.one_of(
    st.sampled_from([0, -1, 1, 2, 3, 16, 17, 10**6, 2**40, 2**63, 1.5, float("nan"), 1e308, True, None]),
    st.sampled_from(["B", "x", "", "u0", "scores", "sps.nir", "../outside/part.nir"]),
    st.sampled_from([[], {}, [2, "B"], [2, "B", 0], [2, "B", 16, 16], ["B", 10], [2, "B", 10**5, 10**5],
                     {"tensor": "x"}]),
)


def _leaves(value, path=()):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _leaves(v, (*path, i))
    if path:
        yield path


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.lists(st.tuples(st.integers(0, 10**6), JSON_VALUES), min_size=1, max_size=3))
def test_mutated_manifests_never_crash(source, tmp_path_factory, changes):
    manifest = json.loads((source[0] / M).read_text())
    paths = list(_leaves(manifest))
    for pick, value in changes:
        *parents, key = paths[pick % len(paths)]
        try:  # an earlier change may have replaced a container on the way: then this one is skipped
            target = manifest
            for k in parents:
                target = target[k]
            target[key] = value
        except (KeyError, IndexError, TypeError):
            continue
    folder = tmp_path_factory.mktemp("fuzz") / "bundle"
    shutil.copytree(source[0], folder)
    (folder / M).write_text(json.dumps(manifest))
    for run in (lambda: bundle_graph(folder), lambda: run_bundle(folder, source[1])):
        try:
            run()
        except St2chipError as exc:
            assert "\n" not in str(exc)
