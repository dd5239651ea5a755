r"""Neurocores on the chip's 2-D mesh and chips on a board: coordinates, hops, and where each core goes.

**Geometry** (resource figures ``cores_per_chip``, ``mesh_columns``, ``chip_grid_columns``). A chip's
cores sit in a mesh of ``mesh_columns`` columns and :math:`\lceil` cores_per_chip / mesh_columns
:math:`\rceil` rows: slot ``s`` of a chip is at ``x = s % mesh_columns``, ``y = s // mesh_columns``.
Chips sit on a 2-D grid of ``chip_grid_columns`` columns (chip ``c`` in column ``c % chip_grid_columns``,
row ``c // chip_grid_columns``), each linked to its four neighbours, so the board is one mesh with
global coordinates :math:`X = c_x \cdot \mathrm{columns} + x`, :math:`Y = c_y \cdot \mathrm{rows} + y`.
A *slot* is ``chip * cores_per_chip + s``.

**Routing** (dimension order, as on Loihi's mesh). A message from slot ``a`` to slot ``b`` takes
:math:`|\Delta X| + |\Delta Y|` links; :math:`|\Delta c_x| + |\Delta c_y|` of them are chip-to-chip links
(*crossings*), the others on-chip hops (``hops_x`` east-west, ``hops_y`` north-south).

**What :func:`arrange` optimises.** Given the traffic between cores (messages per step, from expected or
measured spike counts: :func:`st2chip.chip.placement.place`), it minimises

.. math::  C = \sum_{\{a, b\}} t_{ab} \, \big(\mathrm{hops}_{ab} + H \cdot \mathrm{crossings}_{ab}\big)

over the cores' slots on the chips the placement uses, with :data:`CROSSING_HOPS` :math:`= H`: a
chip-to-chip link weighs as much as ``H`` on-chip hops. The start fills a snake path through each chip's rows,
chips in snake order over the board, so consecutive cores are neighbours (on one chip, a near-square block of
columns first), in one of two core orders, whichever gives the lower :math:`C`: placement (layer) order, or the
*traffic order*: the cores sorted by the Fiedler vector of the traffic graph (the second eigenvector of
:math:`D^{-1/2} T D^{-1/2}`, :math:`D` the cores' total traffic; a 1-D spectral embedding that keeps cores
that talk much close in the order). Where a layer's cores split an image or a sequence into regions (a
convolution's channels, a Transformer's tokens), layer order puts the cores of one region in consecutive layers
far apart and the traffic order puts them together. Local improvement
then visits every core in turn and tries to swap it with the core in (or move it to the free) slot at its
neighbours' traffic-weighted median (which minimises the sum of Manhattan distances), the four slots around
that one, and its own four mesh neighbours; a swap is taken only when it lowers :math:`C` exactly, so the
result is never worse than the start. At most :data:`SWEEPS` sweeps, fewer when a sweep changes nothing,
and on large graphs only as many core visits as :data:`WORK` allows (in core order); no randomness (the
eigenvector's start vector and sign are fixed).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import ArpackError, ArpackNoConvergence, LinearOperator, eigsh

#: weight of one chip-to-chip link in the placement objective, in on-chip hops: about the ratio of the Loihi
#: energy profiles' ``E_CHIP_LINK_pJ`` (an estimate) to their ``E_HOP_X_pJ`` / ``E_HOP_Y_pJ``
CROSSING_HOPS = 30
#: most improvement sweeps over all cores
SWEEPS = 3
#: on large graphs, improvement stops once this many traffic entries have been read (a visit reads its core's
#: entries once per candidate slot and those of each core it might displace): about 5 s of CPU here
WORK = 80_000_000
#: below this many cores the traffic order's eigenvector comes from a dense eigensolver (exact, fast)
DENSE_EIGEN = 600
#: the sparse eigensolver's relative tolerance and iteration bound (the order needs no more precision)
EIGEN_TOL, EIGEN_ITERATIONS = 1e-3, 3000


@dataclass(frozen=True)
class Mesh:
    """The slots of ``n_chips`` chips: ``cores_per_chip`` cores each in ``columns`` columns, chips on a grid of
    ``chip_columns`` columns (see the module docstring)."""

    cores_per_chip: int
    columns: int
    chip_columns: int
    n_chips: int

    @property
    def rows(self) -> int:
        return -(-self.cores_per_chip // self.columns)

    @property
    def n_slots(self) -> int:
        return self.n_chips * self.cores_per_chip

    def coords(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(chip, x, y)`` of each slot: the chip and the core's column and row on that chip's mesh."""
        slots = np.asarray(slots, dtype=np.int64)
        on_chip = slots % self.cores_per_chip
        return slots // self.cores_per_chip, on_chip % self.columns, on_chip // self.columns

    def board(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Global ``(X, Y)`` on the board and the chip's grid ``(column, row)`` of each slot."""
        chip, x, y = self.coords(slots)
        cx, cy = chip % self.chip_columns, chip // self.chip_columns
        return cx * self.columns + x, cy * self.rows + y, cx, cy

    def hops(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """On-chip hops east-west and north-south, and chip-to-chip links, from slots ``a`` to slots ``b``."""
        xa, ya, cxa, cya = self.board(a)
        xb, yb, cxb, cyb = self.board(b)
        cross_x, cross_y = np.abs(cxa - cxb), np.abs(cya - cyb)
        return np.abs(xa - xb) - cross_x, np.abs(ya - yb) - cross_y, cross_x + cross_y

    def image(self, slots: np.ndarray, values: np.ndarray) -> np.ndarray:
        """The board as a 2-D array (rows = Y, columns = X): ``values`` at the slots' positions, NaN elsewhere."""
        width = min(self.chip_columns, max(self.n_chips, 1)) * self.columns
        grid = np.full((-(-self.n_chips // self.chip_columns) * self.rows, width), np.nan)
        gx, gy, _, _ = self.board(slots)
        grid[gy, gx] = values
        return grid

    def slot_at(self, gx: int, gy: int) -> int:
        """The slot at board position ``(gx, gy)``, or -1 where no used chip has a core there."""
        if gx < 0 or gy < 0:
            return -1
        cx, x = divmod(gx, self.columns)
        cy, y = divmod(gy, self.rows)
        chip, s = cy * self.chip_columns + cx, y * self.columns + x
        if cx >= self.chip_columns or chip >= self.n_chips or s >= self.cores_per_chip:
            return -1
        return chip * self.cores_per_chip + s

    def snake(self, n: int | None = None) -> np.ndarray:
        """Every slot, in the order the start fills them: chips in snake order over the board, each chip's rows in
        snake order. Fewer than ``n`` = one chip's cores fill a near-square block of columns first (so that 16 cores
        take 4 x 4, not one row of 16)."""
        chips = sorted(range(self.n_chips), key=lambda c: (c // self.chip_columns,
                                                           (c % self.chip_columns) * (-1) ** (c // self.chip_columns)))
        width = self.columns
        if n is not None and n < self.cores_per_chip:
            width = min(self.columns, max(math.ceil(math.sqrt(n)), -(-n // self.rows)))
        local = np.asarray(self._rows(0, width) + self._rows(width, self.columns), dtype=np.int64)
        return np.concatenate([c * self.cores_per_chip + local for c in chips]) if chips else local[:0]

    def _rows(self, first: int, stop: int) -> list[int]:
        """On-chip slots of columns ``first:stop``, row by row, every other row backwards."""
        out = []
        for y in range(self.rows):
            row = [y * self.columns + x for x in range(first, stop)]
            out += [s for s in (row if y % 2 == 0 else row[::-1]) if s < self.cores_per_chip]
        return out


@dataclass
class Arrangement:
    """Each core's slot, which core order the start took (``layers`` or ``traffic``), and what the objective
    (module docstring) was for the layer-order start, at the start taken and at the end."""

    slots: np.ndarray     # (cores,) the slot of each core
    start_cost: float
    cost: float
    swaps: int
    sweeps: int
    seconds: float
    start: str           # the core order of the start taken: "layers" or "traffic"
    layer_cost: float    # the objective of the layer-order start


def traffic_matrix(n_cores: int, src: np.ndarray, dst: np.ndarray, weight: np.ndarray) -> sp.csr_matrix:
    """Symmetric core-by-core traffic (messages both ways summed), self-traffic dropped."""
    keep = (src != dst) & (weight > 0)
    rows, cols = src[keep].astype(np.int32, copy=False), dst[keep].astype(np.int32, copy=False)
    one_way = sp.coo_matrix((weight[keep], (rows, cols)), shape=(n_cores, n_cores)).tocsr()  # duplicates summed
    del rows, cols
    both = (one_way + one_way.T).tocsr()
    both.sort_indices()
    return both


def cost(mesh: Mesh, traffic: sp.csr_matrix, slots: np.ndarray, chunk: int = 1 << 20) -> float:
    """The objective :math:`C` for cores at ``slots`` (each undirected pair once), ``chunk`` entries of
    ``traffic`` at a time."""
    coord = _stretched(mesh, slots)
    rows = np.repeat(np.arange(traffic.shape[0], dtype=np.int32), np.diff(traffic.indptr))
    total = 0.0
    for lo in range(0, traffic.nnz, chunk):
        part = slice(lo, lo + chunk)
        total += float(np.dot(traffic.data[part], np.abs(coord[:, rows[part]] - coord[:, traffic.indices[part]])
                              .sum(axis=0)))
    return total / 2


def traffic_hops(mesh: Mesh, traffic: sp.csr_matrix, slots: np.ndarray, chunk: int = 1 << 20) -> tuple[float, float]:
    """Traffic-weighted on-chip hops and chip-to-chip links for cores at ``slots`` (each undirected pair once),
    ``chunk`` entries of ``traffic`` at a time."""
    rows = np.repeat(np.arange(traffic.shape[0], dtype=np.int32), np.diff(traffic.indptr))
    hops = links = 0.0
    for lo in range(0, traffic.nnz, chunk):
        part = slice(lo, lo + chunk)
        hx, hy, cross = mesh.hops(slots[rows[part]], slots[traffic.indices[part]])
        hops += float(np.dot(traffic.data[part], hx + hy))
        links += float(np.dot(traffic.data[part], cross))
    return hops / 2, links / 2


def _stretched(mesh: Mesh, slots: np.ndarray) -> np.ndarray:
    """``(2, len(slots))`` coordinates whose L1 distance is the objective's: along each axis the global position
    plus ``CROSSING_HOPS - 1`` per chip boundary before it (a monotone map, so chip crossings add exactly)."""
    gx, gy, cx, cy = mesh.board(slots)
    return np.stack([gx + (CROSSING_HOPS - 1) * cx, gy + (CROSSING_HOPS - 1) * cy]).astype(np.int32)


_AROUND = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))


class _Board:
    """The search state: slot of each core, occupant of each slot, and each slot's coordinates (:func:`_stretched`:
    the objective's distance between two slots is the L1 norm of their difference)."""

    def __init__(self, mesh: Mesh, slots: np.ndarray) -> None:
        self.mesh = mesh
        self.slot_of = slots.copy()
        self.occupant = np.full(mesh.n_slots, -1, dtype=np.int64)
        self.occupant[slots] = np.arange(slots.size)
        self.gx, self.gy, _, _ = mesh.board(np.arange(mesh.n_slots))
        self.coord = _stretched(mesh, np.arange(mesh.n_slots))

    def dist(self, here: np.ndarray, there: np.ndarray) -> np.ndarray:
        """Objective distance between points (columns of ``coord``), broadcast."""
        d = np.abs(here - there)
        return d[0] + d[1]

    def spread(self, slots: np.ndarray, around: np.ndarray, w: np.ndarray) -> np.ndarray:
        """For each of ``slots``: the traffic-weighted distance to the points ``around`` (columns of ``coord``)."""
        return self.dist(self.coord[:, slots, None], around[:, None, :]) @ w

    def candidates(self, s: int, near: np.ndarray, w: np.ndarray) -> list[int]:
        """Slots worth trying for a core at ``s`` whose neighbours sit at ``near`` with traffic ``w``."""
        mx, my = _median(self.gx[near], w), _median(self.gy[near], w)
        x, y = int(self.gx[s]), int(self.gy[s])
        out = [self.mesh.slot_at(mx + dx, my + dy) for dx, dy in _AROUND]
        out += [self.mesh.slot_at(x + dx, y + dy) for dx, dy in _AROUND[1:]]
        return [c for c in dict.fromkeys(out) if c >= 0 and c != s]

    def move(self, a: int, target: int) -> None:
        """Core ``a`` to slot ``target``; its occupant, if any, to ``a``'s slot."""
        sa, b = int(self.slot_of[a]), int(self.occupant[target])
        self.slot_of[a], self.occupant[target], self.occupant[sa] = target, a, b
        if b >= 0:
            self.slot_of[b] = sa


def _median(values: np.ndarray, w: np.ndarray) -> int:
    """Traffic-weighted median (the lower one) of integer positions."""
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(w[order])
    return int(values[order][np.searchsorted(cum, cum[-1] / 2)])


def _best_move(board: _Board, traffic: sp.csr_matrix, a: int) -> tuple[int, int]:
    """The candidate slot (:meth:`_Board.candidates`) whose move or swap lowers the objective most (-1: none),
    and how many traffic entries that took.

    Core ``a``'s change at every candidate at once; where ``a`` gains, the displaced cores' changes (their
    neighbours' distances to ``a``'s slot instead of their own, summed per candidate) complete the exact change."""
    ip, idx, data = traffic.indptr, traffic.indices, traffic.data
    na, wa = idx[ip[a]:ip[a + 1]], data[ip[a]:ip[a + 1]]
    sa = int(board.slot_of[a])
    cands = np.array(board.candidates(sa, board.slot_of[na], wa), dtype=np.int64)
    if cands.size == 0:
        return -1, na.size
    costs = board.spread(np.concatenate([[sa], cands]), board.coord[:, board.slot_of[na]], wa)
    read = na.size * (1 + cands.size)
    gains = costs[1:] < costs[0]  # only where core a itself gains (the displaced core seldom makes up for it)
    cands, change = cands[gains], costs[1:][gains] - costs[0]
    if cands.size == 0:
        return -1, read
    which = np.flatnonzero(board.occupant[cands] >= 0)
    if which.size:
        b = board.occupant[cands[which]]
        lengths = ip[b + 1] - ip[b]
        read += 2 * int(lengths.sum())
        seg = np.repeat(np.arange(which.size), lengths)
        flat = np.arange(seg.size) - np.repeat(np.cumsum(lengths) - lengths, lengths) + np.repeat(ip[b], lengths)
        where = board.coord[:, board.slot_of[idx[flat]]]
        gain = board.dist(where, board.coord[:, [sa]]) - board.dist(where, board.coord[:, cands[which]][:, seg])
        change[which] += np.bincount(seg, weights=data[flat] * gain, minlength=which.size)
        # an a-b pair keeps its distance, but each part above counted it as shrinking to zero
        k = np.minimum(np.searchsorted(na, b), na.size - 1)
        pair = na[k] == b
        change[which[pair]] += 2 * wa[k[pair]] * board.dist(board.coord[:, cands[which[pair]]], board.coord[:, [sa]])
    best = int(np.argmin(change))
    return (int(cands[best]) if change[best] < -1e-9 else -1), read


def traffic_order(traffic: sp.csr_matrix) -> np.ndarray:
    """The cores sorted by the Fiedler vector of the normalised traffic graph (module docstring); ties and cores
    without traffic keep their placement order. Deterministic: fixed start vector, sign fixed so the order runs
    with placement order; layer order where the eigensolver does not converge."""
    n = traffic.shape[0]
    degree = np.asarray(traffic.sum(axis=1), dtype=np.float64).ravel()
    if n < 3 or not np.any(degree > 0):
        return np.arange(n)
    scale = 1.0 / np.sqrt(np.where(degree > 0, degree, 1.0))
    vector = _second_eigenvector(traffic, scale)
    if vector is None:
        return np.arange(n)
    position = vector * scale
    if np.dot(position, np.arange(n) - (n - 1) / 2) < 0:
        position = -position
    return np.argsort(position, kind="stable")


def _second_eigenvector(traffic: sp.csr_matrix, scale: np.ndarray) -> np.ndarray | None:
    """The eigenvector of :math:`D^{-1/2} T D^{-1/2}` with the second-largest eigenvalue (``scale`` is
    :math:`D^{-1/2}`), or None when the sparse solver does not converge."""
    n = traffic.shape[0]
    if n <= DENSE_EIGEN:
        _, vectors = np.linalg.eigh(scale[:, None] * traffic.toarray() * scale[None, :])
        return vectors[:, -2]
    data = traffic.astype(np.float32)

    def product(x: np.ndarray) -> np.ndarray:
        return scale * (data @ (scale * x.ravel()).astype(np.float32))

    start = np.linspace(1.0, 2.0, n) / scale  # near the top eigenvector D^{1/2} 1, not equal to it
    try:
        values, vectors = eigsh(LinearOperator((n, n), matvec=product, dtype=np.float64), k=2, which="LA",
                                v0=start, tol=EIGEN_TOL, maxiter=EIGEN_ITERATIONS)
    except (ArpackNoConvergence, ArpackError):
        return None
    return vectors[:, int(np.argmin(values))]


def arrange(mesh: Mesh, traffic: sp.csr_matrix, sweeps: int = SWEEPS) -> Arrangement:
    """Slots for ``traffic.shape[0]`` cores on ``mesh``: snake-order start in layer or traffic order (the lower
    objective), then exact-improvement swaps."""
    t0 = time.perf_counter()
    n = traffic.shape[0]
    traffic = traffic.tocsr()
    traffic.sort_indices()
    path = mesh.snake(n)[:n]
    layer_cost = cost(mesh, traffic, path)
    order = traffic_order(traffic)
    slots = np.empty(n, dtype=np.int64)
    slots[order] = path
    spectral_cost = cost(mesh, traffic, slots)
    start, start_cost = ("traffic", spectral_cost) if spectral_cost < layer_cost else ("layers", layer_cost)
    board = _Board(mesh, slots if start == "traffic" else path)
    swaps = done = visited = 0
    while done < sweeps and visited <= WORK:
        done += 1
        moved = 0
        for a in range(n):
            if traffic.indptr[a + 1] == traffic.indptr[a]:
                continue
            target, read = _best_move(board, traffic, a)
            if target >= 0:
                board.move(a, target)
                moved += 1
            visited += read
            if visited > WORK:
                break
        swaps += moved
        if not moved:
            break
    return Arrangement(slots=board.slot_of, start_cost=start_cost, cost=cost(mesh, traffic, board.slot_of),
                       swaps=swaps, sweeps=done, seconds=time.perf_counter() - t0, start=start,
                       layer_cost=layer_cost)
