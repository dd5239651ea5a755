"""Broken lowering never passes as success: outliers, overflows, empty layers, weight-error warnings, verify's checks."""

import warnings

import nir
import numpy as np
import pytest

from st2chip.analysis.verify import verify
from st2chip.chip.lower import QuantizationWarning, lower
from st2chip.cli.main import main
from st2chip.converters.mlp import mlp_to_nir
from st2chip.errors import GraphError
from st2chip.graph.normalize import normalize
from st2chip.graph.simulate import simulate
from st2chip.targets import engine


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _lower_quiet(graph, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", QuantizationWarning)
        return lower(graph, **kw)


def test_one_tiny_threshold_gets_its_own_population(random_mlp):
    graph = normalize(mlp_to_nir(random_mlp()))
    before = _lower_quiet(graph, decay_groups=1)
    graph.nodes["lif1"].v_threshold[5] = 1e-300
    with pytest.warns(QuantizationWarning, match=r"layer 'lif1': neuron\(s\) \[5\]"):
        after = lower(graph, decay_groups=1)
    assert after.report["layers"]["lif1"]["outliers"] == [5]
    pops = {p.name: p for p in after.populations}
    assert "lif1/outliers" in pops and pops["lif1/outliers"].index.tolist() == [5]
    # the other neurons keep their scale and their non-zero weights
    assert pops["lif1"].vth == before.population("lif1").vth
    nnz = lambda chip: sum(s.nnz for s in chip.synapses if s.target.startswith("lif1"))  # noqa: E731
    row5 = int(np.count_nonzero(before.synapses[0].dense()[5]))
    assert nnz(after) >= nnz(before) - row5


def test_overflowing_fold_names_the_layer_and_field(random_mlp):
    graph = normalize(mlp_to_nir(random_mlp()))
    graph.nodes["lif1"].r[:] = 1e300
    graph.nodes["fc1"].weight[0, 0] = 1e10
    with pytest.raises(GraphError, match=r"node 'lif1', field 'weight'.*overflow"):
        lower(graph)


def test_overflowing_fold_names_the_neuron_after_empty_rows(random_mlp):
    graph = normalize(mlp_to_nir(random_mlp()))
    graph.nodes["lif1"].r[:] = 1e300
    graph.nodes["fc1"].weight[:3] = 0.0  # neurons 0-2 read nothing: empty rows before the overflowing one
    graph.nodes["fc1"].weight[3, 1] = 1e12
    with pytest.raises(GraphError, match=r"overflow \(neuron 3:"):
        lower(graph)


@pytest.mark.parametrize("gain, weight", [(1e300, 1e8), (1.0, 1.5e308), (1e308, 1.0)])
def test_folded_weights_near_floats_largest_warn_like_any_too_large(random_mlp, gain, weight):
    graph = normalize(mlp_to_nir(random_mlp()))
    graph.nodes["lif1"].r[:] = gain
    graph.nodes["fc1"].weight[0, 0] = weight
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lower(graph)
    assert any(issubclass(w.category, QuantizationWarning) and "layer 'lif1'" in str(w.message) for w in caught)
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]


def test_empty_layer_is_refused():
    g = nir.NIRGraph(nodes={
        "in": nir.Input(input_type={"input": np.array([3])}),
        "fc": nir.Affine(weight=np.zeros((0, 3)), bias=np.zeros(0)),
        "lif": nir.LIF(tau=np.ones(0), r=np.ones(0), v_leak=np.zeros(0), v_threshold=np.ones(0), v_reset=np.zeros(0)),
        "out": nir.Output(output_type={"output": np.array([0])})},
        edges=[("in", "fc"), ("fc", "lif"), ("lif", "out")], metadata={"dt": 1e-3}, type_check=False)
    with pytest.raises(GraphError, match="node 'out', field 'output_type'"):
        normalize(g)
    g.nodes["out"].output_type = {"output": None}  # the size is inferred from the empty layer
    with pytest.raises(GraphError, match="node 'lif', field 'weight': the layer has no neurons"):
        lower(normalize(g))


def test_huge_weights_warn_in_map_and_fail_verify(random_mlp, tmp_path, capsys):
    graph = mlp_to_nir(random_mlp())
    graph.nodes["fc1"].weight = graph.nodes["fc1"].weight * 1e30
    path = tmp_path / "huge.nir"
    nir.write(path, graph)
    code, out, err = _run(capsys, "map", path)
    assert code == 0
    lines = [line for line in err.splitlines() if "weight error" in line]
    assert len(lines) == 1 and lines[0].startswith("st2chip: warning: layer 'lif1'")
    code, out, err = _run(capsys, "verify", path, "--samples", "20", "--backends", "float,reference")
    assert code == 1
    assert "FAILED spike agreement float vs reference" in out
    assert "verification failed" in err and "spike agreement" in err


def test_verify_checks_accuracy_drop_and_agreement(random_mlp, digit_spikes):
    graph = normalize(mlp_to_nir(random_mlp()))
    chip = lower(graph)
    x = digit_spikes(6)
    flt, ref = simulate(graph, x), engine.run(chip, {"input": x})
    labels = flt.predictions()  # float is 100 % right on these labels by construction
    ok = verify([flt, ref], labels, max_drop=100, min_agreement=0)
    assert ok.passed and [c.name for c in ok.checks] == ["accuracy drop float -> reference",
                                                         "spike agreement float vs reference"]
    strict = verify([flt, ref], labels, max_drop=-1, min_agreement=100.0 + 1e-9)
    assert not strict.passed and all(not c.passed for c in strict.checks)
    assert "FAILED accuracy drop" in strict.to_text()
