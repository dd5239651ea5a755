"""The chip's number encodings (st2chip.chip.encoding): decays, weights, biases."""

import numpy as np
import scipy.sparse as sp

from st2chip.chip import encoding
from st2chip.chip.chipgraph import BIAS_EXP_RANGE, BIAS_MANT_RANGE, DECAY_MAX


def test_decays_round_trip_within_half_a_step():
    beta = np.linspace(0.0, 1.0, 101)
    dv, du = encoding.to_decay(encoding.dv_exact(beta)), encoding.to_decay(encoding.du_exact(beta))
    assert dv.min() >= 0 and dv.max() <= DECAY_MAX and du.dtype == np.int64
    inside = (beta > 1 / 4096) & (beta < 1 - 1 / 4096)  # 12 bits: the decays stop 1/4096 short of 0 and of 1
    assert np.max(np.abs(encoding.voltage_decay(dv) - beta)[inside]) <= 0.5 / 4096
    assert np.max(np.abs(encoding.current_decay(du) - beta)[inside]) <= 0.5 / 4096
    assert encoding.current_decay(DECAY_MAX) == 0.0 and encoding.voltage_decay(0) == 1.0


def test_weights_quantize_to_the_smallest_exponent_and_decode_back():
    w = sp.csr_matrix(np.array([[0.5, -0.25, 0.0], [1.0, 0.125, 0.0]]))
    mant, exp, err = encoding.quantize(w, scale=254.0)
    assert exp == 0 and mant.nnz == 4 and np.abs(mant.data).max() == 127
    np.testing.assert_allclose(encoding.weight_value(mant.toarray(), exp, 254.0), w.toarray(), atol=1 / 254)
    assert err == encoding.rel_error(encoding.weight_value(mant.data, exp, 254.0), w.data)
    assert encoding.exp_needed(w * 4, 254.0) == 2


def test_biases_split_into_mantissas_and_exponents_in_range():
    bias = np.array([0.0, 100.0, -5000.0, 4095.0, 2.0**19])
    mant, exp = encoding.bias_fixed(bias)
    assert mant.min() >= BIAS_MANT_RANGE[0] and mant.max() <= BIAS_MANT_RANGE[1]
    assert exp.min() >= BIAS_EXP_RANGE[0] and exp.max() <= BIAS_EXP_RANGE[1]
    np.testing.assert_allclose(mant << exp, bias, rtol=2.0**-12)


def test_a_spiking_scale_is_refined_as_far_as_the_headroom_allows():
    assert encoding.weight_scale(1.0) == 254 and encoding.weight_scale(0.0) == encoding.MAX_SCALE
    assert encoding.refined_scale(254, 512.0) == 254  # 2^23 / 64 / 512 = 256: no room to double
    assert encoding.refined_scale(100, 512.0) == 200
    assert encoding.voltage_unit(200) == 64.0 * 200
