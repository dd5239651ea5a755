"""CubaLIF on the chip: both decays, w_in and r folded, per-neuron thresholds folded; float vs engine vs Lava."""

import nir
import numpy as np
import pytest

from st2chip.analysis.verify import compare
from st2chip.chip.lower import lower
from st2chip.graph.normalize import normalize
from st2chip.graph.simulate import simulate
from st2chip.targets import engine, lava

DT = 1e-3


def _cuba_graph(seed: int = 0, bias: float = 0.0) -> nir.NIRGraph:
    rng = np.random.default_rng(seed)
    n_in, n_hid, n_out = 12, 10, 4
    hid = nir.CubaLIF(tau_syn=rng.uniform(2e-3, 8e-3, n_hid), tau_mem=rng.uniform(4e-3, 20e-3, n_hid),
                      r=np.full(n_hid, 5.0), v_leak=np.zeros(n_hid), v_threshold=rng.uniform(0.5, 1.5, n_hid),
                      v_reset=np.zeros(n_hid), w_in=np.full(n_hid, 4.0))
    return normalize(nir.NIRGraph(nodes={
        "input": nir.Input(input_type={"input": np.array([n_in])}),
        "fc1": nir.Affine(weight=rng.normal(0.5, 0.6, (n_hid, n_in)), bias=np.full(n_hid, bias)),
        "cuba": hid,
        "fc2": nir.Affine(weight=rng.normal(0.3, 0.5, (n_out, n_hid)), bias=np.zeros(n_out)),
        "readout": nir.LI(tau=np.full(n_out, 5e-3), r=np.ones(n_out), v_leak=np.zeros(n_out)),
        "output": nir.Output(output_type={"output": np.array([n_out])})},
        edges=[("input", "fc1"), ("fc1", "cuba"), ("cuba", "fc2"), ("fc2", "readout"), ("readout", "output")],
        metadata={"dt": DT}))


def _spikes(seed=0, batch=4, steps=30, n=12):
    return (np.random.default_rng(seed).random((batch, steps, n)) < 0.3).astype(np.uint8)


@pytest.mark.parametrize("groups", [2, 10])
def test_cubalif_lowers_close_to_float_and_engine_equals_lava(groups):
    graph = _cuba_graph()
    chip = lower(graph, decay_groups=groups)
    cuba_pops = [p for p in chip.populations if p.layer == "cuba"]
    assert all(p.du < 4095 for p in cuba_pops)  # the synaptic current decays on the chip
    assert len({(p.du, p.dv) for p in cuba_pops}) == len(cuba_pops) <= groups ** 2
    if groups < 10:
        _engine_equals_lava(graph, chip)
        return
    assert chip.report["layers"]["cuba"]["current_leak_error"] < 2e-4  # one group per neuron: rounding only
    flt, eng = simulate(graph, _spikes()), _engine_equals_lava(graph, chip)
    assert flt.spikes["cuba"].sum() > 0
    agreement = compare(flt, eng, voltages=False).spike_agreement["cuba"]
    assert agreement > 0.97, agreement


def _engine_equals_lava(graph, chip):
    x = {"input": _spikes()}
    eng, lav = engine.run(chip, x), lava.run(chip, x)
    for layer in eng.spikes:
        np.testing.assert_array_equal(eng.spikes[layer], lav.spikes[layer])
        np.testing.assert_array_equal(eng.voltages[layer], lav.voltages[layer])
    return eng


def test_norse_lifcell_network_maps_to_the_chip():
    """norse's LIFCell exports CubaLIF: the converted network matches norse in float and the chip closely."""
    import warnings

    import torch
    norse_torch = pytest.importorskip("norse.torch")
    from st2chip.converters.norse import to_nir

    torch.manual_seed(0)
    net = norse_torch.SequentialState(torch.nn.Linear(12, 8), norse_torch.LIFCell(), torch.nn.Linear(8, 4),
                                      norse_torch.LIFBoxCell())
    with torch.no_grad():
        net[0].weight.normal_(2.0, 1.5)
        net[2].weight.normal_(1.5, 2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = to_nir(net, torch.zeros(1, 12)).graph
    x = _spikes()
    state, outs = None, []
    with torch.no_grad():
        for t in range(x.shape[1]):
            out, state = net(torch.as_tensor(x[:, t], dtype=torch.float32), state)
            outs.append(out.numpy())
    flt = simulate(graph, x)
    np.testing.assert_array_equal(np.stack(outs, 1).sum(1), flt.scores)  # norse == st2chip float
    chip = lower(graph, decay_groups=8)
    eng = _engine_equals_lava(graph, chip)
    assert compare(flt, eng, voltages=False).spike_agreement["1"] > 0.98
