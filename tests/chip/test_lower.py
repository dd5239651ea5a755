"""Lowering: threshold folding, decay grouping and quantization, checked against float."""

import numpy as np
import pytest

from st2chip.chip.chipgraph import DECAY_MAX, VTH_MAX
from st2chip.errors import GraphError
from st2chip.chip.lower import lower
from st2chip.chip.lowering.decays import cluster as _decay_groups
from st2chip.converters.mlp import mlp_to_nir
from st2chip.graph.simulate import simulate
from st2chip.targets import engine
from st2chip.analysis.verify import compare


def test_populations_respect_chip_ranges(random_mlp):
    chip = lower(mlp_to_nir(random_mlp()), decay_groups=3)
    hidden = chip.layer_populations("lif1")
    assert 1 <= len(hidden) <= 3
    assert sorted(np.concatenate([p.index for p in hidden]).tolist()) == list(range(24))
    for pop in chip.populations:
        assert 0 <= pop.dv <= DECAY_MAX and 0 < pop.vth <= VTH_MAX
    assert chip.population("readout").readout


def test_decay_groups_bounded_and_deterministic():
    dv = np.array([10, 11, 12, 400, 410, 2000, 2100, 2050])
    grouped = _decay_groups(dv, 3)
    assert np.unique(grouped).size == 3
    np.testing.assert_array_equal(grouped, _decay_groups(dv, 3))
    np.testing.assert_array_equal(_decay_groups(dv, 8), dv)


def test_fixed_point_tracks_float(random_mlp, digit_spikes):
    """With enough decay groups, the chip's spikes follow the float model closely."""
    model = random_mlp()
    graph = mlp_to_nir(model)
    x = digit_spikes(10)
    chip = lower(graph, decay_groups=16)
    from st2chip.graph.normalize import normalize
    float_traces = simulate(normalize(graph), x)
    fixed = engine.run(chip, {"input": x})
    assert compare(float_traces, fixed, voltages=False).overall_spike_agreement > 0.97


def test_sparse_weights_become_csr(random_mlp):
    model = random_mlp()
    with_zero = model.linears[0].weight.detach().clone()
    with_zero[np.random.default_rng(0).random(with_zero.shape) < 0.8] = 0
    model.linears[0].weight.data = with_zero
    chip = lower(mlp_to_nir(model))
    syn = next(s for s in chip.synapses if s.source == "input")
    assert syn.form == "sparse"
    assert syn.nnz <= int((with_zero != 0).sum())


def test_nonzero_reset_is_refused(random_mlp):
    graph = mlp_to_nir(random_mlp())
    graph.nodes["lif1"].v_reset[:] = 0.5
    with pytest.raises(GraphError, match="lif1.*v_reset"):
        lower(graph)
