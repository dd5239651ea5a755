"""A low-rank path's U·V held as its factors: counted and measured a block of rows at a time, multiplied out only
where pass ``lowrank`` keeps it, and then the matrix the path multiplies out to."""

import nir
import numpy as np
import pytest
import scipy.sparse as sp

from st2chip import limits
from st2chip.chip.lower import lower
from st2chip.chip.lowering import lowrank_product
from st2chip.chip.lowering.lowrank_product import LowrankProduct
from st2chip.chip.encoding import row_absmax
from st2chip.errors import InputError


def factors(rng: np.random.Generator) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """U (40 x 3) with empty rows and V (3 x 25) whose rows cancel in some sums."""
    u = rng.normal(size=(40, 3)) * (rng.random((40, 3)) < 0.5)
    u[[3, 17]] = 0  # empty rows
    u[5] = [1.0, 1.0, 0.0]
    v = rng.normal(size=(3, 25)) * (rng.random((3, 25)) < 0.6)
    v[1, :5] = -v[0, :5]  # row 5 of U V is exactly 0 in these columns: zeros that are not stored
    return sp.csr_matrix(u), sp.csr_matrix(v)


@pytest.mark.parametrize("block", [1, 7, 1 << 23])
def test_counts_and_row_maxima_are_the_multiplied_out_matrixs_in_any_blocks(block, monkeypatch):
    monkeypatch.setattr(lowrank_product, "BLOCK_ENTRIES", block)
    u, v = factors(np.random.default_rng(0))
    whole = lowrank_product.canonical(u @ v)
    factor = np.random.default_rng(1).uniform(0.5, 3.0, size=40)
    factor[3] = np.inf  # an empty row: its factor scales nothing
    held = LowrankProduct(u, v).scaled(factor)
    folded = whole.copy()
    folded.data *= np.repeat(factor, np.diff(folded.indptr))
    assert held.nnz == whole.nnz < 40 * 25 - 2 * 25
    assert np.array_equal(held.row_absmax(), row_absmax(folded))
    out = held.multiplied_out("input", "lif")
    assert out.has_canonical_format and np.array_equal(out.indptr, folded.indptr)
    assert np.array_equal(out.indices, folded.indices) and np.array_equal(out.data, folded.data)


def low_rank_graph(n: int, rank: int) -> nir.NIRGraph:
    """input (n) -> V (rank x n) -> U (n x rank) -> LIF (n): a DSP layer whose product is n x n and dense."""
    rng = np.random.default_rng(2)
    return nir.NIRGraph(nodes={
        "input": nir.Input(input_type={"input": np.array([n])}),
        "V": nir.Affine(weight=rng.normal(size=(rank, n)), bias=np.zeros(rank)),
        "U": nir.Affine(weight=rng.normal(size=(n, rank)), bias=np.zeros(n)),
        "lif": nir.LIF(tau=np.full(n, 0.005), r=np.ones(n), v_leak=np.zeros(n), v_threshold=np.ones(n),
                       v_reset=np.zeros(n)),
        "output": nir.Output(output_type={"output": np.array([n])})},
        edges=[("input", "V"), ("V", "U"), ("U", "lif"), ("lif", "output")], metadata={"dt": 1e-3}, type_check=False)


@pytest.fixture
def small_budget():
    limits.set_memory_budget("40M")
    yield
    limits.set_memory_budget(None)


def test_a_low_rank_layer_kept_factored_never_multiplies_its_product_out(small_budget):
    graph = low_rank_graph(1200, 4)  # U V: 1.44 M weights (69 MB at the lowering's 48 bytes each); factors 9,600
    chip = lower(graph, lowrank="factored")
    assert {g.form for g in chip.synapses} == {"factored"}
    assert sum(g.nnz for g in chip.synapses) <= 2 * 1200 * 4  # the factors (mantissas that round to 0 dropped)
    with pytest.raises(InputError, match=r"the low-rank product from 'input' into layer 'lif' \(1,440,000 x 48"):
        lower(graph, lowrank="product")


def test_branches_through_one_v_node_share_the_statistics_of_its_own_matrix():
    """Permuting V's columns (a bundle's token reshape on one branch of a residual sum) copies the product's
    values: the count and row maxima of U times the V node's own matrix are each branch's."""
    u, v = factors(np.random.default_rng(3))
    perm = sp.csr_matrix(np.eye(25)[np.random.default_rng(4).permutation(25)])
    shared: list = []
    plain = LowrankProduct(u, v, unpermuted=v, shared=shared)
    permuted = LowrankProduct(u, lowrank_product.canonical(v @ perm), unpermuted=v, shared=shared)
    assert plain.nnz == permuted.nnz and len(shared) == 1  # computed once
    alone = LowrankProduct(u, lowrank_product.canonical(v @ perm))
    assert alone.nnz == permuted.nnz and np.array_equal(alone.row_absmax(), permuted.row_absmax())
    assert np.array_equal(row_absmax(permuted.multiplied_out("input", "lif")), permuted.row_absmax())
