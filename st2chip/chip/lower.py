r"""Lower a canonical NIR graph to a :class:`~st2chip.chipgraph.ChipGraph`.

Steps, each measured in ``ChipGraph.report``:

1. **Discrete-time reading.** Every neuron node becomes
   :math:`v \leftarrow \beta v + g\,(W x + b) + (1-\beta) v_{leak}` with
   :math:`\beta = 1 - dt/\tau`, input gain :math:`g = (dt/\tau)\, r` (LIF, LI),
   :math:`\beta = 1, g = dt\, r` (IF, I). A ``CubaLIF`` keeps its synaptic current on
   the chip's ``u``: :math:`u \leftarrow \beta_u u + g\,W x`, :math:`v \leftarrow \beta v + u`
   with :math:`\beta_u = 1 - dt/\tau_{syn}` (Lava's ``du = 4095 - 4096 \beta_u``),
   :math:`g = (dt/\tau_{mem})\, r\, (dt/\tau_{syn})\, w_{in}`; its Affine bias becomes the
   voltage bias it settles to, :math:`g b / (1 - \beta_u)`. Chains of
   Affine nodes (a DSP low-rank layer exported as U then V) are multiplied out.
2. **Threshold folding.** Lava's LIF has one threshold per process, sLIF one per
   neuron. Dividing neuron :math:`i`'s incoming weights and bias by
   :math:`\theta_i` gives threshold 1 with identical spikes (exact for reset to
   zero, before quantization).
3. **Decay grouping.** Lava has one ``dv`` (and ``du``) per process: the per-neuron
   :math:`dv_i = \mathrm{round}(4096(1-\beta_i))` are clustered (1-D k-means,
   ``decay_groups`` clusters), the ``du`` of a CubaLIF likewise, and each distinct
   (``du``, ``dv``) pair becomes one population.
4. **Quantization.** Per population a scale :math:`S` (threshold ``vth = S``)
   makes the largest folded weight a full 8-bit mantissa; each incoming synapse
   group gets the smallest exponent that fits; biases get 13-bit mantissas with
   per-neuron exponents. The relative error of each step is reported.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import nir
import numpy as np
import scipy.sparse as sp

from st2chip.chip.chipgraph import (BIAS_EXP_RANGE, BIAS_MANT_RANGE, DECAY_MAX, DELAY_MAX, VTH_MAX,
                                    WEIGHT_EXP_RANGE, ChipGraph, InputPort, Population, SynapseGroup)
from st2chip.errors import GraphError, St2chipWarning
from st2chip.graph.simulate import delay_steps

SPIKING = (nir.LIF, nir.IF, nir.CubaLIF)
READOUT = (nir.LI, nir.I)
NEURONS = SPIKING + READOUT
MANT_FULL = 254          # largest even weight value 2*m with m = 127
MAX_SCALE = 4096         # cap on vth: leaves 2^5 headroom for v below 2^23
SPARSE_BELOW = 0.5       # store as CSR when fewer than this fraction of weights are non-zero
OUTLIER_FACTOR = 64.0    # a neuron whose folded weights exceed 64x its group's median gets its own population
WEIGHT_ERROR_WARN = 0.05 # a layer whose relative weight error exceeds 5 % is reported with a warning


class QuantizationWarning(St2chipWarning):
    """Lowering kept the graph but its fixed-point weights are far from the float ones."""


@dataclass
class _Layer:
    """A neuron node read as a discrete-time layer, in float."""

    name: str
    beta: np.ndarray
    gain: np.ndarray
    bias: np.ndarray
    threshold: np.ndarray
    spiking: bool
    beta_u: np.ndarray | None = None  # synaptic-current decay (CubaLIF); None: the current forgets at once
    bias_gain: np.ndarray | None = None  # how an Affine bias reaches v (CubaLIF: its steady state)


def _read_neuron(name: str, node: nir.NIRNode, dt: float) -> _Layer:
    if isinstance(node, SPIKING) and np.any(node.v_reset != 0):
        raise GraphError("the chip resets to 0; nonzero v_reset cannot be lowered", node=name, field="v_reset")
    if isinstance(node, nir.LIF):
        ratio = dt / node.tau
        return _Layer(name, 1 - ratio, ratio * node.r, (ratio * node.v_leak), node.v_threshold, True)
    if isinstance(node, nir.IF):
        n = node.r.size
        return _Layer(name, np.ones(n), dt * node.r, np.zeros(n), node.v_threshold, True)
    if isinstance(node, nir.CubaLIF):
        g_syn, g_mem = dt / node.tau_syn, dt / node.tau_mem
        gain = g_mem * node.r * g_syn * node.w_in  # input -> chip current u (which the chip adds to v)
        return _Layer(name, 1 - g_mem, gain, g_mem * node.v_leak, node.v_threshold, True, beta_u=1 - g_syn,
                      bias_gain=gain / g_syn)
    if isinstance(node, nir.LI):
        ratio = dt / node.tau
        return _Layer(name, 1 - ratio, ratio * node.r, ratio * node.v_leak, np.ones(node.r.size), False)
    if isinstance(node, nir.I):
        n = node.r.size
        return _Layer(name, np.ones(n), dt * node.r, np.zeros(n), np.ones(n), False)
    raise _not_lowered(name, node)


def _not_lowered(name: str, node: nir.NIRNode) -> GraphError:
    return GraphError(f"cannot lower node type {type(node).__name__}: only LIF, IF, LI and I neurons are mapped "
                      f"to the chip so far (the float simulation runs it)", node=name)


def _decay_groups(dv: np.ndarray, groups: int) -> np.ndarray:
    """Cluster 12-bit decays into at most ``groups`` values (deterministic 1-D k-means)."""
    values = np.unique(dv)
    if values.size <= groups:
        return dv.copy()
    centers = np.quantile(dv, (np.arange(groups) + 0.5) / groups)
    for _ in range(100):
        label = np.argmin(np.abs(dv[:, None] - centers[None, :]), axis=1)
        new = np.array([dv[label == k].mean() if np.any(label == k) else centers[k] for k in range(groups)])
        if np.allclose(new, centers):
            break
        centers = new
    return np.rint(centers[label]).astype(np.int64)


def _bias_fixed(bias_v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split voltage-unit biases into 13-bit mantissas and 3-bit exponents (smallest that fits)."""
    lo, hi = BIAS_MANT_RANGE
    with np.errstate(divide="ignore"):
        need = np.ceil(np.log2(np.abs(bias_v) / (hi + 0.5)))
    exp = np.clip(np.nan_to_num(need, neginf=0.0), *BIAS_EXP_RANGE).astype(np.int64)
    mant = np.clip(np.rint(bias_v / 2.0**exp), lo, hi).astype(np.int64)
    return mant, exp


