r"""Rockpool 3.1 frontend: Rockpool torch models and their NIR exports (its ``to_nir``) -> canonical NIR.

Rockpool's torch neurons step once per time bin with their own ``dt``
(``rockpool/nn/modules/torch/lif_torch.py``, ``LIFTorch.evolve``, lines 685-709;
``lif_neuron_torch.py`` lines 253-272; ``exp_syn_torch.py`` lines 122-131)::

    LIFTorch:        i = beta (i + I + W_rec s[t-1]);  v = alpha v + i + bias
    LIFNeuronTorch:  v = alpha v + I + bias
    ExpSynTorch:     i = beta (i + I), output i
    spikes  n = [v >= threshold] * floor(v / threshold), at most max_spikes_per_dt  (StepPWL, lines 43-46)
    reset   v -= n * threshold                                                       (line 709)

with ``alpha = exp(-dt/tau_mem)``, ``beta = exp(-dt/tau_syn)`` and ``dt`` each
module's own (default 1 ms; modules of one network may differ). Only these
per-step decays matter: a network runs one step per bin whatever its ``dt``.
st2chip reads NIR with forward Euler at the graph's ``dt``, and reproduces each
layer's per-step update exactly at any graph dt:

=================  ==========================================  ===============================================
Rockpool           its ``to_nir`` writes (``nir.py`` 235-298)  st2chip reading at graph ``dt`` (exact)
=================  ==========================================  ===============================================
``LinearTorch``    ``Affine(W.T, b)``, or ``Linear(W.T)``      unchanged
``LIFTorch``       ``CubaLIF(tau_syn, tau_mem,                 ``CubaLIF(tau_syn=dt/(1-beta), w_in=beta/(1-beta),
                   r=tau_mem*alpha/dt_L, v_leak=0, w_in=1)``   tau_mem=dt/(1-alpha), r=1/(1-alpha),
                                                               v_leak=bias/(1-alpha))``
``LIFNeuronTorch`` ``LIF(tau, r=tau*alpha/dt_L, v_leak=0)``    ``LIF(tau=dt/(1-alpha), r=1/(1-alpha), v_leak=...)``
``ExpSynTorch``    ``LI(tau, r=tau*beta/dt_L)``                ``LI(tau=dt/(1-beta), r=beta/(1-beta))``
``>= threshold``   (not written)                               threshold lowered by one float64 ulp
subtract reset     (not written)                               ``metadata["reset"] = "subtract"``
=================  ==========================================  ===============================================

**dt per layer.** The export stores no dt, but each neuron's ``r = (tau/dt_L)
exp(-dt_L/tau)`` holds its layer's ``dt_L``: :func:`repair` solves it for
``x = dt_L/tau`` (``exp(-x)/x = r``, one root), so the per-step decay
``exp(-x)`` comes from the file itself, per layer (Rockpool's own ``from_nir``
guesses ``dt = min(tau/(1+r))`` instead, ``nir.py`` lines 112-133). The graph's dt
is then only a unit (``--dt``; default Rockpool's 1 ms).

What st2chip cannot express, and how each path handles it:

- **Several spikes per step** (``max_spikes_per_dt`` defaults to 2**16). Exact
  as long as no step has more than one; :func:`to_nir` runs the model on its
  ``sample`` and refuses, naming the layer, otherwise. A file is read as single
  spike, with a note naming the layers.
- **Biases** of LIF neurons are dropped by the export (``v_leak =
  zeros_like(bias)``, ``nir.py`` lines 274 and 292): :func:`to_nir` takes them from
  the module; a file cannot have them.
- **Recurrent weights** of ``LIFTorch(has_rec=True)`` are dropped by the export:
  :func:`to_nir` adds them as a self-connection (an Affine back edge, NIR's one-step
  reading: exactly ``W_rec s[t-1]``).

:func:`to_nir` refuses, naming the layer and option: ``noise_std != 0``
(stochastic), several synapses per neuron, a spike function other than StepPWL
/ PeriodicExponential (``lif_torch.py`` and ``lif_neuron_torch.py`` each define a StepPWL; all have the same
forward pass), thresholds <= 0, and
other modules. Rockpool computes in float32, st2chip in float64: a voltage
within float32 rounding of a threshold can fall on the other side.
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any

import nir
import numpy as np
from scipy.optimize import brentq

from st2chip.converters.frontend import Converted, as_f64, finish, positive_dt, value_span
from st2chip.converters.sinabs import cubalif_node, li_node, lif_node
from st2chip.errors import GraphError, InputError

NAME = "rockpool"
DEFAULT_DT = 1e-3  # seconds: Rockpool's default module dt (LIFTorch, LIFNeuronTorch, ExpSynTorch: dt=1e-3)
THRESHOLD_RULE = "rockpool >= threshold, read as > nextafter(threshold, -inf)"
_MULTI_NOTE = ("equal to Rockpool while no neuron reaches twice its threshold in one step (Rockpool emits several "
               "spikes per step, st2chip one); the export drops LIF biases and recurrent weights: convert the model "
               "with st2chip.converters.rockpool.to_nir to have them kept and the spikes checked")





def step_ratio(name: str, field: str, r: np.ndarray) -> np.ndarray:
    """``x = dt_L / tau`` per neuron from Rockpool's ``r = exp(-x) / x`` (decreasing in ``x``: one root)."""
    r = as_f64(r).reshape(-1)
    if np.any(~np.isfinite(r)) or np.any(r <= 0):
        raise GraphError("Rockpool writes r = tau*exp(-dt/tau)/dt > 0; this r is not Rockpool's", node=name,
                         field=field)
    return np.array([brentq(lambda x, v=v: math.exp(-x) - v * x, 1e-12, 1e3, xtol=1e-300, rtol=1e-15) for v in r])


