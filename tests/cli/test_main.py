"""The CLI: one clear line and exit 2 on bad input, nothing on disk touched; verify exit codes."""

import json
import subprocess
import sys

import nir
import numpy as np
import pytest

from st2chip.learn.checkpoint import save_checkpoint
from st2chip.cli.main import main
from st2chip.converters.mlp import mlp_to_nir
from st2chip.graph.nirfile import write_nir


@pytest.fixture
def good_nir(random_mlp, tmp_path):
    return write_nir(mlp_to_nir(random_mlp()), tmp_path / "good.nir")


def _graph(random_mlp):
    return mlp_to_nir(random_mlp())


def _run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _write(graph, path):
    nir.write(path, graph)
    return path


def _bad_files(random_mlp, tmp_path):
    empty = tmp_path / "empty.nir"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.nir"
    garbage.write_bytes(b"\x00not hdf5 at all" * 10)
    good = _write(_graph(random_mlp), tmp_path / "whole.nir")
    truncated = tmp_path / "truncated.nir"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    nan = _graph(random_mlp)
    nan.nodes["fc1"].weight[0, 0] = np.nan
    shape = _graph(random_mlp)
    shape.nodes["fc2"].bias = np.zeros(3)
    unknown_edge = _graph(random_mlp)
    unknown_edge.edges.append(("lif1", "ghost"))
    no_shape = _graph(random_mlp)  # a pooling node after a flat layer: its (C, H, W) cannot be known
    no_shape.nodes["pool"] = nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]),
                                               padding=np.array([0, 0]))
    no_shape.edges += [("lif1", "pool")]
    return {
        "missing": (tmp_path / "nope.nir", "nope.nir"),
        "empty": (empty, "empty.nir"),
        "garbage": (garbage, "garbage.nir"),
        "truncated": (truncated, "truncated.nir"),
        "nan": (_write(nan, tmp_path / "nan.nir"), "fc1"),
        "shape": (_write(shape, tmp_path / "shape.nir"), "fc2"),
        "edge": (_write(unknown_edge, tmp_path / "edge.nir"), "ghost"),
        "noshape": (_write(no_shape, tmp_path / "noshape.nir"), "node 'pool', field 'input_shape'"),
    }


@pytest.mark.parametrize("case", ["missing", "empty", "garbage", "truncated", "nan", "shape", "edge", "noshape"])
@pytest.mark.parametrize("command", ["map", "verify", "energy"])
def test_bad_input_exit_2_one_line(random_mlp, tmp_path, capsys, case, command):
    path, named = _bad_files(random_mlp, tmp_path)[case]
    report = tmp_path / "out.json"
    report.write_text("keep me")
    extra = ["--json", str(report)] if command != "energy" else ["-o", str(tmp_path / "energy")]
    code, out, err = _run(capsys, command, str(path), *extra)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("st2chip: error:")
    assert named in lines[0]
    assert "Traceback" not in err
    assert report.read_text() == "keep me"
    assert not (tmp_path / "energy").exists()


def test_bad_arguments_exit_2(good_nir, capsys):
    code, _, err = _run(capsys, "map", str(good_nir), "--decay-groups", "0")
    assert code == 2 and "decay_groups" in err
    code, _, err = _run(capsys, "verify", str(good_nir), "--backends", "float,gpu")
    assert code == 2 and "gpu" in err
    code, _, err = _run(capsys, "energy", str(good_nir), "--profile", "nonexistent")
    assert code == 2 and "nonexistent" in err


