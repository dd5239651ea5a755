"""The fixed-point engine equals Lava's fixed_pt simulation bit for bit on hand-built cases."""

import numpy as np
import pytest
import scipy.sparse as sp

from st2chip.chip.chipgraph import ChipGraph, InputPort, Population, SynapseGroup
from st2chip.chip.lower import lower
from st2chip.converters.mlp import mlp_to_nir
from st2chip.targets import engine, lava


def _assert_equal(a, b):
    assert a.spikes.keys() == b.spikes.keys()
    for layer in a.spikes:
        np.testing.assert_array_equal(a.spikes[layer], b.spikes[layer], err_msg=f"spikes of {layer}")
        np.testing.assert_array_equal(a.voltages[layer], b.voltages[layer], err_msg=f"voltages of {layer}")
    np.testing.assert_array_equal(a.scores, b.scores)


@pytest.mark.parametrize("groups", [1, 3])
def test_mlp_bit_exact(random_mlp, digit_spikes, groups):
    chip = lower(mlp_to_nir(random_mlp()), decay_groups=groups)
    x = {"input": digit_spikes(5)}
    ref, lav = engine.run(chip, x), lava.run(chip, x)
    assert sum(int(s.sum()) for s in ref.spikes.values()) > 0, "test needs activity"
    _assert_equal(ref, lav)


def test_edge_cases_bit_exact():
    """Sparse weights, negative and positive exponents, big activations, current decay, bias."""
    rng = np.random.default_rng(1)
    n_in, n_hid, n_out, steps = 12, 9, 4, 10
    m1 = rng.integers(-128, 128, size=(n_hid, n_in))
    m1[rng.random(m1.shape) < 0.6] = 0
    chip = ChipGraph(
        inputs=[InputPort("x", n_in)],
        populations=[
            Population("h", "h", np.arange(n_hid), du=3000, dv=700, vth=300,
                       bias_mant=rng.integers(-4096, 4096, n_hid), bias_exp=rng.integers(0, 3, n_hid)),
            Population("o", "o", np.arange(n_out), du=4095, dv=0, vth=131071,
                       bias_mant=rng.integers(-200, 200, n_out), bias_exp=0, readout=True),
        ],
        synapses=[
            SynapseGroup("x->h", "x", "h", sp.csr_matrix(m1), exp=2, form="sparse"),
            SynapseGroup("h->o", "h", "o", rng.integers(-128, 128, size=(n_out, n_hid)), exp=-3),
        ])
    x = {"x": (rng.random((3, steps, n_in)) < 0.5).astype(np.uint8)}
    ref, lav = engine.run(chip, x), lava.run(chip, x)
    assert ref.spikes["h"].sum() > 0
    _assert_equal(ref, lav)


def test_without_hidden_voltages_spikes_and_scores_still_match(random_mlp, digit_spikes):
    chip = lower(mlp_to_nir(random_mlp()), decay_groups=2)
    x = {"input": digit_spikes(3)}
    ref, lav = engine.run(chip, x), lava.run(chip, x, voltages=False)
    assert set(lav.voltages) == {"readout"}
    for layer in ref.spikes:
        np.testing.assert_array_equal(ref.spikes[layer], lav.spikes[layer])
    np.testing.assert_array_equal(ref.scores, lav.scores)
