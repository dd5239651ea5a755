"""pass paths' array helpers: weights side by side as scipy's hstack gives them; a product through a permutation."""

import numpy as np
import pytest
import scipy.sparse as sp

from st2chip.chip.lowering.paths import side_by_side


def _scipy(mats: list[sp.csr_matrix]) -> sp.csr_matrix:
    out = sp.csr_matrix(sp.hstack(mats, format="csr"))
    out.sum_duplicates()
    out.eliminate_zeros()
    return out


def _unsorted(rng: np.random.Generator, rows: int, cols: int, density: float) -> sp.csr_matrix:
    """A product of sparse matrices: scipy leaves its indices unsorted."""
    a = sp.random(rows, 7, density=0.6, random_state=rng, format="csr", data_rvs=rng.standard_normal)
    b = sp.random(7, cols, density=density, random_state=rng, format="csr", data_rvs=rng.standard_normal)
    return sp.csr_matrix(a @ b)


def _same(a: sp.csr_matrix, b: sp.csr_matrix) -> None:
    assert a.shape == b.shape and a.nnz == b.nnz
    np.testing.assert_array_equal(a.indptr, b.indptr)
    np.testing.assert_array_equal(a.indices[:a.nnz], b.indices[:b.nnz])
    np.testing.assert_array_equal(a.data[:a.nnz], b.data[:b.nnz])
    assert a.data.dtype == b.data.dtype and a.has_canonical_format


@pytest.mark.parametrize("seed", range(8))
def test_same_arrays_as_scipy_hstack(seed: int) -> None:
    rng = np.random.default_rng(seed)
    rows = int(rng.integers(1, 30))
    mats = [_unsorted(rng, rows, int(rng.integers(1, 40)), float(rng.uniform(0.05, 0.9)))
            for _ in range(int(rng.integers(1, 4)))]
    mats.append(sp.csr_matrix((rows, 5)))  # a source with no synapses: an empty block
    dense = rng.standard_normal((rows, 6))
    dense[rng.random((rows, 6)) < 0.5] = 0
    mats.insert(1, sp.csr_matrix(dense))
    want = _scipy([m.copy() for m in mats])
    _same(side_by_side(mats), want)


def test_stored_zeros_are_dropped_and_float32_blocks_keep_the_wider_type() -> None:
    a = sp.csr_matrix((np.array([1.0, 0.0, 2.0]), np.array([2, 0, 1]), np.array([0, 2, 3])), shape=(2, 3))
    b = sp.csr_matrix(np.array([[0.5], [0.0]], dtype=np.float32))
    got = side_by_side([a, b])
    _same(got, _scipy([a.copy(), b.copy()]))
    assert got.dtype == np.float64 and got.toarray().tolist() == [[0.0, 0.0, 1.0, 0.5], [0.0, 2.0, 0.0, 0.0]]


def test_a_column_twice_in_a_row_is_summed() -> None:
    twice = sp.csr_matrix((np.array([1.0, 2.0, 3.0]), np.array([1, 1, 0]), np.array([0, 2, 3])), shape=(2, 2))
    other = sp.csr_matrix(np.array([[0.0, 4.0], [5.0, 0.0]]))
    got = side_by_side([twice, other])
    assert got.toarray().tolist() == [[0.0, 3.0, 0.0, 4.0], [3.0, 0.0, 5.0, 0.0]]
    assert got.has_canonical_format


def _permutation(rng: np.random.Generator, n: int) -> sp.csr_matrix:
    return sp.csr_matrix((np.ones(n), (np.arange(n), rng.permutation(n))), shape=(n, n))


@pytest.mark.parametrize("seed", range(6))
def test_a_product_through_a_permutation_is_scipys_product(seed: int) -> None:
    from st2chip.chip.lowering.paths import _times_permutation
    rng = np.random.default_rng(seed)
    weight = _unsorted(rng, int(rng.integers(1, 25)), 30, float(rng.uniform(0.05, 0.9)))
    weight.data[rng.random(weight.nnz) < 0.2] = 0.0  # stored zeros: the product drops them
    weight.data[:2] = -0.0 if weight.nnz > 2 else weight.data[:2]
    empty = sp.csr_matrix((2, 30))
    weight = sp.csr_matrix(sp.vstack([empty, weight, empty], format="csr"))  # empty rows at both ends
    perm = _permutation(rng, 30)
    want, got = weight @ perm, _times_permutation(weight, perm)
    np.testing.assert_array_equal(got.indptr, want.indptr)
    np.testing.assert_array_equal(got.indices, want.indices[:want.nnz])
    np.testing.assert_array_equal(got.data, want.data[:want.nnz])
    # and what comes after it in a chain sums in the same order
    after = sp.random(30, 9, density=0.5, random_state=rng, format="csr", data_rvs=rng.standard_normal)
    np.testing.assert_array_equal((got @ after).data, (want @ after).data)
