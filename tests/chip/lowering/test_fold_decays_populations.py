"""Passes ``fold``, ``decays`` and ``populations`` alone on tiny graphs."""

import nir
import numpy as np
import pytest

from st2chip.chip import encoding
from st2chip.chip.chipgraph import VTH_MAX
from st2chip.chip.lowering.decays import decays
from st2chip.chip.lowering.fold import fold
from st2chip.chip.lowering.plan import DecayPair
from st2chip.chip.lowering.populations import populations
from st2chip.errors import GraphError

W = np.array([[0.5, -1.0], [2.0, 0.25], [1.0, 1.0]])


def test_fold_divides_each_neurons_weights_by_its_threshold_times_its_gain(tiny):
    graph = tiny.chain([W], [tiny.lif([0.5, 2.0, 4.0], tau=0.004)])
    [layer] = fold(tiny.before(graph, "fold")).layers
    factor = (1e-3 / 0.004) / np.array([0.5, 2.0, 4.0])
    np.testing.assert_allclose(layer.folded.factor, factor)
    np.testing.assert_allclose(layer.folded.weight.toarray(), W * factor[:, None])


def test_fold_refuses_a_non_positive_threshold(tiny):
    graph = tiny.chain([W], [tiny.lif([1.0, 0.0, 1.0])])
    with pytest.raises(GraphError, match="field 'v_threshold': thresholds must be positive"):
        fold(tiny.before(graph, "fold"))


def test_decays_group_into_at_most_k_pairs_sorted_by_dv(tiny):
    taus = [0.002, 0.0021, 0.02]
    graph = tiny.chain([W], [tiny.lif([1.0] * 3, tau=taus)])
    [layer] = decays(tiny.before(graph, "decays", decay_groups=2)).layers
    exact = encoding.to_decay(encoding.dv_exact(1 - 1e-3 / np.array(taus)))  # the first two merge
    assert [p.dv for p in layer.decays.pairs] == sorted({int(exact[2]), int(np.rint(exact[:2].mean()))})
    assert layer.decays.current_leak_error is None  # a LIF has no current decay
    beta = 1 - 1e-3 / np.array(taus)
    assert layer.decays.leak_error == np.max(np.abs(encoding.voltage_decay(layer.decays.dv) - beta)) > 0


def test_decays_of_a_cubalif_pair_du_with_dv(tiny):
    n = 2
    cuba = nir.CubaLIF(tau_syn=np.array([0.002, 0.004]), tau_mem=np.full(n, 0.01), r=np.ones(n),
                       v_leak=np.zeros(n), v_threshold=np.ones(n), v_reset=np.zeros(n), w_in=np.ones(n))
    graph = tiny.chain([W[:2]], [cuba])
    [layer] = decays(tiny.before(graph, "decays", decay_groups=4)).layers
    du = encoding.to_decay(encoding.du_exact(1 - 1e-3 / np.array([0.002, 0.004])))
    dv = int(encoding.to_decay(encoding.dv_exact(np.array(0.9))))
    assert layer.decays.pairs == [DecayPair(int(du[1]), dv), DecayPair(int(du[0]), dv)]  # by dv, then du
    assert layer.decays.current_leak_error < 2.0**-12


def test_populations_scale_and_carry_their_voltage_unit(tiny):
    graph = tiny.chain([W, np.ones((2, 3))], [tiny.lif([1.0, 1.0, 1.0], tau=[0.002, 0.002, 0.02]), tiny.li(2)])
    spiking, readout = populations(tiny.before(graph, "populations", decay_groups=2, headroom=512.0)).layers
    assert [p.name for p in spiking.populations.members] == ["n1/g0", "n1/g1"]
    for pop in spiking.populations.members:
        scale = spiking.populations.scales[pop.name]
        assert pop.vth == scale and pop.voltage_unit == 64.0 * scale
        assert spiking.populations.headroom[pop.name] == 2**23 / 64.0 / scale  # thresholds u, v can reach
    [out] = readout.populations.members
    assert out.readout and out.vth == VTH_MAX and out.voltage_unit == 64.0 * readout.populations.scales["n2"]
    assert readout.populations.headroom is None


def test_populations_give_an_outlier_a_population_of_its_own(tiny):
    weights = np.ones((4, 2))
    weights[2] *= 1000.0
    graph = tiny.chain([weights], [tiny.lif([1.0] * 4)])
    with pytest.warns(UserWarning, match="neuron\\(s\\) \\[2\\]"):
        [layer] = populations(tiny.before(graph, "populations")).layers
    assert [p.name for p in layer.populations.members] == ["n1", "n1/outliers"]
    assert layer.populations.outliers == [2]
