"""st2chip.compare: one model on Loihi 2 and Xylo side by side; a target that does not fit is a row saying why."""

import json
import re

import numpy as np
import pytest
import torch

import st2chip
from st2chip.analysis.compare import write_compare_report
from st2chip.converters.mlp import mlp_to_nir
from st2chip.errors import InputError
from st2chip.learn.mlp import MLPConfig, SpikingMLP

STEPS = 8


def subtract_mlp(sizes: tuple[int, ...], seed: int = 0) -> SpikingMLP:
    """An untrained sLIF MLP that resets by subtraction, as Xylo does (seeded)."""
    torch.manual_seed(seed)
    model = SpikingMLP(MLPConfig(sizes=list(sizes), steps=STEPS, reset="subtract"))
    with torch.no_grad():
        for lin in model.linears:
            lin.weight.mul_(3.0)
    return model


@pytest.fixture
def small():
    """A 16-12-4 sLIF MLP (fits Xylo's 16 input channels) and 6 labelled samples of seeded random spikes."""
    graph = st2chip.load(mlp_to_nir(subtract_mlp((16, 12, 4))))
    rng = np.random.default_rng(0)
    return graph, (rng.random((6, STEPS, 16)) < 0.4).astype(np.uint8), rng.integers(0, 4, 6)


def test_one_row_per_target_with_accuracy_operations_energy_and_latency(small, tmp_path):
    graph, x, y = small
    report = st2chip.compare(graph, x, y, targets=["loihi2", "xylo-audio3"])
    loihi, xylo = report.targets
    assert [t.target for t in report.targets] == ["loihi2", "xylo-audio3"] and loihi.fits and xylo.fits
    assert 0 <= report.float_accuracy <= 1 and 0 <= loihi.chip_accuracy <= 1 and 0 <= xylo.chip_accuracy <= 1
    assert loihi.synaptic_ops > 0 and xylo.synaptic_ops > 0 and loihi.energy_pj > 0
    chip = st2chip.lower(graph, target="xylo-audio3")
    assert xylo.latency_steps == chip.latency and loihi.latency_steps == st2chip.lower(graph).depth
    # Xylo's energy: 291 uW (Xylo Audio 2's measured power, an estimate for Audio 3) over T + latency steps of dt
    assert xylo.energy_pj == pytest.approx(291.0 * (STEPS + chip.latency) * graph.metadata["dt"] * 1e6)
    assert any("estimate" in note for note in xylo.notes)

    paths = write_compare_report(report, tmp_path)
    assert {p.name for p in paths.values()} == {"compare.md", "compare.json", "compare.png"}
    data = json.loads(paths["json"].read_text())
    assert [t["target"] for t in data["targets"]] == ["loihi2", "xylo-audio3"]
    table = [line for line in paths["markdown"].read_text().splitlines() if line.startswith("| ")]
    assert len(table) == 1 + 2 and table[1].startswith("| loihi2") and table[2].startswith("| xylo-audio3")
    assert paths["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_target_that_does_not_fit_is_a_row_with_every_reason(random_mlp, digit_spikes, digits):
    """A 64-input digits MLP that resets to zero: Xylo has 16 input channels and subtracts, so its row gives both
    reasons; Loihi 2 still runs it."""
    graph = st2chip.load(mlp_to_nir(random_mlp(sizes=(64, 24, 10), steps=STEPS)))
    report = st2chip.compare(graph, digit_spikes(n=4, steps=STEPS), digits[1].y[:4],
                             targets=["xylo-audio3", "loihi2"])
    xylo, loihi = report.targets
    assert not xylo.fits and xylo.reasons and xylo.chip_accuracy is None and xylo.energy_pj is None
    assert any("64" in r and "16" in r for r in xylo.reasons), xylo.reasons
    assert any("reset" in r for r in xylo.reasons), xylo.reasons
    assert all("\n" not in r for r in xylo.reasons)
    assert loihi.fits and loihi.energy_pj > 0
    text = report.to_markdown()
    assert re.search(r"^\| xylo-audio3 \|\s+no \|", text, re.MULTILINE)
    assert "Why not:" in text and f"- xylo-audio3: {xylo.reasons[0]}" in text


def test_an_unknown_target_names_the_flag(small):
    graph, x, y = small
    with pytest.raises(InputError, match="--targets: unknown target 'spinnaker'"):
        st2chip.compare(graph, x, y, targets=["loihi2", "spinnaker"])
