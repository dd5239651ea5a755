"""MNIST-1D: generated locally (never downloaded), fixed by its seed, thermometer-coded over time."""

import random
import socket

import numpy as np
import pytest
import torch

from st2chip.cli.main import main
from st2chip.errors import InputError
from st2chip.learn import data
from st2chip.learn.checkpoint import load_checkpoint
from st2chip.learn.data import (MNIST1D_ARGS, MNIST1D_LEVELS, MNIST1D_SEED, load_mnist1d_split, load_split,
                                sequence_encode)


def test_sizes_and_range():
    train, test = load_mnist1d_split()
    assert train.x.shape == (4000, 40) and test.x.shape == (1000, 40)
    assert train.x.dtype == np.float32 and train.y.dtype == np.int64
    assert set(np.unique(train.y)) == set(range(10)) == set(np.unique(test.y))
    assert train.x.min() == 0.0 and train.x.max() == 1.0  # min/max of the training split
    assert 0.0 <= test.x.min() and test.x.max() <= 1.0
    same_train, _ = load_split("mnist1d")
    np.testing.assert_array_equal(same_train.x, train.x)


def test_callers_get_copies():
    first_train, _ = load_mnist1d_split()
    first_train.x[:] = -1
    assert load_mnist1d_split()[0].x.min() == 0.0  # the in-process cache is not touched


def test_default_args_are_mnist1ds_own():
    """The same seed gives the same arrays: an independent generation by mnist1d itself matches."""
    from mnist1d.data import get_dataset_args, make_dataset

    upstream = get_dataset_args(as_dict=True)
    assert upstream.pop("seed") == MNIST1D_SEED and "url" not in MNIST1D_ARGS
    upstream.pop("url")
    assert upstream == MNIST1D_ARGS
    raw = make_dataset(get_dataset_args())
    train, test = load_mnist1d_split()
    lo, hi = raw["x"].min(), raw["x"].max()
    np.testing.assert_array_equal(train.y, raw["y"])
    np.testing.assert_allclose(train.x, (raw["x"] - lo) / (hi - lo), atol=1e-6)
    np.testing.assert_allclose(test.x, np.clip((raw["x_test"] - lo) / (hi - lo), 0, 1), atol=1e-6)


def test_generates_without_network_seeds_differ_and_global_rng_is_kept(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("MNIST-1D tried to reach the network")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    data._MNIST1D_CACHE.pop(1, None)
    np.random.seed(123)
    random.seed(123)
    expect_np, expect_py = np.random.rand(), random.random()
    np.random.seed(123)
    random.seed(123)
    other, _ = load_mnist1d_split(1)  # generated here, with no network
    monkeypatch.undo()
    assert np.random.rand() == expect_np and random.random() == expect_py  # make_dataset's reseeding undone
    default, _ = load_mnist1d_split()
    assert other.x.shape == default.x.shape and not np.array_equal(other.x, default.x)


@pytest.mark.parametrize("seed", [-1, 2 ** 32, 1.5, "0", True])
def test_bad_seed_is_refused(seed):
    with pytest.raises(InputError, match="seed"):
        load_mnist1d_split(seed)


def test_sequence_encode_is_a_thermometer_over_time():
    x = np.array([[0.0, 0.5, 1.0, 0.2], [0.9, 0.1, 0.0, 0.6]], dtype=np.float32)
    spikes = sequence_encode(x, 16)
    assert spikes.shape == (4, 2, 16) and spikes.dtype == torch.float32
    assert set(spikes.unique().tolist()) <= {0.0, 1.0}
    assert spikes.sum(-1).T.tolist() == np.floor(x * 16 + 0.5).tolist()  # round(x * levels) neurons fire
    assert (spikes[..., 1:] <= spikes[..., :-1]).all()  # from the lowest level up
    torch.testing.assert_close(sequence_encode(x, 16), spikes, rtol=0, atol=0)
    assert sequence_encode(x[0], 16).shape == (4, 16)


def test_sequence_encode_step_depends_on_that_steps_value_only():
    train, _ = load_mnist1d_split()
    x = train.x[:8]
    spikes = sequence_encode(x, MNIST1D_LEVELS)
    assert spikes.shape == (40, 8, MNIST1D_LEVELS)
    perm = np.random.default_rng(0).permutation(40)
    torch.testing.assert_close(sequence_encode(x[:, perm], MNIST1D_LEVELS), spikes[perm], rtol=0, atol=0)
    for t in (0, 17, 39):  # each step alone encodes to the same spikes
        torch.testing.assert_close(sequence_encode(x[:, t:t + 1], MNIST1D_LEVELS)[0], spikes[t], rtol=0, atol=0)
    with pytest.raises(InputError, match="levels"):
        sequence_encode(x, 0)
    with pytest.raises(InputError, match="shape"):
        sequence_encode(np.zeros((2, 3, 4)), 4)


def test_train_mlp_on_mnist1d_through_the_cli(tmp_path, capsys):
    torch.manual_seed(0)  # the CLI builds the model before it seeds training
    ckpt = tmp_path / "mlp.pt"
    assert main(["train", "--model", "mlp", "--data", "mnist1d", "--hidden", "32", "--epochs", "1",
                 "--device", "cpu", "--out", str(ckpt)]) == 0
    assert "on mnist1d" in capsys.readouterr().out
    kind, model, extra = load_checkpoint(ckpt)
    assert kind == "mlp" and model.config.sizes == [MNIST1D_LEVELS, 32, 10] and model.config.steps == 40
    assert extra["data"] == "mnist1d" and extra["test_accuracy"] > 0.13  # chance is 0.10 (measured 0.2 here)
    assert model.config.encoding == "sequence"  # the checkpoint records how the model reads its input
    assert model.encode(torch.zeros(3, 40)).shape == (40, 3, MNIST1D_LEVELS)


@pytest.mark.parametrize("extra_args, message", [
    (["--model", "st"], "--model mlp"),
    (["--model", "mlp", "--steps", "16"], "T is 40"),
])
def test_train_cli_refuses_what_mnist1d_cannot_do(tmp_path, capsys, extra_args, message):
    out = tmp_path / "m.pt"
    assert main(["train", "--data", "mnist1d", *extra_args, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err and not out.exists()
