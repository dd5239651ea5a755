r"""norse 1.1 frontend: a norse model (or the ``.nir`` file its ``to_nir`` wrote) to canonical NIR.

norse's layers are forward-Euler steps with the cell's ``dt``; st2chip reads NIR
with forward Euler too (:mod:`st2chip.graph.simulate`), so every supported layer
converts exactly (up to float32 vs float64 rounding). ``inv`` below is
``p.tau_mem_inv`` / ``p.tau_syn_inv`` in 1/s, ``dt`` the cell's step.

=============  ==================================  ======================  =======================================
norse layer    norse step (``torch/functional``)   exported NIR (1.1.0)    after :func:`repair`, st2chip reading
=============  ==================================  ======================  =======================================
Linear         ``y = W x + b``                     ``Affine``              unchanged: ``y = W x + b``
LIFBoxCell     ``v += dt*inv*(v_leak - v + I)``,   ``LIF(tau=dt/inv,       ``LIF(tau=1/inv, r=1)``:
               spike if ``v - v_th > 0``,          r=1)``, ``v_reset``     ``v += dt/tau*(v_leak - v + r*I)``,
               then ``v = v_reset``                lost (nir writes 0)     spike if ``v > v_th``, ``v = v_reset``
LIFCell        ``i += I``;                         ``CubaLIF(tau_mem=      ``CubaLIF(tau_mem=1/inv_m,
               ``v += dt*inv_m*(v_leak - v + i)``; dt/inv_m, tau_syn=      tau_syn=1/inv_s, w_in=1/(dt*inv_s))``:
               spike, reset as above;              dt/inv_s, r=1,          ``i += dt/tau_syn*(w_in*I - i)``, then
               ``i *= 1 - dt*inv_s``               w_in=1)``               ``v`` as LIF with ``i``
IAFCell        ``v += I``; spike, reset            ``IF(r=1)``             ``IF(r=1/dt)``: ``v += dt*r*I``
LIBoxCell      ``v += dt*inv*(v_leak - v + I)``    ``LI(tau=dt/inv, r=1)`` ``LI(tau=1/inv, r=1)``, outputs ``v``
LICell, other  --                                  ``None``                :class:`GraphError` naming the node
=============  ==================================  ======================  =======================================

``LIFCell`` in detail: norse's current ``a_t = i_{t-1} + I_t`` (the value its
voltage step uses) obeys ``a_t = (1 - dt*inv_s) a_{t-1} + I_t``; st2chip's
``i_t = (1 - dt/tau_syn) i_{t-1} + (dt/tau_syn) w_in I_t`` is the same sequence
for ``tau_syn = 1/inv_s`` and ``w_in = tau_syn/dt``.

Quirks absorbed (evidence: ``norse/torch/utils/export_nir.py``, ``_extract_norse_module``):

- **Time constants** are written as ``dt / tau_mem_inv`` (and ``dt / tau_syn_inv``),
  ``dt`` being ``to_nir``'s argument (default 1 ms, :data:`DEFAULT_DT`): 1e-5 s for
  the default 10 ms neuron (norse issue #411). :func:`repair` divides them by
  ``dt``. From a file it does so for a node whose time constants all lie below
  ``dt`` (what every norse 1.1 export of a neuron with ``tau_mem < 1 s`` looks
  like; a sensible ``tau`` is never below ``dt``); ``st2chip import --from norse --tau-quirk`` forces it.
  :func:`to_nir` decides by comparing the export with the module.
- **Parameters are 0-d torch tensors**; ``nir.write`` fails on them ("Scalar
  datasets don't support chunk/filter options", 0-d numpy too). Repaired
  arrays are 1-D float64 numpy arrays.
- **IAFCell** integrates ``v += I`` with no ``dt`` (``functional/iaf.py``,
  ``iaf_feed_forward_step``) but is exported as ``IF(r=1)``: ``r`` becomes ``1/dt``.
- **LIFCell** jumps its current by ``I`` (``functional/lif.py``,
  ``lif_feed_forward_step``) and is exported with ``w_in = 1``: ``w_in`` becomes
  ``tau_syn / dt`` (above). ``r``/``w_in`` other than the 1 norse writes are kept,
  so that repairing twice changes nothing more.
- **v_reset and the reset method are not exported** (nir fills ``v_reset = 0``).
  :func:`to_nir` copies ``p.v_reset`` from the module and refuses
  ``LIFBoxParameters(reset_method=reset_subtract)`` (NIR 1.0 resets to ``v_reset``);
  from a file, ``v_reset = 0`` is all that can be known.
- **The sample's batch dimension** goes into the ``Input``/``Output`` shapes:
  a leading dim ``B > 1`` is dropped when the next ``Affine`` confirms it.
- **Layers norse cannot export** (``LICell``, the time-looped ``LIF``/``LIFBox``
  modules, activations, ...) become ``None`` nodes: a :class:`GraphError` naming the node.

Differences that stay (stated, not converted):

- norse starts ``LIFBoxCell``/``LIFCell``/``LIBoxCell`` at ``v = v_leak`` and
  ``IAFCell`` at ``v = v_reset``; st2chip starts every state at 0. Equal only when
  these are 0 (the defaults); otherwise a note says so.
- norse computes in float32, st2chip's float simulation in float64 (with ``tau``
  rounded once to float32 by the export): a voltage within ~1e-6 of the
  threshold can fall on the other side. The threshold tests agree exactly:
  norse's ``heaviside(v - v_th)`` is ``v - v_th > 0``, which for IEEE floats is
  ``v > v_th``, st2chip's strict comparison; every surrogate ``method`` of
  norse uses this heaviside in its forward pass.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import nir
import numpy as np

from st2chip.converters.frontend import Converted, finish
from st2chip.errors import GraphError, InputError

NAME = "norse"
DEFAULT_DT = 1e-3  # norse.torch.utils.export_nir.to_nir(..., dt=0.001), also every norse cell's default dt

SUPPORTED = "torch.nn.Linear, LIFBoxCell, LIFCell (CubaLIF), IAFCell, LIBoxCell"
_TAU_FIELDS = {nir.LIF: ("tau",), nir.LI: ("tau",), nir.CubaLIF: ("tau_syn", "tau_mem")}


def _array(value: Any) -> Any:
    """A float64 numpy copy (at least 1-D) of a torch tensor or numeric array; other values unchanged."""
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch here
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray) and value.dtype.kind == "f":
        return np.atleast_1d(np.array(value, dtype=np.float64))
    return copy.deepcopy(value)


def _shape(value: Any) -> np.ndarray:
    return np.asarray(_plain_shape(value), dtype=np.int64)


def _plain_shape(value: Any) -> list[int]:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return [int(v) for v in np.atleast_1d(np.asarray(value))]


def _numpy_node(node: nir.NIRNode) -> nir.NIRNode:
    """A copy of ``node`` with every array (and every shape in its type dicts) as numpy."""
    out = copy.copy(node)
    for key, value in vars(node).items():
        if key in ("input_type", "output_type") and isinstance(value, dict):
            setattr(out, key, {k: _shape(v) for k, v in value.items() if v is not None})  # norse's Conv2d: None
        elif key == "metadata":
            setattr(out, key, copy.deepcopy(value))
        else:
            setattr(out, key, _array(value))
    return out


def _fmt(values: np.ndarray) -> str:
    flat = np.unique(np.round(np.asarray(values, dtype=np.float64).ravel(), 15))
    if flat.size == 1:
        return f"{flat[0]:.6g}"
    return f"{flat.min():.6g}..{flat.max():.6g}"


def repair(graph: nir.NIRGraph, dt: float, *, tau_quirk: bool | None = None) -> tuple[nir.NIRGraph, list[str]]:
    """Undo norse 1.1's export quirks in ``graph`` (as ``to_nir`` returned it or as read from its file).

    ``dt`` is the step (s) the graph was exported with and the cells integrate
    with. ``tau_quirk``: ``True`` divides every time constant by ``dt``, ``False``
    keeps them, ``None`` (default) decides per node (all of its time constants
    below ``dt``: the quirk). Returns a new graph and one line per change; the
    input is not touched.
    """
    dt = float(dt)
    if not np.isfinite(dt) or dt <= 0:
        raise InputError(f"dt must be a positive number of seconds, got {dt}")
    notes: list[str] = []
    nodes = _repair_nodes(graph.nodes, dt, tau_quirk, notes, prefix="")
    edges = [tuple(e) for e in graph.edges]
    _drop_batch_dim(nodes, edges, notes)
    metadata = copy.deepcopy(dict(graph.metadata or {}))
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata, type_check=False), notes


def _repair_nodes(nodes: dict[str, Any], dt: float, tau_quirk: bool | None, notes: list[str],
                  prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, node in nodes.items():
        full = f"{prefix}{name}"
        if node is None:
            raise GraphError("norse's to_nir exported no NIR node for this layer (it cannot export "
                             f"LICell, time-looped modules such as LIF/LIFBox, activations, ...); "
                             f"supported: {SUPPORTED}", node=full)
        if isinstance(node, nir.NIRGraph):
            sub = _repair_nodes(node.nodes, dt, tau_quirk, notes, prefix=f"{full}.")
            out[name] = nir.NIRGraph(nodes=sub, edges=[tuple(e) for e in node.edges],
                                     metadata=copy.deepcopy(dict(node.metadata or {})), type_check=False)
            continue
        if not isinstance(node, nir.NIRNode):
            raise GraphError(f"not a NIR node: {type(node).__name__}", node=full)
        new = _numpy_node(node)
        _fix_neuron(full, new, dt, tau_quirk, notes)
        out[name] = new
    return out


def _fix_neuron(name: str, node: nir.NIRNode, dt: float, tau_quirk: bool | None, notes: list[str]) -> None:
    """Turn one neuron node's norse-export parameters into st2chip's reading (in place, on a copy)."""
    fields = _TAU_FIELDS.get(type(node), ())
    taus = [getattr(node, f) for f in fields if isinstance(getattr(node, f, None), np.ndarray)]
    quirk = tau_quirk
    if quirk is None and taus:
        quirk = all(bool(np.all(t < dt)) for t in taus)
        if not quirk:
            notes.append(f"node '{name}': time constants >= dt = {dt:g} s kept as seconds "
                         "(not norse issue #411's dt/tau_mem_inv; pass --tau-quirk if this is a norse 1.1 export)")
    if quirk:
        for f in fields:
            old = getattr(node, f)
            setattr(node, f, old / dt)
            notes.append(f"node '{name}': {f} {_fmt(old)} s -> {_fmt(old / dt)} s "
                         "(norse issue #411: to_nir wrote dt/tau_inv)")
    # norse writes w_in = 1 (nir's default) and IF r = 1; other values are not norse's and are kept,
    # so that repairing a repaired graph changes nothing
    if isinstance(node, nir.CubaLIF):
        w_in = node.w_in if isinstance(node.w_in, np.ndarray) else np.ones(1)
        if np.all(w_in == 1):
            node.w_in = w_in * node.tau_syn / dt
            notes.append(f"node '{name}': w_in {_fmt(w_in)} -> {_fmt(node.w_in)} = tau_syn/dt "
                         "(LIFCell jumps its current by the input: i += I)")
        else:
            notes.append(f"node '{name}': w_in = {_fmt(w_in)} kept (norse writes 1)")
    if isinstance(node, nir.IF) and isinstance(node.r, np.ndarray):
        if np.all(node.r == 1):
            old = node.r
            node.r = old / dt
            notes.append(f"node '{name}': r {_fmt(old)} -> {_fmt(node.r)} = 1/dt "
                         "(IAFCell integrates v += I, without dt)")
        else:
            notes.append(f"node '{name}': r = {_fmt(node.r)} kept (norse writes 1)")
    v_leak = getattr(node, "v_leak", None)
    if isinstance(node, (nir.LIF, nir.CubaLIF, nir.LI)) and isinstance(v_leak, np.ndarray) and np.any(v_leak != 0):
        notes.append(f"node '{name}': norse starts v at v_leak = {_fmt(v_leak)}, st2chip at 0 "
                     "(the first steps differ until the difference has decayed)")
    v_reset = getattr(node, "v_reset", None)
    if isinstance(node, nir.IF) and isinstance(v_reset, np.ndarray) and np.any(v_reset != 0):
        notes.append(f"node '{name}': norse starts v at v_reset = {_fmt(v_reset)}, st2chip at 0")


def _drop_batch_dim(nodes: dict[str, Any], edges: list[tuple[str, str]], notes: list[str]) -> None:
    """Drop the sample's batch dimension ``B > 1`` that norse's export writes into Input/Output shapes."""
    batch = None
    for name, node in nodes.items():
        if not isinstance(node, nir.Input):
            continue
        shape = node.input_type.get("input")
        if shape is None or len(shape) < 2 or shape[0] <= 1:
            continue
        succ = [nodes[b] for a, b in edges if a == name and b in nodes]
        if succ and all(isinstance(s, nir.Affine) and s.weight.ndim == 2 and s.weight.shape[1] == np.prod(shape[1:])
                        for s in succ):
            batch = int(shape[0])
            node.input_type = {"input": shape[1:].copy()}
            node.output_type = {"output": shape[1:].copy()}
            notes.append(f"node '{name}': shape {shape.tolist()} -> {shape[1:].tolist()} "
                         "(norse wrote the sample's batch dimension)")
    if batch is None:
        return
    for name, node in nodes.items():
        if isinstance(node, nir.Output):
            shape = node.output_type.get("output")
            if shape is not None and len(shape) >= 2 and shape[0] == batch:
                node.input_type = {"input": shape[1:].copy()}
                node.output_type = {"output": shape[1:].copy()}
                notes.append(f"node '{name}': shape {shape.tolist()} -> {shape[1:].tolist()} "
                             "(norse wrote the sample's batch dimension)")


# -- from the model object ------------------------------------------------------------------------

def _neuron_modules(model) -> dict[str, Any]:
    """Module name -> norse neuron cell, for the cells norse's to_nir exports."""
    from norse.torch import IAFCell, LIBoxCell, LIFBoxCell, LIFCell
    return {name: m for name, m in model.named_modules() if isinstance(m, (LIFBoxCell, LIFCell, IAFCell, LIBoxCell))}


