"""``linear._channels_stacked``: a convolution's matrix written a block of output channels at a time is, array
for array, one CSR per channel (zeros dropped) stacked by scipy, as ``as_matrix`` built it before."""

import nir
import numpy as np
import pytest
import scipy.sparse as sp

from st2chip.graph import linear


def per_channel(weight, tap, offset, indptr_one, first, n_in) -> sp.csr_matrix:
    """The plain construction: each output channel's rows as a CSR matrix, then ``sp.vstack``."""
    blocks = []
    for co in range(weight.shape[0]):
        block = sp.csr_matrix((weight[co][tap], (offset + first[co]).astype(np.int32), indptr_one),
                              shape=(indptr_one.size - 1, n_in))
        block.eliminate_zeros()
        blocks.append(block)
    return sp.csr_matrix(sp.vstack(blocks, format="csr"))


def assert_same_arrays(a: sp.csr_matrix, b: sp.csr_matrix) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype
    for x, y in ((a.data, b.data), (a.indices, b.indices), (a.indptr, b.indptr)):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("chunk", [1, 5, 2**20])
def test_blocks_of_channels_give_the_per_channel_stack(seed, chunk, monkeypatch):
    rng = np.random.default_rng(seed)
    c_out, taps, rows, n_in = (int(x) for x in rng.integers(1, 12, 4))
    weight = rng.normal(size=(c_out, taps)) * (rng.random((c_out, taps)) > 0.4)  # zeros, some channels all zero
    weight[rng.random(c_out) < 0.3] = 0.0
    per_row = rng.integers(0, 4, rows)  # rows of 0 to 3 synapses: some output positions see nothing
    indptr_one = np.concatenate([[0], np.cumsum(per_row)])
    tap = rng.integers(0, taps, indptr_one[-1])
    offset = rng.integers(0, n_in, indptr_one[-1])
    first = rng.integers(0, 3, c_out) * n_in
    monkeypatch.setattr(linear, "STACK_CHUNK", chunk)
    got = linear._channels_stacked(weight, tap, offset, indptr_one, first, 3 * n_in)
    assert_same_arrays(got, per_channel(weight, tap, offset, indptr_one, first, 3 * n_in))


def test_a_conv_with_zero_weights_drops_them():
    weight = np.zeros((4, 2, 3, 3))
    weight[1, 0, 1, 1] = 2.0
    node = nir.Conv2d(input_shape=(5, 5), weight=weight, stride=1, padding=1, dilation=1, groups=1, bias=np.zeros(4))
    matrix, _ = linear.as_matrix("conv", node, (2, 5, 5))
    assert matrix.nnz == 25 and np.all(matrix.data == 2.0) and matrix.indices.dtype == np.int32
    np.testing.assert_array_equal(np.diff(matrix.indptr), np.repeat([0, 1, 0, 0], 25))