# -- repair: a graph as Rockpool's to_nir wrote it -> a graph normalize accepts ---------------------

def repair(graph: nir.NIRGraph, dt: float) -> tuple[nir.NIRGraph, list[str]]:
    """Return a copy of a Rockpool export that means, under st2chip's reading at ``dt``, what Rockpool computes.

    Each layer's per-step decays come from its own ``r`` (module docstring); ``dt``
    is the graph's step. A graph this function already repaired is refused.
    """
    if not isinstance(graph, nir.NIRGraph):
        raise InputError(f"rockpool.repair takes a nir.NIRGraph, got {type(graph).__name__}")
    dt = positive_dt(dt)
    meta = copy.deepcopy(dict(graph.metadata or {}))
    if meta.get("threshold_rule") == THRESHOLD_RULE:
        raise InputError("this graph was already converted from Rockpool (metadata threshold_rule); "
                         "read it with st2chip import --from nir")
    notes: list[str] = []
    nodes: dict[str, Any] = {}
    spiking: list[str] = []
    for name, node in graph.nodes.items():
        if node is None or not isinstance(node, nir.NIRNode) or isinstance(node, nir.NIRGraph):
            raise GraphError("Rockpool's to_nir writes flat graphs of NIR nodes; this is not one", node=name)
        if isinstance(node, (nir.CubaLIF, nir.LIF, nir.LI)):
            node = _repair_neuron(name, node, dt, notes)
            spiking += [name] if not isinstance(node, nir.LI) else []
        elif isinstance(node, (nir.Input, nir.Output)):
            node = _flat_io(name, node, notes)
        nodes[name] = copy.deepcopy(node)
    if spiking:
        notes.append(f"{', '.join(repr(n) for n in spiking)}: {_MULTI_NOTE}")
    meta["threshold_rule"] = THRESHOLD_RULE
    return nir.NIRGraph(nodes=nodes, edges=[tuple(e) for e in graph.edges], metadata=meta, type_check=False), notes


def _layer_dt(name: str, tau: np.ndarray, x: np.ndarray, graph_dt: float, notes: list[str]) -> None:
    steps = np.broadcast_to(as_f64(tau).reshape(-1), x.shape) * x
    notes.append(f"node '{name}': Rockpool's dt {value_span(np.round(steps, 9))} s solved from tau and r; its per-step "
                 f"decays kept at graph dt = {graph_dt:g} s")


def _repair_neuron(name: str, node: nir.NIRNode, dt: float, notes: list[str]) -> nir.NIRNode:
    if np.any(as_f64(node.v_leak) != 0):
        raise GraphError("Rockpool's export writes v_leak = 0; this is not Rockpool's", node=name, field="v_leak")
    x = step_ratio(name, "r", node.r)
    if isinstance(node, nir.LI):
        _layer_dt(name, node.tau, x, dt, notes)
        beta = np.exp(-x)
        return li_node(beta, beta, dt)
    thr = as_f64(node.v_threshold).reshape(-1)
    if np.any(thr <= 0):
        raise GraphError("thresholds must be positive", node=name, field="v_threshold")
    tau_mem = node.tau_mem if isinstance(node, nir.CubaLIF) else node.tau
    _layer_dt(name, tau_mem, x, dt, notes)
    alpha = np.exp(-x)
    if isinstance(node, nir.LIF):
        return lif_node(alpha, np.ones_like(alpha), thr, dt, subtract=True)
    if np.any(as_f64(node.w_in) != 1):
        raise GraphError("Rockpool's export writes w_in = 1; this is not Rockpool's", node=name, field="w_in")
    beta = np.exp(-x * np.broadcast_to(as_f64(tau_mem).reshape(-1), x.shape) / as_f64(node.tau_syn).reshape(-1))
    return cubalif_node(alpha, beta, np.ones_like(alpha), thr, dt, subtract=True)


