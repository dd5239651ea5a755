import re
import resource
import subprocess
import sys

import pytest
import torch

from st2chip.cli.main import main
from st2chip.learn.checkpoint import load_checkpoint, load_mlp, read_checkpoint, save_checkpoint
from st2chip.errors import InputError


def test_round_trip_is_exact(random_mlp, tmp_path):
    model = random_mlp()
    path = save_checkpoint(model, "mlp", model.config.to_dict(), tmp_path / "m.pt", extra={"seed": 3})
    again = load_mlp(path)
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    assert read_checkpoint(path)["extra"] == {"seed": 3}


def test_foreign_files_are_refused(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="other.pt.*not an st2chip checkpoint"):
        read_checkpoint(tmp_path / "other.pt")
    with pytest.raises(InputError, match="missing.pt"):
        read_checkpoint(tmp_path / "missing.pt")


def test_wrong_kind_is_refused(random_mlp, tmp_path):
    model = random_mlp()
    path = save_checkpoint(model, "st", {}, tmp_path / "st.pt")
    with pytest.raises(InputError, match="'st' model"):
        load_mlp(path)


# ---------------------------------------------------------------------------------------------
# Hostile checkpoints: every field st2chip reads back is checked where it enters (one line, exit 2).

def _payload(model, kind: str, config: dict, extra) -> dict:
    return {"kind": kind, "config": config, "state_dict": model.state_dict(), "extra": extra}


HOSTILE_EXTRAS = [
    ("list", [1, 2], r"checkpoint field 'extra' must be a dict, got list"),
    ("string", "abc", r"checkpoint field 'extra' must be a dict, got str"),
    ("decay-groups-four", {"chip_aware": {"decay_groups": "four"}},
     r"'extra.chip_aware.decay_groups' must be a positive integer, got 'four'"),
    ("decay-groups-missing", {"chip_aware": {"headroom": 0.5}}, r"'extra.chip_aware' has no 'decay_groups'"),
    ("decay-groups-2^70", {"chip_aware": {"decay_groups": 2**70}},
     r"'extra.chip_aware.decay_groups' must be at most 4096, got 1180591620717411303424"),
    ("chip-aware-list", {"chip_aware": [4]}, r"'extra.chip_aware' must be a dict, got list"),
    ("data-path", {"data": "../../etc"}, r"'extra.data' must be one of digits, cifar10, mnist1d, digits32, got '../../etc'"),
    ("seed-str", {"seed": "0"}, r"'extra.seed' must be an integer, got '0'"),
]


@pytest.mark.parametrize("extra, pattern", [c[1:] for c in HOSTILE_EXTRAS], ids=[c[0] for c in HOSTILE_EXTRAS])
def test_hostile_extra_is_one_line_naming_the_field(random_mlp, tmp_path, capsys, extra, pattern):
    model = random_mlp()
    path = tmp_path / "m.pt"
    torch.save(_payload(model, "mlp", model.config.to_dict(), extra), path)
    with pytest.raises(InputError, match=pattern):
        load_mlp(path)
    assert main(["export", str(path), "-o", str(tmp_path / "m.nir")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"st2chip: error: {path}: checkpoint field 'extra") and err.count("\n") == 1, err
    assert re.search(pattern, err) and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]  # nothing written


def test_a_cnn_config_with_no_channels_is_refused(tmp_path, capsys):
    from st2chip.learn.cnn import CNNConfig, SpikingCNN
    model = SpikingCNN(CNNConfig())
    path = tmp_path / "cnn.pt"
    torch.save(_payload(model, "cnn", model.config.to_dict() | {"channels": []}, {}), path)
    assert main(["export", str(path), "-o", str(tmp_path / "cnn.nir")]) == 2
    err = capsys.readouterr().err
    assert err == f"st2chip: error: {path}: config field 'channels' has 0 entries (from 1 to 10,000)\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cnn.pt"]


@pytest.mark.parametrize("ranks", [0, None, [], "q"])
def test_st_ranks_must_be_a_dict(tmp_path, ranks):
    from st2chip.learn.transformer import STConfig
    torch.save({"kind": "st", "config": STConfig().to_dict() | {"ranks": ranks}, "state_dict": {}, "extra": {}},
               tmp_path / "st.pt")
    with pytest.raises(InputError, match=r"st.pt: config field 'ranks' must be a dict"):
        load_checkpoint(tmp_path / "st.pt")


def test_written_extras_load_back(random_mlp, tmp_path):
    """What train, prune and quantize write passes the checks."""
    model = random_mlp()
    extra = {"test_accuracy": 0.9, "train_accuracy": 1.0, "epochs": 3, "lr": 5e-3, "seed": 0, "device": "cpu",
             "data": "digits", "seconds": 1.5, "chip_aware": {"decay_groups": 4, "headroom": 0.5, "epochs": 2}}
    path = save_checkpoint(model, "mlp", model.config.to_dict(), tmp_path / "m.pt", extra=extra)
    assert load_checkpoint(path)[2] == extra


# ---------------------------------------------------------------------------------------------
# A save that cannot be written (a full disk; here a file-size limit: Python ignores SIGXFSZ, writes fail
# with EFBIG) is one error naming the target, and leaves nothing behind.

def _file_size_limit() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))


def test_save_checkpoint_under_a_file_size_limit_names_the_target(tmp_path):
    code = ("import errno, torch\n"
            "from st2chip.learn.checkpoint import save_checkpoint\n"
            "from st2chip.learn.mlp import MLPConfig, SpikingMLP\n"
            "model = SpikingMLP(MLPConfig(sizes=[64, 32, 10]))\n"
            "try:\n"
            f"    save_checkpoint(model, 'mlp', model.config.to_dict(), {str(tmp_path / 'm.pt')!r})\n"
            "except OSError as err:\n"
            "    print(err.errno == errno.EFBIG, err.filename)\n")
    done = subprocess.run([sys.executable, "-c", code], preexec_fn=_file_size_limit, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout == f"True {tmp_path / 'm.pt'}\n", done.stderr
    assert list(tmp_path.iterdir()) == []


def test_train_out_on_a_full_disk_is_one_line_and_leaves_nothing(tmp_path):
    out = tmp_path / "runs" / "m.pt"
    done = subprocess.run([sys.executable, "-c", "import sys; from st2chip.cli.main import main; sys.exit(main())",
                           "train", "--model", "mlp", "--hidden", "32", "--epochs", "1", "--steps", "2",
                           "--out", str(out)], preexec_fn=_file_size_limit, capture_output=True, text=True,
                          timeout=300)
    last = done.stderr.strip().splitlines()[-1]  # above it: the progress bar
    assert done.returncode == 2 and last == f"st2chip: error: {out}: File too large", done.stderr
    assert "Traceback" not in done.stderr and "inline_container" not in done.stderr
    assert list(out.parent.iterdir()) == []
