r"""The engine's CPU kernels: one compiled pass per step for the neuron update and records, and event-driven
synaptic products, in a small C library built on first use.

A step of the torch engine is some thirty whole-tensor operations on ``(B, N)`` int64 state; on a CPU they
cost about two thirds of a step (``benchmarks/engine_profile.py``). Here one pass per sample row does it all:

- :func:`lif_step` sums the step's synaptic inputs (each group's product, integer or float, shifted by its
  exponent and the activation shift, with Lava's floor for a negative exponent), updates ``u`` and ``v``
  (truncating decays, the 24-bit wrap of ``u``, the clamp of ``v``, bias, zero state before a population's
  depth, reset to zero or by subtraction, relays that pass their input on) and writes the step's spikes and
  recorded voltages straight into the run's records. The arithmetic is int64 in registers; the state is
  stored as int32 where the graph's bounds prove it fits (the engine checks), int64 otherwise.
- :func:`event_dense` adds, per sample, the int16 weight rows of the sources that spiked (int32 sums, exact
  while the fan-in bound stays below 2^31), or declines when too many spiked (the caller then multiplies);
  :func:`event_csc` does the same for a sparse group from its columns (non-zeros per source), and
  :func:`event_csc_add`, for the groups without a right shift, adds their weights (shifted to the current's
  scale) straight into the step's int64 input, which :func:`lif_step` reads (one call for all of a step's);
- :func:`graded_csr` multiplies a graded source's values (an analog port, a host product, a relay) by a sparse
  group's rows, in int32 where the group's bound proves the sums fit, 64 samples at a time.

The library needs a C compiler (``$CC``, else ``cc``/``gcc``) with OpenMP; it is compiled for this CPU once
and cached under ``$XDG_CACHE_HOME/st2chip/kernels`` (``~/.cache`` by default), keyed by its source, flags and
CPU. Without one, :func:`library` returns None and the engine runs its torch path, which gives the same bits.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c11"]
KIND = {torch.float32: 0, torch.float64: 1, torch.int32: 2, torch.int64: 3}  # a term's value type
SUBTRACT, RELAY, REFRACTORY = 1, 2, 4  # a column's mode bits: reset by subtraction, relay, refractory

SOURCE = r"""
#include <stdint.h>
#include <string.h>

#define M (INT64_C(1) << 23)
#define TILE 512

typedef struct {
  const void *x;                 /* (B, hi - lo) values, rows ld elements apart */
  int64_t ld, lo, hi;            /* the state columns [lo, hi) it adds to */
  int32_t kind, rshift, lshift;  /* kind: 0 float32, 1 float64, 2 int32, 3 int64, -1 off */
  int32_t pad;
} term_t;

/* a[c - c0] += sum over terms of ((int64) x >> rshift) << lshift, for the columns [c0, c1) of row b */
static void add_terms(const term_t *terms, int64_t n_terms, int64_t b, int64_t c0, int64_t c1, int64_t *a) {
  for (int64_t t = 0; t < n_terms; t++) {
    const term_t *tm = terms + t;
    int64_t lo = tm->lo > c0 ? tm->lo : c0, hi = tm->hi < c1 ? tm->hi : c1;
    if (tm->kind < 0 || lo >= hi) continue;
    int64_t *d = a + (lo - c0), n = hi - lo, off = b * tm->ld + (lo - tm->lo);
    const int rs = tm->rshift;
    const int64_t mul = INT64_C(1) << tm->lshift;
    switch (tm->kind) {
      case 0: { const float *x = (const float *)tm->x + off;
                for (int64_t i = 0; i < n; i++) d[i] += ((int64_t)x[i] >> rs) * mul; } break;
      case 1: { const double *x = (const double *)tm->x + off;
                for (int64_t i = 0; i < n; i++) d[i] += ((int64_t)x[i] >> rs) * mul; } break;
      case 2: { const int32_t *x = (const int32_t *)tm->x + off;
                for (int64_t i = 0; i < n; i++) d[i] += ((int64_t)x[i] >> rs) * mul; } break;
      default: { const int64_t *x = (const int64_t *)tm->x + off;
                 for (int64_t i = 0; i < n; i++) d[i] += (x[i] >> rs) * mul; } break;
    }
  }
}

