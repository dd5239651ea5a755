"""``st2chip quantize model.nir --inputs train.npz -o tuned.nir`` on an snnTorch export, by the CLI alone: the
tuned graph is one the chip holds exactly, the held-out accuracies are printed, bad inputs exit 2 with one line."""

from __future__ import annotations


import numpy as np
import pytest

import st2chip
from st2chip.cli.main import main
from st2chip.learn.data import load_digits_split, rate_encode


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def files(tmp_path_factory, snntorch_file):
    """The imported canonical graph and a train.npz of 200 rate-coded digits with labels."""
    folder = tmp_path_factory.mktemp("quantize")
    snntorch_file(folder / "raw.nir", sizes=(64, 24, 10), seed=1)  # untrained
    assert main(["import", str(folder / "raw.nir"), "--from", "snntorch", "-o", str(folder / "model.nir")]) == 0
    train, _ = load_digits_split()
    x = rate_encode(train.x[:200], 10).numpy().transpose(1, 0, 2).astype(np.uint8)
    np.savez(folder / "train.npz", input=x, labels=train.y[:200])
    np.savez(folder / "unlabelled.npz", input=x)
    return folder


def test_quantize_a_nir_graph_from_snntorch(files, capsys):
    out_file = files / "tuned.nir"
    code, out, err = _run(capsys, "quantize", files / "model.nir", "--inputs", files / "train.npz",
                          "--decay-groups", 2, "--epochs", 3, "--lr", 0.01, "-o", out_file)
    assert code == 0, err
    assert "2 decay groups per layer, 3 epochs on 160 samples; on 40 held-out samples float" in out
    assert "the chip holds its weights exactly -> " in out and "chip " in out
    graph = st2chip.load(out_file)
    assert graph.metadata["decay_groups"] == 2
    chip = st2chip.lower(graph)  # K from the file's metadata
    for layer in chip.report["layers"].values():
        assert layer["weight_error"] < 1e-6 and layer["leak_error"] < 1e-6 and layer["decay_groups"] <= 2


@pytest.mark.parametrize("argv, message", [
    ((), "pass --inputs FILE.npz"),
    (("--inputs", "unlabelled.npz"), "needs labels"),
    (("--inputs", "train.npz", "--holdout", "0"), "--holdout must lie strictly between 0 and 1"),
    (("--inputs", "train.npz", "--data-root", "."), "--data-root applies to checkpoints"),
])
def test_bad_graph_quantize_exits_2_with_one_line(files, capsys, argv, message):
    argv = [files / a if str(a).endswith(".npz") else a for a in argv]
    code, out, err = _run(capsys, "quantize", files / "model.nir", *argv, "--epochs", 1, "-o", files / "x.nir")
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (files / "x.nir").exists()


def test_a_checkpoint_takes_no_inputs(files, capsys):
    code, out, err = _run(capsys, "quantize", files / "rnn.pt", "--inputs", files / "train.npz", "-o", files / "y.pt")
    assert code == 2 and "--inputs and --holdout fine-tune a NIR graph" in err and err.count("\n") == 1, err
