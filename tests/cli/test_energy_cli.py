"""`st2chip energy`: profiles by name or file, --inputs/--samples, per-layer and per-core reports, exit 2 on a bad profile."""

from __future__ import annotations

import json

import numpy as np
import pytest

from st2chip.cli.main import main
from st2chip.converters.mlp import mlp_to_nir
from st2chip.graph.nirfile import write_nir


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def mlp_files(random_mlp, digit_spikes, tmp_path):
    path = write_nir(mlp_to_nir(random_mlp()), tmp_path / "mlp.nir")
    np.save(tmp_path / "x.npy", digit_spikes(6))
    return path, tmp_path / "x.npy"


@pytest.mark.parametrize("profile", ["45nm", "loihi", "loihi2"])
def test_energy_report_per_layer_and_core(mlp_files, tmp_path, capsys, profile):
    model, x = mlp_files
    out = tmp_path / "energy"
    code, stdout, err = _run(capsys, "--progress", "energy", model, "--profile", profile, "--inputs", x,
                             "--samples", 4, "--batch-size", 2, "-o", out)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["energy.json", "energy.md", "energy.png", "energy_cores.png"]
    data = json.loads((out / "energy.json").read_text())
    assert data["samples"] == 4 and data["profile"]["name"] == profile
    total = data["total"]["energy_pj"]["total"]
    assert sum(c["energy_pj"]["total"] for c in data["cores"]) == pytest.approx(total)
    assert sum(l["energy_pj"]["total"] for l in data["layers"]) == pytest.approx(total)
    assert data["total"]["energy_per_step_pj"] == pytest.approx(total / data["steps"])
    assert "per time step" in stdout and "Per core" in stdout
    assert "engine" in err  # --progress: the progress bar over batches, on stderr


def test_no_progress_bar_off_a_terminal(mlp_files, capsys):
    """stderr is not a terminal here: without --progress no bar is drawn (logs and pipes stay clean)."""
    model, x = mlp_files
    code, _, err = _run(capsys, "energy", model, "--inputs", x, "--samples", 4, "--batch-size", 2)
    assert code == 0 and err == ""


def test_loihi_prices_what_45nm_leaves_out(mlp_files, tmp_path, capsys):
    model, x = mlp_files
    reports = {}
    for profile in ("45nm", "loihi"):
        code, _, err = _run(capsys, "energy", model, "--profile", profile, "--inputs", x, "-o", tmp_path / profile)
        assert code == 0, err
        reports[profile] = json.loads((tmp_path / profile / "energy.json").read_text())["total"]
    assert reports["45nm"]["acs"] == reports["loihi"]["acs"] > 0
    assert reports["45nm"]["energy_pj"]["neuron"] == 0 < reports["loihi"]["energy_pj"]["neuron"]
    assert reports["loihi"]["energy_pj"]["static"] > 0


def test_profile_file_missing_a_figure_exits_2_naming_it(mlp_files, tmp_path, capsys):
    model, x = mlp_files
    bad = tmp_path / "mine.json"
    bad.write_text(json.dumps({"name": "mine", "source": "lab", "E_MAC_pJ": 4.6}))
    code, _, err = _run(capsys, "energy", model, "--profile", bad, "--inputs", x, "-o", tmp_path / "e")
    assert code == 2 and "E_AC_pJ" in err and "mine.json" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "e").exists()
    bad.write_text(json.dumps({"name": "mine", "source": "lab", "E_AC_pJ": 0.9, "E_MAC_pJ": 4.6, "E_AC_fJ": 1}))
    code, _, err = _run(capsys, "energy", model, "--profile", bad, "--inputs", x)
    assert code == 2 and "E_AC_fJ" in err and "unit" in err


def test_resources_choose_the_placement(mlp_files, tmp_path, capsys):
    model, x = mlp_files
    code, _, err = _run(capsys, "energy", model, "--profile", "loihi2", "--resources", "loihi1", "--inputs", x,
                        "-o", tmp_path / "e")
    assert code == 0, err
    assert "loihi1" in (tmp_path / "e" / "energy.md").read_text()
