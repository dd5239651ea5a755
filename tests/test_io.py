"""Outputs like any tool's: umask permissions, whole files only, one writer per folder."""

import os
import stat

import numpy as np
import pytest

from st2chip.errors import InputError
from st2chip.io import (atomic_folder, atomic_path, check_output, default_mode, folder_lock, write_json, write_npz,
                        write_text)


@pytest.fixture
def umask():
    def set_mask(mask: int) -> None:
        os.umask(mask)
    old = os.umask(0o022)
    yield set_mask
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask,expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mask, expected):
    umask(mask)
    assert default_mode() == expected
    assert _mode(write_text(tmp_path / "a.md", "x")) == expected
    assert _mode(write_json(tmp_path / "b.json", {"a": 1})) == expected


def test_every_writer_of_the_demo_kind_gives_readable_files(tmp_path, umask, random_mlp):
    """Reports, NIR files, checkpoints, plots and bundles are readable by group and others under umask 022."""
    from st2chip.analysis.energy import energy_report, write_energy_report
    from st2chip.chip.lower import lower
    from st2chip.converters.mlp import mlp_to_nir
    from st2chip.graph.nirfile import write_nir
    from st2chip.learn.checkpoint import save_checkpoint
    from st2chip.targets import engine

    umask(0o022)
    model = random_mlp()
    paths = [write_nir(mlp_to_nir(model), tmp_path / "m.nir"),
             save_checkpoint(model, "mlp", model.config.to_dict(), tmp_path / "m.pt")]
    chip = lower(mlp_to_nir(model))
    traces = engine.run(chip, {"input": np.ones((1, 3, 64), np.uint8)})
    paths += list(write_energy_report(energy_report(chip, traces), tmp_path / "energy").values())
    for path in paths:
        assert _mode(path) == 0o644, path


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = write_text(tmp_path / "r.md", "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash while writing")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["r.md"]


def test_two_runs_cannot_write_one_folder_at_once(tmp_path):
    with folder_lock(tmp_path / "demo", "demo"):
        with pytest.raises(InputError, match="another st2chip demo is writing"):
            with folder_lock(tmp_path / "demo", "demo"):
                pass
    with folder_lock(tmp_path / "demo", "demo"):  # free again once the first run ends
        pass


def test_bundle_folder_and_parts_follow_the_umask(tmp_path, umask):
    import torch

    from st2chip.converters.transformer import export_bundle
    from st2chip.learn.transformer import SpikingTransformer, STConfig

    umask(0o022)
    torch.manual_seed(0)
    folder = export_bundle(SpikingTransformer(STConfig.tiny_digits(dim=16, mlp_hidden=16, steps=2)).eval(),
                           tmp_path / "bundle")
    assert _mode(folder) == 0o755
    assert {_mode(p) for p in folder.iterdir()} == {0o644}


def test_a_failed_write_names_the_target_not_the_temporary_file(tmp_path):
    target = tmp_path / "report.md"
    with pytest.raises(OSError) as err:
        with atomic_path(target) as tmp:
            raise FileNotFoundError(2, "No such file or directory", str(tmp))
    assert err.value.filename == str(target)
    assert not target.exists()


def test_atomic_path_refuses_what_is_not_a_regular_file(tmp_path):
    """A FIFO, a link to a device or a folder is never replaced by the renamed temporary."""
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "null").symlink_to(os.devnull)
    (tmp_path / "folder").mkdir()
    for name, kind in [("fifo", "FIFO"), ("null", "character device"), ("folder", "directory")]:
        with pytest.raises(InputError, match=kind):
            with atomic_path(tmp_path / name) as tmp:
                tmp.write_text("x")
    assert stat.S_ISFIFO(os.lstat(tmp_path / "fifo").st_mode) and (tmp_path / "null").is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "folder", "null"]


def test_check_output_refuses_an_input_and_accepts_new_or_regular_paths(tmp_path):
    source = write_text(tmp_path / "in.nir", "model")
    (tmp_path / "alias.nir").symlink_to(source)
    os.link(source, tmp_path / "hard.nir")
    for same in ("in.nir", "alias.nir", "hard.nir"):
        with pytest.raises(InputError, match="same file as the input"):
            check_output(tmp_path / same, [source], flag="-o")
    assert check_output(tmp_path / "new.npz", [source]) == tmp_path / "new.npz"
    assert check_output(write_text(tmp_path / "old.json", "{}"), [source, None, "loihi2"])
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    assert check_output(tmp_path / "dangling", [source])  # a link to nowhere is replaced like a missing file
    with pytest.raises(InputError, match="--report .*regular file"):
        check_output(source, folder=True, flag="--report")


def test_atomic_folder_publishes_a_new_folder_whole_or_not_at_all(tmp_path):
    with pytest.raises(OSError) as err:
        with atomic_folder(tmp_path / "report") as tmp:
            (tmp / "a.json").write_text("{}")
            raise OSError(27, "File too large")  # no file named, as matplotlib raises it
    assert err.value.filename == str(tmp_path / "report")
    assert list(tmp_path.iterdir()) == []
    with atomic_folder(tmp_path / "report") as tmp:
        write_text(tmp / "a.json", "{}")
    assert [p.name for p in (tmp_path / "report").iterdir()] == ["a.json"]
    assert _mode(tmp_path / "report") == default_mode(0o777)


def test_atomic_folder_merges_into_an_existing_folder_only_on_success(tmp_path):
    folder = tmp_path / "runs"
    write_text(folder / "notes.txt", "mine")
    write_text(folder / "report.md", "old")
    with pytest.raises(OSError) as err:
        with atomic_folder(folder) as tmp:
            write_text(tmp / "report.md", "new")
            raise FileNotFoundError(2, "No such file or directory", str(tmp / "report.png"))
    assert err.value.filename == str(folder / "report.png")  # the path the user will look at
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt", "report.md"]
    assert (folder / "report.md").read_text() == "old"
    with atomic_folder(folder) as tmp:
        write_text(tmp / "report.md", "new")
        write_text(tmp / "report.json", "{}")
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt", "report.json", "report.md"]
    assert (folder / "report.md").read_text() == "new" and (folder / "notes.txt").read_text() == "mine"


def test_atomic_folder_replace_swaps_the_whole_folder(tmp_path):
    folder = tmp_path / "bundle"
    write_text(folder / "old.nir", "old")
    with atomic_folder(folder, replace=True) as tmp:
        write_text(tmp / "new.nir", "new")
    assert [p.name for p in folder.iterdir()] == ["new.nir"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_write_npz_reads_back_like_savez_compressed(tmp_path):
    arrays = {"scores": np.arange(6.0).reshape(2, 3), "spikes/fc1": np.eye(3, dtype=np.uint8)}
    with np.load(write_npz(tmp_path / "t.npz", arrays)) as data:
        assert sorted(data.files) == sorted(arrays)
        for name, value in arrays.items():
            assert data[name].dtype == value.dtype and np.array_equal(data[name], value)
