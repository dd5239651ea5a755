"""The fixed-point scale of a spiking population: as fine as the headroom allows.

A recurrent layer whose input weights are small beside its recurrent ones used to
get a negative exponent on its input group; Lava floors that shifted sum every
step, a bias the recurrence integrates. Lowering now refines the scale by powers
of two until ``u`` and ``v`` keep only ``headroom`` thresholds of range.
"""

import nir
import numpy as np
import pytest

from st2chip.analysis.verify import verify
from st2chip.chip.chipgraph import ACT_SHIFT, UV_MAX
from st2chip.chip.lower import HEADROOM, lower
from st2chip.pipeline import chip_headroom
from st2chip.errors import GraphError
from st2chip.graph.normalize import normalize
from st2chip.graph.simulate import simulate
from st2chip.targets import engine, lava

DT = 1e-3


def _recurrent(w_in: float = 0.3, beta: float = 0.95, n_in: int = 12, n: int = 10) -> nir.NIRGraph:
    """Input -> Affine (weights up to ``w_in``) -> LIF with a strong self-connection -> Output."""
    rng = np.random.default_rng(0)
    beta = np.full(n, beta)
    nodes = {"input": nir.Input(input_type={"input": np.array([n_in])}),
             "w_in": nir.Affine(weight=rng.uniform(0.0, w_in, (n, n_in)), bias=np.zeros(n)),
             "lif": nir.LIF(tau=DT / (1 - beta), r=1 / (1 - beta), v_leak=np.zeros(n),
                            v_threshold=np.ones(n), v_reset=np.zeros(n)),
             "w_rec": nir.Affine(weight=rng.normal(0.0, 1.5, (n, n)), bias=np.zeros(n)),
             "output": nir.Output(output_type={"output": np.array([n])})}
    edges = [("input", "w_in"), ("w_in", "lif"), ("lif", "w_rec"), ("w_rec", "lif"), ("lif", "output")]
    return normalize(nir.NIRGraph(nodes=nodes, edges=edges, metadata={"dt": DT}, type_check=False))


def _exponents(chip) -> dict[str, int]:
    return {s.source: s.exp for s in chip.synapses}


@pytest.mark.parametrize("headroom", [HEADROOM, 64.0])
def test_the_scale_is_refined_within_the_headroom(headroom):
    graph = _recurrent()
    coarse, fine = lower(graph, headroom=1e9), lower(graph, headroom=headroom)  # 1e9: no room to refine
    assert _exponents(coarse)["input"] < 0 <= _exponents(coarse)["lif"]
    pop, = fine.populations
    assert pop.vth > coarse.populations[0].vth
    assert fine.report["layers"]["lif"]["headroom"]["lif"] >= headroom
    assert (pop.vth << ACT_SHIFT) * headroom <= UV_MAX
    assert (pop.vth << ACT_SHIFT) * headroom * 2 > UV_MAX  # the finest power of two that keeps it
    if headroom == 64.0:
        assert min(_exponents(fine).values()) >= 0  # nothing left for Lava to floor
    # the same mantissas, every exponent moved up by the same power of two
    k = _exponents(fine)["lif"] - _exponents(coarse)["lif"]
    assert pop.vth == coarse.populations[0].vth << k
    assert _exponents(fine)["input"] - _exponents(coarse)["input"] == k


def test_a_finer_scale_follows_the_float_voltage_closer_and_lava_agrees():
    """Below threshold (no spike to flip), the chip's voltage drifts from float by the floored input."""
    graph = _recurrent(w_in=0.02, beta=0.8)
    x = (np.random.default_rng(1).random((4, 60, 12)) < 0.5).astype(np.uint8)
    run = simulate(graph, x)
    assert run.spikes["lif"].sum() == 0
    flt = run.voltages["lif"]  # threshold 1: float voltage in thresholds

    def error(chip) -> float:
        unit = chip.report["layers"]["lif"]["voltage_unit"]["lif"]
        return float(np.abs(engine.run(chip, {"input": x}).voltages["lif"] / unit - flt).mean())

    coarse, fine = lower(graph, headroom=1e9), lower(graph, headroom=64.0)
    assert error(fine) < error(coarse) / 4
    eng, lav = engine.run(fine, {"input": x}), lava.run(fine, {"input": x})
    np.testing.assert_array_equal(eng.spikes["lif"], lav.spikes["lif"])
    np.testing.assert_array_equal(eng.voltages["lif"], lav.voltages["lif"])


def test_headroom_must_be_positive():
    with pytest.raises(GraphError, match="headroom"):
        lower(_recurrent(), headroom=0)


def test_verify_reports_float_voltages_beyond_the_chips_range():
    """An inhibited layer whose float voltage sinks further than the chosen headroom is named, with how far."""
    rng = np.random.default_rng(3)
    n = 6
    beta = np.full(n, 0.99)
    nodes = {"input": nir.Input(input_type={"input": np.array([4])}),
             "w_in": nir.Affine(weight=-rng.uniform(2.0, 4.0, (n, 4)), bias=np.zeros(n)),
             "lif": nir.LIF(tau=DT / (1 - beta), r=1 / (1 - beta), v_leak=np.zeros(n),
                            v_threshold=np.full(n, 0.5), v_reset=np.zeros(n)),
             "output": nir.Output(output_type={"output": np.array([n])})}
    graph = normalize(nir.NIRGraph(nodes=nodes, edges=[("input", "w_in"), ("w_in", "lif"), ("lif", "output")],
                                   metadata={"dt": DT}, type_check=False))
    x = np.ones((2, 30, 4), np.uint8)
    flt = simulate(graph, x)
    reach = float((np.abs(flt.voltages["lif"]) / 0.5).max())
    assert reach > 64
    tight, roomy = lower(graph, headroom=32.0), lower(graph, headroom=4 * reach)
    used = chip_headroom(graph, tight, flt)
    assert [(h.layer, h.neurons) for h in used] == [("lif", n)]
    assert used[0].reach == pytest.approx(reach)
    assert used[0].beyond > 0 and used[0].room < reach
    report = verify([flt, engine.run(tight, {"input": x})], headroom=used)
    assert "headroom: layer 'lif': float voltages reach" in report.to_text()
    assert report.to_dict()["headroom"][0]["beyond"] == used[0].beyond
    assert chip_headroom(graph, roomy, flt)[0].beyond == 0