def _flat_io(name: str, node: nir.NIRNode, notes: list[str]) -> nir.NIRNode:
    """Rockpool writes its (batch, time) sample dims of size 1 into Input/Output shapes: keep the last."""
    key = "input" if isinstance(node, nir.Input) else "output"
    shape = as_f64(next(iter((node.input_type if key == "input" else node.output_type).values())))
    shape = shape.astype(np.int64).reshape(-1)
    if shape.size < 2 or int(np.prod(shape)) != int(shape[-1]):
        return node
    notes.append(f"node '{name}': shape {shape.tolist()} -> {shape[-1:].tolist()} (the export's sample dims)")
    kind = nir.Input if key == "input" else nir.Output
    return kind(**{f"{key}_type": {key: shape[-1:].copy()}})


# -- from the model object ------------------------------------------------------------------------

def _classes():
    from rockpool.nn.modules import ExpSynTorch, LIFNeuronTorch, LIFTorch, LinearTorch
    return LIFTorch, LIFNeuronTorch, ExpSynTorch, LinearTorch


def _neuron_problems(label: str, module) -> list[str]:
    from rockpool.nn.modules.torch import lif_neuron_torch, lif_torch
    LIFTorch, _, ExpSynTorch, _ = _classes()
    problems = []
    if float(module.noise_std) != 0:
        problems.append(f"{label}: noise_std = {float(module.noise_std):g} makes it stochastic; use noise_std=0")
    if isinstance(module, ExpSynTorch):
        return problems
    known = (lif_torch.StepPWL, lif_torch.PeriodicExponential, lif_neuron_torch.StepPWL)  # one forward pass
    if getattr(module.spike_generation_fn, "__self__", None) not in known:
        problems.append(f"{label}: spike_generation_fn is not StepPWL or PeriodicExponential")
    if np.any(as_f64(module.threshold) <= 0):
        problems.append(f"{label}: threshold must be positive")
    if isinstance(module, LIFTorch) and (module.n_synapses != 1 or module.size_in != module.size_out):
        problems.append(f"{label}: several synapses per neuron (n_synapses = {module.n_synapses}) have no NIR form")
    return problems


def _check_model(model) -> None:
    """Refuse, all at once, every module or option without an exact NIR/st2chip form."""
    LIFTorch, LIFNeuronTorch, ExpSynTorch, LinearTorch = _classes()
    problems = []
    for name, module in model.named_modules():
        label = f"module '{name or type(model).__name__}' ({type(module).__name__})"
        if type(module) in (LIFTorch, LIFNeuronTorch, ExpSynTorch):
            problems += _neuron_problems(label, module)
        elif not list(module.children()) and type(module) is not LinearTorch:
            problems.append(f"{label}: not converted (st2chip converts LinearTorch, LIFTorch, LIFNeuronTorch and "
                            "ExpSynTorch)")
    if problems:
        raise InputError("cannot convert the Rockpool model: " + "; ".join(problems))


def _neuron_node(module, dt: float) -> nir.NIRNode:
    """One Rockpool neuron module in st2chip's reading, from the decays its forward pass uses."""
    import torch
    LIFTorch, LIFNeuronTorch, ExpSynTorch, _ = _classes()
    n = module.size_out
    full = lambda a: np.broadcast_to(as_f64(a).reshape(-1) if np.size(as_f64(a)) > 1 else as_f64(a), (n,)).copy()  # noqa
    if isinstance(module, ExpSynTorch):
        beta = full(torch.exp(-module.dt / module.tau))
        return li_node(beta, beta, dt)
    thr, bias = full(module.threshold), full(module.bias)
    if isinstance(module, LIFNeuronTorch):
        alpha = full(torch.exp(-module.dt / module.tau_mem))  # as lif_neuron_torch.py line 253 computes it
        return lif_node(alpha, np.ones(n), thr, dt, subtract=True, bias=bias)
    return cubalif_node(full(module.alpha), full(module.beta), np.ones(n), thr, dt, subtract=True, bias=bias)


