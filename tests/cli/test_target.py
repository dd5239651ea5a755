"""``--target loihi2|xylo-audio2|xylo-audio3|xylo-imu`` on map, simulate, verify and energy: Xylo's design rules
and per-layer table, the engine checked against xylosim on named samples, the Loihi path as it was, and the old
``--target lava-sim|loihi2-hw`` (now ``--lava-target``) refused in one line."""

import json

import pytest
import torch

from st2chip.cli.main import main
from st2chip.converters.mlp import mlp_to_nir
from st2chip.graph.nirfile import write_nir
from st2chip.learn.mlp import MLPConfig, SpikingMLP


@pytest.fixture(scope="module")
def mnist1d_nir(mnist1d_mlp):
    """The shared MNIST-1D MLP trained by st2chip (tests/cli/conftest.py)."""
    return mnist1d_mlp / "m.nir"


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_map_xylo_prints_the_table_and_the_chip_use(mnist1d_nir, tmp_path, capsys):
    report = tmp_path / "map.json"
    code, out, err = _run(capsys, "map", mnist1d_nir, "--target", "xylo-audio3", "--json", report)
    assert code == 0, err
    header, *rows = out.splitlines()
    assert header.split() == ["layer", "neurons", "slice", "depth", "dash_syn", "dash_mem", "leak-err", "w-err",
                              "%", "shift", "vth"]
    assert rows[0].split()[:5] == ["lif1", "24", "hid", "0:24", "0"]
    assert rows[1].split()[:5] == ["readout", "10", "out", "0:10", "1"]
    assert ("xylo-audio3: inputs 16/16, hidden neurons 24/992, output neurons 10/32; outputs lag inputs by 1 step; "
            "design rules passed") in out
    data = json.loads(report.read_text())
    assert data["use"] == {"chip": "xylo-audio3", "latency": 1, "inputs": [16, 16], "hidden": [24, 992],
                           "outputs": [10, 32]}
    assert [r["layer"] for r in data["layers"]] == ["lif1", "readout"] and "lif1" in data["report"]


def test_a_model_too_big_for_xylo_gets_every_broken_rule_in_one_line(tmp_path, capsys):
    torch.manual_seed(0)
    big = write_nir(mlp_to_nir(SpikingMLP(MLPConfig(sizes=[16, 1200, 40], steps=4))), tmp_path / "big.nir")
    code, out, err = _run(capsys, "map", big, "--target", "xylo-audio3")
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("st2chip: error: ")
    assert "does not fit xylo-audio3: 5 design rules broken" in lines[0]
    for rule in ("[hidden] layer 'lif1': 1200 hidden neurons", "xylo-audio3 holds 992",
                 "[outputs] layer 'readout': 40 output neurons", "xylo-audio3 holds 32",
                 "[input-expansion] layer 'lif1'", "[output-expansion] layer 'lif1'", "[reset] layer 'lif1'"):
        assert rule in lines[0]
    assert "Traceback" not in err


def test_verify_xylo_checks_the_engine_against_xylosim_on_named_samples(mnist1d_nir, tmp_path, capsys):
    report = tmp_path / "verify.json"
    code, out, err = _run(capsys, "verify", mnist1d_nir, "--target", "xylo-audio3", "--samples", "12",
                          "--xylosim-samples", "5", "--min-agreement", "0", "--max-drop", "100", "--json", report)
    assert code == 0, out + err
    assert "target: xylo-audio3" in out
    assert "engine vs xylosim: equal on samples 0-4 (5 samples)" in out
    assert "check ok     engine = xylosim: spikes, membranes and currents identical" in out
    assert "accuracy[float]" in out and "accuracy[engine]" in out and "accuracy[xylosim (first 5)]" in out
    data = json.loads(report.read_text())
    assert data["target"] == "xylo-audio3" and data["passed"] is True
    assert data["xylosim"]["samples"] == [0, 1, 2, 3, 4] and data["xylosim"]["exact"] is True


