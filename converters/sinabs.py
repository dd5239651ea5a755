r"""sinabs 3.1 frontend: sinabs models and their NIR exports (``sinabs.to_nir``) -> canonical NIR.

sinabs' neurons are discrete in time and know no dt: one update per step
(``sinabs/layers/functional/lif.py``, ``lif_forward_single``, lines 19-44)::

    i = alpha_syn * (i + I)                     # only with tau_syn; else i = I
    v = alpha_mem * v + c * i                   # alpha = exp(-1/tau) (tau in steps); c = 1 - alpha_mem
                                                # with norm_input=True (LIF's default), c = 1 without;
                                                # IAF: alpha_mem = 1, c = 1
    n = spike_fn(v, threshold)                  # MultiSpike (the default): n = (v > 0) * trunc(v / threshold),
                                                # several spikes per step; SingleSpike: n = [v - threshold >= 0];
                                                # MaxSpike(m): MultiSpike clamped to m
    v = reset_fn(n, v)                          # MembraneSubtract (the default): v -= n * threshold;
                                                # MembraneReset(0): v = 0 where n > 0
    v = max(v, min_v_mem)                       # only when min_v_mem is set

st2chip reads NIR with forward Euler at the graph's ``dt`` (:mod:`st2chip.graph.simulate`),
so at ``dt`` = :data:`DEFAULT_DT` = 1 (one step per unit):

=========================  ========================================  ==========================================
sinabs                     ``sinabs.to_nir`` writes                  st2chip reading at ``dt`` (exact)
=========================  ========================================  ==========================================
``nn.Linear``/``Conv2d``   ``Affine``/``Conv2d`` (zero bias if none)  unchanged
``SumPool2d``              ``SumPool2d``                             unchanged
``IAF``/``IAFSqueeze``     ``IF(r=1, v_threshold)``                  ``IF(r=1/dt)``: ``v += I``
``LIF``/``LIFSqueeze``     ``LIF(tau=tau_mem, r=1, v_leak=0)``       ``LIF(tau=dt/(1-alpha), r=c/(1-alpha))``:
                                                                     ``v = alpha v + c I``
``LIF`` with ``tau_syn``   ``LIF`` (tau_syn dropped)                 :func:`to_nir`: ``CubaLIF(tau_syn=dt/(1-a_s),
                                                                     w_in=a_s/(1-a_s), ...)``: ``i = a_s (i + I)``
``ExpLeak``                ``LI(tau=tau_mem, r=1)``                  ``LI`` as LIF without spikes
spike ``>= threshold``     (not written)                             threshold lowered by one float64 ulp:
                                                                     ``v > nextafter(t, -inf)`` iff ``v >= t``
``MembraneSubtract``       (not written)                             ``metadata["reset"] = "subtract"``
``MembraneReset(0)``       (not written)                             reset to ``v_reset = 0``
=========================  ========================================  ==========================================

What st2chip cannot express, and how each path handles it:

- **Several spikes per step.** A NIR/st2chip neuron emits at most one spike per
  step. A MultiSpike or MaxSpike layer equals the single-spike reading exactly
  as long as it never emits more than one spike in a step. :func:`to_nir` runs
  the model on its ``sample`` and refuses, naming the layer, if any step has more.
- **The voltage floor** ``min_v_mem`` (sinabs' ``from_nir`` reads every IF as
  ``min_v_mem = -threshold``). st2chip has none; :func:`to_nir` runs the model
  without the floor on the sample as well and refuses, naming the layer and
  ``min_v_mem``, if that changes a layer's spikes.
- **A file** cannot tell norm_input, spike_fn, reset_fn or min_v_mem.
  :func:`repair` reads it as sinabs' own ``from_nir`` does
  (``sinabs/nir.py``: IF -> ``IAFSqueeze(min_v_mem=-v_threshold)``, lines 86-92;
  LIF -> ``LIFSqueeze(norm_input=False, min_v_mem=None)``, lines 94-108; both with
  the defaults MultiSpike and MembraneSubtract), converts what is exact (units,
  threshold rule, subtract reset) and says in one note which layers equal sinabs
  only while no neuron reaches twice its threshold in a step (or falls below
  ``-threshold``).

Other refusals (:class:`~st2chip.errors.InputError`, all at once, naming the
layer and the option): recurrent layers, ``IAF(tau_syn=...)``, ALIF, a
``MembraneSubtract(subtract_value)`` other than the threshold,
``MembraneReset(reset_value != 0)`` (sinabs adds that value to every neuron that
did not spike, ``sinabs/activation/reset_mechanism.py`` line 21), a
threshold <= 0, and modules other than Linear, Conv2d, SumPool2d, Flatten.

sinabs computes in float32 and st2chip in float64, so a voltage within float32
rounding (~1e-7 relative) of a threshold can fall on the other side; the
dynamics are otherwise identical.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from typing import Any

import nir
import numpy as np

from st2chip.converters.frontend import Converted, as_f64, finish, positive_dt, value_span
from st2chip.errors import GraphError, InputError

NAME = "sinabs"
DEFAULT_DT = 1.0  # sinabs integrates per step: IF r = 1 and tau in steps, i.e. one step per unit of time
THRESHOLD_RULE = "sinabs >= threshold, read as > nextafter(threshold, -inf)"
_SPIKING_NOTE = ("equal to sinabs while no neuron reaches twice its threshold in one step (sinabs' MultiSpike emits "
                 "several spikes, st2chip one) and, for IF, none falls below -threshold (sinabs' from_nir floors v "
                 "there); convert the model with st2chip.converters.sinabs.to_nir to have both checked")





def _ge(threshold: np.ndarray) -> np.ndarray:
    """The threshold under which st2chip's ``v > t'`` fires exactly when sinabs' ``v >= t`` does."""
    return np.nextafter(threshold, -np.inf)


