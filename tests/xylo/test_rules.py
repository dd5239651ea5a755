"""Xylo's design rules: each failing case names its rule and layer; a model too big gets every rule in one error."""

import nir
import numpy as np
import pytest

import st2chip
from st2chip.errors import St2chipError
from st2chip.xylo.lower import lower_xylo
from st2chip.xylo.rules import DesignRuleError, Violation, check_rules
from st2chip.xylo.spec import load_spec

DT = 1e-3


def _lif(n, theta=1.0, reset="subtract", **meta):
    beta = np.full(n, 0.75)
    return nir.LIF(tau=DT / (1 - beta), r=1 / (1 - beta), v_leak=np.zeros(n), v_threshold=np.full(n, float(theta)),
                   v_reset=np.zeros(n), metadata={"reset": reset, **meta})


def _affine(rng, n_out, n_in, scale=0.5):
    return nir.Affine(weight=rng.normal(0, scale, (n_out, n_in)), bias=np.zeros(n_out))


def _mlp(sizes=(3, 5, 2), seed=0, reset="subtract"):
    """Nodes and edges of Input -> (Affine -> LIF)* -> Affine -> I -> Output, layers lif1, lif2, ..."""
    rng = np.random.default_rng(seed)
    nodes = {"input": nir.Input(input_type={"input": np.array([sizes[0]])})}
    edges, prev = [], "input"
    for k, (a, b) in enumerate(zip(sizes[:-2], sizes[1:-1]), start=1):
        nodes[f"fc{k}"], nodes[f"lif{k}"] = _affine(rng, b, a), _lif(b, reset=reset)
        edges += [(prev, f"fc{k}"), (f"fc{k}", f"lif{k}")]
        prev = f"lif{k}"
    nodes["fc_out"] = _affine(rng, sizes[-1], sizes[-2])
    nodes["readout"] = nir.I(r=np.full(sizes[-1], 1 / DT))
    nodes["output"] = nir.Output(output_type={"output": np.array([sizes[-1]])})
    edges += [(prev, "fc_out"), ("fc_out", "readout"), ("readout", "output")]
    return nodes, edges


def _load(nodes, edges):
    return st2chip.load(nir.NIRGraph(nodes=nodes, edges=edges, metadata={"dt": DT, "steps": 20}, type_check=False))


def _rules(nodes, edges, chip="xylo-audio3") -> list[tuple[str, str | None]]:
    return [(v.rule, v.layer) for v in check_rules(_load(nodes, edges), load_spec(chip))]


def test_the_base_mlp_fits() -> None:
    assert _rules(*_mlp()) == []


def test_a_model_too_big_gets_every_broken_rule_in_one_error() -> None:
    nodes, edges = _mlp((20, 1100, 40), reset="zero")
    nodes["delay"] = nir.Delay(delay=np.full(20, 2 * DT))
    nodes["fc_delayed"] = _affine(np.random.default_rng(1), 1100, 20)
    edges += [("input", "delay"), ("delay", "fc_delayed"), ("fc_delayed", "lif1")]
    with pytest.raises(DesignRuleError) as caught:
        lower_xylo(_load(nodes, edges), load_spec("xylo-audio3"))
    err = caught.value
    assert isinstance(err, St2chipError) and err.exit_code == 2
    assert sorted((v.rule, v.layer) for v in err.violations) == sorted([
        ("delay", "delay"), ("inputs", "input"), ("hidden", "lif1"), ("outputs", "readout"),
        ("input-expansion", "lif1"), ("output-expansion", "lif1"), ("reset", "lif1")])
    text = str(err)
    assert "\n" not in text and text.startswith("does not fit xylo-audio3: 7 design rules broken")
    for part in ("20 input channels, xylo-audio3 has 16", "1100 hidden neurons", "40 output neurons",
                 "layer 'delay'", "st2chip train --reset subtract", "st2chip train --hidden N"):
        assert part in text
    assert text.index("to fit:") > text.index("[reset]")


def _variant(change):
    nodes, edges = _mlp((3, 5, 4, 2))
    change(nodes, edges)
    return nodes, edges


def _recurrent_readout(nodes, edges):
    nodes["readout"] = _lif(2)
    nodes["rec_out"] = _affine(np.random.default_rng(2), 2, 2)
    edges += [("readout", "rec_out"), ("rec_out", "readout")]