def _model_dt(cells: dict[str, Any], dt: float | None) -> float:
    """The step the cells integrate with (all must agree, and agree with ``dt`` when given)."""
    steps = {name: float(m.dt) for name, m in cells.items()}
    distinct = sorted(set(steps.values()))
    if len(distinct) > 1:
        raise InputError(f"norse cells integrate with different dt: {steps}; st2chip needs one dt")
    if dt is None:
        return distinct[0] if distinct else DEFAULT_DT
    if distinct and not np.isclose(float(dt), distinct[0], rtol=1e-12, atol=0):
        name = next(iter(steps))
        raise InputError(f"dt = {dt} s, but norse cell '{name}' integrates with dt = {distinct[0]} s "
                         "(leave dt out to use the cells' own)")
    return float(dt)


def _check_reset(name: str, cell) -> None:
    from norse.torch.functional.reset import reset_value
    method = getattr(cell.p, "reset_method", reset_value)
    if method is not reset_value:
        raise GraphError(f"{type(cell).__name__} resets with {getattr(method, '__name__', method)}; NIR 1.0 "
                         "neurons reset to v_reset (use reset_method=reset_value)", node=name)


def _tau_quirk(exported: nir.NIRGraph, cells: dict[str, Any], dt: float) -> bool | None:
    """Whether this norse writes ``dt/tau_mem_inv`` (issue #411), judged from the module; None if no evidence."""
    for name, cell in cells.items():
        node = exported.nodes.get(name)
        inv = getattr(cell.p, "tau_mem_inv", None)
        if node is None or inv is None or not hasattr(node, "tau_mem" if isinstance(node, nir.CubaLIF) else "tau"):
            continue
        tau = _array(node.tau_mem if isinstance(node, nir.CubaLIF) else node.tau)
        inv = _array(inv)
        if np.allclose(tau, dt / inv, rtol=1e-5, atol=0):
            return True
        if np.allclose(tau, 1 / inv, rtol=1e-5, atol=0):
            return False
    return None