/* trunc(x * f / 4096): Loihi's sign-magnitude shift (toward zero) */
static inline int64_t decay(int64_t x, int64_t f) {
  int64_t p = x * f;
  return (p + ((p >> 63) & 4095)) >> 12;
}

/* mode bits per column: 1 reset by subtraction, 2 relay (passes its input on), 4 refractory (held a step);
   the update of the columns [0, n) of one sample row, given their input a (int64 throughout: it vectorizes) */
#define LIF_COLUMNS(NAME, T)                                                                                 \
static void NAME(int64_t n, int64_t g, const int64_t *restrict a, T *restrict ub, T *restrict vb,           \
                 const int32_t *restrict fu, const int32_t *restrict fv, const int32_t *restrict vth,        \
                 const int32_t *restrict bias, const int32_t *restrict depth, const uint8_t *restrict mode, \
                 const uint8_t *restrict pb, uint8_t *restrict fb) {                                        \
  for (int64_t c = 0; c < n; c++) {                                                                         \
    int64_t x = a[c], vo = vb[c];                                                                           \
    int64_t un = decay(ub[c], fu[c]) + x;                                                                   \
    un = un > M ? un - 2 * M : un;                                                                          \
    un = un <= -M ? un + 2 * M : un;                                                                        \
    int64_t vn = decay(vo, fv[c]) + un + bias[c];                                                           \
    vn = vn < 1 - M ? 1 - M : (vn > M - 1 ? M - 1 : vn);                                                    \
    int64_t md = mode[c], act = g > depth[c], relay = (md & 2) != 0, held = (md & 4) && pb[c];              \
    int64_t f = act && vn > vth[c] && !held;                                                                \
    vn = held ? vo : (act ? vn : 0);                                                                        \
    vn = f ? ((md & 1) ? vn - vth[c] : 0) : vn;                                                             \
    int64_t xr = act ? x : 0;                                                                               \
    ub[c] = (T)(relay || !act ? 0 : un);                                                                    \
    vb[c] = (T)(relay ? xr : vn);                                                                           \
    fb[c] = (uint8_t)(relay ? xr != 0 : f);                                                                 \
  }                                                                                                         \
}

/* one step for every sample: the input acc (B, N) read (and zeroed for the next step) and the terms added,
   the neurons of the column ranges [cols[2r], cols[2r + 1]) updated (on int64 copies of a tile of the state),
   their spikes and the voltages recorded; the other columns keep their state and records */
#define LIF_STEP(NAME, T)                                                                                    \
void NAME(int64_t B, int64_t N, int64_t g, const term_t *terms, int64_t n_terms, T *u, T *v,                \
          const int32_t *fu, const int32_t *fv, const int32_t *vth, const int32_t *bias,                    \
          const int32_t *depth, const uint8_t *mode, const uint8_t *prev, int64_t ld_p,                     \
          uint8_t *fired, int64_t ld_f, T *rec_v, int64_t ld_v, const int64_t *vcols, int64_t n_vcols,       \
          const int64_t *cols, int64_t n_ranges, int64_t *acc, int nth) {                                   \
  _Pragma("omp parallel for num_threads(nth) schedule(static)")                                             \
  for (int64_t b = 0; b < B; b++) {                                                                         \
    int64_t a[TILE], ut[TILE], vt[TILE];                                                                    \
    T *ub = u + b * N, *vb = v + b * N;                                                                     \
    int64_t *ab = acc + b * N;                                                                              \
    for (int64_t r = 0; r < n_ranges; r++)                                                                  \
    for (int64_t c0 = cols[2 * r]; c0 < cols[2 * r + 1]; c0 += TILE) {                                      \
      int64_t c1 = c0 + TILE < cols[2 * r + 1] ? c0 + TILE : cols[2 * r + 1];                               \
      for (int64_t c = c0; c < c1; c++) { a[c - c0] = ab[c]; ab[c] = 0; }                                   \
      add_terms(terms, n_terms, b, c0, c1, a);                                                              \
      for (int64_t c = c0; c < c1; c++) { ut[c - c0] = ub[c]; vt[c - c0] = vb[c]; }                         \
      lif_columns(c1 - c0, g, a, ut, vt, fu + c0, fv + c0, vth + c0, bias + c0, depth + c0,                 \
                  mode + c0, prev + b * ld_p + c0, fired + b * ld_f + c0);                                  \
      for (int64_t c = c0; c < c1; c++) { ub[c] = (T)ut[c - c0]; vb[c] = (T)vt[c - c0]; }                   \
    }                                                                                                       \
    for (int64_t k = 0; k < n_vcols; k++) rec_v[b * ld_v + k] = vb[vcols[k]];                               \
  }                                                                                                         \
}