def _subtract(node: nir.NIRNode) -> nir.NIRNode:
    return dataclasses.replace(node, metadata={**(node.metadata or {}), "reset": "subtract"})


# -- neuron nodes in st2chip's reading, from per-step decays ---------------------------------------

def if_node(threshold: np.ndarray, dt: float, *, subtract: bool) -> nir.IF:
    """sinabs' ``v += I`` with spikes at ``v >= threshold`` as an st2chip IF at ``dt``."""
    node = nir.IF(r=np.ones_like(threshold) / dt, v_threshold=_ge(threshold), v_reset=np.zeros_like(threshold))
    return _subtract(node) if subtract else node


def lif_node(alpha: np.ndarray, gain: np.ndarray, threshold: np.ndarray, dt: float, *, subtract: bool,
             bias: np.ndarray | float = 0.0) -> nir.LIF:
    """``v = alpha v + gain I + bias`` with spikes at ``v >= threshold`` as an st2chip LIF at ``dt``
    (``v_leak = bias / (1 - alpha)``)."""
    alpha, gain, threshold, bias = np.broadcast_arrays(alpha, gain, threshold, bias)
    node = nir.LIF(tau=dt / (1 - alpha), r=gain / (1 - alpha), v_leak=bias / (1 - alpha),
                   v_threshold=_ge(threshold), v_reset=np.zeros_like(alpha))
    return _subtract(node) if subtract else node


def cubalif_node(alpha: np.ndarray, alpha_syn: np.ndarray, gain: np.ndarray, threshold: np.ndarray, dt: float, *,
                 subtract: bool, bias: np.ndarray | float = 0.0) -> nir.CubaLIF:
    """``i = alpha_syn (i + I)``, ``v = alpha v + gain i + bias`` with spikes at ``v >= threshold`` as an st2chip
    CubaLIF (``w_in = alpha_syn / (1 - alpha_syn)``, ``v_leak = bias / (1 - alpha)``)."""
    alpha, alpha_syn, gain, threshold, bias = np.broadcast_arrays(alpha, alpha_syn, gain, threshold, bias)
    node = nir.CubaLIF(tau_syn=dt / (1 - alpha_syn), tau_mem=dt / (1 - alpha), r=gain / (1 - alpha),
                       v_leak=bias / (1 - alpha), v_threshold=_ge(threshold), v_reset=np.zeros_like(alpha),
                       w_in=alpha_syn / (1 - alpha_syn))
    return _subtract(node) if subtract else node


