r"""SpikingJelly 2.0 frontend: ``activation_based.nir_exchange.export_to_nir`` -> canonical NIR.

SpikingJelly's neurons are discrete in time (one update per step, no dt). Its
export (``nir_exchange/to_nir.py``, ``_ModuleMapper``, default ``dt = 1e-4`` s,
never stored in the graph) turns steps into seconds with that dt; st2chip reads
the graph back with forward Euler and the same dt (see
:mod:`st2chip.graph.simulate`), which gives back SpikingJelly's update exactly
(``dt/tau`` of the graph is ``1/tau`` of the module):

====================================  ===================================  ================================
SpikingJelly (one step, H charged)    NIR as exported (dt = 1e-4 s)        st2chip reading (forward Euler)
====================================  ===================================  ================================
``LIFNode(tau)``, decay_input=True:   ``LIF tau = tau*dt, r = 1,``         ``v += (v_leak - v + x)/tau``
``H = V + (X - (V - V_reset))/tau``   ``v_leak = v_reset``                 (same)
``LIFNode``, decay_input=False:       ``LIF tau = tau*dt, r = tau,``       ``v += (v_leak - v)/tau + x``
``H = V - (V - V_reset)/tau + X``     ``v_leak = v_reset``                 (same)
``ParametricLIFNode(w)``              ``LIF tau = dt/sigmoid(w)``          as LIFNode, learned tau
``IFNode``: ``H = V + X``             ``IF r = 1/dt``                      ``v += dt*r*x = x`` (same)
``CUBALIFNode(c, d)``:                ``CubaLIF tau_syn = dt/(1-c),``      ``i += (1-c)(w_in x - i)``,
``I = c I + X; H = d V + I``          ``w_in = 1/(1-c), r = 1/(1-d)``      ``v += (1-d)(r i - v)`` (same)
fire when ``H - v_threshold >= 0``    ``v_threshold``                      fire when ``v > v_threshold`` (2.)
hard reset ``V = v_reset``;           ``v_reset``                          reset to ``v_reset``, start at 0
``V`` starts at ``v_reset``                                                (1.)
``layer.Linear`` / ``nn.Linear``      ``Affine`` / ``Linear`` (no bias)    ``W x + b``
====================================  ===================================  ================================

Quirks absorbed by :func:`repair` (each change gives one note):

1. **Initial voltage.** SpikingJelly starts ``V`` at ``v_reset``
   (``neuron/base_node.py``, ``BaseNode.__init__``: ``register_memory("v", v_reset)``);
   st2chip and the chip start at 0 and reset to 0. A nonzero ``v_reset`` is
   therefore shifted out: ``v' = v - v_reset`` gives ``v_reset' = 0``,
   ``v_threshold' = v_threshold - v_reset``, ``v_leak' = v_leak - v_reset``
   (exact in real arithmetic; one rounding of the shifted threshold in float).
2. **Threshold comparison.** SpikingJelly fires when ``H >= v_threshold``
   (``_ops/lif/cpu.py`` and ``_ops/if_/cpu.py``: ``spike = (h >= threshold)``;
   the Heaviside of its surrogates is ``x >= 0``); NIR, st2chip and Loihi fire
   when ``v > v_threshold``. The two differ only when the voltage lands exactly
   on the threshold, which is common with quantized weights (two inputs of 0.5
   against threshold 1.0). By default :func:`repair` lowers every threshold by
   one float64 ulp, ``np.nextafter(v_threshold, -inf)``: for every float64 ``v``,
   ``v > nextafter(θ, -inf)`` holds exactly when ``v >= θ``, so the float
   reading fires exactly when SpikingJelly's rule does, and the change
   (relative ``2**-53``) is far below any chip quantization step. The graph's
   ``metadata["threshold_rule"]`` records it so a second repair does not nudge
   again; ``threshold_ge=False`` keeps the thresholds as exported.
3. **dt.** Not stored: pass the dt of the export (:data:`DEFAULT_DT`). An IF
   node's ``r`` is ``1/dt_export``; a graph whose ``r·dt != 1`` was exported with
   another dt and is refused, naming the node and the dt it needs.
4. Weights are float32 (normalize makes them float64).

What can still differ from SpikingJelly: its CPU kernels compute in float32
(``_ops/lif/cpu.py``: ``for current in x.float()``), st2chip's float reading in
float64 and with another order of operations (``dt/τ`` times a sum instead of
a division by ``tau``), so a voltage within float32 rounding (~1e-7 relative) of
the threshold can fall on the other side; a shifted threshold (1.) adds one
more rounding. Exact ties in float64 are reproduced (2.).

Soft reset (``v_reset=None``: ``V = H - S v_threshold``, ``V`` starting at 0),
which SpikingJelly's export refuses (``NIR does not distinguish soft reset``), is
st2chip's reset by subtraction: :func:`to_nir` exports a copy of those neurons
with ``v_reset = 0`` (the same charge, which leaks towards 0 either way) and marks
their nodes ``metadata["reset"] = "subtract"`` (:mod:`st2chip.graph.reading`).

:func:`to_nir` refuses with :class:`~st2chip.errors.InputError`, naming the
layer, what has no faithful NIR/st2chip form: subclasses of the exported neurons (the export maps exact types, and a subclass
may change the update), and modules the export or canonical NIR cannot carry
(convolution, pooling, dropout, other neurons). Surrogate functions and
``detach_reset`` only change gradients and are ignored.
"""

