"""Outputs like any tool's: umask permissions, whole files only, one writer per folder."""

import os
import stat

import numpy as np
import pytest

from st2chip.errors import InputError
from st2chip.io import atomic_path, default_mode, folder_lock, write_json, write_text


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
