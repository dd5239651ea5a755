"""Every flag of `st2chip train`, `prune` and `quantize` is checked where it enters: sizes >= 1, --device a device
this machine has, models within the memory budget; each refusal is one line, exit 2, with nothing written."""

from __future__ import annotations

import pytest
import torch

from st2chip.cli.main import main
from st2chip.learn import pruning
from st2chip.learn.checkpoint import save_checkpoint
from st2chip.learn.transformer import SpikingTransformer, STConfig

OUT = ["--out", "OUT/m.pt"]

TRAIN = [
    (["--device", "bogus"], "--device must be cpu or cuda (or cuda:N), got 'bogus'"),
    (["--device", "cuda:x"], "--device must be cpu or cuda (or cuda:N), got 'cuda:x'"),
    (["--device", "cuda:99"], "--device cuda:99: "),
    (["--hidden", "1000000000"], "train --model mlp --hidden 1000000000: the parameters of the mlp model its config "
                                 "asks for (78,000,000,010 x 16 bytes) would need 1.1 TiB; the memory budget is"),
    (["--hidden", "0"], "--hidden must be at least 1, got 0"),
    (["--steps", "0"], "--steps must be at least 1, got 0"),
    (["--epochs", "0"], "--epochs must be at least 1, got 0"),
    (["--lr", "nan"], "--lr must be a finite number above 0, got nan"),
    (["--seed", "-1"], "--seed must be from 0 to 2**32 - 1 (numpy's seeds), got -1"),
    (["--seed", str(2**32)], "--seed must be from 0 to 2**32 - 1"),
    (["--model", "rnn", "--hidden", "1000000000"], "train --model rnn --hidden 1000000000: the parameters"),
    (["--model", "rnn", "--levels", "0"], "--levels must be at least 1, got 0"),
    (["--model", "cnn", "--channels", "4", "0"], "--channels must be at least 1, got 0"),
    (["--model", "st", "--dim", "0"], "--dim must be at least 1, got 0"),
    (["--model", "st", "--depth", "-2"], "--depth must be at least 1, got -2"),
    (["--model", "st", "--mlp-hidden", "0"], "--mlp-hidden must be at least 1, got 0"),
    (["--model", "st", "--dim", "200000", "--heads", "1"], "the parameters of the st model its config asks for"),
]
if not torch.cuda.is_available():
    TRAIN.append((["--device", "cuda"], "--device cuda: no CUDA GPU is available on this machine; use --device cpu"))


def _refused(capsys, tmp_path, argv: list[str], needle: str) -> None:
    before = sorted(tmp_path.rglob("*"))
    assert main([a.replace("OUT", str(tmp_path / "out")) for a in argv]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("st2chip: error: ") and captured.err.count("\n") == 1, captured.err
    assert needle in captured.err and "Traceback" not in captured.err, captured.err
    assert sorted(tmp_path.rglob("*")) == before  # nothing written


@pytest.mark.parametrize("flags, needle", TRAIN, ids=[" ".join(f) for f, _ in TRAIN])
def test_train_refuses_bad_flags_in_one_line(tmp_path, capsys, flags, needle):
    model = [] if "--model" in flags else ["--model", "mlp"]
    _refused(capsys, tmp_path, ["train", *model, *flags, *OUT], needle)


@pytest.fixture
def st_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = SpikingTransformer(STConfig.tiny_digits(dim=8, mlp_hidden=8, steps=2))
    return str(save_checkpoint(model, "st", model.config.to_dict(), tmp_path / "st.pt", extra={"data": "digits"}))


PRUNE = [
    (["--method", "dsp", "--rank", "0"], "--rank must be at least 1, got 0"),
    (["--method", "dsp", "--rank", "2", "--epochs", "0"], "--epochs must be at least 1, got 0"),
    (["--method", "dsp", "--rank", "2", "--penalty-epochs", "-1"], "--penalty-epochs must be at least 0, got -1"),
    (["--method", "dsp", "--threshold", "-0.5"], "--threshold must be a finite number at least 0 and at most 1"),
    (["--method", "l1p", "--sparsity", "0.5", "--lr", "-1"], "--lr must be a finite number above 0, got -1.0"),
    (["--method", "l1p", "--sparsity", "0.5", "--penalty", "inf"], "--penalty must be a finite number at least 0"),
    (["--method", "l1p", "--sparsity", "0.5", "--device", "bogus"], "--device must be cpu or cuda"),
    (["--method", "l1p", "--sparsity", "0.5", "--seed", "-3"], "--seed must be from 0 to 2**32 - 1"),
]


@pytest.mark.parametrize("flags, needle", PRUNE, ids=[" ".join(f) for f, _ in PRUNE])
def test_prune_refuses_bad_flags_in_one_line(tmp_path, capsys, st_checkpoint, flags, needle):
    _refused(capsys, tmp_path, ["prune", st_checkpoint, *flags, *OUT], needle)


QUANTIZE = [
    (["--decay-groups", "0"], "--decay-groups must be at least 1, got 0"),
    (["--decay-groups", "5000"], "--decay-groups must be at most 4096 (distinct 12-bit decays), got 5000"),
    (["--epochs", "0"], "--epochs must be at least 1, got 0"),
    (["--headroom", "0"], "--headroom must be a finite number above 0, got 0.0"),
    (["--device", "bogus"], "--device must be cpu or cuda"),
]


@pytest.mark.parametrize("flags, needle", QUANTIZE, ids=[" ".join(f) for f, _ in QUANTIZE])
def test_quantize_refuses_bad_flags_in_one_line(tmp_path, capsys, random_mlp, flags, needle):
    model = random_mlp()
    path = str(save_checkpoint(model, "mlp", model.config.to_dict(), tmp_path / "m.pt"))
    _refused(capsys, tmp_path, ["quantize", path, *flags, *OUT], needle)


def test_truncate_refuses_rank_0_instead_of_using_rank_1():
    torch.manual_seed(0)
    model = SpikingTransformer(STConfig.tiny_digits(dim=8, mlp_hidden=8, steps=2))
    pruning.factorize(model)
    with pytest.raises(ValueError, match="rank must be a positive integer, got 0"):
        pruning.truncate(model, rank=0)
    assert set(pruning.truncate(model, rank=1).values()) == {1}
