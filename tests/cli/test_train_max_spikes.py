"""`st2chip train --max-spikes K`: hidden neurons that send up to K spikes per step (as Xylo's do), recorded in the
checkpoint and in the export; refused in one line where it cannot mean anything."""

from __future__ import annotations

import nir
import pytest

from st2chip.cli.main import main
from st2chip.learn.checkpoint import read_checkpoint

REFUSED = [
    (["--model", "mlp", "--max-spikes", "31"], "--max-spikes 31 needs --reset subtract"),
    (["--model", "rnn", "--reset", "zero", "--max-spikes", "2"], "--max-spikes 2 needs --reset subtract"),
    (["--model", "cnn", "--reset", "subtract", "--max-spikes", "31"],
     "--max-spikes 31 applies to --model mlp and rnn, not to --model cnn"),
    (["--model", "st", "--max-spikes", "4"], "--max-spikes 4 applies to --model mlp and rnn, not to --model st"),
    (["--model", "mlp", "--reset", "subtract", "--max-spikes", "0"], "--max-spikes must be from 1 to 255, got 0"),
    (["--model", "mlp", "--reset", "subtract", "--max-spikes", "256"], "--max-spikes must be from 1 to 255, got 256"),
]


@pytest.mark.parametrize("flags, needle", REFUSED, ids=[" ".join(f) for f, _ in REFUSED])
def test_max_spikes_is_refused_in_one_line_where_it_cannot_apply(tmp_path, capsys, flags, needle):
    assert main(["train", *flags, "--epochs", "1", "--out", str(tmp_path / "m.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("st2chip: error: ") and err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize("model", ["mlp", "rnn"])
def test_trained_counts_reach_the_checkpoint_and_the_export(tmp_path, model):
    pt, graph = tmp_path / "m.pt", tmp_path / "m.nir"
    assert main(["train", "--model", model, "--reset", "subtract", "--max-spikes", "31", "--hidden", "12",
                 "--steps", "8", "--epochs", "1", "--seed", "0", "--device", "cpu", "--out", str(pt)]) == 0
    assert read_checkpoint(pt)["config"]["max_spikes"] == 31
    assert main(["export", str(pt), "-o", str(graph)]) == 0
    node = nir.read(graph).nodes["lif1" if model == "mlp" else "lif"]
    assert node.metadata["max_spikes"] == 31 and node.metadata["reset"] == "subtract"


def test_help_names_the_flag(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "--max-spikes K" in out and "Xylo" in out