def test_export_rejects_bad_checkpoint(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    code, _, err = _run(capsys, "export", str(bad), "-o", str(tmp_path / "m.nir"))
    assert code == 2 and "bad.pt" in err
    assert not (tmp_path / "m.nir").exists()


def test_export_map_verify_energy_end_to_end(random_mlp, tmp_path, capsys):
    model = random_mlp(steps=6)
    ckpt = save_checkpoint(model, "mlp", model.config.to_dict(), tmp_path / "m.pt")
    nir_path = tmp_path / "m.nir"
    assert _run(capsys, "export", str(ckpt), "-o", str(nir_path))[0] == 0
    code, out, _ = _run(capsys, "map", str(nir_path), "--decay-groups", "2")
    assert code == 0 and "lif1" in out and "readout" in out
    report = tmp_path / "verify.json"
    code, out, _ = _run(capsys, "verify", str(nir_path), "--samples", "4", "--json", str(report))
    assert code == 0, out
    data = json.loads(report.read_text())
    assert data["chip_exact"] is True and data["samples"] == 4
    code, out, _ = _run(capsys, "energy", str(nir_path), "--samples", "4", "-o", str(tmp_path / "e"))
    assert code == 0 and (tmp_path / "e" / "energy.png").exists()


def test_console_script_help_and_error():
    exe = [sys.executable, "-m", "st2chip.cli"]
    assert subprocess.run(exe + ["--help"], capture_output=True).returncode == 0
    res = subprocess.run(exe + ["verify", "/no/such/file.nir"], capture_output=True, text=True)
    assert res.returncode == 2 and "file.nir" in res.stderr and "Traceback" not in res.stderr


def test_verbose_prints_the_pipeline(good_nir, capsys):
    code, out, err = _run(capsys, "-v", "map", str(good_nir))
    assert code == 0 and "pipeline:" in err and "lower" in err and "lif1" in out


def test_export_refuses_nan_weights_and_writes_nothing(random_mlp, tmp_path, capsys):
    import torch
    model = random_mlp()
    with torch.no_grad():
        model.linears[0].weight[0, 0] = float("nan")
    ckpt = save_checkpoint(model, "mlp", model.config.to_dict(), tmp_path / "nan.pt")
    code, _, err = _run(capsys, "export", str(ckpt), "-o", str(tmp_path / "m.nir"))
    assert code == 2 and "linears.0.weight" in err and "NaN" in err
    assert not (tmp_path / "m.nir").exists()


def test_verify_runs_the_whole_digits_split_on_the_engine_with_a_lava_cross_check(good_nir, capsys):
    code, out, _ = _run(capsys, "verify", str(good_nir), "--lava-samples", "8", "--min-agreement", "90")
    assert code == 0, out
    assert "360 samples" in out and "reference vs lava (first 8 samples)" in out and "(exact)" in out
    assert "lava mode: layers (each of" in out


def test_verify_takes_the_lava_mode(good_nir, capsys):
    code, out, _ = _run(capsys, "verify", str(good_nir), "--samples", "4", "--lava-samples", "2",
                        "--backends", "reference,lava", "--lava-mode", "whole")
    assert code == 0 and "lava mode: whole (the whole network in one Lava run)" in out
    with pytest.raises(SystemExit) as exit_info:
        _run(capsys, "verify", str(good_nir), "--lava-mode", "parts")
    assert exit_info.value.code == 2 and "--lava-mode" in capsys.readouterr().err


def test_warnings_are_one_escaped_line(capsys):
    from st2chip.cli.main import _one_line_warning
    _one_line_warning(UserWarning("node 'a\x1b[31m'\nspread"), UserWarning, "f.py", 1)
    assert capsys.readouterr().err == "st2chip: warning: UserWarning: node 'a\\x1b[31m' spread\n"


def test_children_keep_the_working_directory_off_their_path_only_during_a_command(good_nir, monkeypatch):
    """main() sets PYTHONSAFEPATH for every interpreter the command starts, and leaves the caller's environment
    as it found it."""
    import os

    from st2chip.cli import main as cli

    monkeypatch.delenv("PYTHONSAFEPATH", raising=False)
    seen = []
    monkeypatch.setitem(cli.COMMANDS, "map", lambda args: seen.append(os.environ.get("PYTHONSAFEPATH")) or 0)
    assert main(["map", str(good_nir)]) == 0
    assert seen == ["1"] and "PYTHONSAFEPATH" not in os.environ


def test_a_closed_pipe_ends_quietly(tmp_path, random_mlp):
    """`st2chip map m.nir | head`: the reader goes away; st2chip exits 0 with nothing on stderr."""
    import subprocess
    import sys

    from st2chip.converters.mlp import mlp_to_nir
    from st2chip.graph.nirfile import write_nir
    model = write_nir(mlp_to_nir(random_mlp()), tmp_path / "m.nir")
    script = (f"{sys.executable} -m st2chip map {model} --cores | true; "
              "echo \"exit ${PIPESTATUS[0]}\"")
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.stdout.strip() == "exit 0" and done.stderr == ""


def test_training_bars_only_on_a_terminal_or_asked(tmp_path, capsys):
    """`st2chip train` in a log or pipe draws no bar; --progress draws it there too."""
    from st2chip.cli.main import main
    assert main(["train", "--model", "mlp", "--epochs", "1", "--hidden", "8", "--out", str(tmp_path / "a.pt")]) == 0
    assert "train mlp" not in capsys.readouterr().err
    assert main(["--progress", "train", "--model", "mlp", "--epochs", "1", "--hidden", "8",
                 "--out", str(tmp_path / "b.pt")]) == 0
    assert "train mlp" in capsys.readouterr().err
