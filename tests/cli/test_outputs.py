"""Outputs are regular files in places the user named, written whole or not at all.

Refused before any run (exit 2, one line): an output that is a device, a FIFO, a
symlink to one, a folder where a file goes, or the same file as an input. Under a
file-size limit (``RLIMIT_FSIZE``: Python ignores SIGXFSZ, so writes fail with
EFBIG, as on a full disk) every writer ends with one error line naming the target,
no traceback, no crash and no temporary file or folder left behind.
"""

from __future__ import annotations

import os
import resource
import stat
import subprocess
import sys
from pathlib import Path

import nir
import pytest
import torch

from st2chip.cli.main import main
from st2chip.converters.mlp import mlp_to_nir
from st2chip.graph.nirfile import write_nir
from st2chip.learn.checkpoint import save_checkpoint
from st2chip.learn.transformer import SpikingTransformer, STConfig

ST2CHIP = Path(sys.executable).with_name("st2chip")
LIMIT = 64 * 1024  # bytes any one file may grow to in the limited runs


@pytest.fixture
def model(random_mlp, tmp_path) -> Path:
    return write_nir(mlp_to_nir(random_mlp()), tmp_path / "m.nir")


def _refused(capsys, argv: list[str], *words: str) -> str:
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("st2chip: error:"), err
    assert "inputs:" not in out  # refused before the run
    for word in words:
        assert word in err, (word, err)
    return err


def test_a_fifo_named_as_output_is_refused_and_left_alone(model, tmp_path, capsys):
    fifo = tmp_path / "out.json"
    os.mkfifo(fifo)
    _refused(capsys, ["map", str(model), "--json", str(fifo)], "--json", "out.json", "FIFO")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_a_symlink_to_a_device_named_as_output_is_refused_and_left_alone(model, tmp_path, capsys):
    link = tmp_path / "null.npz"
    link.symlink_to(os.devnull)
    _refused(capsys, ["simulate", str(model), "--samples", "2", "-o", str(link)],
             "--output", "character device", "symbolic link")
    assert link.is_symlink() and os.readlink(link) == os.devnull


def test_a_folder_where_a_file_goes_is_refused_before_the_run(model, tmp_path, capsys):
    folder = tmp_path / "out"
    folder.mkdir()
    _refused(capsys, ["simulate", str(model), "--samples", "2", "-o", str(folder)], "--output", "a directory")
    _refused(capsys, ["verify", str(model), "--samples", "2", "--json", str(folder)], "--json", "a directory")


