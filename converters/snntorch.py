r"""snnTorch 1.0 frontend: snnTorch models and their NIR exports -> canonical NIR.

snnTorch's neurons are discrete-time: ``Leaky`` computes, per step ``t``
(``snntorch/_neurons/leaky.py``, ``forward``/``_base_*``, with the default
``reset_delay=True``)::

    reset[t] = [mem[t-1] - threshold > 0]          # neurons.py mem_reset: the previous step's spike
    "zero":     mem[t] = beta * (1 - reset[t]) * mem[t-1] + I[t]
    "subtract": mem[t] = beta * mem[t-1] + I[t] - reset[t] * threshold
    "none":     mem[t] = beta * mem[t-1] + I[t]
    spk[t] = [mem[t] - threshold > 0]              # strict ">" (surrogate forward: (x > 0).float())

with ``beta`` clamped to ``[0, 1]`` in the forward pass only. So with
``reset_mechanism="zero"`` the reset of a spike at ``t-1`` is applied at the
start of step ``t``, *before* the input is added, and step ``t`` keeps its whole
input: exactly NIR's "integrate, spike when ``v > v_threshold``, then
``v = v_reset``" read at the same step. (``mem`` as snnTorch returns it is the
value before that reset; st2chip's voltage traces hold the value after it.)
With ``reset_delay=False`` snnTorch zeroes ``mem`` in the step of the spike
instead; the spikes are the same whenever ``threshold >= 0``.

Parameter mapping
-----------------
``dt`` is st2chip's step; snnTorch's export assumes 1e-4 s.

============================  ======================================  ===============================================
snnTorch                      NIR as snnTorch exports it              st2chip reading after :func:`repair` at ``dt``
============================  ======================================  ===============================================
``nn.Linear``                 ``Affine`` (``Linear`` without bias)    ``y = W x + b``
``Leaky`` reset "zero"        ``LIF``: ``tau = 1e-4/(1-beta)``,       ``tau = dt/(1-beta)``, ``r = 1/(1-beta)``:
                              ``r = tau/1e-4``, ``v_leak = 0``,       ``v <- v + (dt/tau)(-v + r I) = beta v + I``;
                              ``v_threshold = threshold``,            spike when ``v > threshold``, then ``v = 0``.
                              ``v_reset = 0``                         Exact: the same spikes at the same steps.
``Leaky`` with ``beta = 1``   ``LIF`` with ``tau = r = inf``          ``IF`` with ``r = 1/dt``: ``v <- v + I``. Exact.
``Leaky`` "subtract", "none"  as "zero" (the mechanism is dropped)    a file: read as reset to zero. :func:`to_nir`
                                                                      (which sees the mechanism): st2chip's reset by
                                                                      subtraction plus a self-connection, exact
                                                                      (below).
``Synaptic`` "zero"           ``CubaLIF``: ``tau_syn``, ``tau_mem``,  ``i <- alpha i + I``, ``v <- beta v + i``, spike
                              ``r`` from alpha, beta as for LIF,      when ``v > threshold``, then ``v = 0`` and
                              ``w_in = tau_syn/1e-4``                 ``metadata["refractory"] = 1``: ``v`` held at 0
                                                                      for the next step while ``i`` integrates. Exact.
``RSynaptic``, ``RLeaky``     a nested graph: ``CubaLIF`` (``LIF``)   reset "zero": the same, ``refractory = 1``;
                              ``<layer>.lif`` and its recurrent       ``<layer>.w_rec`` reads the layer's spikes of
                              ``Affine`` ``<layer>.w_rec``            the step before (bias included). Exact.
these, "subtract", "none"     as "zero"                               refused (``force_reset_zero=True``: read as
                                                                      "zero", with a note).
============================  ======================================  ===============================================

Reset to zero of ``Synaptic``, ``RSynaptic`` and ``RLeaky``. Unlike ``Leaky``
(which zeroes ``mem[t-1]`` and then adds the input), these compute the whole
update and drop it (``_base_zero``: ``mem[t] = (1 - reset[t]) (beta mem[t-1] + syn[t])``,
``syn`` kept): after a spike at ``t-1``, ``mem[t] = 0`` and no spike at ``t``
(thresholds ``>= 0``; a negative one is refused), then integration resumes from
0. In st2chip's reading that is reset to 0 plus a one-step refractory period
(:mod:`st2chip.graph.reading`), which the chip runs in st2chip's own neuron
model. With ``reset_delay=False`` (``Synaptic``, ``RLeaky``) the layer zeroes
``mem`` in the spike's own step and nothing is held: plain reset to zero.

Reset by subtraction and no reset. snnTorch subtracts a spike's threshold at the
*next* step, undecayed: ``mem[t] = beta mem[t-1] + I[t] - c threshold spk[t-1]``
(``c = 1`` "subtract", ``c = 0`` "none"). st2chip's subtract reset
(``metadata["reset"] = "subtract"``) takes the threshold off right after the spike,
so the next step decays it: ``p[t] = beta p[t-1] + I[t] - beta threshold spk[t-1]``
for the value before reset. A self-connection of weight ``(beta - c) threshold``
(an Affine from the layer to itself, NIR's one-step reading of a back edge) makes
the two equal: by induction ``p[t] = mem[t]`` and the spikes agree. For ``beta = 1``
"subtract" needs no self-connection. It lowers to the chip as a feedback group into
st2chip's own subtract neuron.

``beta`` is used clamped to ``[0, 1]`` (as snnTorch's forward does); thresholds,
weights and biases are copied unchanged. snnTorch computes in float32 and
st2chip's simulation in float64, so a membrane within float32 rounding
(~1e-7 relative) of its threshold could spike in one and not the other; the
dynamics are otherwise identical.

Quirks absorbed here (snnTorch 1.0.0 with nir 1.0.8 and nirtorch 2.6)
---------------------------------------------------------------------
- ``export_to_nir`` ends with ``nir_graph.infer_types()`` (``export_nir.py``,
  last line), which raises ``ValueError: Type inference error`` on a plain
  Linear + Leaky net: a Leaky with scalar ``beta``/``threshold`` gets 0-d
  parameters, so its NIR input type is ``[]`` (and a batched sample gives the
  Input node a ``(batch, n)`` type). The graph nirtorch built before that line is
  fine (``NIRGraph(..., type_check=False)``). :func:`to_nir` therefore runs the
  same ``nirtorch.extract_nir_graph`` call as ``export_to_nir`` without the final
  ``infer_types`` (no global state is patched), with the batch dimension ignored.
- A Leaky with per-neuron ``beta`` and a scalar ``threshold`` (or the reverse)
  makes snnTorch's own mapping fail (``nir.LIF``: "All parameters must have the
  same shape"), and it ignores the forward pass's ``beta.clamp(0, 1)``.
  :func:`to_nir` maps Leaky layers itself, in snnTorch's export convention, from
  the clamped float64 ``beta``; every other module goes through snnTorch's
  ``_extract_snntorch_module``.
- The export writes time constants for dt = 1e-4 s and stores no dt;
  :func:`repair` rescales them to the requested dt keeping each per-step decay
  ``beta = 1 - 1e-4/tau``, and recomputes ``r = tau/1e-4`` in float64.
- The export writes ``v_reset = 0`` whatever ``reset_mechanism`` was
  (snnTorch's default is "subtract"). A file cannot tell; :func:`repair` reads
  it as reset to zero and says so (a ``CubaLIF``, or a ``LIF`` on a cycle with
  its recurrent weights, as ``Synaptic``/``RSynaptic``/``RLeaky`` reset to zero:
  ``refractory = 1``). :func:`to_nir` reads the mechanism from each
  layer's ``state_function`` (what ``forward`` runs; it is chosen in
  ``Leaky.__init__`` and not updated by the ``reset_mechanism`` setter).
- Arrays are 0-d numpy arrays, numpy scalars or torch tensors, which
  ``nir.write`` refuses; normalize turns them into 1-D float64 arrays.
- ``graded_spikes_factor``, ``inhibition`` and ``state_quant`` are dropped by
  the export; :func:`to_nir` refuses layers that use them.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from typing import Any

import nir
import numpy as np
import snntorch as snn
import torch
from snntorch import export_nir as _snn_export

from st2chip.converters.frontend import Converted, as_f64, finish, value_span
from st2chip.errors import GraphError, InputError
from st2chip.graph.reading import REFRACTORY_KEY, RESET_KEY

NAME = "snntorch"
DEFAULT_DT = 1e-4  # seconds: the dt hard-coded in snntorch/export_nir.py (``dt = 1e-4`` per neuron type)

_HELD = (snn.Synaptic, snn.RSynaptic, snn.RLeaky)  # reset to zero holds mem at 0 for the step after a spike
_PASSIVE = (torch.nn.Linear, torch.nn.Flatten)




# -- repair: a graph as snnTorch exported it -> a graph normalize accepts ----------------------------

def repair(graph: nir.NIRGraph, dt: float) -> tuple[nir.NIRGraph, list[str]]:
    """Return a copy of an snnTorch export that means, under st2chip's reading at ``dt``, what the model computes.

    ``graph`` is what ``export_to_nir`` (or :func:`to_nir`'s export step) built, in
    memory or read back from a ``.nir`` file. Its time constants are taken to be
    written for ``graph.metadata["dt"]``, else snnTorch's 1e-4 s. The input is not
    modified; one note per change is returned.
    """
    return _repair(graph, dt, reset_known=False)


def _repair(graph: nir.NIRGraph, dt: float, *, reset_known: bool) -> tuple[nir.NIRGraph, list[str]]:
    if not isinstance(graph, nir.NIRGraph):
        raise InputError(f"snntorch.repair takes a nir.NIRGraph, got {type(graph).__name__}")
    dt = float(dt)
    if not (math.isfinite(dt) and dt > 0):
        raise InputError(f"dt must be a positive number of seconds, got {dt}")
    notes: list[str] = []
    meta = dict(graph.metadata or {})
    if "dt" in meta:
        src_dt = float(meta["dt"])
    else:
        src_dt = DEFAULT_DT
        notes.append(f"snnTorch's export writes time constants for dt = {DEFAULT_DT:g} s and stores no dt: "
                     f"read them for dt = {DEFAULT_DT:g} s")
    scale = dt / src_dt
    if scale != 1.0:
        notes.append(f"time constants scaled by dt/{src_dt:g} s = {scale:g} to dt = {dt:g} s, keeping each "
                     f"neuron's per-step decay beta = 1 - {src_dt:g}/tau")
    meta["dt"] = dt
    source = copy.deepcopy(graph)  # the caller's graph stays untouched
    edges = [tuple(e) for e in source.edges]
    nodes: dict[str, Any] = {}
    batch: int | None = None
    spiking: list[str] = []
    for name, node in source.nodes.items():
        if node is None:
            raise GraphError("snnTorch's export wrote no NIR node for this module (export_nir maps Linear, Leaky, "
                             "Synaptic, RLeaky, RSynaptic, Conv2d, AvgPool2d and Flatten only)", node=name)
        if isinstance(node, nir.Input):
            node, batch = _unbatch_input(name, node, source.nodes, edges, notes)
        elif isinstance(node, nir.Output) and batch is not None:
            node = _unbatch_output(name, node, batch, notes)
        elif isinstance(node, nir.LIF):
            node = _repair_lif(name, node, src_dt, dt, notes)
            spiking.append(name)
        elif isinstance(node, nir.CubaLIF):
            node = _repair_cubalif(name, node, src_dt, dt, notes)
            spiking.append(name)
        nodes[name] = node
    repaired = nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta, type_check=False)
    if spiking and not reset_known:
        listed = ", ".join(f"'{n}'" for n in spiking)
        notes.append(f"the file cannot tell the reset mechanism (snnTorch's export writes v_reset = 0 whatever "
                     f"reset_mechanism was; its default is 'subtract'): {listed} read as reset to zero; "
                     f"convert the model with to_nir to have it checked")
        repaired = _hold_after_spikes(repaired, [n for n in spiking if _held_in_file(n, nodes, edges)], notes)
    return repaired, notes


def _held_in_file(name: str, nodes: dict[str, Any], edges: list) -> bool:
    """Whether spiking node ``name`` of a file is a Synaptic/RSynaptic (a CubaLIF) or an RLeaky (a LIF on a
    cycle with its recurrent weights) layer, whose reset to zero holds ``mem`` for a step; a node whose
    metadata already says how it resets (st2chip's own export) is left alone."""
    if {REFRACTORY_KEY, RESET_KEY} & set(nodes[name].metadata or {}):
        return False
    loop = any((b, name) in edges for a, b in edges if a == name)
    return isinstance(nodes[name], nir.CubaLIF) or loop


def _shape(types: dict) -> np.ndarray:
    return np.asarray(next(iter(types.values())), dtype=np.int64).reshape(-1)


def _unbatch_input(name: str, node: nir.Input, nodes: dict, edges: list, notes: list[str]
                   ) -> tuple[nir.Input, int | None]:
    """Drop a leading batch dimension from an Input whose consumers' weights show it (sample of shape (B, n))."""
    shape = _shape(node.input_type)
    if shape.size < 2:
        return node, None
    widths = {int(np.shape(nodes[b].weight)[1]) for a, b in edges
              if a == name and isinstance(nodes[b], (nir.Affine, nir.Linear))}
    inner = int(np.prod(shape[1:]))
    if widths == {inner} and int(np.prod(shape)) != inner:
        notes.append(f"node '{name}': batch dimension {int(shape[0])} dropped from the input shape "
                     f"{shape.tolist()} (snnTorch exports the sample's shape)")
        return nir.Input(input_type={"input": shape[1:].copy()}), int(shape[0])
    return node, None


def _unbatch_output(name: str, node: nir.Output, batch: int, notes: list[str]) -> nir.Output:
    shape = _shape(node.output_type)
    if shape.size >= 2 and int(shape[0]) == batch:
        notes.append(f"node '{name}': batch dimension {batch} dropped from the output shape {shape.tolist()}")
        return nir.Output(output_type={"output": shape[1:].copy()})
    return node


def _gain(name: str, field: str, value: np.ndarray, expected: np.ndarray, notes: list[str]) -> np.ndarray:
    """snnTorch writes ``r = tau/dt`` (``w_in = tau_syn/dt``), often in float32: recompute it in float64."""
    if value.shape in ((), expected.shape) and np.allclose(value, expected, rtol=1e-6, atol=0):
        return expected
    notes.append(f"node '{name}': {field} does not follow snnTorch's {field} = tau/dt; kept as written")
    return value


def _repair_lif(name: str, node: nir.LIF, src_dt: float, dt: float, notes: list[str]) -> nir.LIF | nir.IF:
    tau, r = as_f64(node.tau), as_f64(node.r)
    thr, v_leak = as_f64(node.v_threshold), as_f64(node.v_leak)
    v_reset = np.zeros_like(thr) if node.v_reset is None else as_f64(node.v_reset)
    infinite = np.isinf(tau)
    if np.any(infinite):
        if not np.all(infinite):
            raise GraphError("some neurons have beta = 1 (tau = inf) and others not; one NIR LIF node cannot hold "
                             "both: give every neuron of the layer beta < 1 or beta = 1", node=name, field="tau")
        notes.append(f"node '{name}': snnTorch Leaky with beta = 1 (tau = inf) becomes IF with r = 1/dt "
                     f"(v <- v + I), threshold {value_span(thr)}")
        ones = np.ones(np.broadcast_shapes(tau.shape, thr.shape, v_reset.shape))
        return nir.IF(r=ones / dt, v_threshold=thr * ones, v_reset=v_reset * ones, metadata=dict(node.metadata or {}))
    beta = 1.0 - src_dt / tau
    new_r = _gain(name, "r", r, tau / src_dt, notes)
    notes.append(f"node '{name}': snnTorch Leaky read as v <- beta v + I with beta = {value_span(beta)}, "
                 f"spike when v > {value_span(thr)}, then v = 0")
    return nir.LIF(tau=tau * (dt / src_dt), r=new_r, v_leak=v_leak, v_threshold=thr, v_reset=v_reset,
                   metadata=dict(node.metadata or {}))


def _repair_cubalif(name: str, node: nir.CubaLIF, src_dt: float, dt: float, notes: list[str]) -> nir.CubaLIF:
    tau_syn, tau_mem = as_f64(node.tau_syn), as_f64(node.tau_mem)
    if np.any(np.isinf(tau_syn)) or np.any(np.isinf(tau_mem)):
        raise GraphError("alpha = 1 or beta = 1 (infinite time constant) has no NIR CubaLIF form",
                         node=name, field="tau_syn" if np.any(np.isinf(tau_syn)) else "tau_mem")
    w_in = np.ones_like(tau_syn) if node.w_in is None else as_f64(node.w_in)
    r = _gain(name, "r", as_f64(node.r), tau_mem / src_dt, notes)
    w_in = _gain(name, "w_in", w_in, tau_syn / src_dt, notes)
    thr = as_f64(node.v_threshold)
    notes.append(f"node '{name}': snnTorch Synaptic read as i <- alpha i + I, v <- beta v + i with "
                 f"alpha = {value_span(1 - src_dt / tau_syn)}, beta = {value_span(1 - src_dt / tau_mem)}, "
                 f"spike when v > {value_span(thr)}, then v = 0")
    return nir.CubaLIF(tau_syn=tau_syn * (dt / src_dt), tau_mem=tau_mem * (dt / src_dt), r=r,
                       v_leak=as_f64(node.v_leak), v_threshold=thr,
                       v_reset=np.zeros_like(thr) if node.v_reset is None else as_f64(node.v_reset), w_in=w_in,
                       metadata=dict(node.metadata or {}))


# -- to_nir: an snnTorch model object -> canonical NIR ----------------------------------------------

def to_nir(model: torch.nn.Module, sample: torch.Tensor | np.ndarray, *, dt: float | None = None,
           steps: int | None = None, force_reset_zero: bool = False) -> Converted:
    """Export an snnTorch model (Leaky, Synaptic, RLeaky, RSynaptic layers with ``init_hidden=True``) and return
    its canonical NIR graph.

    ``sample``: one input step, ``(n_in,)`` or ``(batch, n_in)``. ``dt`` (seconds,
    default :data:`DEFAULT_DT`) is the step recorded in the graph; the per-step
    dynamics are the same for any dt. Every layer is checked first and all problems
    are reported in one :class:`InputError`. Leaky layers with reset "zero",
    "subtract" or "none" convert exactly (see the module docstring; "subtract" and
    "none" need the default ``reset_delay=True``), and so do Synaptic, RSynaptic and
    RLeaky layers with reset "zero" (``refractory = 1``); ``force_reset_zero=True``
    converts their other mechanisms as reset to zero anyway, with a note. The model
    itself is not modified (the export runs on a copy).
    """
    step = DEFAULT_DT if dt is None else float(dt)
    if not (math.isfinite(step) and step > 0):
        raise InputError(f"dt must be a positive number of seconds, got {dt}")
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"to_nir takes an snnTorch model (torch.nn.Module), got {type(model).__name__}")
    notes, resets, held = _check_model(model, force_reset_zero)
    graph = _export(model, sample)
    graph, repair_notes = _repair(graph, step, reset_known=True)
    graph = _subtract_resets(graph, resets, step, repair_notes)
    graph = _hold_after_spikes(graph, [name if name in graph.nodes else f"{name}.lif" for name in held],
                               repair_notes)
    return finish(graph, dt=step, steps=steps, notes=notes + repair_notes, producer=NAME)


def _subtract_resets(graph: nir.NIRGraph, resets: dict[str, float], dt: float, notes: list[str]) -> nir.NIRGraph:
    """snnTorch's "subtract" (``resets[name] = 1``) and "none" (0) layers as st2chip's subtract reset plus a
    self-connection of weight ``(beta - c) threshold`` (see the module docstring)."""
    if not resets:
        return graph
    nodes, edges = dict(graph.nodes), list(graph.edges)
    for name, c in resets.items():
        node = nodes.get(name)
        if not isinstance(node, (nir.LIF, nir.IF)):
            raise GraphError(f"expected the Leaky layer's LIF or IF node, found {type(node).__name__}", node=name)
        beta = np.ones_like(as_f64(node.v_threshold)) if isinstance(node, nir.IF) else 1.0 - dt / as_f64(node.tau)
        widths = {int(np.shape(nodes[a].weight)[0]) for a, b in edges if b == name and hasattr(nodes[a], "weight")}
        if len(widths) != 1:
            raise GraphError(f"cannot tell the layer's width from its inputs ({sorted(widths)})", node=name)
        weight = np.broadcast_to((beta - c) * as_f64(node.v_threshold), (widths.pop(),)).copy()
        nodes[name] = dataclasses.replace(node, metadata={**(node.metadata or {}), "reset": "subtract"})
        what = "reset_mechanism='subtract'" if c else "reset_mechanism='none'"
        if np.any(weight != 0):
            loop = f"{name}.reset"
            nodes[loop] = nir.Affine(weight=np.diag(weight), bias=np.zeros(weight.size))
            edges += [(name, loop), (loop, name)]
            notes.append(f"node '{name}': snnTorch's {what} becomes st2chip's reset by subtraction plus a "
                         f"self-connection '{loop}' of weight (beta - {c:g}) * threshold = {value_span(weight)}: exact")
        else:
            notes.append(f"node '{name}': snnTorch's {what} is st2chip's reset by subtraction (beta = 1): exact")
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=dict(graph.metadata), type_check=False)