from __future__ import annotations

import copy
from typing import Any

import nir
import numpy as np

from st2chip.converters.frontend import Converted, as_f64, finish
from st2chip.errors import InputError

NAME = "spikingjelly"
DEFAULT_DT = 1e-4  # _ModuleMapper(dt=1e-4) and export_to_nir(dt=1e-4) in nir_exchange/to_nir.py
THRESHOLD_RULE = "spikingjelly >=: v_threshold lowered by one float64 ulp"

_SPIKING = (nir.LIF, nir.IF, nir.CubaLIF)



def _repair_nodes(graph: nir.NIRGraph, dt: float, nudge: bool, prefix: str, notes: list[str]) -> None:
    for name, node in graph.nodes.items():
        where = f"{prefix}{name}"
        if isinstance(node, nir.NIRGraph):
            _repair_nodes(node, dt, nudge, f"{where}.", notes)
            continue
        if not isinstance(node, _SPIKING):
            continue
        kind = type(node).__name__
        if isinstance(node, nir.IF):
            r = as_f64(node.r)
            if r.size and not np.allclose(r * dt, 1.0, rtol=1e-6, atol=0.0):
                got = float(np.median(r))
                raise InputError(f"node '{where}' (IF): r = {got:g} means SpikingJelly exported it with "
                                 f"dt = {1 / got:g} s (IFNode adds its input once per step, r = 1/dt), "
                                 f"not dt = {dt:g} s; pass --dt {1 / got:g}")
        v_reset = as_f64(node.v_reset) if node.v_reset is not None else np.zeros(1)
        threshold = as_f64(node.v_threshold)
        if np.any(v_reset != 0):
            threshold = threshold - v_reset
            if isinstance(node, (nir.LIF, nir.CubaLIF)):
                node.v_leak = as_f64(node.v_leak) - v_reset
            node.v_reset = np.zeros_like(np.broadcast_to(v_reset, threshold.shape))
            notes.append(f"{where} ({kind}): SpikingJelly starts and resets v at v_reset = "
                         f"{np.unique(v_reset).tolist()}, st2chip at 0: voltage shifted by -v_reset "
                         f"(v_threshold -> {np.unique(threshold).tolist()}, v_reset -> 0"
                         f"{', v_leak shifted too' if not isinstance(node, nir.IF) else ''})")
        if nudge:
            threshold = np.nextafter(threshold, -np.inf)
            notes.append(f"{where} ({kind}): SpikingJelly fires at v >= v_threshold, st2chip at v > v_threshold: "
                         f"v_threshold lowered by one float64 ulp (to {np.unique(threshold)[:3].tolist()}) so "
                         "that exact ties fire as in SpikingJelly")
        node.v_threshold = threshold


def repair(graph: nir.NIRGraph, dt: float = DEFAULT_DT, *,
           threshold_ge: bool = True) -> tuple[nir.NIRGraph, list[str]]:
    """A graph as ``export_to_nir`` wrote it -> a graph normalize accepts, meaning the SpikingJelly model.

    ``dt`` is the step the export used (SpikingJelly does not store it). See the
    module docstring for each change; the input graph is not modified.
    """
    if not isinstance(graph, nir.NIRGraph):
        raise InputError(f"repair takes a nir.NIRGraph, got {type(graph).__name__}")
    dt = float(dt)
    if not np.isfinite(dt) or dt <= 0:
        raise InputError(f"dt must be a positive number of seconds, got {dt}")
    out = copy.deepcopy(graph)
    out.metadata = dict(out.metadata or {})
    notes: list[str] = []
    nudge = threshold_ge and out.metadata.get("threshold_rule") != THRESHOLD_RULE
    _repair_nodes(out, dt, nudge, "", notes)
    if nudge:
        out.metadata["threshold_rule"] = THRESHOLD_RULE
    out.metadata["dt"] = dt
    return out, notes