LIF_COLUMNS(lif_columns, int64_t)
LIF_STEP(lif_step_i32, int32_t)
LIF_STEP(lif_step_i64, int64_t)

static int64_t count_spikes(int64_t B, int64_t S, const uint8_t *s, int64_t ld_s, int nth) {
  int64_t n = 0;
  #pragma omp parallel for reduction(+ : n) num_threads(nth) schedule(static)
  for (int64_t b = 0; b < B; b++) {
    const uint8_t *sb = s + b * ld_s;
    int64_t k = 0;
    for (int64_t j = 0; j < S; j++) k += sb[j] != 0;
    n += k;
  }
  return n;
}

/* out (B, T) = sum of the rows w[j] (S, T) of the sources j that spiked; -1 (nothing done) above max_events */
int64_t event_dense(int64_t B, int64_t S, int64_t T, const uint8_t *s, int64_t ld_s, const int16_t *w,
                    int32_t *out, int64_t max_events, int nth) {
  int64_t n = count_spikes(B, S, s, ld_s, nth);
  if (n > max_events) return -1;
  #pragma omp parallel for num_threads(nth) schedule(static)
  for (int64_t b = 0; b < B; b++) {
    const uint8_t *sb = s + b * ld_s;
    int32_t *o = out + b * T;
    for (int64_t t = 0; t < T; t++) o[t] = 0;
    for (int64_t j = 0; j < S; j++) {
      if (!sb[j]) continue;
      const int16_t *r = w + j * T;
      for (int64_t t = 0; t < T; t++) o[t] += r[t];
    }
  }
  return n;
}

typedef struct {
  const uint8_t *s;              /* (B, S) 0/1 spikes, rows ld_s apart */
  int64_t ld_s, n_src, lo;       /* the group's target columns start at lo in the state */
  const int64_t *ptr;            /* source j: targets idx[k], shifted weights val[k], k in [ptr[j], ptr[j + 1]) */
  const int32_t *idx, *val;
} scatter_t;

/* acc (B, N) += every group's input at the current's scale: each source j that spiked adds val[k] (its weight,
   shifted) to target lo + idx[k]; all of a step's groups in one pass, a sample per thread */
void event_csc_add(int64_t B, int64_t N, const scatter_t *groups, int64_t n_groups, int64_t *acc, int nth) {
  #pragma omp parallel for num_threads(nth) schedule(static)
  for (int64_t b = 0; b < B; b++) {
    for (int64_t q = 0; q < n_groups; q++) {
      const scatter_t *gr = groups + q;
      const uint8_t *sb = gr->s + b * gr->ld_s;
      int64_t *o = acc + b * N + gr->lo;
      for (int64_t j = 0; j < gr->n_src; j++) {
        if (!sb[j]) continue;
        for (int64_t k = gr->ptr[j]; k < gr->ptr[j + 1]; k++) o[gr->idx[k]] += gr->val[k];
      }
    }
  }
}

/* the same from a sparse group's columns: source j adds val[k] to target idx[k], k in [ptr[j], ptr[j + 1]) */
int64_t event_csc(int64_t B, int64_t S, int64_t T, const uint8_t *s, int64_t ld_s, const int64_t *ptr,
                  const int32_t *idx, const int16_t *val, int32_t *out, int nth) {
  #pragma omp parallel for num_threads(nth) schedule(static)
  for (int64_t b = 0; b < B; b++) {
    const uint8_t *sb = s + b * ld_s;
    int32_t *o = out + b * T;
    for (int64_t t = 0; t < T; t++) o[t] = 0;
    for (int64_t j = 0; j < S; j++) {
      if (!sb[j]) continue;
      for (int64_t k = ptr[j]; k < ptr[j + 1]; k++) o[idx[k]] += val[k];
    }
  }
  return 0;
}