def _hold_after_spikes(graph: nir.NIRGraph, names: list[str], notes: list[str]) -> nir.NIRGraph:
    """Mark nodes ``names`` (Synaptic, RSynaptic, RLeaky layers reset to zero) ``refractory = 1``: snnTorch
    holds their ``mem`` at 0 for the step after a spike while ``syn`` integrates (module docstring)."""
    if not names:
        return graph
    nodes = dict(graph.nodes)
    for name in names:
        node = nodes.get(name)
        if not isinstance(node, (nir.CubaLIF, nir.LIF, nir.IF)):
            raise GraphError(f"expected the layer's CubaLIF, LIF or IF node, found {type(node).__name__}", node=name)
        nodes[name] = dataclasses.replace(node, metadata={**(node.metadata or {}), REFRACTORY_KEY: 1})
    listed = ", ".join(f"'{n}'" for n in names)
    notes.append(f"{listed}: snnTorch's reset to zero holds mem at 0 for the step after a spike (syn integrates): "
                 f"read as refractory = 1 step")
    return nir.NIRGraph(nodes=nodes, edges=list(graph.edges), metadata=dict(graph.metadata), type_check=False)


def _mechanism(layer: snn.SpikingNeuron) -> tuple[str, str]:
    """(what forward runs, what reset_mechanism says) for a Leaky, Synaptic, RLeaky or RSynaptic layer."""
    cls = type(layer)
    known = {cls._base_sub: "subtract", cls._base_zero: "zero", cls._base_int: "none"}
    runs = known.get(getattr(layer.state_function, "__func__", None), "unknown")
    return runs, str(layer.reset_mechanism)