def _skip(nodes, edges):
    nodes["fc_skip"] = _affine(np.random.default_rng(3), 4, 3)
    edges += [("input", "fc_skip"), ("fc_skip", "lif2")]


def _feedback(nodes, edges):
    nodes["fc_back"] = _affine(np.random.default_rng(4), 5, 4)
    edges += [("lif2", "fc_back"), ("fc_back", "lif1")]


def _delay(nodes, edges):
    nodes["delay"] = nir.Delay(delay=np.full(3, DT))
    edges.remove(("input", "fc1"))
    edges += [("input", "delay"), ("delay", "fc1")]


def _no_hidden(nodes, edges):
    for name in ("fc1", "lif1", "fc2", "lif2"):
        del nodes[name]
    nodes["fc_out"] = _affine(np.random.default_rng(5), 2, 3)
    edges[:] = [("input", "fc_out"), ("fc_out", "readout"), ("readout", "output")]


def _set(name, node):
    return lambda nodes, edges: nodes.__setitem__(name, node)


@pytest.mark.parametrize("change, rule, layer", [
    (_set("lif1", _lif(5, reset="zero")), "reset", "lif1"),
    (_set("lif2", _lif(4, refractory=1)), "refractory", "lif2"),
    (_delay, "delay", "delay"),
    (_recurrent_readout, "output-recurrent", "readout"),
    (_skip, "depth", "lif2"),
    (_feedback, "depth", "lif1"),
    (_set("lif1", nir.LI(tau=np.full(5, 4 * DT), r=np.ones(5), v_leak=np.zeros(5))), "graded-hidden", "lif1"),
    (_no_hidden, "output-source", "readout"),
    (_set("lif1", _lif(5, theta=1e4)), "weights", "lif1"),
    (_set("lif2", _lif(4, theta=-0.5)), "threshold", "lif2"),
    (_set("lif2", _lif(4, max_spikes=32)), "max-spikes", "lif2"),
    (_set("readout", _lif(2, max_spikes=2)), "max-spikes", "readout"),
])
def test_each_small_failing_case_names_its_rule_and_layer(change, rule, layer) -> None:
    assert _rules(*_variant(change)) == [(rule, layer)]


@pytest.mark.parametrize("sizes, chip, rule, layer", [
    ((17, 5, 2), "xylo-audio3", "inputs", "input"),
    ((3, 5, 10), "xylo-audio2", "outputs", "readout"),
    ((3, 1001, 2), "xylo-audio2", "hidden", "lif1"),
    ((3, 200, 50, 2), "xylo-imu", "input-expansion", "lif1"),
    ((3, 50, 200, 2), "xylo-imu", "output-expansion", "lif2"),
])
def test_each_chip_limit_names_the_layer_over_it(sizes, chip, rule, layer) -> None:
    assert _rules(*_mlp(sizes), chip=chip) == [(rule, layer)]


def test_xylo_audio2_publishes_no_expansion_limit() -> None:
    assert _rules(*_mlp((3, 200, 50, 2)), chip="xylo-audio2") == []


def test_an_input_of_more_than_15_levels_per_step_breaks_a_rule() -> None:
    nodes, edges = _mlp()
    nodes["input"] = nir.Input(input_type={"input": np.array([3])}, metadata={"levels": 255})
    assert _rules(nodes, edges) == [("input-levels", "input")]


def test_a_violation_reads_as_rule_layer_and_numbers() -> None:
    v = Violation("hidden", "lif1", "1100 hidden neurons (lif1 1100), xylo-audio3 holds 992")
    assert v.text() == "[hidden] layer 'lif1': 1100 hidden neurons (lif1 1100), xylo-audio3 holds 992"
    assert str(DesignRuleError([v], "xylo-audio3")).endswith("to fit: fewer hidden neurons (st2chip train --hidden N)")


def test_a_convolution_is_a_node_xylo_cannot_hold() -> None:
    rng = np.random.default_rng(6)
    nodes, edges = _mlp((4, 6, 2))
    nodes["input"] = nir.Input(input_type={"input": np.array([1, 4])})
    nodes["fc1"] = nir.Conv1d(input_shape=4, weight=rng.normal(0, 0.5, (2, 1, 2)), stride=1, padding=0, dilation=1,
                              groups=1, bias=np.zeros(2))
    assert _rules(nodes, edges) == [("node-type", "fc1")]
