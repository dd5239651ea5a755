"""Why 90 % weight sparsity does not make the engine 3x faster on a CPU: the synaptic product alone.

Issue 9 asks for a 90 %-pruned 784-512-512-10 network to run at least 3x faster
than the dense one. ``engine_vs_lava.py`` measures about 1.1x. This benchmark
isolates the one operation sparsity can speed up, the first layer's synaptic
product (784 -> 512, the engine's weights of the pruned network from
``engine_vs_lava.py``; 0/1 input spikes at a 10 % rate), and times every exact
way of computing it that torch and scipy offer, in one process, against the
engine's dense path (a float32 matrix product), at batch 1, 32 and 256:

- ``dense matmul``: spikes (B, 784) @ dense weights (784, 512) - the engine's dense path;
- ``torch CSR spmm``: torch.sparse.mm(CSR weights, spikes^T) - the engine's sparse path;
- ``scipy CSR @ dense``: scipy's CSR times the spike matrix;
- ``event rows (dense W)``: add the weight rows of the sources that spiked (the engine's
  event path, index_add_ of dense rows);
- ``embedding_bag (dense W)``: torch's fused row-gather-and-sum of the same rows;
- ``spikes CSR @ dense W``: the spikes as a sparse matrix;
- ``C event rows (int16 W)`` and ``C CSC events``: the engine's compiled CPU kernels
  (``targets/engine_kernels.py``, where a C compiler builds them): int16 weight rows of
  the sources that spiked summed in int32, and the same from the weights' columns
  (non-zeros per source, the work falls with both sparsities).

Every result is checked equal to the dense product. Writes
``benchmarks/results/sparse_products.json`` and ``.png`` (time per product against
batch size, per kernel) and prints, last, ``weight-sparse product speed-up over dense
at batch 256: <R>x (...)``: R is the dense product's time over the fastest kernel whose
work falls with the weights' non-zeros (the CSR ones); the event kernels use the
spikes' sparsity, on dense weights.

    python benchmarks/sparse_products.py
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from engine_vs_lava import RATE, SEED, _network  # noqa: E402

from st2chip.io import write_json, write_png  # noqa: E402
from st2chip.targets import engine_kernels  # noqa: E402

RESULTS = Path(__file__).parent / "results"
BATCHES = (1, 32, 256)
WEIGHT_SPARSE = ("torch CSR spmm", "scipy CSR @ dense", "C CSC events")  # kernels whose work falls with the
INPUT_SPARSE = ("event rows (dense W)", "embedding_bag (dense W)", "spikes CSR @ dense W",  # weights' non-zeros;
                "C event rows (int16 W)")  # ... with the spikes'


def _kernels(w: sp.csr_matrix) -> dict:
    """Each way of computing ``spikes @ w.T`` exactly, as a function of the float32 spikes ``(B, n_src)``."""
    w = sp.csr_matrix(w, dtype=np.float32)
    dense_t = torch.from_numpy(w.toarray().T.copy())  # (n_src, n_tgt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        csr = torch.sparse_csr_tensor(torch.from_numpy(w.indptr).long(), torch.from_numpy(w.indices).long(),
                                      torch.from_numpy(w.data), size=w.shape)

    def events(s: torch.Tensor) -> torch.Tensor:
        b, j = torch.nonzero(s, as_tuple=True)
        return torch.zeros(s.shape[0], dense_t.shape[1]).index_add_(0, b, dense_t[j])

    def bag(s: torch.Tensor) -> torch.Tensor:
        b, j = torch.nonzero(s, as_tuple=True)
        offsets = torch.searchsorted(b, torch.arange(s.shape[0]))
        return torch.nn.functional.embedding_bag(j, dense_t, offsets, mode="sum")

    kernels = _compiled(w, dense_t)
    return kernels | {
        "dense matmul": lambda s: s @ dense_t,
        "torch CSR spmm": lambda s: torch.sparse.mm(csr, s.T.contiguous()).T,
        "scipy CSR @ dense": lambda s: torch.from_numpy(np.ascontiguousarray((w @ s.numpy().T).T)),
        "event rows (dense W)": events,
        "embedding_bag (dense W)": bag,
        "spikes CSR @ dense W": lambda s: torch.sparse.mm(s.to_sparse_csr(), dense_t),
    }


def _compiled(w: sp.csr_matrix, dense_t: torch.Tensor) -> dict:
    """The engine's compiled event kernels (none where no C compiler builds them); int32 sums."""
    lib, threads = engine_kernels.library(), torch.get_num_threads()
    if lib is None:
        return {}
    rows = dense_t.to(torch.int16)
    csc = sp.csc_matrix(w)
    ptr, idx = torch.from_numpy(csc.indptr.astype(np.int64)), torch.from_numpy(csc.indices.astype(np.int32))
    val = torch.from_numpy(csc.data.astype(np.int16))
    n_src, n_tgt = rows.shape

    def events(s: torch.Tensor) -> torch.Tensor:
        b, out = s.bool(), torch.empty(s.shape[0], n_tgt, dtype=torch.int32)
        lib.event_dense(s.shape[0], n_src, n_tgt, b.data_ptr(), n_src, rows.data_ptr(), out.data_ptr(), b.numel(),
                        threads)
        return out

    def columns(s: torch.Tensor) -> torch.Tensor:
        b, out = s.bool(), torch.empty(s.shape[0], n_tgt, dtype=torch.int32)
        lib.event_csc(s.shape[0], n_src, n_tgt, b.data_ptr(), n_src, ptr.data_ptr(), idx.data_ptr(), val.data_ptr(),
                      out.data_ptr(), threads)
        return out

    return {"C event rows (int16 W)": events, "C CSC events": columns}