def _check_model(model: torch.nn.Module, force_reset_zero: bool
                 ) -> tuple[list[str], dict[str, float], list[str]]:
    """Refuse (all at once) what the export would drop or st2chip cannot read. Returns notes for forced
    conversions; per Leaky layer that subtracts ("subtract": 1) or does not reset ("none": 0), ``c``; and the
    Synaptic, RSynaptic and RLeaky layers whose reset holds ``mem`` at 0 for the step after a spike."""
    problems: list[str] = []
    notes: list[str] = []
    resets: dict[str, float] = {}
    held: list[str] = []
    forced = "converted as reset to zero because force_reset_zero=True; its spikes differ from snnTorch's"
    for name, module in model.named_modules():
        label = f"layer '{name or type(model).__name__}' ({type(module).__name__})"
        if any(name.startswith(f"{h}.") for h in held):  # a recurrent layer's own connection: exported with it
            continue
        if isinstance(module, snn.Leaky):
            problems += _check_leaky(label, module, force_reset_zero, notes, forced)
            runs, says = _mechanism(module)
            if runs == says and runs in ("subtract", "none") and module.reset_delay:
                resets[name] = 1.0 if runs == "subtract" else 0.0
        elif isinstance(module, _HELD):
            problems += _check_held(label, module, force_reset_zero, notes, forced)
            held.append(name)
        elif isinstance(module, snn.SpikingNeuron):
            problems.append(f"{label}: snnTorch's NIR export has no mapping for this neuron; use Leaky, Synaptic, "
                            f"RLeaky or RSynaptic")
        elif not list(module.children()) and not isinstance(module, _PASSIVE):
            problems.append(f"{label}: not supported (st2chip converts nn.Linear, nn.Flatten and snn.Leaky, "
                            f"Synaptic, RLeaky, RSynaptic)")
    if problems:
        raise InputError("cannot convert the snnTorch model: " + "; ".join(problems))
    return notes, resets, [name for name in held if model.get_submodule(name).reset_delay]


