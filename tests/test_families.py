"""The registry of chip targets: one record per chip, Loihi 2 wrapping the existing lowering unchanged."""

import pickle

import numpy as np
import pytest

import st2chip
from st2chip import defaults, families
from st2chip.chip.chipgraph import ChipGraph
from st2chip.chip.lower import lower as lower_loihi
from st2chip.converters.mlp import mlp_to_nir
from st2chip.errors import InputError
from st2chip.xylo.spec import XYLO_TARGETS
from st2chip.xylo.xylograph import XyloGraph, XyloLayer, XyloNeurons


def test_every_chip_is_an_entry_with_its_files():
    assert list(families.TARGETS) == ["loihi2", *XYLO_TARGETS]
    assert families.TARGETS[defaults.TARGET].family == "loihi"
    for target in families.TARGETS.values():
        assert target.resources.is_file(), target.name
        assert target.oracle and target.profile
    assert {families.TARGETS[n].oracle for n in XYLO_TARGETS} == {"xylosim"}
    assert families.TARGETS["xylo-audio3"].profile == "xylo-audio3"


def test_loihi2_lowers_exactly_as_before(random_mlp):
    graph = mlp_to_nir(random_mlp())
    chip = st2chip.lower(graph, target="loihi2")
    assert isinstance(chip, ChipGraph)
    before = lower_loihi(graph, decay_groups=defaults.DEFAULT_DECAY_GROUPS)
    assert pickle.dumps(chip) == pickle.dumps(before)  # the same ChipGraph, field for field
    assert families.target_of(chip).name == "loihi2"


@pytest.mark.parametrize("name, flag", [("lava-sim", "--lava-target"), ("loihi2-hw", "--lava-target"),
                                        ("loihi3", "xylo-imu")])
def test_an_unknown_target_names_the_choices(name, flag):
    with pytest.raises(InputError, match=f"--target {name}: .*{flag}"):
        families.get_target(name)


@pytest.mark.parametrize("option, value, flag", [("decay_groups", 2, "--decay-groups"),
                                                 ("precision", "16", "--precision"),
                                                 ("resources", "loihi1", "--resources")])
def test_a_xylo_target_refuses_loihi_options_by_flag(random_mlp, option, value, flag):
    graph = mlp_to_nir(random_mlp())
    with pytest.raises(InputError, match=f"^{flag} applies to --target loihi2, not to --target xylo-audio3$"):
        families.lower(graph, "xylo-audio3", **{option: value})


def _xylo() -> XyloGraph:
    n = XyloNeurons(dash_syn=[1, 1], dash_mem=[2, 2], threshold=[4, 4], bias=[0, 0])
    return XyloGraph(w_in=np.full((2, 2), 10), w_rec=np.zeros((2, 2), int), w_out=np.eye(2, dtype=int) * 20,
                     shift_in=0, shift_rec=0, shift_out=0, hidden=n, outputs=n,
                     layers=[XyloLayer("h", 0, 2, 0), XyloLayer("out", 0, 2, 1, output=True)], input_names=["input"])


def test_a_xylo_graph_runs_on_its_own_engine_through_the_api():
    graph = _xylo()
    assert families.target_of(graph).family == "xylo"
    traces = st2chip.run(graph, np.ones((3, 5, 2), np.uint8))
    assert traces.spikes["h"].shape == (3, 5, 2) and traces.spikes["out"].shape == (3, 5, 2)
    assert traces.scores.shape == (3, 2)
    with pytest.raises(InputError, match="run: expected a chip IR"):
        families.target_of(object())