def li_node(alpha: np.ndarray, gain: np.ndarray, dt: float) -> nir.LI:
    """``v = alpha v + gain I`` (sinabs' ExpLeak) as an st2chip LI at ``dt``."""
    alpha, gain = np.broadcast_arrays(alpha, gain)
    return nir.LI(tau=dt / (1 - alpha), r=gain / (1 - alpha), v_leak=np.zeros_like(alpha))


# -- repair: a graph as sinabs.to_nir wrote it -> a graph normalize accepts -------------------------

def repair(graph: nir.NIRGraph, dt: float) -> tuple[nir.NIRGraph, list[str]]:
    """Return a copy of a sinabs export that means, under st2chip's reading at ``dt``, what sinabs reads in it.

    sinabs' reading is its ``from_nir`` (see the module docstring): per-step
    units, ``alpha = exp(-1/tau)``, spikes at ``v >= threshold``, reset by
    subtraction. A graph this function already repaired is refused (its time
    constants would be converted twice).
    """
    if not isinstance(graph, nir.NIRGraph):
        raise InputError(f"sinabs.repair takes a nir.NIRGraph, got {type(graph).__name__}")
    dt = positive_dt(dt)
    meta = copy.deepcopy(dict(graph.metadata or {}))
    if meta.get("threshold_rule") == THRESHOLD_RULE:
        raise InputError("this graph was already converted from sinabs (metadata threshold_rule); "
                         "read it with st2chip import --from nir")
    notes: list[str] = []
    nodes: dict[str, Any] = {}
    spiking: list[str] = []
    for name, node in graph.nodes.items():
        if node is None or not isinstance(node, nir.NIRNode):
            raise GraphError("sinabs' to_nir wrote no NIR node here", node=name)
        if isinstance(node, nir.NIRGraph):
            raise GraphError("sinabs' to_nir writes flat graphs; a nested graph is not a sinabs export", node=name)
        if isinstance(node, (nir.IF, nir.LIF, nir.LI)):
            node = _repair_neuron(name, node, dt, notes)
            spiking += [name] if not isinstance(node, nir.LI) else []
        nodes[name] = copy.deepcopy(node)
    edges = [tuple(e) for e in graph.edges]
    drop_time_dim(nodes, edges, notes)
    if spiking:
        notes.append(f"{', '.join(repr(n) for n in spiking)}: {_SPIKING_NOTE}")
    meta["threshold_rule"] = THRESHOLD_RULE
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta, type_check=False), notes


def _repair_neuron(name: str, node: nir.NIRNode, dt: float, notes: list[str]) -> nir.NIRNode:
    r = as_f64(node.r)
    if isinstance(node, nir.IF):
        thr = as_f64(node.v_threshold)
        notes.append(f"node '{name}': sinabs IAF read as v += {value_span(r)} * I per step (r -> r/dt), spikes at "
                     f"v >= {value_span(thr)}, reset by subtraction")
        new = if_node(thr, dt, subtract=True)
        return dataclasses.replace(new, r=np.broadcast_to(r, thr.shape) / dt)
    if np.any(as_f64(node.v_leak) != 0):
        raise GraphError("sinabs neurons have no leak potential: v_leak must be 0", node=name, field="v_leak")
    alpha = np.exp(-1.0 / as_f64(node.tau))
    if isinstance(node, nir.LI):
        notes.append(f"node '{name}': sinabs ExpLeak read as v = alpha v + {value_span(r)} I with alpha = exp(-1/tau) "
                     f"= {value_span(alpha)} (tau {value_span(as_f64(node.tau))} steps)")
        return li_node(alpha, r, dt)
    thr = as_f64(node.v_threshold)
    notes.append(f"node '{name}': sinabs LIF read as sinabs' from_nir does, v = alpha v + {value_span(r)} I "
                 f"(norm_input=False) with alpha = exp(-1/tau) = {value_span(alpha)} (tau {value_span(as_f64(node.tau))} steps), "
                 f"spikes at v >= {value_span(thr)}, reset by subtraction")
    return lif_node(alpha, r, thr, dt, subtract=True)


