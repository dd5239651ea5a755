"""The Python API (``import st2chip``): the CLI's stages as functions, with the CLI's defaults."""

import json

import numpy as np
import pytest
import torch

import st2chip
from st2chip import defaults
from st2chip.converters.mlp import mlp_to_nir
from st2chip.errors import InputError
from st2chip.graph.nirfile import write_nir


@pytest.fixture
def model_file(tmp_path, random_mlp):
    return write_nir(mlp_to_nir(random_mlp()), tmp_path / "m.nir")


def test_exports_are_the_api():
    assert set(st2chip.__all__) >= {"load", "lower", "place", "run", "simulate", "verify", "energy", "import_model"}
    assert st2chip.lower is st2chip.api.lower
    with pytest.raises(AttributeError):
        st2chip.nothing_here  # noqa: B018


def test_lower_uses_the_cli_defaults(model_file):
    """st2chip.lower(g) is what `st2chip map` lowers: K = 4 decay groups, not the lowering's own 1."""
    graph = st2chip.load(model_file)
    chip = st2chip.lower(graph)
    assert 1 < len(chip.layer_populations("lif1")) <= defaults.DEFAULT_DECAY_GROUPS  # spread-out leaks
    one = st2chip.lower(model_file, decay_groups=1)
    assert len(one.layer_populations("lif1")) == 1


def test_engine_and_lava_give_identical_spikes(model_file, digit_spikes):
    chip = st2chip.lower(st2chip.load(model_file))
    x = torch.as_tensor(digit_spikes(n=3, steps=8))
    engine = st2chip.run(chip, x, backend="engine")
    lava = st2chip.run(chip, x.numpy(), backend="lava")
    assert set(engine.spikes) == set(lava.spikes) and engine.spikes
    for layer in engine.spikes:
        np.testing.assert_array_equal(engine.spikes[layer], lava.spikes[layer])
        np.testing.assert_array_equal(engine.voltages[layer], lava.voltages[layer])


def test_verify_and_energy_reports(model_file, digit_spikes):
    graph = st2chip.load(model_file)
    x = digit_spikes(n=4, steps=8)
    report = st2chip.verify(graph, x, labels=np.array([0, 1, 2, 3]), lava_samples=2)
    assert isinstance(report.passed, bool)
    names = [c.name for c in report.checks]
    assert "reference = lava (first 2 samples)" in names and report.chip_exact
    json.dumps(report.to_dict())
    chip = st2chip.lower(graph)
    energy = st2chip.energy(chip, x)
    data = energy.to_dict()
    json.dumps(data)
    assert energy.total_pj > 0


def test_verify_checks_lava_layer_by_layer_by_default_or_as_one_network(model_file, digit_spikes):
    """Default: each population alone on Lava, within a bounded number of processes per run; whole: one run."""
    graph = st2chip.load(model_file)
    x = digit_spikes(n=3, steps=6)
    layers = st2chip.verify(graph, x, backends=("reference", "lava"), lava_samples=2)
    whole = st2chip.verify(graph, x, backends=("reference", "lava"), lava_samples=2, lava_mode="whole")
    (a,), (b,) = layers.comparisons, whole.comparisons
    assert a.exact and b.exact and a.lava.mode == "layers" and b.lava.mode == "whole"
    assert a.lava.populations == len(st2chip.lower(graph).populations)
    assert a.lava.max_processes <= defaults.LAVA_PROCESSES
    assert "lava mode: layers (each of" in layers.to_text() and "lava mode: whole" in whole.to_text()
    assert json.loads(json.dumps(layers.to_dict()))["comparisons"][0]["lava"]["mode"] == "layers"
    with pytest.raises(InputError, match="--lava-mode: expected layers or whole, got 'parts'"):
        st2chip.verify(graph, x, lava_mode="parts")


def test_simulate_is_the_float_interpreter(model_file, digit_spikes):
    traces = st2chip.simulate(st2chip.load(model_file), digit_spikes(n=2, steps=8))
    assert traces.backend == "float" and traces.scores.shape == (2, 10)


def test_bad_inputs_name_what_is_wrong(model_file):
    chip = st2chip.lower(model_file)
    with pytest.raises(InputError, match=r"input 'input'.*shape \(2, 8\)"):
        st2chip.run(chip, np.zeros((2, 8)))
    with pytest.raises(InputError, match="spikes \\(0 or 1\\).*is 2"):
        st2chip.run(chip, np.full((1, 4, 64), 2))
    with pytest.raises(InputError, match="missing input.*unknown x"):
        st2chip.run(chip, {"x": np.zeros((1, 4, 64))})
    with pytest.raises(InputError, match="simulate"):
        st2chip.run(chip, np.zeros((1, 4, 64)), backend="float")


def test_quantize_and_export(tmp_path, random_mlp):
    """st2chip.quantize fine-tunes with the chip in the loop; the export records K and maps to K populations."""
    from st2chip.learn.checkpoint import save_checkpoint
    model = random_mlp(sizes=(64, 16, 10), steps=4)
    save_checkpoint(model, "mlp", model.config.to_dict(), tmp_path / "m.pt", {"data": "digits"})
    summary = st2chip.quantize(tmp_path / "m.pt", tmp_path / "q.pt", decay_groups=2, epochs=1, device="cpu")
    assert summary["kind"] == "mlp" and summary["chip_aware"]["decay_groups"] == 2
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    path = st2chip.export(tmp_path / "q.pt", tmp_path / "q.nir")
    graph = st2chip.load(path)
    assert graph.metadata["decay_groups"] == 2
    assert all(len(st2chip.lower(graph).layer_populations(layer)) <= 2 for layer in ("lif1", "lif2"))
    with pytest.raises(InputError, match="same file as the input"):
        st2chip.export(tmp_path / "q.pt", tmp_path / "q.pt")