def _check_export(label: str, layer: snn.SpikingNeuron) -> list[str]:
    """What snnTorch's export drops or cannot trace."""
    problems = []
    if not layer.init_hidden:
        problems.append(f"{label}: snnTorch's export traces layers built with init_hidden=True only")
    if layer.inhibition:
        problems.append(f"{label}: inhibition=True is not exported")
    if layer.state_quant:
        problems.append(f"{label}: state_quant is not exported")
    if not torch.all(layer.graded_spikes_factor == 1):
        problems.append(f"{label}: graded_spikes_factor != 1 is not exported")
    return problems


def _check_leaky(label: str, layer: snn.Leaky, force_reset_zero: bool, notes: list[str], forced: str) -> list[str]:
    problems = []
    runs, says = _mechanism(layer)
    if runs != says:
        what = (f"reset_mechanism is '{says}' but forward still runs the '{runs}' update chosen when the layer was "
                f"built (snnTorch 1.0's setter does not change it); rebuild it with reset_mechanism=\"zero\"")
    elif runs == "unknown":
        what = "its forward runs an update st2chip does not know; use reset_mechanism=\"zero\" or \"subtract\""
    elif runs != "zero" and not layer.reset_delay:
        what = (f"reset_mechanism='{runs}' with reset_delay=False (a reset within the spike's own step) is not "
                f"converted; use the default reset_delay=True")
    else:
        what = ""
    if what:
        if force_reset_zero:
            notes.append(f"{label}: reset_mechanism '{runs}' {forced}")
        else:
            problems.append(f"{label}: {what}, or pass force_reset_zero=True to convert it as reset to zero")
    problems += _check_export(label, layer)
    if not layer.reset_delay and bool(torch.any(layer.threshold < 0)):
        problems.append(f"{label}: reset_delay=False with a negative threshold resets differently from NIR")
    beta = layer.beta.detach()
    if bool(torch.any((beta < 0) | (beta > 1))):
        notes.append(f"{label}: beta outside [0, 1] clamped to [0, 1], as snnTorch's forward pass does")
    return problems