def drop_time_dim(nodes: dict[str, Any], edges: list[tuple[str, str]], notes: list[str]) -> None:
    """Drop the leading time dimension that an export traced on ``(batch, time, n)`` writes into Input/Output shapes
    (sinabs' non-squeezed layers), where the consumers' weights show it."""
    dropped = None
    for name, node in nodes.items():
        if not isinstance(node, nir.Input):
            continue
        shape = as_f64(next(iter(node.input_type.values()))).astype(np.int64).reshape(-1)
        consumers = [nodes[b] for a, b in edges if a == name]
        if shape.size >= 2 and consumers and all(
                isinstance(c, (nir.Affine, nir.Linear)) and np.shape(c.weight)[1] == shape[-1] for c in consumers) \
                and int(np.prod(shape)) != shape[-1]:
            nodes[name] = nir.Input(input_type={"input": shape[-1:].copy()})
            dropped = int(np.prod(shape[:-1]))
            notes.append(f"node '{name}': shape {shape.tolist()} -> {shape[-1:].tolist()} "
                         "(the export traced (batch, time, n) samples)")
    for name, node in nodes.items():
        if dropped is not None and isinstance(node, nir.Output):
            shape = as_f64(next(iter(node.output_type.values()))).astype(np.int64).reshape(-1)
            if shape.size >= 2 and int(np.prod(shape[:-1])) == dropped:
                nodes[name] = nir.Output(output_type={"output": shape[-1:].copy()})
                notes.append(f"node '{name}': shape {shape.tolist()} -> {shape[-1:].tolist()}")


# -- from the model object ------------------------------------------------------------------------

def _kinds():
    import sinabs.layers as sl
    neurons = (sl.IAF, sl.IAFSqueeze, sl.LIF, sl.LIFSqueeze)
    leaky = (sl.ExpLeak, sl.ExpLeakSqueeze)
    refused = (sl.IAFRecurrent, sl.LIFRecurrent, sl.ALIF)
    return neurons, leaky, refused


def _spiking_layers(model) -> dict[str, Any]:
    neurons, _, _ = _kinds()
    return {name: m for name, m in model.named_modules() if type(m) in neurons}


def _spike_fn_problem(layer) -> str:
    from sinabs.activation import MaxSpike, MultiSpike, SingleSpike
    fn = layer.spike_fn
    if fn is SingleSpike or fn is MultiSpike or isinstance(fn, MaxSpike):
        return ""
    return f"spike_fn={getattr(fn, '__name__', type(fn).__name__)} is not one of SingleSpike, MultiSpike, MaxSpike"


def _reset_problem(layer) -> str:
    from sinabs.activation import MembraneReset, MembraneSubtract
    fn = layer.reset_fn
    if isinstance(fn, MembraneSubtract):
        value = fn.subtract_value
        thr = as_f64(layer.spike_threshold)
        if value is None or np.all(as_f64(value) == thr):
            return ""
        return (f"reset_fn=MembraneSubtract(subtract_value={value}) subtracts other than the threshold "
                f"{value_span(thr)}; st2chip subtracts the threshold")
    if isinstance(fn, MembraneReset):
        if fn.reset_value == 0:
            return ""
        return (f"reset_fn=MembraneReset(reset_value={fn.reset_value}) also adds reset_value to every neuron that "
                "did not spike (sinabs/activation/reset_mechanism.py:21); use reset_value=0")
    return f"reset_fn={type(fn).__name__} is not MembraneSubtract or MembraneReset(0)"


