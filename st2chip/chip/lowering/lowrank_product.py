"""A low-rank path's ``U·V`` held as its two factors until pass ``lowrank`` decides whether to multiply it out.

Multiplied out, a DSP path is as dense as the matrix it replaced: on a
Spikformer-4-384-size spiking Transformer at rank 32 the products into one MLP layer
came to 264 M weights. Pass ``paths`` hands such a path
on as a :class:`LowrankProduct`; what the passes before ``lowrank`` need of the
product (its count of non-zeros, each row's largest magnitude) is computed a block
of rows at a time, and the product is multiplied out only where pass ``lowrank``
keeps it (:meth:`LowrankProduct.multiplied_out`): then it is the matrix pass
``paths`` would have stored, value for value.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import scipy.sparse as sp

from st2chip import limits
from st2chip.chip import encoding

BYTES_PER_WEIGHT = 48    # budget per stored weight while lowering: a few CSR copies (8-byte value, 4-byte index)
BLOCK_ENTRIES = 1 << 23  # products summed per block of rows while counting: ~100 MB of scipy's work arrays


@dataclass(frozen=True)
class _Stats:
    nnz: int
    row_absmax: np.ndarray


@dataclass(frozen=True)
class LowrankProduct:
    """``diag(factor) · U · V`` (``factor`` None: 1), held as ``U (m, r)`` and ``V (r, n)``.

    ``V`` already holds whatever only reorders on the source side of the V node (a
    bundle's token permutation), so the product's values are those of the matrix
    pass ``paths`` multiplies out along the path: permuting columns copies values,
    and each entry sums the same terms in the same order. For the same reason its
    non-zeros and row maxima are those of ``U`` times ``unpermuted`` (the V node's
    own matrix): the branches of a residual sum into one V node share them, computed
    once (``shared``).
    """

    u: sp.csr_matrix
    v: sp.csr_matrix
    factor: np.ndarray | None = None
    unpermuted: sp.csr_matrix | None = None  # V before the permutations multiplied into ``v`` (None: ``v``)
    shared: list = field(default_factory=list, repr=False, compare=False)  # the statistics, once computed

    @property
    def shape(self) -> tuple[int, int]:
        return (self.u.shape[0], self.v.shape[1])

    @property
    def nnz(self) -> int:
        """Non-zeros of the multiplied-out product (zeros that cancel are not stored)."""
        return self._computed().nnz

    def row_absmax(self) -> np.ndarray:
        """Each row's largest ``|w|`` of the (scaled) product: what ``row_absmax`` of the multiplied-out matrix
        gives, since rounding ``|p| · |f|`` keeps the order of the ``|p|``."""
        rows = self._computed().row_absmax
        if self.factor is None:
            return rows
        with np.errstate(over="ignore", invalid="ignore"):
            return np.where(rows > 0, rows * np.abs(self.factor), 0.0)  # an empty row stays 0 whatever its factor

    def scaled(self, factor: np.ndarray) -> LowrankProduct:
        """The product with each row times ``factor`` (pass ``fold``): applied when multiplied out."""
        return replace(self, factor=factor if self.factor is None else self.factor * factor)

    def multiplied_out(self, source: str, layer: str) -> sp.csr_matrix:
        """The product as canonical CSR (indices sorted, zeros dropped), rows times ``factor``; the path's
        ``source`` and ``layer`` name it in the error when it would not fit the memory budget.

        Checked before multiplying where the product was counted already; else after, as pass ``paths``
        checks what it stacks (counting first would multiply it out twice).
        """
        what, counted = f"the low-rank product from '{source}' into layer '{layer}'", bool(self.shared)
        if counted:
            limits.check_alloc(what, self.nnz, BYTES_PER_WEIGHT)
        out = canonical(self.u @ self.v)
        if not counted:
            limits.check_alloc(what, out.nnz, BYTES_PER_WEIGHT)
        if self.factor is not None:
            with np.errstate(over="ignore", invalid="ignore"):
                out.data *= np.repeat(self.factor, np.diff(out.indptr))
        return out

    def _computed(self) -> _Stats:
        if not self.shared:
            self.shared.append(_stats(self.u, self.v if self.unpermuted is None else self.unpermuted))
        return self.shared[0]


def canonical(m: sp.spmatrix) -> sp.csr_matrix:
    """``m`` as CSR with sorted indices, duplicates summed and zeros dropped."""
    out = sp.csr_matrix(m)
    out.sum_duplicates()
    out.eliminate_zeros()
    return out


def _stats(u: sp.csr_matrix, v: sp.csr_matrix) -> _Stats:
    """Non-zeros and row maxima of ``U V``, a block of rows at a time (each row's sums are those of the whole
    product's: scipy forms every row on its own)."""
    u, v = sp.csr_matrix(u), sp.csr_matrix(v)
    per_row = np.zeros(u.shape[0], dtype=np.int64)  # products each row sums: a bound on its entries
    if u.nnz:
        lengths = np.diff(v.indptr)[u.indices]
        filled = np.diff(u.indptr) > 0
        per_row[filled] = np.add.reduceat(lengths, u.indptr[:-1][filled])
    ends = np.searchsorted(np.cumsum(per_row), np.arange(1, per_row.sum() // BLOCK_ENTRIES + 1) * BLOCK_ENTRIES)
    bounds = np.unique(np.concatenate([[0], ends, [u.shape[0]]]))
    nnz, row_max = 0, np.zeros(u.shape[0])
    for start, stop in zip(bounds[:-1], bounds[1:]):
        block = canonical(u[start:stop] @ v)
        nnz += block.nnz
        row_max[start:stop] = encoding.row_absmax(block)
    return _Stats(nnz, row_max)