def _check_model(model: Any) -> tuple[list[str], list[str]]:
    """Refuse modules without a faithful NIR/st2chip form; notes on what is converted knowingly, and the
    names of the soft-reset neurons."""
    import torch.nn as nn
    from spikingjelly.activation_based import layer, neuron

    neurons = (neuron.IFNode, neuron.LIFNode, neuron.ParametricLIFNode, neuron.CUBALIFNode)
    plain = (nn.Linear, layer.Linear, nn.Flatten, layer.Flatten)
    notes: list[str] = []
    soft: list[str] = []
    inside: list[str] = []  # neurons: their submodules (surrogate functions) only shape gradients
    for name, module in model.named_modules():
        if any(name.startswith(f"{outer}.") for outer in inside):
            continue
        label = f"layer '{name or '(model)'}' ({type(module).__name__})"
        children = list(module.children())
        if isinstance(module, neuron.BaseNode) and type(module) not in neurons:
            base = next((t.__name__ for t in neurons if isinstance(module, t)), None)
            what = f"a subclass of {base}, whose update may differ" if base else "a neuron SpikingJelly cannot export"
            raise InputError(f"{label}: {what}; supported neurons: IFNode, LIFNode, ParametricLIFNode, CUBALIFNode")
        if type(module) in neurons:
            inside.append(name)
            if module.v_reset is None:
                soft.append(name)
                notes.append(f"{label}: soft reset (v -= v_threshold on a spike) exported as reset by subtraction")
            if getattr(module, "_neuron_precision", None) is not None:
                raise InputError(f"{label}: reduced neuron precision {module._neuron_precision} cannot be "
                                 "reproduced by st2chip's float reading; convert the model back to fp32 first")
            if isinstance(module, neuron.ParametricLIFNode):
                tau = 1.0 / float(module.w.detach().sigmoid())
                notes.append(f"{label}: learned tau = 1/sigmoid(w) = {tau:.6g} steps exported as a fixed LIF tau")
            continue
        if children or isinstance(module, plain):
            continue
        kind = type(module).__name__
        if "Conv" in kind or "Pool" in kind:
            raise InputError(f"{label}: convolution and pooling have no canonical NIR form in st2chip "
                             "(Input, Affine, Flatten, LIF, CubaLIF, IF, LI, I)")
        raise InputError(f"{label}: not supported (SpikingJelly's NIR export maps Linear, Conv, AvgPool2d, Flatten, "
                         "IFNode, LIFNode, ParametricLIFNode, CUBALIFNode; st2chip takes Linear, Flatten and those "
                         "neurons)")
    return notes, soft


def to_nir(model: Any, sample: Any, *, dt: float | None = None, steps: int | None = None,
           threshold_ge: bool = True) -> Converted:
    """Export a SpikingJelly model with its own ``export_to_nir``, then :func:`repair` and finish.

    ``sample`` is an input the model takes as it is set (``[N, n]`` in step mode
    ``'s'``, ``[T, N, n]`` in ``'m'``); it only fixes the shapes.
    """
    import torch
    from spikingjelly.activation_based.nir_exchange import export_to_nir

    dt = DEFAULT_DT if dt is None else float(dt)
    notes, soft = _check_model(model)
    sample = torch.as_tensor(sample, dtype=torch.float32) if not isinstance(sample, torch.Tensor) else sample
    if soft:  # the export refuses v_reset=None: export a copy with v_reset = 0, mark the nodes afterwards
        model = copy.deepcopy(model)
        for name in soft:
            model.get_submodule(name).v_reset = 0.0
    try:
        raw = export_to_nir(model, sample, dt=dt)
    except Exception as exc:  # the export's own errors are KeyError/TraceError/ValueError...: one clear line
        raise InputError(f"SpikingJelly's export_to_nir failed: {type(exc).__name__}: {exc}") from exc
    notes.append(f"exported with spikingjelly.activation_based.nir_exchange.export_to_nir (dt = {dt:g} s)")
    for name in soft:
        node = raw.nodes.get(f"_{name.replace('.', '_')}")
        if node is None:
            raise InputError(f"layer '{name}': its node is missing from SpikingJelly's export, so its soft reset "
                             f"cannot be marked")
        node.metadata = {**(node.metadata or {}), "reset": "subtract"}
    graph, repair_notes = repair(raw, dt, threshold_ge=threshold_ge)
    return finish(graph, dt=dt, steps=steps, notes=notes + repair_notes, producer="spikingjelly")