def _check_held(label: str, layer: snn.SpikingNeuron, force_reset_zero: bool, notes: list[str], forced: str
                ) -> list[str]:
    """A Synaptic, RSynaptic or RLeaky layer: its reset to zero converts exactly (module docstring); the other
    mechanisms do not."""
    problems = _check_export(label, layer)
    runs, _ = _mechanism(layer)  # what forward runs decides (snnTorch 1.0's setter does not change it)
    if runs != "zero":
        if force_reset_zero:
            notes.append(f"{label}: reset_mechanism '{runs}' {forced}")
        else:
            problems.append(f"{label}: reset_mechanism '{runs}' is not converted (only \"zero\" is, exactly; "
                            f"snnTorch's default is \"subtract\"): build it with reset_mechanism=\"zero\", or pass "
                            f"force_reset_zero=True to convert it as reset to zero")
    if bool(torch.any(layer.threshold < 0)):
        problems.append(f"{label}: a negative threshold makes snnTorch spike from mem = 0 in the step it holds after "
                        f"a spike; st2chip's neuron stays silent there")
    for field in ("alpha", "beta"):
        value = getattr(layer, field, None)
        if value is not None and bool(torch.any((value < 0) | (value > 1))):
            problems.append(f"{label}: {field} outside [0, 1] (snnTorch's forward clamps it, its export does not)")
    return problems