def _check_model(model) -> None:
    """Refuse, all at once, every layer or option without an exact NIR/st2chip form (data-independent checks)."""
    import sinabs.layers as sl
    from torch import nn
    neurons, leaky, refused = _kinds()
    passive = (nn.Linear, nn.Conv2d, sl.SumPool2d, nn.Flatten, nn.Identity)
    problems = []
    for name, module in model.named_modules():
        label = f"layer '{name or type(model).__name__}' ({type(module).__name__})"
        if isinstance(module, refused):
            problems.append(f"{label}: recurrent and adaptive sinabs layers are not converted")
        elif type(module) in neurons:
            why = [w for w in (_spike_fn_problem(module), _reset_problem(module)) if w]
            if isinstance(module, sl.IAF) and module.tau_syn is not None:
                why.append("IAF with tau_syn has no NIR form (an integrating membrane behind a synaptic current); "
                           "use LIF with tau_syn")
            if module.spike_threshold is None or np.any(as_f64(module.spike_threshold) <= 0):
                why.append("spike_threshold must be positive")
            problems += [f"{label}: {w}" for w in why]
        elif type(module) in leaky:
            if module.alpha_syn_calculated is not None:
                problems.append(f"{label}: ExpLeak with tau_syn is not converted")
        elif not list(module.children()) and not isinstance(module, passive):
            problems.append(f"{label}: not converted (st2chip converts Linear, Conv2d, SumPool2d, Flatten and "
                            "sinabs' IAF, LIF, ExpLeak layers)")
    if problems:
        raise InputError("cannot convert the sinabs model: " + "; ".join(problems))


def _neuron_node(layer, dt: float) -> nir.NIRNode:
    """One sinabs neuron layer in st2chip's reading, parameters broadcast to the layer's (C, H, W) or (n,) shape."""
    import sinabs.layers as sl
    from sinabs.activation import MembraneSubtract
    shape = tuple(layer.v_mem.shape[1:])
    full = lambda a: np.broadcast_to(a, shape).copy()  # noqa: E731
    if type(layer) in (sl.ExpLeak, sl.ExpLeakSqueeze):
        alpha = full(as_f64(layer.alpha_mem_calculated))
        return li_node(alpha, (1 - alpha) if layer.norm_input else np.ones(shape), dt)
    subtract = isinstance(layer.reset_fn, MembraneSubtract)
    thr = full(as_f64(layer.spike_threshold))
    if isinstance(layer, sl.IAF):
        return if_node(thr, dt, subtract=subtract)
    alpha = full(as_f64(layer.alpha_mem_calculated))
    gain = (1 - alpha) if layer.norm_input else np.ones(shape)
    if layer.alpha_syn_calculated is None:
        return lif_node(alpha, gain, thr, dt, subtract=subtract)
    return cubalif_node(alpha, full(as_f64(layer.alpha_syn_calculated)), gain, thr, dt, subtract=subtract)


def _outputs(model, sample) -> dict[str, Any]:
    """Each spiking layer's output on ``sample`` (the model's state reset before and after)."""
    import sinabs
    import torch
    seen: dict[str, Any] = {}
    hooks = [m.register_forward_hook(lambda _m, _i, out, name=name: seen.__setitem__(name, out.detach()))
             for name, m in _spiking_layers(model).items()]
    try:
        sinabs.reset_states(model)
        with torch.no_grad():
            model(sample)
    finally:
        for h in hooks:
            h.remove()
        sinabs.reset_states(model)
    return seen


