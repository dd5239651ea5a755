"""The typed lowering report: its JSON form, and a population's own voltage unit."""

import numpy as np
import pytest

from st2chip.chip.chipgraph import ChipGraph, InputPort, Population, SynapseGroup
from st2chip.chip.lower import lower
from st2chip.chip.lowering.report import LayerReport, LowrankChoice
from st2chip.errors import ChipRangeError


def test_layer_report_to_dict_keeps_the_key_order_and_leaves_out_what_is_absent():
    report = LayerReport(kind="LIF", neurons=3, affines=1, source="input", chains=["Affine"], decay_groups=1,
                         leak_error=0.0, threshold_range=[1.0, 1.0], bias_error=0.0, voltage_unit={"n": 64.0},
                         weight_error=0.01, reset="subtract", headroom={"n": 32.0},
                         lowrank={"input": LowrankChoice("product", "not factorable: x")}, recurrent=["n"])
    assert list(report.to_dict()) == ["kind", "neurons", "affines", "source", "chains", "reset", "decay_groups",
                                      "leak_error", "threshold_range", "bias_error", "voltage_unit", "headroom",
                                      "lowrank", "recurrent", "weight_error"]
    assert report.to_dict()["lowrank"] == {"input": {"chosen": "product", "why": "not factorable: x"}}


def test_chip_report_is_the_typed_report_as_json(tiny):
    graph = tiny.chain([np.ones((3, 2)), np.ones((2, 3))], [tiny.lif([1.0, 2.0, 4.0]), tiny.li(2)])
    chip = lower(graph)
    assert chip.report == chip.lowering.to_dict() and list(chip.report["layers"]) == ["n1", "n2"]
    assert chip.layer_report("n1").voltage_unit == {"n1": chip.population("n1").voltage_unit}


def test_voltage_units_come_from_the_populations(tiny):
    graph = tiny.chain([np.ones((3, 2)), np.ones((2, 3))], [tiny.lif([1.0, 2.0, 4.0]), tiny.li(2)])
    chip = lower(graph, decay_groups=2)
    for layer in chip.layers():
        units = chip.voltage_units(layer)
        for pop in chip.layer_populations(layer):
            np.testing.assert_array_equal(units[pop.index], pop.voltage_unit)


def test_a_population_without_a_voltage_unit_is_an_error_naming_its_layer():
    """It used to read as 1.0: a readout compared with float at the wrong scale, silently."""
    pop = Population("p", "late", np.arange(2), du=0, dv=0, vth=10, bias_mant=0, bias_exp=0, readout=True)
    chip = ChipGraph([InputPort("in", 2)], [pop], [SynapseGroup("in->p", "in", "p", np.ones((2, 2), np.int64), 0)])
    with pytest.raises(ChipRangeError, match="layer 'late': population 'p' has no field 'voltage_unit'"):
        chip.voltage_units("late")
    with pytest.raises(ChipRangeError, match="field 'voltage_unit' must be positive"):
        Population("q", "late", np.arange(2), du=0, dv=0, vth=10, bias_mant=0, bias_exp=0, voltage_unit=0.0)