def test_a_file_where_a_report_folder_goes_is_refused(model, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    _refused(capsys, ["map", str(model), "--report", str(notes)], "--report", "regular file")
    _refused(capsys, ["energy", str(model), "--samples", "2", "-o", str(notes)], "--output", "regular file")
    _refused(capsys, ["demo", "--out", str(notes)], "--out", "regular file")
    assert notes.read_text() == "mine"


def _same_file_cases(tmp_path: Path, model: Path, random_mlp) -> list[tuple[list[str], Path]]:
    ckpt = tmp_path / "m.pt"
    net = random_mlp()
    save_checkpoint(net, "mlp", net.config.to_dict(), ckpt)
    link = tmp_path / "link.nir"
    link.symlink_to(model)
    return [(["simulate", str(model), "--samples", "2", "-o", str(model)], model),
            (["map", str(model), "--json", str(model)], model),
            (["import", str(model), "--from", "nir", "-o", str(model)], model),
            (["export", str(ckpt), "-o", str(ckpt)], ckpt),
            (["export-netx", str(model), "-o", str(tmp_path / "n.h5"), "--json", str(model)], model),
            (["simulate", str(model), "--samples", "2", "-o", str(link)], model)]


def test_an_input_named_again_as_output_is_refused_and_kept(model, tmp_path, capsys, random_mlp):
    for argv, source in _same_file_cases(tmp_path, model, random_mlp):
        before = source.read_bytes()
        _refused(capsys, argv, "same file as the input")
        assert source.read_bytes() == before, argv


# -- writes that fail half-way ------------------------------------------------------------------------


def _limited(argv: list[str], cwd: Path, limit: int = LIMIT) -> subprocess.CompletedProcess:
    """Run the installed console script with every file it writes limited to ``limit`` bytes."""
    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return subprocess.run([str(ST2CHIP), *argv], cwd=cwd, preexec_fn=cap, capture_output=True, text=True,
                          timeout=180)


def _one_clean_error(result: subprocess.CompletedProcess, target: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("st2chip:")]
    lines = [line for line in result.stderr.splitlines() if line.strip() and "batch/s" not in line]  # progress
    assert errors == lines and len(errors) == 1, result.stderr
    assert errors[0].startswith(f"st2chip: error: {target}") and "too large" in errors[0], errors


def _no_temporaries(*folders: Path) -> None:
    for folder in folders:
        assert not [p.name for p in folder.iterdir() if p.name.startswith(".")], folder


def _st_checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    model = SpikingTransformer(STConfig.tiny_digits(dim=16, mlp_hidden=16, steps=2))
    return save_checkpoint(model, "st", model.config.to_dict(), path)


def test_a_failing_export_to_nir_is_one_error_and_leaves_nothing(tmp_path, random_mlp):
    net = random_mlp(sizes=(64, 200, 10))  # its NIR file is over 64 KiB
    save_checkpoint(net, "mlp", net.config.to_dict(), tmp_path / "m.pt")
    _one_clean_error(_limited(["export", "m.pt", "-o", "out.nir"], tmp_path), "out.nir")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_a_failing_bundle_export_is_one_error_and_keeps_the_old_bundle(tmp_path):
    _st_checkpoint(tmp_path / "st.pt")
    assert main(["export", str(tmp_path / "st.pt"), "-o", str(tmp_path / "bundle")]) == 0
    before = {p.name: p.read_bytes() for p in (tmp_path / "bundle").iterdir()}
    _one_clean_error(_limited(["export", "st.pt", "-o", "bundle"], tmp_path), "bundle/")
    assert {p.name: p.read_bytes() for p in (tmp_path / "bundle").iterdir()} == before
    _one_clean_error(_limited(["export", "st.pt", "-o", "new"], tmp_path), "new/")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle", "st.pt"]
    _no_temporaries(tmp_path / "bundle")


def test_a_failing_import_is_one_error_and_leaves_nothing(tmp_path, random_mlp):
    nir.write(tmp_path / "a.nir", mlp_to_nir(random_mlp(sizes=(64, 200, 10))))
    _one_clean_error(_limited(["import", "a.nir", "--from", "nir", "-o", "b.nir"], tmp_path), "b.nir")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nir"]


def test_a_failing_trace_write_is_one_error_without_a_zipfile_complaint(tmp_path, model):
    _one_clean_error(_limited(["simulate", "m.nir", "--samples", "50", "-o", "t.npz"], tmp_path, 8192), "t.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.nir"]


def test_a_report_folder_is_written_whole_or_not_at_all(tmp_path, model, capsys):
    """report.json and report.md fit in 8 KiB, report.png does not: nothing of the report may appear, in a new
    folder or in one that holds the user's files; a run that succeeds adds its files beside the user's."""
    _one_clean_error(_limited(["map", "m.nir", "--report", "new"], tmp_path, 8192), "new/report.png")
    assert not (tmp_path / "new").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    _one_clean_error(_limited(["map", "m.nir", "--report", "mine"], tmp_path, 8192), "mine/report.png")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    _no_temporaries(tmp_path, mine)
    assert main(["map", str(model), "--report", str(mine)]) == 0
    assert str(mine / "report.png") in capsys.readouterr().out
    assert sorted(p.name for p in mine.iterdir()) == ["floorplan.png", "notes.txt", "report.json", "report.md",
                                                     "report.png"]


def test_export_netx_under_a_file_size_limit_is_one_error(tmp_path, random_mlp):
    """A netx HDF5 write that fails (file-size limit) is one line naming the target, no HDF5 tracebacks."""
    import resource
    import subprocess
    import sys

    from st2chip.converters.mlp import mlp_to_nir
    from st2chip.graph.nirfile import write_nir
    model = write_nir(mlp_to_nir(random_mlp(sizes=(64, 200, 10))), tmp_path / "m.nir")

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, 16 * 1024))

    done = subprocess.run([sys.executable, "-m", "st2chip", "export-netx", str(model), "-o", "out.h5",
                           "--approximate"], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          preexec_fn=limit)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and "out.h5" in done.stderr
    assert "Traceback" not in done.stderr and sorted(p.name for p in tmp_path.iterdir()) == ["m.nir"]