def _time(fn, s: torch.Tensor, reps: int) -> float:
    fn(s)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(reps):
            fn(s)
        best = min(best, (time.perf_counter() - start) / reps)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = {}
    for label, sparsity in (("dense", 0.0), ("90% sparse", 0.9)):
        chip = _network([784, 512, 512, 10], sparsity)
        group = next(g for g in chip.synapses if g.source == "input")
        w = sp.csr_matrix(2 * group.dense().astype(np.float64))
        rows[label] = {"nonzero": int(w.nnz), "weights": int(w.shape[0] * w.shape[1]), "times_ms": {}}
        kernels = _kernels(w) if sparsity else {"dense matmul": _kernels(w)["dense matmul"]}
        for batch in BATCHES:
            rng = np.random.default_rng(SEED)
            s = torch.from_numpy((rng.random((batch, w.shape[1])) < RATE).astype(np.float32))
            reference = kernels["dense matmul"](s)
            for name, fn in kernels.items():
                if not torch.equal(fn(s).to(reference.dtype), reference):
                    raise AssertionError(f"{name} differs from the dense product at batch {batch}")
                seconds = _time(fn, s, reps=max(3, 2000 // batch))
                rows[label]["times_ms"].setdefault(name, []).append(1e3 * seconds)
    dense = rows["dense"]["times_ms"]["dense matmul"]
    sparse = rows["90% sparse"]["times_ms"]
    best_name = min(WEIGHT_SPARSE, key=lambda n: sparse[n][-1])
    ratio = dense[-1] / sparse[best_name][-1]
    best_event = min(INPUT_SPARSE, key=lambda n: sparse[n][-1])
    card = platform.processor() or platform.machine()
    out = {"device": "cpu", "card": card, "threads": args.threads, "input_rate": RATE, "batches": list(BATCHES),
           "layer": "input -> lif1 (784 -> 512)", "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
           "networks": rows, "best_weight_sparse_kernel": best_name, "dense_over_best_weight_sparse_at_256": ratio,
           "best_input_sparse_kernel": best_event}
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / "sparse_products.json", out)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(BATCHES, dense, "ko-", label="dense weights, dense matmul")
    for name, times in sparse.items():
        ax.plot(BATCHES, times, "o--" if name == "dense matmul" else "o-", label=f"90 % sparse weights, {name}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size (samples)")
    ax.set_ylabel("ms per product (784 -> 512, 10 % input spikes)")
    ax.set_title(f"one synaptic product, {args.threads} CPU threads ({card})")
    ax.legend(fontsize=6)
    fig.tight_layout()
    write_png(RESULTS / "sparse_products.png", fig)
    for name, times in sparse.items():
        print(f"90% sparse, {name}: " + ", ".join(f"batch {b} {t:.3f} ms" for b, t in zip(BATCHES, times)),
              file=sys.stderr)
    print(f"weight-sparse product speed-up over dense at batch 256: {ratio:.2f}x ({best_name} "
          f"{sparse[best_name][-1]:.3f} ms on {rows['90% sparse']['nonzero']:,} non-zeros vs dense matmul "
          f"{dense[-1]:.3f} ms on {rows['dense']['nonzero']:,}; {best_event}, which uses the input's sparsity and not "
          f"the weights', {sparse[best_event][-1]:.3f} ms; {args.threads} threads, {card})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