def _check_on_sample(model, sample, notes: list[str]) -> None:
    """Refuse a layer that emits several spikes in a step on ``sample``, or whose spikes ``min_v_mem`` changes."""
    from sinabs.activation import SingleSpike
    layers = _spiking_layers(model)
    spikes = _outputs(model, sample)
    problems = []
    for name, out in spikes.items():
        most = float(out.max()) if out.numel() else 0.0
        if most > 1:
            fn = layers[name].spike_fn
            problems.append(f"layer '{name}' ({type(layers[name]).__name__}): spike_fn="
                            f"{getattr(fn, '__name__', type(fn).__name__)} emits up to {most:g} spikes in one step on "
                            "the sample; st2chip neurons emit at most one (use SingleSpike or MaxSpike(1))")
    floored = [name for name, layer in layers.items() if layer.min_v_mem is not None]
    if floored:
        free = copy.deepcopy(model)
        for name, layer in _spiking_layers(free).items():
            layer.min_v_mem = None
        unfloored = _outputs(free, sample)
        changed = [n for n in spikes if not bool((spikes[n] == unfloored[n]).all())]
        if changed:
            name = changed[0]
            problems.append(f"layer '{name}' ({type(layers[name]).__name__}): min_v_mem = "
                            f"{value_span(as_f64(layers[name].min_v_mem))} changes its spikes on the sample; st2chip has no "
                            "voltage floor (use min_v_mem=None)")
        else:
            notes.append(f"{', '.join(repr(n) for n in floored)}: min_v_mem dropped (st2chip has no voltage floor): "
                         "the spikes on the sample are the same without it")
    if problems:
        raise InputError("cannot convert the sinabs model exactly: " + "; ".join(problems))
    multi = [n for n, layer in layers.items() if layer.spike_fn is not SingleSpike]
    total = int(sum(float(s.sum()) for s in spikes.values()))
    if multi:
        notes.append(f"{', '.join(repr(n) for n in multi)}: multi-spike layers emit at most one spike per step on the "
                     f"sample ({total} spikes in all): read as single-spike, exact on inputs where that holds")


def to_nir(model, sample, *, dt: float = DEFAULT_DT, steps: int | None = None) -> Converted:
    """Export a sinabs model (an ``nn.Module`` of sinabs layers) and return its canonical graph and the changes made.

    ``sample``: input data as the model takes it: ``(batch * time, C, H, W)`` for
    the ``*Squeeze`` layers (sinabs' CNNs, ``from_model``), ``(batch, time, n)``
    for ``IAF``/``LIF``. The model runs on it once to check what only data shows
    (several spikes per step, a voltage floor that matters; module docstring), so
    it should be representative input, not zeros. ``dt`` is the step recorded in
    the graph (per-step decays are kept whatever it is). The model is not modified.
    """
    import nirtorch
    import torch
    from sinabs.nir import _extract_sinabs_module

    dt = positive_dt(dt)
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"to_nir takes a sinabs model (torch.nn.Module), got {type(model).__name__}")
    _check_model(model)
    x = torch.as_tensor(np.asarray(sample) if not isinstance(sample, torch.Tensor) else sample).float()
    notes: list[str] = []
    net = copy.deepcopy(model)
    _check_on_sample(net, x, notes)
    neurons, leaky, _ = _kinds()

    def mapping(module):
        if type(module) in neurons or type(module) in leaky:
            return _neuron_node(module, dt)
        return _extract_sinabs_module(module)

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)  # nirtorch: extract_nir_graph is deprecated
        warnings.simplefilter("ignore", FutureWarning)
        try:
            graph = nirtorch.extract_nir_graph(net, mapping, x, model_name="sinabs", ignore_dims=[0])
        except Exception as exc:  # a tracing failure of the user's model is their input
            raise InputError(f"sinabs/nirtorch could not trace the model on a sample of shape {tuple(x.shape)}: "
                             f"{type(exc).__name__}: {' '.join(str(exc).split())}") from None
    nodes, edges = dict(graph.nodes), [tuple(e) for e in graph.edges]
    drop_time_dim(nodes, edges, notes)
    for name, node in nodes.items():
        if isinstance(node, (nir.IF, nir.LIF, nir.CubaLIF)):
            reset = "by subtraction" if (node.metadata or {}).get("reset") == "subtract" else "to 0"
            notes.append(f"node '{name}': {type(node).__name__} with sinabs' per-step decays at dt = {dt:g}, spikes "
                         f"at v >= threshold (one ulp lower for st2chip's >), reset {reset}")
    graph = nir.NIRGraph(nodes=nodes, edges=edges, metadata={"threshold_rule": THRESHOLD_RULE}, type_check=False)
    return finish(graph, dt=dt, steps=steps, notes=notes, producer=NAME)
