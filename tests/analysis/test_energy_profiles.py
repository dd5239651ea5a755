"""Energy profiles are data with sources: bundled ones say where each figure comes from; user files are validated."""

from __future__ import annotations

import json

import pytest

from st2chip.analysis.energy import FIGURES, available_profiles, load_profile
from st2chip.cli.main import main
from st2chip.errors import InputError

GOOD = {"name": "mine", "source": "my lab", "E_AC_pJ": 1.0, "E_MAC_pJ": 2.0}


@pytest.mark.parametrize("name", ["45nm", "loihi", "loihi2"])
def test_every_bundled_figure_has_a_status_and_a_source(name):
    prof = load_profile(name)
    assert set(prof.sources) == set(prof.figures) and prof.figures
    assert all(entry["status"] in ("published", "estimate") and entry["source"] for entry in prof.sources.values())


def test_loihi_figures_are_davies_table_2_and_loihi2_says_they_are_estimates():
    loihi, loihi2 = load_profile("loihi"), load_profile("loihi2")
    assert (loihi.e_ac_pj, loihi.e_neuron_update_pj, loihi.e_spike_local_pj) == (23.6, 52.0, 1.7)
    assert loihi.resources == "loihi1" and loihi2.resources == "loihi2"
    assert loihi.sources["E_AC_pJ"]["status"] == "published" and "Table 2" in loihi.sources["E_AC_pJ"]["source"]
    assert (loihi.e_hop_x_pj, loihi.e_hop_y_pj) == (3.0, 4.0)  # Table 2: energy per tile hop, E-W / N-S
    assert loihi.sources["E_HOP_Y_pJ"]["status"] == "published" and "Table 2" in loihi.sources["E_HOP_Y_pJ"]["source"]
    assert loihi.sources["E_CHIP_LINK_pJ"]["status"] == "estimate" and loihi.e_chip_link_pj > loihi.e_hop_y_pj
    assert {e["status"] for e in loihi2.sources.values()} == {"estimate"}
    assert {"45nm", "loihi", "loihi2"} <= set(available_profiles())


def test_a_good_user_profile_loads(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(GOOD | {"E_SPIKE_CORE_pJ": 3, "sources": {"E_AC_pJ": {"status": "estimate",
                                                                                     "source": "guess"}}}))
    prof = load_profile(path)
    assert (prof.e_ac_pj, prof.e_spike_core_pj, prof.e_spike_local_pj) == (1.0, 3.0, 0.0)
    assert prof.figures == ("E_AC_pJ", "E_MAC_pJ", "E_SPIKE_CORE_pJ")


@pytest.mark.parametrize("change, needle", [
    (lambda d: d.pop("E_AC_pJ"), "missing key 'E_AC_pJ'"),
    (lambda d: d.update(E_MAC_pJ=-4.6), "key 'E_MAC_pJ' must be a finite non-negative number"),
    (lambda d: d.update(E_AC_pJ=float("nan")), "key 'E_AC_pJ' must be a finite"),
    (lambda d: d.update(E_AC_pJ=float("inf")), "key 'E_AC_pJ' must be a finite"),
    (lambda d: d.update(E_NEURON_UPDATE_pJ=True), "key 'E_NEURON_UPDATE_pJ'"),
    (lambda d: d.update(E_SPIKE_LOCAL_nJ=1), "key 'E_SPIKE_LOCAL_nJ': unknown unit 'nJ'"),
    (lambda d: d.update(E_WIRE_pJ=1), "unknown key 'E_WIRE_pJ'"),
    (lambda d: d.update(T_STEP_us=5), "missing key 'P_STATIC_CORE_mW'"),
    (lambda d: d.update(sources={"E_AC_pJ": {"status": "rumour", "source": "x"}}), "key 'sources.E_AC_pJ'"),
    (lambda d: d.update(sources={"E_NEURON_UPDATE_pJ": {"status": "published", "source": "x"}}),
     "key 'sources.E_NEURON_UPDATE_pJ' names no figure"),
    (lambda d: d.update(resources=3), "key 'resources' must be a string"),
    (lambda d: d.update(resources="/etc/passwd"), "key 'resources' must name a resource model built into st2chip"),
    (lambda d: d.update(sources={"E_AC_pJ": {"status": "estimate", "source": ["x", ["y"]]}}),
     "JSON nested 5 levels deep; a profile nests at most 3"),
])
def test_bad_user_profile_names_the_field(tmp_path, change, needle):
    data = dict(GOOD)
    change(data)
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InputError) as err:
        load_profile(path)
    assert "mine.json" in str(err.value) and needle in str(err.value)


def test_figure_keys_carry_their_unit():
    assert all(key.rsplit("_", 1)[1] in ("pJ", "mW", "us") for key in FIGURES)


@pytest.mark.parametrize("text", [
    "[" * 100_000 + "]" * 100_000,
    '{"name": ' + '{"a": ' * 50_000 + "1" + "}" * 50_001,
    '{"name": "' + "[" * 100_000 + '", "source": "x", "E_AC_pJ": 1, "E_MAC_pJ": 2, "description": "{{{{"}',
], ids=["arrays", "objects", "brackets-in-strings"])
def test_deeply_nested_json_is_one_line_not_a_recursion_error(tmp_path, capsys, text):
    """json.loads recurses once per level: 100,000 levels raised RecursionError (a traceback) before."""
    path = tmp_path / "deep.json"
    path.write_text(text)
    if text.startswith('{"name": "'):  # brackets inside strings are not nesting: this profile is fine
        assert load_profile(path).name.startswith("[[[")
        return
    with pytest.raises(InputError, match=r"deep.json': JSON nested \d+ levels deep; a profile nests at most 3"):
        load_profile(path)
    model = tmp_path / "missing.nir"  # the profile is read before the model
    assert main(["energy", str(model), "--profile", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"st2chip: error: profile file '{path}': JSON nested") and err.count("\n") == 1, err
    assert "Traceback" not in err and "RecursionError" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep.json"]
