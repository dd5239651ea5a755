"""encoding.lowrank_errors: the relative error of a quantized low-rank product, from Gram matrices."""

import numpy as np
import pytest
import scipy.sparse as sp

from st2chip.chip import encoding


def _factors(rng: np.random.Generator, m: int, n: int, r: int, density: float) -> tuple[sp.csr_matrix, ...]:
    u = sp.random(m, r, density=density, random_state=rng, format="csr", data_rvs=rng.standard_normal)
    v = sp.random(r, n, density=density, random_state=rng, format="csr", data_rvs=rng.standard_normal)
    return u, v


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("noise", [1e-1, 1e-3])
def test_equals_the_error_of_the_multiplied_out_products(seed: int, noise: float) -> None:
    rng = np.random.default_rng(seed)
    u, v = _factors(rng, 40, 70, 6, 0.5)
    v_q = v.copy()
    v_q.data = v_q.data * (1 + noise * rng.standard_normal(v_q.nnz))
    pairs = []
    for rows in (slice(0, 15), slice(15, 40)):
        u_q = u[rows].copy()
        u_q.data = u_q.data * (1 + noise * rng.standard_normal(u_q.nnz))
        pairs.append((u_q, u[rows]))
    got = encoding.lowrank_errors(pairs, v_q, v)
    want = [encoding.rel_error(u_q @ v_q, u_r @ v) for u_q, u_r in pairs]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_exact_factors_give_zero_and_huge_weights_do_not_overflow() -> None:
    rng = np.random.default_rng(7)
    u, v = _factors(rng, 20, 30, 4, 0.6)
    assert encoding.lowrank_errors([(u, u)], v, v)[0] == pytest.approx(0.0, abs=1e-7)
    big_u, big_v = u * 1e200, v * 1e200
    v_q = big_v * (1 + 1e-2)
    err = encoding.lowrank_errors([(big_u, big_u)], v_q, big_v)[0]
    assert np.isfinite(err) and err == pytest.approx(1e-2, rel=1e-6)


def test_an_all_zero_product_gives_the_absolute_error() -> None:
    u = sp.csr_matrix((3, 2))
    v = sp.csr_matrix(np.array([[1.0, 0.0], [0.0, 2.0]]))
    u_q = sp.csr_matrix(np.array([[0.5, 0.0], [0.0, 0.0], [0.0, 0.0]]))
    assert encoding.lowrank_errors([(u_q, u)], v, v)[0] == pytest.approx(0.5)