def _check_on_sample(model, sample, notes: list[str]) -> None:
    """Refuse a layer that emits several spikes in one step on ``sample``."""
    import torch
    LIFTorch, LIFNeuronTorch, _, _ = _classes()
    spiking = [name for name, m in model.named_modules() if type(m) in (LIFTorch, LIFNeuronTorch)]
    with torch.no_grad():
        model.reset_state()
        _, _, record = model(sample, record=True)
        model.reset_state()
    problems, total = [], 0
    for name in spiking:
        out = record[f"{name}_output"]
        most, total = float(out.max()), total + int(out.sum())
        if most > 1:
            problems.append(f"module '{name}': emits up to {most:g} spikes in one step on the sample; st2chip neurons "
                            "emit at most one (use max_spikes_per_dt=1)")
    if problems:
        raise InputError("cannot convert the Rockpool model exactly: " + "; ".join(problems))
    if spiking:
        notes.append(f"{', '.join(repr(n) for n in spiking)}: at most one spike per step on the sample ({total} spikes "
                     "in all): read as single-spike, exact on inputs where that holds")


def _recurrent_loops(model, nodes: dict[str, Any], edges: list[tuple[str, str]], notes: list[str]) -> None:
    """``LIFTorch(has_rec=True)``: the recurrent weights the export drops, as an Affine back edge ``W_rec.T``."""
    LIFTorch = _classes()[0]
    for name, module in model.named_modules():
        if type(module) is LIFTorch and bool(module._has_rec):
            weight = as_f64(module.w_rec).T
            loop = f"{name}.rec"
            nodes[loop] = nir.Affine(weight=weight, bias=np.zeros(weight.shape[0]))
            edges += [(name, loop), (loop, name)]
            notes.append(f"node '{name}': recurrent weights (dropped by Rockpool's to_nir) as the self-connection "
                         f"'{loop}': exact")


def to_nir(model, sample, *, dt: float = DEFAULT_DT, steps: int | None = None) -> Converted:
    """Export a Rockpool torch model and return its canonical graph and the changes made.

    ``sample``: input ``(batch, time, n_in)`` as the model takes it; the model runs
    on it once to check that no layer emits several spikes in one step, so it
    should be representative input, not zeros. ``dt`` is the graph's step (each
    module's own per-step decays are kept whatever it is). The model is not modified.
    """
    import nirtorch
    import torch
    from rockpool.nn.modules.torch.nir import _extract_rockpool_module

    dt = positive_dt(dt)
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"to_nir takes a Rockpool torch model, got {type(model).__name__}")
    _check_model(model)
    x = torch.as_tensor(np.asarray(sample) if not isinstance(sample, torch.Tensor) else sample).float()
    if x.dim() != 3:
        raise InputError(f"sample must have shape (batch, time, n_in), got {tuple(x.shape)}")
    net = copy.deepcopy(model)
    notes: list[str] = []
    _check_on_sample(net, x, notes)
    neurons = _classes()[:3]

    def mapping(module):
        return _neuron_node(module, dt) if type(module) in neurons else _extract_rockpool_module(module)

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # nirtorch: extract_nir_graph is deprecated
        graph = nirtorch.extract_nir_graph(net, mapping, torch.zeros(1, x.shape[-1]), model_name="rockpool")
    nodes, edges = {}, [tuple(e) for e in graph.edges]
    for name, node in graph.nodes.items():
        nodes[name] = _flat_io(name, node, notes) if isinstance(node, (nir.Input, nir.Output)) else node
        if isinstance(node, (nir.LIF, nir.CubaLIF, nir.LI)):
            notes.append(f"node '{name}': {type(node).__name__} with the module's per-step decays (dt = "
                         f"{_module_dt(net, name):g} s) at graph dt = "
                         f"{dt:g} s" + ("" if isinstance(node, nir.LI) else ", spikes at v >= threshold, reset by "
                                        "subtraction"))
    _recurrent_loops(net, nodes, edges, notes)
    graph = nir.NIRGraph(nodes=nodes, edges=edges, metadata={"threshold_rule": THRESHOLD_RULE}, type_check=False)
    return finish(graph, dt=dt, steps=steps, notes=notes, producer=NAME)


def _module_dt(model, name: str) -> float:
    return float(dict(model.named_modules())[name].dt)