def _leaky_to_nir(layer: snn.Leaky) -> nir.LIF:
    """A Leaky layer in snnTorch's export convention (dt = 1e-4 s), from its clamped float64 beta.

    Same fields as ``snntorch.export_nir`` writes, but with ``beta`` and ``threshold``
    broadcast to one shape (nir.LIF requires it) and ``beta.clamp(0, 1)`` as in forward.
    """
    beta = layer.beta.detach().cpu().double().clamp(0, 1).numpy()
    thr = layer.threshold.detach().cpu().double().numpy()
    beta, thr = (np.array(a) for a in np.broadcast_arrays(beta, thr))
    with np.errstate(divide="ignore"):
        tau = DEFAULT_DT / (1.0 - beta)
    return nir.LIF(tau=tau, r=tau / DEFAULT_DT, v_leak=np.zeros_like(beta), v_threshold=thr,
                   v_reset=np.zeros_like(thr))


def _model_map(module: torch.nn.Module) -> nir.NIRNode | None:
    if isinstance(module, snn.Leaky):
        return _leaky_to_nir(module)
    return _snn_export._extract_snntorch_module(module)


def _export(model: torch.nn.Module, sample: torch.Tensor | np.ndarray) -> nir.NIRGraph:
    """``snntorch.export_to_nir`` without its failing ``infer_types()`` call, on a copy of the model.

    Tracing runs the model's forward once, which would overwrite the hidden
    state of ``init_hidden`` layers; the copy keeps the caller's model intact.
    """
    import nirtorch

    x = torch.as_tensor(sample).detach()
    if not x.is_floating_point():
        x = x.float()
    if x.dim() == 0:
        raise InputError("sample must hold one input step, shape (n_in,) or (batch, n_in)")
    net = copy.deepcopy(model)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)  # nirtorch: extract_nir_graph is deprecated
        warnings.simplefilter("ignore", FutureWarning)
        try:
            graph = nirtorch.extract_nir_graph(net, _model_map, x, model_name="snntorch",
                                               ignore_submodules_of=[snn.RLeaky, snn.RSynaptic],
                                               ignore_dims=[0] if x.dim() > 1 else None)
        except Exception as exc:  # a tracing failure of the user's model is their input
            text = " ".join(str(exc).split())
            raise InputError(f"snnTorch/nirtorch could not trace the model on a sample of shape "
                             f"{tuple(x.shape)}: {type(exc).__name__}: {text}") from None
    return graph
