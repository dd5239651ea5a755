"""Xylo's operation count equals a hand count on a tiny graph; its energy profiles carry their sources."""

import json

import numpy as np
import pytest

from st2chip.analysis.energy import load_profile
from st2chip.errors import InputError
from st2chip.analysis.xylo_energy import has_profile, load_xylo_profile, xylo_energy
from st2chip.xylo.xylograph import XyloGraph, XyloLayer, XyloNeurons, XyloRun


def _neurons(n: int) -> XyloNeurons:
    return XyloNeurons(dash_syn=[1] * n, dash_mem=[2] * n, threshold=[10] * n, bias=[0] * n)


def _graph() -> XyloGraph:
    """2 inputs -> h1 (hidden 0, 1) -> h2 (hidden 2) -> 2 outputs."""
    w_in = np.array([[1, 0, 0], [3, -2, 0]])        # channel 0 -> 1 synapse into h1, channel 1 -> 2
    w_rec = np.zeros((3, 3), int)
    w_rec[0, 2], w_rec[1, 2] = 5, -1                 # h1 -> h2: one weight per source
    w_rec[2, 0] = 7                                  # h2 -> h1 (a recurrent weight): one
    w_out = np.array([[0, 0], [0, 0], [4, 9]])       # h2 -> outputs: two weights
    layers = [XyloLayer("h1", 0, 2, 0), XyloLayer("h2", 2, 3, 1), XyloLayer("out", 0, 2, 2, output=True)]
    return XyloGraph(w_in=w_in, w_rec=w_rec, w_out=w_out, shift_in=0, shift_rec=0, shift_out=0,
                     hidden=_neurons(3), outputs=_neurons(2), layers=layers)


def _run() -> tuple[XyloRun, np.ndarray]:
    """2 samples x 3 chip steps."""
    hidden = np.zeros((2, 3, 3), int)
    hidden[0, 0, 0] = 2      # h1 neuron 0, step 0: 2 spikes, delivered at step 1
    hidden[0, 1, 2] = 1      # h2, step 1: delivered at step 2
    hidden[1, 2, 1] = 4      # last step: never delivered
    hidden[1, 0, 2] = 3      # h2, step 0: delivered
    out = np.zeros((2, 3, 2), int)
    out[0, 2, 1] = 1
    counts = np.zeros((2, 3, 2), int)
    counts[0, 0, 0] = 20     # clipped to 15 on the chip
    counts[1, 1, 1] = 2
    return XyloRun(hidden_spikes=hidden, output_spikes=out), counts


def test_synaptic_ops_per_layer_equal_a_hand_count() -> None:
    run, counts = _run()
    report = xylo_energy(_graph(), run, "xylo-audio3", dt=1e-3, counts=counts)
    ops = {r.layer: r.synaptic_ops for r in report.layers}
    # h1: inputs 15 x 1 (channel 0, 20 clipped to 15) + 2 x 2 (channel 1); h2 -> h1: (1 + 3) spikes x 1 weight
    # h2: h1 neuron 0, 2 spikes x 1 weight (h1 neuron 1's 4 spikes are at the last step: never delivered)
    # out: h2 spikes delivered 1 (sample 0) + 3 (sample 1), x 2 weights
    assert ops == {"h1": (15 + 4 + 4) / 2, "h2": 2 / 2, "out": (1 + 3) * 2 / 2}
    assert [r.neuron_updates for r in report.layers] == [2 * 3, 1 * 3, 2 * 3]
    assert [r.spikes for r in report.layers] == [(2 + 4) / 2, (1 + 3) / 2, 1 / 2]
    assert [r.synapses for r in report.layers] == [1 + 2 + 1, 2, 2]
    assert report.synaptic_ops == (23 + 2 + 8) / 2


def test_energy_is_the_profiles_power_over_the_run() -> None:
    run, counts = _run()
    report = xylo_energy(_graph(), run, "xylo-audio3", dt=1e-3, counts=counts)
    assert report.energy_per_step_pj == pytest.approx(291.0 * 1e-3 * 1e6)  # 291 uW x 1 ms = 291 nJ
    assert report.total_pj == pytest.approx(3 * 291e3)
    assert report.to_dict()["total"]["energy_per_inference_pj"] == pytest.approx(3 * 291e3)
    assert "291 uW x 3 steps" in report.to_markdown() and "estimate" in report.to_markdown()


def test_without_input_counts_the_report_says_inputs_were_not_counted() -> None:
    run, _ = _run()
    report = xylo_energy(_graph(), run, "xylo-audio2", dt=1e-3)
    assert report.layers[0].synaptic_ops == 4 / 2
    assert any("input synaptic operations not counted" in line for line in report.notes())


def test_a_missing_time_step_names_the_flag() -> None:
    run, _ = _run()
    with pytest.raises(InputError, match="--dt"):
        xylo_energy(_graph(), run, "xylo-audio3", dt=0.0)


def test_profiles_carry_their_sources_and_audio3_says_it_is_an_estimate() -> None:
    audio2, audio3 = load_xylo_profile("xylo-audio2"), load_xylo_profile("xylo-audio3")
    assert audio2.p_run_uw == audio3.p_run_uw == 291.0
    assert audio2.sources["P_RUN_uW"]["status"] == "published" and "arXiv:2406.15112" in audio2.source
    assert audio3.uncertain() == ["P_RUN_uW"] and "proxy" in audio3.source
    assert "6.6 uJ" in audio2.sources["P_RUN_uW"]["source"]
    assert not has_profile("xylo-imu")  # nothing published found: no profile, no number


def test_a_loihi_profile_is_not_a_xylo_profile_and_bad_files_name_the_key(tmp_path) -> None:
    with pytest.raises(InputError, match="not a Xylo energy profile"):
        load_xylo_profile("loihi2")
    assert load_profile("loihi2").e_ac_pj == 23.6
    good = {"name": "mine", "chip": "xylo-audio3", "source": "lab", "P_RUN_uW": 100,
            "sources": {"P_RUN_uW": {"status": "estimate", "source": "guess"}}}
    for change, needle in [({"P_RUN_uW": -1}, "'P_RUN_uW' must be a finite"), ({"chip": "loihi2"}, "'chip'"),
                           ({"E_AC_pJ": 1}, "unknown key 'E_AC_pJ'"), ({"sources": {}}, "'sources'")]:
        path = tmp_path / "mine.json"
        path.write_text(json.dumps(good | change))
        with pytest.raises(InputError, match=needle):
            load_xylo_profile(path)
    path.write_text(json.dumps(good))
    assert load_xylo_profile(path).p_run_uw == 100.0


def test_a_xylo_profile_given_to_a_loihi_run_and_a_xylo_chip_without_one_say_what_to_do() -> None:
    with pytest.raises(InputError, match="a Xylo energy profile; it prices a Xylo run: --target xylo-audio3"):
        load_profile("xylo-audio3")
    with pytest.raises(InputError, match="no energy figure for xylo-imu .*--profile FILE.json"):
        load_xylo_profile("xylo-imu")