def _rel_error(approx: np.ndarray, exact: np.ndarray) -> float:
    """``||approx - exact|| / ||exact||``, computed on scaled values so huge weights cannot overflow to NaN."""
    m = float(np.max(np.abs(exact))) if exact.size else 0.0
    if m == 0:
        return float(np.linalg.norm(approx))
    return float(np.linalg.norm((approx - exact) / m) / np.linalg.norm(exact / m))


def _scale_parts(index: np.ndarray, w_fold: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split one decay group's neurons into the bulk and outliers whose folded weights dwarf the rest.

    A population shares one scale (``vth``), set by its largest weight: one neuron with
    weights :data:`OUTLIER_FACTOR` times the group's median row maximum would cost every
    other neuron that many quantization steps, so it gets a population (and scale) of its own.
    """
    row_max = np.max(np.abs(w_fold[index]), axis=1) if w_fold.shape[1] else np.zeros(index.size)
    live = row_max[row_max > 0]
    if live.size < 2:
        return index, index[:0]
    outlier = row_max > OUTLIER_FACTOR * np.median(live)
    return index[~outlier], index[outlier]


def _affine_chain(graph: nir.NIRGraph, start: str, preds: dict[str, list[str]], dt: float
                  ) -> tuple[str, np.ndarray | None, np.ndarray | None, int, int]:
    """Walk back from node ``start`` (included) through Affine/Scale/Flatten/Delay nodes to a neuron or Input.

    Returns the source's name, the product weight and bias of the chain
    (``None`` when the chain holds no Affine or Scale), how many Affines it held
    and the steps its Delay nodes hold the signal.
    """
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    count = lag = 0
    name = start
    while True:
        node = graph.nodes[name]
        if isinstance(node, (nir.Affine, nir.Scale)):
            w = node.weight if isinstance(node, nir.Affine) else np.diag(node.scale)
            b = node.bias if isinstance(node, nir.Affine) else np.zeros(w.shape[0])
            weight, bias = (w.copy(), b.copy()) if weight is None else (weight @ w, bias + weight @ b)
            count += isinstance(node, nir.Affine)
        elif isinstance(node, nir.Delay):
            steps = np.unique(delay_steps(name, node, dt))
            if steps.size > 1:
                raise GraphError(f"per-element delays differ ({steps.tolist()} steps); a synapse group on the "
                                 f"chip delays all its synapses alike so far", node=name, field="delay")
            lag += int(steps[0])
        elif not isinstance(node, nir.Flatten):
            return name, weight, bias, count, lag
        sources = preds.get(name, [])
        if len(sources) != 1:
            raise GraphError(f"a linear node between neuron layers needs exactly one input edge, found "
                             f"{len(sources)}", node=name)
        name = sources[0]


def _incoming(graph: nir.NIRGraph, name: str, preds: dict[str, list[str]], dt: float
              ) -> tuple[list[tuple[str, int]], np.ndarray, np.ndarray, int]:
    """Every path into neuron node ``name`` as one matrix over its (source, lag) pairs, side by side.

    Each incoming edge is a chain of linear nodes (and Delay nodes, the lag)
    back to a source (Input or neuron); paths with the same source and lag add
    up. Returns the pairs in order, the weight ``(n, Σ n_source)``, the summed
    bias and the most Affines on one path.
    """
    by_source: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
    affines = 0
    for start in preds.get(name, []):
        source, weight, bias, count, lag = _affine_chain(graph, start, preds, dt)
        if weight is None:
            raise GraphError(f"input from '{source}' must pass through an Affine or Linear node", node=name)
        if not isinstance(graph.nodes[source], (nir.Input, *SPIKING)):
            raise GraphError(f"input comes from '{source}', which does not emit spikes", node=name)
        old = by_source.get((source, lag))
        by_source[(source, lag)] = (weight, bias) if old is None else (old[0] + weight, old[1] + bias)
        affines = max(affines, count)
    if not by_source:
        raise GraphError("a neuron layer must be fed through an Affine or Linear node", node=name)
    keys = list(by_source)
    return (keys, np.hstack([by_source[k][0] for k in keys]), sum(by_source[k][1] for k in keys), affines)


def lower(graph: nir.NIRGraph, *, decay_groups: int = 1) -> ChipGraph:
    """Map a canonical NIR graph (see :mod:`st2chip.graph.normalize`) onto the chip.

    ``decay_groups`` bounds the number of populations (distinct ``dv``) per layer.
    """
    if decay_groups < 1:
        raise GraphError("decay_groups must be at least 1", field="decay_groups")
    dt = float(graph.metadata.get("dt", 1e-3))
    preds: dict[str, list[str]] = {}
    for src, dst in graph.edges:
        preds.setdefault(dst, []).append(src)

    inputs: list[InputPort] = []
    populations: list[Population] = []
    synapses: list[SynapseGroup] = []
    layer_pops: dict[str, list[Population]] = {}
    depth: dict[str, int] = {}  # synapse groups from an input to each layer
    report: dict = {"dt": dt, "layers": {}}

    for name, node in graph.nodes.items():
        if isinstance(node, nir.Input):
            size = int(np.prod(next(iter(node.input_type.values()))))
            inputs.append(InputPort(name, size))
            layer_pops[name] = []
            depth[name] = 0
            continue
        if not isinstance(node, NEURONS):
            if not isinstance(node, (nir.Affine, nir.Flatten, nir.Scale, nir.Delay, nir.Output)):
                raise _not_lowered(name, node)
            continue
        layer = _read_neuron(name, node, dt)
        keys, weight, bias, affines = _incoming(graph, name, preds, dt)
        sources = list(dict.fromkeys(s for s, _ in keys))
        # paths of different depth are aligned with synaptic delays, so that the chip adds what float adds;
        # a Delay node's lag comes on top
        depth[name] = 1 + max(depth[s] for s in sources)
        delay = {(s, lag): depth[name] - 1 - depth[s] + lag for s, lag in keys}
        lagged = [s for s, lag in keys if lag and not isinstance(graph.nodes[s], nir.Input)]
        if lagged:
            raise GraphError(f"a Delay node after neuron layer '{lagged[0]}' is not lowered yet: on the chip, that "
                             f"layer's activity after a sample would reach the next sample (only delays on paths "
                             f"from an Input are lowered so far)", node=name)
        too_long = {s: d for (s, _), d in delay.items() if d > DELAY_MAX}
        if too_long:
            raise GraphError(f"the path from {', '.join(too_long)} needs a delay of {max(too_long.values())} "
                             f"steps; synapses delay at most {DELAY_MAX}", node=name)
        n = weight.shape[0]
        if n == 0:
            raise GraphError("the layer has no neurons", node=name, field="weight")
        if np.any(layer.beta < 0) or np.any(layer.beta > 1):
            raise GraphError(f"leak factor 1 - dt/tau must lie in [0, 1]; tau is shorter than dt = {dt:g} s: "
                             f"pass the dt the model was trained with (--dt), or st2chip import the file "
                             f"from its framework", node=name, field="tau")
        if np.any(layer.threshold <= 0):
            raise GraphError("thresholds must be positive", node=name, field="v_threshold")
        # 2. fold per-neuron thresholds into weights and bias (threshold becomes 1)
        with np.errstate(over="ignore", invalid="ignore"):
            scale = layer.gain / layer.threshold
            w_fold = weight * scale[:, None]
            bias_gain = layer.gain if layer.bias_gain is None else layer.bias_gain
            b_fold = bias * bias_gain / layer.threshold + layer.bias / layer.threshold
            for field, value in (("weight", w_fold), ("bias", b_fold)):
                bad = ~np.isfinite(value)
                if bad.any():
                    i = int(np.argwhere(bad)[0][0])
                    raise GraphError(f"{field}s divided by the threshold overflow (neuron {i}: threshold "
                                     f"{layer.threshold[i]:g}, gain {layer.gain[i]:g}); the chip cannot hold them",
                                     node=name, field=field)
        # 3. decay groups
        dv_exact = 4096.0 * (1.0 - layer.beta)
        dv = np.clip(np.rint(dv_exact), 0, DECAY_MAX).astype(np.int64)
        dv_grouped = _decay_groups(dv, decay_groups)
        beta_chip = 1.0 - dv_grouped / 4096.0
        if layer.beta_u is None:
            du_grouped = np.full(n, DECAY_MAX)
        else:  # Lava decays u by (4095 - du) / 4096
            if np.any(layer.beta_u < 0) or np.any(layer.beta_u > 1):
                raise GraphError(f"current decay 1 - dt/tau_syn must lie in [0, 1]; tau_syn is shorter than "
                                 f"dt = {dt:g} s (--dt)", node=name, field="tau_syn")
            du = np.clip(np.rint(4095.0 - 4096.0 * layer.beta_u), 0, DECAY_MAX).astype(np.int64)
            du_grouped = _decay_groups(du, decay_groups)
        pairs = sorted(set(zip(du_grouped.tolist(), dv_grouped.tolist())), key=lambda d: (d[1], d[0]))
        layer_report = {
            "kind": type(node).__name__, "neurons": n, "affines": affines,
            "source": sources[0] if len(sources) == 1 else sources,
            **({"delays": {(s if not lag else f"{s} (+{lag} lag)"): d for (s, lag), d in delay.items() if d}}
               if any(delay.values()) else {}),
            "decay_groups": len(pairs),
            "leak_error": float(np.max(np.abs(beta_chip - layer.beta))) if n else 0.0,
            "threshold_range": [float(layer.threshold.min()), float(layer.threshold.max())],
        }
        if layer.beta_u is not None:
            layer_report["current_leak_error"] = float(np.max(np.abs((4095 - du_grouped) / 4096.0 - layer.beta_u)))
            if np.any(bias != 0):  # NIR filters an Affine bias through the current; the chip adds it to v
                layer_report["bias_note"] = ("Affine bias enters as its steady-state voltage bias: exact once the "
                                             "synaptic current has settled (a few tau_syn)")
        dense = np.count_nonzero(weight) >= SPARSE_BELOW * weight.size
        form = "lowrank" if affines > 1 else ("dense" if dense else "sparse")
        src_parts, offset = [], 0  # (source input or population, its columns in ``weight``, delay, lag)
        for source, lag in keys:
            width = sum(p.size for p in layer_pops[source]) or next(i.size for i in inputs if i.name == source)
            d = delay[(source, lag)]
            src_parts += ([(source, offset + np.arange(width), d, lag)] if not layer_pops[source]
                          else [(p.name, offset + p.index, d, lag) for p in layer_pops[source]])
            offset += width
        errors, bias_errors, outlier_errors = [], [], []
        pops = []
        parts, outliers = [], []
        for g, (du_g, dv_g) in enumerate(pairs):
            bulk, odd = _scale_parts(np.flatnonzero((dv_grouped == dv_g) & (du_grouped == du_g)), w_fold)
            pname = name if len(pairs) == 1 else f"{name}/g{g}"
            parts.append((pname, (int(du_g), int(dv_g)), bulk))
            if odd.size:
                parts.append((f"{pname}/outliers", (int(du_g), int(dv_g)), odd))
                outliers += odd.tolist()
        if outliers:
            layer_report["outliers"] = sorted(outliers)
            warnings.warn(f"layer '{name}': neuron(s) {sorted(outliers)[:8]}{' ...' if len(outliers) > 8 else ''} "
                          f"have weights over {OUTLIER_FACTOR:g}x their group's (tiny thresholds?); each group's "
                          f"outliers get their own population so the rest keep their precision (their own weight "
                          f"error is reported as outlier_weight_error)", QuantizationWarning)
        for pname, (du_g, dv_g), index in parts:
            if index.size == 0:
                continue
            w_rows = w_fold[index]
            wmax = float(np.max(np.abs(w_rows))) if w_rows.size else 0.0
            s_scale = int(np.clip(np.floor(MANT_FULL / wmax), 1, MAX_SCALE)) if wmax > 0 else MAX_SCALE
            bias_v = b_fold[index] * s_scale * 64.0
            mant_b, exp_b = _bias_fixed(bias_v)
            bias_errors.append(_rel_error((mant_b << exp_b) / (s_scale * 64.0), b_fold[index]))
            pop = Population(pname, name, index, du=du_g, dv=dv_g,
                             vth=s_scale if layer.spiking else VTH_MAX,
                             bias_mant=mant_b, bias_exp=exp_b, readout=not layer.spiking)
            pops.append(pop)
            for src_name, cols, extra, lag in src_parts:
                w_sub = w_rows[:, cols]
                smax = float(np.max(np.abs(w_sub))) if w_sub.size else 0.0
                exp = 0 if smax == 0 else int(np.ceil(np.log2(smax * s_scale / MANT_FULL) - 1e-12))
                exp = int(np.clip(exp, *WEIGHT_EXP_RANGE))
                mant = np.clip(np.rint(w_sub * s_scale / 2.0**exp / 2), -128, 127).astype(np.int64)
                err = _rel_error(2 * mant * 2.0**exp / s_scale, w_sub)
                (outlier_errors if pname.endswith("/outliers") else errors).append(err)
                stored = sp.csr_matrix(mant) if form == "sparse" else mant
                gname = f"{src_name}->{pname}" + (f"+{lag}" if lag else "")
                synapses.append(SynapseGroup(gname, src_name, pname, stored, exp, form, err, delay=extra, lag=lag))
        layer_report["weight_error"] = float(max(errors, default=0.0))
        layer_report["bias_error"] = float(max(bias_errors, default=0.0))
        if outliers:
            layer_report["outlier_weight_error"] = float(max(outlier_errors, default=0.0))
        for field in ("weight_error", "bias_error", "outlier_weight_error"):
            if field not in layer_report:
                continue
            if not np.isfinite(layer_report[field]):
                raise GraphError(f"the quantization error is not finite ({layer_report[field]})", node=name,
                                 field="weight" if "weight" in field else "bias")
        if layer_report["weight_error"] > WEIGHT_ERROR_WARN:
            warnings.warn(f"layer '{name}': relative weight error {100 * layer_report['weight_error']:.1f} % "
                          f"after quantization (over {100 * WEIGHT_ERROR_WARN:g} %); expect the chip to differ from "
                          f"float (st2chip verify measures it)", QuantizationWarning)
        report["layers"][name] = layer_report
        layer_pops[name] = pops
        populations += pops
    return ChipGraph(inputs, populations, synapses, report)