def to_nir(model, sample, *, dt: float | None = None, steps: int | None = None) -> Converted:
    """Export a norse model with ``norse.torch.to_nir`` and return its canonical graph and the changes made.

    ``sample``: one input step, ``(batch, n_in)`` or ``(n_in,)``. ``dt`` defaults to
    the step the model's cells integrate with (norse's default 1 ms); ``steps``
    (optional) is recorded in the metadata.
    """
    import torch
    from norse.torch import to_nir as norse_to_nir

    cells = _neuron_modules(model)
    dt = _model_dt(cells, dt)
    for name, cell in cells.items():
        _check_reset(name, cell)
    if not isinstance(sample, torch.Tensor):
        sample = torch.as_tensor(np.asarray(sample), dtype=torch.float32)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*deprecated.*")
        exported = norse_to_nir(model, sample, dt=dt)

    modules = dict(model.named_modules())
    for name, node in exported.nodes.items():
        if node is None:
            kind = type(modules[name]).__name__ if name in modules else "this layer"
            raise GraphError(f"norse's to_nir cannot export {kind} (it returned None); supported: {SUPPORTED}",
                             node=name)
    notes: list[str] = []
    for name, cell in cells.items():  # v_reset is lost by the export; take it from the module
        node = exported.nodes.get(name)
        if isinstance(node, (nir.LIF, nir.CubaLIF, nir.IF)):
            node = copy.copy(node)
            node.v_reset = _array(cell.p.v_reset)
            exported.nodes[name] = node
            if np.any(node.v_reset != 0):
                notes.append(f"node '{name}': v_reset = {_fmt(node.v_reset)} taken from the module "
                             "(norse's to_nir does not export it)")
    graph, repaired = repair(exported, dt, tau_quirk=_tau_quirk(exported, cells, dt))
    return finish(graph, dt=dt, steps=steps, notes=repaired + notes, producer=NAME)
