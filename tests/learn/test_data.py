"""Data: digits split is fixed; CIFAR-10 reads torchvision's layout safely or fails clearly."""

import pickle

import numpy as np
import pytest

from st2chip.cli.main import main
from st2chip.learn.data import CIFAR10_FOLDER, load_cifar10_split, load_digits_split, load_split, rate_encode
from st2chip.errors import InputError


def test_digits_split_is_fixed():
    (a_tr, a_te), (_, b_te) = load_digits_split(), load_digits_split()
    np.testing.assert_array_equal(a_te.y, b_te.y)
    assert len(a_tr) + len(a_te) == 1797 and 0.0 <= a_tr.x.min() and a_tr.x.max() <= 1.0


def test_rate_encode_counts():
    spikes = rate_encode(np.array([[0.0, 0.5, 1.0]]), 8)
    assert spikes.sum(0).tolist() == [[0.0, 4.0, 8.0]]


def _fake_cifar(root, n=4):
    folder = root / CIFAR10_FOLDER
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, size=n).tolist()}
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh)
    return folder


def test_cifar10_layout_loads(tmp_path):
    _fake_cifar(tmp_path)
    train, test = load_cifar10_split(tmp_path)
    assert train.x.shape == (20, 3, 32, 32) and test.x.shape == (4, 3, 32, 32)
    assert train.x.dtype == np.float32 and 0.0 <= train.x.min() and train.x.max() <= 1.0


def test_cifar10_missing_folder_is_named(tmp_path):
    with pytest.raises(InputError, match=str(tmp_path / CIFAR10_FOLDER)):
        load_cifar10_split(tmp_path)
    with pytest.raises(InputError, match="--data-root"):
        load_split("cifar10")


def test_cifar10_refuses_code_in_pickles(tmp_path):
    folder = _fake_cifar(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(folder / "test_batch", "wb") as fh:
        pickle.dump({b"data": Evil(), b"labels": []}, fh)
    with pytest.raises(InputError, match="test_batch.*refusing to load builtins.print"):
        load_cifar10_split(tmp_path)


def test_train_cli_without_cifar_exits_2(tmp_path, capsys):
    code = main(["train", "--model", "st", "--data", "cifar10", "--data-root", str(tmp_path),
                 "--out", str(tmp_path / "st.pt")])
    err = capsys.readouterr().err
    assert code == 2 and CIFAR10_FOLDER in err and not (tmp_path / "st.pt").exists()


def test_train_and_prune_st_on_cifar_layout(tmp_path, capsys):
    _fake_cifar(tmp_path)
    ckpt, pruned = tmp_path / "st.pt", tmp_path / "st-l1p.pt"
    tiny = ["--dim", "16", "--mlp-hidden", "16", "--steps", "1", "--heads", "2", "--epochs", "1",
            "--device", "cpu", "--data-root", str(tmp_path)]
    assert main(["train", "--model", "st", "--data", "cifar10", "--out", str(ckpt), *tiny]) == 0
    assert "on cifar10" in capsys.readouterr().out
    assert main(["prune", str(ckpt), "--method", "l1p", "--sparsity", "0.5", "--epochs", "1",
                 "--penalty-epochs", "0", "--device", "cpu", "--data-root", str(tmp_path),
                 "--out", str(pruned)]) == 0
    assert pruned.exists()


def test_digits32_is_the_digits_at_cifar_shape():
    (train, test), (d_train, _) = load_split("digits32"), load_digits_split()
    assert train.x.shape == (len(d_train), 3, 32, 32) and test.x.shape[1:] == (3, 32, 32)
    np.testing.assert_array_equal(train.y, d_train.y)
    np.testing.assert_array_equal(train.x[:, 2, 4 * 3 + 1, 4 * 5 + 2], d_train.x.reshape(-1, 8, 8)[:, 3, 5])


def test_preset_is_refused_off_32x32_data(tmp_path, capsys):
    code = main(["train", "--model", "st", "--preset", "spikformer-4-384", "--out", str(tmp_path / "st.pt")])
    err = capsys.readouterr().err
    assert code == 2 and "--preset spikformer-4-384" in err and "digits32" in err
    code = main(["train", "--model", "mlp", "--data", "digits32", "--out", str(tmp_path / "m.pt")])
    assert code == 2 and "--model st for digits32" in capsys.readouterr().err