/* out (B, T), rows ld_out apart, = the sums over a sparse group's rows (targets): target i adds val[k] x[idx[k]],
   k in [ptr[i], ptr[i + 1]), for a graded source's values xt (S, B), one source's samples contiguous: int32
   sums (the caller checks the group's bound), 64 samples at a time in registers */
void graded_csr(int64_t B, int64_t T, const int32_t *xt, const int64_t *ptr, const int32_t *idx,
                const int16_t *val, int32_t *out, int64_t ld_out, int nth) {
  #pragma omp parallel for num_threads(nth) schedule(static)
  for (int64_t i = 0; i < T; i++) {
    for (int64_t b0 = 0; b0 < B; b0 += 64) {
      int64_t nb = B - b0 < 64 ? B - b0 : 64;
      int32_t acc[64] = {0};
      for (int64_t k = ptr[i]; k < ptr[i + 1]; k++) {
        const int32_t w = val[k], *x = xt + idx[k] * B + b0;
        for (int64_t b = 0; b < nb; b++) acc[b] += w * x[b];
      }
      for (int64_t b = 0; b < nb; b++) out[(b0 + b) * ld_out + i] = acc[b];
    }
  }
}
"""


class Term(ctypes.Structure):
    """One synaptic input of a step: a group's product ``(B, hi - lo)`` for the state columns ``[lo, hi)``."""

    _fields_ = [("x", ctypes.c_void_p), ("ld", ctypes.c_int64), ("lo", ctypes.c_int64), ("hi", ctypes.c_int64),
                ("kind", ctypes.c_int32), ("rshift", ctypes.c_int32), ("lshift", ctypes.c_int32),
                ("pad", ctypes.c_int32)]


class Scatter(ctypes.Structure):
    """One sparse group of a step for :func:`event_csc_add`: its source's spikes and its columns."""

    _fields_ = [("s", ctypes.c_void_p), ("ld_s", ctypes.c_int64), ("n_src", ctypes.c_int64), ("lo", ctypes.c_int64),
                ("ptr", ctypes.c_void_p), ("idx", ctypes.c_void_p), ("val", ctypes.c_void_p)]


def _cpu_id() -> str:
    """What ``-march=native`` compiles for: the CPU's model and flags (Linux), else the platform's name."""
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() + platform.machine()
    return "\n".join(sorted({line for line in info if line.startswith(("model name", "flags"))}))


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "st2chip" / "kernels"


def _build(cc: str) -> Path:
    """The library for this source, flags and CPU: from the cache, else compiled into it (atomically)."""
    key = hashlib.sha256("\0".join([SOURCE, cc, *FLAGS, _cpu_id()]).encode()).hexdigest()[:20]
    target = _cache_dir() / f"engine-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src, out = Path(tmp) / "engine.c", Path(tmp) / "engine.so"
        src.write_text(SOURCE)
        subprocess.run([cc, *FLAGS, "-o", str(out), str(src)], check=True, capture_output=True, timeout=120)
        os.replace(out, target)
    return target


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernels, or None where no C compiler with OpenMP builds them (the torch path runs)."""
    cc = _compiler()
    if cc is None:
        return None
    try:
        lib = ctypes.CDLL(str(_build(cc)))
    except (OSError, subprocess.SubprocessError):
        return None
    i64, ptr, i32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int
    for name in ("lif_step_i32", "lif_step_i64"):
        getattr(lib, name).argtypes = [i64, i64, i64, ptr, i64, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, ptr, i64,
                                       ptr, i64, ptr, i64, ptr, i64, ptr, i64, ptr, i32]
        getattr(lib, name).restype = None
    lib.event_dense.argtypes = [i64, i64, i64, ptr, i64, ptr, ptr, i64, i32]
    lib.event_dense.restype = i64
    lib.event_csc.argtypes = [i64, i64, i64, ptr, i64, ptr, ptr, ptr, ptr, i32]
    lib.event_csc.restype = i64
    lib.event_csc_add.argtypes = [i64, i64, ptr, i64, ptr, i32]
    lib.event_csc_add.restype = None
    lib.graded_csr.argtypes = [i64, i64, ptr, ptr, ptr, ptr, ptr, i64, i32]
    lib.graded_csr.restype = None
    return lib
