"""Deployment bundle of a spiking Transformer: NIR + ONNX parts + manifest reproduce torch."""

from __future__ import annotations

import json

import nir
import numpy as np
import onnxruntime as ort
import pytest
import torch

from st2chip.graph.bundle import read_manifest, run_bundle
from st2chip.converters.transformer import export_bundle
from st2chip.learn.checkpoint import load_checkpoint, save_checkpoint
from st2chip.cli.main import main
from st2chip.errors import InputError
from st2chip.learn.neurons import SLIF
from st2chip.learn.pruning import factorize, magnitude_prune, make_permanent
from st2chip.learn.transformer import SpikingTransformer, STConfig


def _model(seed: int = 0, **overrides) -> SpikingTransformer:
    """A tiny ST with random BN statistics and spread-out per-neuron thresholds and leaks."""
    torch.manual_seed(seed)
    model = SpikingTransformer(STConfig.tiny_digits(dim=16, mlp_hidden=16, steps=2, **overrides))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.8, 2.0)
                m.bias.uniform_(0.0, 0.6)
            if isinstance(m, SLIF):
                m.threshold.uniform_(0.3, 1.2)
                m.leak_logit.uniform_(-1.0, 3.0)
    return model.eval()


def _reproduces(model: SpikingTransformer, folder, digits) -> None:
    x = digits[1].x[:24]
    with torch.no_grad():
        expected = model(model.encode(torch.as_tensor(x))).numpy()
    scores = run_bundle(folder, x)
    assert scores.shape == expected.shape == (24, 10)
    assert expected.std(axis=0).mean() > 1e-2  # the samples really drive different outputs
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-5)
    assert (scores.argmax(1) == expected.argmax(1)).all()


def _affines(folder, part: str) -> dict[str, np.ndarray]:
    graph = nir.read(folder / part)
    return {n: np.asarray(node.weight) for n, node in graph.nodes.items() if isinstance(node, nir.Affine)}


def test_dense_bundle_round_trips_and_reproduces_torch(tmp_path, digits) -> None:
    model = _model()
    folder = export_bundle(model, tmp_path / "bundle")
    manifest = read_manifest(folder)
    kinds = {s["kind"] for s in manifest["steps"]}
    assert kinds == {"nir", "onnx", "op"} and manifest["time_steps"] == 2 and manifest["dt"] == 1e-3
    for step in manifest["steps"]:
        if step["kind"] == "nir":
            graph = nir.read(folder / step["file"])
            assert all(isinstance(n, (nir.Input, nir.Output, nir.Affine, nir.Conv2d, nir.LIF))
                       for n in graph.nodes.values())
        elif step["kind"] == "onnx":
            ort.InferenceSession(str(folder / step["file"]), providers=["CPUExecutionProvider"])
        assert all(p["shape"][0] == 2 or p["shape"][0] == "B" for p in step["inputs"] + step["outputs"])
    lif = nir.read(folder / "blocks.0.qkv.nir").nodes["attn.q.lif"]
    beta = model.blocks[0].attn.q_sn.beta.detach().double().numpy()
    np.testing.assert_allclose(1 - 1e-3 / lif.tau, beta, rtol=1e-12)
    _reproduces(model, folder, digits)


def test_l1p_bundle_keeps_zeros(tmp_path, digits) -> None:
    model = _model(seed=1)
    magnitude_prune(model, 0.8)
    make_permanent(model)
    folder = export_bundle(model, tmp_path / "bundle")
    weights = _affines(folder, "blocks.0.qkv.nir") | _affines(folder, "blocks.0.proj.nir") \
        | _affines(folder, "blocks.0.mlp.nir")
    for name, m in model.blocks[0].named_modules():
        if name in ("attn.q", "attn.k", "attn.v", "attn.proj", "mlp.fc1", "mlp.fc2"):
            zeros = m.weight.detach().numpy() == 0
            assert zeros.mean() > 0.5
            np.testing.assert_array_equal(weights[name] == 0, zeros)
    _reproduces(model, folder, digits)


def test_dsp_bundle_keeps_two_factors(tmp_path, digits) -> None:
    model = _model(seed=2)
    ranks = factorize(model, rank=3)
    folder = export_bundle(model, tmp_path / "bundle")
    assert read_manifest(folder)["ranks"] == ranks
    graph = nir.read(folder / "blocks.0.mlp.nir")
    assert ("input", "mlp.fc1.V") in graph.edges and ("mlp.fc1.V", "mlp.fc1.U") in graph.edges
    for part, name, n_in, n_out in [("blocks.0.qkv.nir", "attn.q", 16, 16), ("blocks.0.mlp.nir", "mlp.fc1", 16, 16)]:
        w = _affines(folder, part)
        assert w[f"{name}.V"].shape == (3, n_in) and w[f"{name}.U"].shape == (n_out, 3)
        assert name not in w  # never multiplied out
    _reproduces(model, folder, digits)


def test_cli_export_st_checkpoint_replaces_bundle_atomically(tmp_path, digits, capsys) -> None:
    model = _model(seed=3, neuron="lif")
    ckpt = save_checkpoint(model, "st", model.config.to_dict(), tmp_path / "st.pt")
    out = tmp_path / "bundle"
    assert main(["export", str(ckpt), "-o", str(out)]) == 0
    assert main(["export", str(ckpt), "-o", str(out)]) == 0  # an existing bundle is replaced whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "st.pt"]  # no temp folders left
    _reproduces(load_checkpoint(ckpt)[1].eval(), out, digits)
    assert json.loads((out / "manifest.json").read_text())["config"]["neuron"] == "lif"

    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    capsys.readouterr()
    assert main(["export", str(ckpt), "-o", str(other)]) == 2
    assert "not an st2chip bundle" in capsys.readouterr().err
    assert (other / "keep.txt").read_text() == "mine"


def test_run_bundle_rejects_foreign_folder(tmp_path) -> None:
    with pytest.raises(InputError, match="manifest"):
        run_bundle(tmp_path, np.zeros((1, 64)))


def test_map_on_a_broken_bundle_folder_names_its_manifest(tmp_path, capsys):
    from st2chip.cli.main import main

    (tmp_path / "manifest.json").write_text("{}")
    (tmp_path / "head.nir").write_bytes(b"")
    assert main(["map", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "manifest.json" in err and "st2chip-bundle" in err