def test_verify_xylo_fails_a_check_as_loihi_does(mnist1d_nir, capsys):
    code, out, err = _run(capsys, "verify", mnist1d_nir, "--target", "xylo-audio3", "--samples", "8",
                          "--xylosim-samples", "2", "--min-agreement", "100.1")
    assert code == 1 and "check FAILED spike agreement float vs engine" in out
    assert "verification failed: spike agreement" in err


def test_simulate_xylo_on_the_engine_and_on_xylosim(mnist1d_nir, capsys):
    results = []
    for backend in ("engine", "xylosim"):
        code, out, err = _run(capsys, "simulate", mnist1d_nir, "--target", "xylo-audio3", "--samples", "4",
                              "--backend", backend)
        assert code == 0, err
        results.append(out.splitlines()[-1].split(": ", 1)[1])
    assert results[0] == results[1] and results[0].startswith("accuracy ") and "on 4 samples" in results[0]


@pytest.mark.parametrize("argv, message", [
    (["simulate", "--target", "xylo-audio3", "--backend", "lava"], "--backend lava does not run --target xylo-audio3"),
    (["simulate", "--backend", "xylosim"], "--backend xylosim does not run --target loihi2"),
    (["map", "--target", "xylo-audio3", "--decay-groups", "2"], "--decay-groups applies to --target loihi2"),
    (["map", "--target", "xylo-audio3", "--cores"], "--cores applies to --target loihi2"),
    (["verify", "--target", "xylo-audio3", "--lava-mode", "whole"], "--lava-mode applies to --target loihi2"),
    (["simulate", "--target", "xylo-audio2", "--ray"], "--ray applies to --target loihi2"),
    (["verify", "--target", "xylo-imu", "--backends", "float,lava"], "--backends lava does not run --target xylo-imu"),
    (["map", "--target", "loihi3"], "--target loihi3: not a chip st2chip targets; choose one of loihi2, "
                                    "xylo-audio2, xylo-audio3, xylo-imu"),
])
def test_a_flag_of_the_other_family_is_one_line_exit_2(mnist1d_nir, capsys, argv, message):
    code, out, err = _run(capsys, argv[0], mnist1d_nir, *argv[1:])
    assert code == 2 and err.strip().splitlines() == [f"st2chip: error: {err.strip()[len('st2chip: error: '):]}"]
    assert message in err


@pytest.mark.parametrize("command", ["map", "simulate", "verify", "energy"])
@pytest.mark.parametrize("old", ["lava-sim", "loihi2-hw"])
def test_the_old_lava_target_values_point_at_the_renamed_flag(mnist1d_nir, capsys, command, old):
    code, out, err = _run(capsys, command, mnist1d_nir, "--target", old)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"st2chip: error: --target {old}: not a chip")
    assert "--lava-target" in lines[0]


def test_energy_xylo_counts_the_engine_run(mnist1d_nir, tmp_path, capsys):
    code, out, err = _run(capsys, "energy", mnist1d_nir, "--target", "xylo-audio3", "--samples", "3",
                          "-o", tmp_path / "e")
    assert code == 0, err
    assert "Xylo operations per sample" in out and "lif1" in out and "readout" in out
    assert json.loads((tmp_path / "e" / "energy.json").read_text())["samples"] == 3


def test_the_loihi_path_is_the_default_and_unchanged(random_mlp, tmp_path, capsys):
    model = write_nir(mlp_to_nir(random_mlp()), tmp_path / "m.nir")
    outputs = [_run(capsys, *argv) for argv in (["map", model], ["map", model, "--target", "loihi2"],
                                                ["verify", model, "--samples", "3", "--backends", "float,reference"],
                                                ["verify", model, "--samples", "3", "--backends", "float,reference",
                                                 "--target", "loihi2"])]
    assert outputs[0] == outputs[1] and outputs[0][0] == 0 and "populations" in outputs[0][1]
    assert outputs[2] == outputs[3] and "target:" not in outputs[2][1]
