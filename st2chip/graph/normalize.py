r"""Read NIR graphs from any frontend and bring them into st2chip's canonical form.

Every later stage (simulate, lower) reads only canonical graphs, so the quirks
of each frontend are absorbed here once. :func:`normalize` returns a new graph
and never touches its input.

Canonical form
--------------
- Node types: ``Input``, ``Output``, ``Affine``, ``Scale``, ``Delay``, ``Flatten``,
  ``Conv1d``, ``Conv2d``, ``SumPool2d``, ``AvgPool2d``, ``LIF``, ``CubaLIF``, ``IF``, ``LI``, ``I``. ``Linear`` becomes ``Affine`` with a zero
  bias; a nested ``NIRGraph`` node is flattened into its parent, its nodes
  named ``outer.inner`` and the edges through its ``Input``/``Output`` nodes
  rewired.
- Every signal is a flat vector in C order: a node's size is the number of its
  values (an ``Input`` of shape ``(2, 34, 34)`` carries 2,312 values), and
  ``Flatten`` is the identity. Convolution and pooling nodes carry the
  ``(C, H, W)`` (``(C, N)`` for ``Conv1d``) shapes of their input and output in
  ``input_type``/``output_type``, inferred from ``input_shape`` or from the
  shapes upstream (an ``Input``'s declared shape, a neuron layer's parameter
  shape, another convolution); ``Conv2d`` gets ``input_shape``, tuple
  ``stride``/``dilation``/``padding`` (``"same"`` kept) and a ``(C_out,)`` bias.
- Every array is a fresh ``numpy.float64`` array (torch tensors, 0-d scalars,
  Python floats and lists are converted). ``Affine.weight`` is 2-D
  ``(out, in)`` and ``Affine.bias`` 1-D ``(out,)``.
- Every neuron parameter is 1-D with one value per neuron; scalars are
  broadcast, the node size coming from its other parameters or from the
  connected nodes. A missing ``v_reset`` is zero, a missing ``w_in`` one.
- ``Input``/``Output``/``Flatten`` carry 1-D ``input_type``/``output_type``
  shapes ``[n]``.
- ``graph.nodes`` is in topological order (dict insertion order, ties kept in
  the input's order); ``graph.edges`` is sorted the same way. Several edges into
  one node add up. A cycle (recurrence) is accepted when it passes through a
  neuron node: the order then puts the neuron after the nodes it feeds back to,
  so that every back edge leaves a neuron (see :mod:`st2chip.graph.reading`);
  a cycle of linear nodes alone (``x = W x``) has no discrete-time meaning and
  is refused. A spiking node's ``metadata["reset"]``, if present, is ``"zero"``
  or ``"subtract"``; its ``metadata["refractory"]``, if present, 0 or 1 (steps; any
  other node carrying it is refused); its ``metadata["max_spikes"]``, if present, a whole number
  in 1..255, above 1 only with reset by subtraction (any other node carrying one above 1 is refused).
- ``graph.metadata`` is a copy of the input's (NumPy scalars turned into Python
  ones), with ``metadata["dt"]`` in seconds: the ``dt`` argument, else the
  graph's own ``metadata["dt"]``. dt is never guessed: a graph whose result
  depends on it (a node in :data:`DT_FIELDS`: a time constant, ``r`` of an
  ``IF``/``I`` that adds ``dt·r·I``, a non-zero delay) and gives none is refused
  with :class:`DtMissingError`; only a graph that computes the same at any dt
  gets :data:`DEFAULT_DT`. Node metadata is kept.
- Values are checked: all finite, time constants and ``r`` positive, at least
  one ``Input`` and one ``Output``, every node reachable from an ``Input``.
  A time constant below ``dt`` (forward Euler overshoots there) only warns with
  :class:`TimeConstantWarning`: it usually means a frontend's units went
  astray. norse 1.1's ``to_nir`` writes ``tau = dt / tau_mem_inv`` (norse issue
  #411), 1e-5 s for its default neuron; SpikingJelly 2.0 exports for
  ``dt = 1e-4`` s without storing dt, so its graphs need ``dt=1e-4``.

What cannot be accepted raises :class:`~st2chip.errors.GraphError` naming the
file, node and field; a file that cannot be read raises
:class:`~st2chip.errors.InputError`.
"""

from __future__ import annotations

import copy
import heapq
import os
import warnings
from collections.abc import Mapping
from typing import Any

import nir
import numpy as np

from st2chip import limits
from st2chip.errors import GraphError, InputError, St2chipWarning
from st2chip.graph import linear
from st2chip.graph.nirfile import one_line, read_graph
from st2chip.graph.reading import SPIKING, max_spikes, refractory_steps, reset_mode

DEFAULT_DT = 1e-3  # seconds, recorded for a graph whose result does not depend on dt and that gives none

NEURON_FIELDS: dict[type, tuple[str, ...]] = {
    nir.LIF: ("tau", "r", "v_leak", "v_threshold", "v_reset"),
    nir.CubaLIF: ("tau_syn", "tau_mem", "r", "v_leak", "v_threshold", "v_reset", "w_in"),
    nir.CubaLI: ("tau_syn", "tau_mem", "r", "v_leak", "w_in"),
    nir.IF: ("r", "v_threshold", "v_reset"),
    nir.LI: ("tau", "r", "v_leak"),
    nir.I: ("r",),
}
# per-element linear nodes: one value per element, broadcast like neuron parameters
ELEMENTWISE_FIELDS: dict[type, tuple[str, ...]] = {nir.Scale: ("scale",), nir.Delay: ("delay",),
                                                   nir.Threshold: ("threshold",)}
SUPPORTED_TYPES = ("Input", "Output", "Affine", "Linear", "Scale", "Delay", "Flatten", "Conv1d", "Conv2d",
                   "SumPool2d", "AvgPool2d", "LIF", "CubaLIF", "IF", "LI", "CubaLI", "I", "Threshold",
                   "NIRGraph (nested, flattened)")
_DEFAULT_FILL = {"v_reset": 0.0, "w_in": 1.0}  # value of a neuron field left as None
_POSITIVE = ("tau", "tau_syn", "tau_mem", "r")
_TIME_CONSTANTS = ("tau", "tau_syn", "tau_mem")
# the fields through which dt enters a node's result (a Delay's only where some delay is not zero)
DT_FIELDS: dict[type, str] = {nir.LIF: "tau", nir.CubaLIF: "tau_syn, tau_mem", nir.CubaLI: "tau_syn, tau_mem",
                              nir.LI: "tau", nir.IF: "r, as v += dt*r*I", nir.I: "r, as v += dt*r*I",
                              nir.Delay: "delay in seconds"}

Edge = tuple[str, str]


class TimeConstantWarning(St2chipWarning):
    """A neuron's time constant lies below dt: likely a frontend's unit mix-up."""


class DtMissingError(GraphError):
    """A graph whose result depends on dt gives none: a guessed dt would change what it computes."""


def dt_conventions(export_dt: Mapping[str, float]) -> str:
    """``export_dt`` (framework -> the dt its NIR export assumes) as one phrase, frameworks of equal dt together.

    A dt of 1 is a framework's per-step units (time constants counted in steps).
    """
    by_dt: dict[float, list[str]] = {}
    for framework, step in export_dt.items():
        by_dt.setdefault(float(step), []).append(framework)
    parts = [(" and ".join(names), _seconds(step)) for step, names in by_dt.items()]
    if not parts:
        return ""
    (names, first), rest = parts[0], parts[1:]
    return ", ".join([f"{names} exports assume dt = {first}", *(f"{n} {step}" for n, step in rest)])


def _seconds(step: float) -> str:
    if step == 1:
        return "1 (per-step units)"
    return f"{step * 1e3:g} ms" if step < 1 else f"{step:g} s"


def normalize(graph: nir.NIRGraph | str | os.PathLike, *, dt: float | None = None,
              source: str | None = None, notes: list[str] | None = None, dt_from: str = "--dt",
              export_dt: Mapping[str, float] | None = None) -> nir.NIRGraph:
    """Return a new canonical copy of ``graph`` (or of the ``.nir`` file it names).

    ``dt`` (seconds) overrides ``graph.metadata["dt"]``; ``source`` names the
    file in error messages (set automatically for a path). When ``notes`` is a
    list, one line per change made to the graph is appended to it (what
    ``st2chip import`` prints), the dt's saying where it came from: ``dt_from``
    for the ``dt`` argument, else the file. A graph whose result depends on dt
    and that gives none raises :class:`DtMissingError`, naming ``--dt`` and, when
    ``export_dt`` (framework -> dt its export assumes) is given, each framework's
    convention.
    """
    if isinstance(graph, (str, os.PathLike)):
        source = source or str(graph)
        graph = read_graph(graph)
    if not isinstance(graph, nir.NIRGraph):
        raise GraphError(f"expected a nir.NIRGraph or a .nir path, got {type(graph).__name__}", source=source)
    ctx = _Context(source, notes)
    nodes, edges = ctx.flatten(graph)
    ctx.check_node_types(nodes)
    ctx.check_edges(nodes, edges)
    order = ctx.topological_order(nodes, edges)
    ctx.check_io(nodes, edges, order)
    arrays = {name: ctx.node_arrays(name, nodes[name]) for name in order}
    shapes = ctx.spatial_shapes(nodes, arrays, edges, order)
    sizes = ctx.infer_sizes(nodes, arrays, edges, order, shapes)
    ctx.check_budget(nodes, arrays, sizes, order)
    step = ctx.resolve_dt(dt, graph.metadata, _dt_users(nodes, arrays, order), dt_from, export_dt)
    new_nodes = {name: ctx.build(name, nodes[name], arrays[name], sizes[name], step, shapes.get(name))
                 for name in order}
    rank = {name: i for i, name in enumerate(order)}
    new_edges = sorted(edges, key=lambda e: (rank[e[0]], rank[e[1]]))
    metadata = _plain(graph.metadata if isinstance(graph.metadata, dict) else {})
    metadata["dt"] = step
    return nir.NIRGraph(nodes=new_nodes, edges=new_edges, metadata=metadata, type_check=False)


def stored_dt(graph: nir.NIRGraph, source: str | None = None) -> float | None:
    """The dt (seconds) in ``graph.metadata``, checked like a given one, or None where it stores none."""
    raw = graph.metadata.get("dt") if isinstance(graph.metadata, dict) else None
    return None if raw is None else _Context(source).seconds(raw)


def _disagreement(stored: Any, value: float, where: str) -> str:
    """What a dt note adds where the graph's own dt differs from the one used."""
    if stored is None:
        return ""
    try:
        said = float(np.asarray(stored, dtype=np.float64).reshape(()))
    except (TypeError, ValueError):
        return f"; {where}'s dt is not one number"
    return "" if said == value else f"; {where} says {said:g} s"


def _dt_users(nodes: dict[str, Any], arrays: dict[str, dict[str, np.ndarray]], order: list[str]) -> list[str]:
    """The nodes whose result depends on dt, as ``name (Type: fields)``, in topological order."""
    users = []
    for name in order:
        node = nodes[name]
        fields = DT_FIELDS.get(type(node))
        if fields and not (isinstance(node, nir.Delay) and not np.any(arrays[name]["delay"])):
            users.append(f"'{name}' ({type(node).__name__}: {fields})")
    return users


def _plain(value: Any) -> Any:
    """Deep copy of metadata with NumPy scalars (as nir.read returns them) made Python scalars."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return copy.deepcopy(value)


def _float_array(value: Any) -> np.ndarray:
    """A fresh float64 array from a torch tensor, NumPy array, scalar or list."""
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch
        value = value.detach().cpu().double().numpy()
    return np.array(value, dtype=np.float64)


class _Context:
    """The normalize passes, sharing the source file name for their errors."""

    def __init__(self, source: str | None, notes: list[str] | None = None) -> None:
        self.source = source
        self.notes = notes if notes is not None else []

    def error(self, reason: str, node: str | None = None, field: str | None = None) -> GraphError:
        return GraphError(reason, node=node, field=field, source=self.source)

    # -- structure ---------------------------------------------------------------

    def flatten(self, graph: nir.NIRGraph, prefix: str = "") -> tuple[dict[str, Any], list[Edge]]:
        """Inline nested graphs; their Input/Output nodes become pass-throughs, then vanish."""
        nodes: dict[str, Any] = {}
        ports: dict[str, tuple[list[str], list[str]]] = {}  # subgraph -> (its Inputs, its Outputs)
        edges: list[Edge] = []

        def add(full: str, node: Any) -> None:
            if full in nodes:
                raise self.error("name clashes with a node of a flattened nested graph", node=full)
            nodes[full] = node

        for name, node in graph.nodes.items():
            full = f"{prefix}{name}"
            if not isinstance(node, nir.NIRGraph):
                add(full, node)
                continue
            inner_nodes, inner_edges = self.flatten(node, prefix=f"{full}.")
            ins = [k for k, v in inner_nodes.items() if isinstance(v, nir.Input)]
            outs = [k for k, v in inner_nodes.items() if isinstance(v, nir.Output)]
            if not ins or not outs:
                raise self.error("nested graph needs at least one Input and one Output node to be flattened",
                                 node=full)
            for inner, inner_node in inner_nodes.items():
                add(inner, inner_node)
            edges.extend(inner_edges)
            ports[full] = (ins, outs)
            self.notes.append(f"node '{full}': nested graph flattened into its parent ({full}.*)")
        for edge in graph.edges:
            if not isinstance(edge, (tuple, list)) or len(edge) != 2:
                raise self.error(f"edge {edge!r} is not a (source, target) pair", field="edges")
            pre, post = edge
            edges.append((self._port(f"{prefix}{pre}", ports, 1), self._port(f"{prefix}{post}", ports, 0)))
        for ins, outs in ports.values():
            for marker in ins + outs:
                del nodes[marker]
                preds = [a for a, b in edges if b == marker]
                succs = [b for a, b in edges if a == marker]
                edges = [e for e in edges if marker not in e] + [(a, b) for a in preds for b in succs]
        return nodes, edges

    def _port(self, name: str, ports: dict[str, tuple[list[str], list[str]]], side: int) -> str:
        """Resolve an edge end naming a whole subgraph to its single Input (side 0) or Output (1)."""
        if name not in ports:
            return name
        candidates = ports[name][side]
        if len(candidates) != 1:
            kind = ("Input", "Output")[side]
            raise self.error(f"nested graph has {len(candidates)} {kind} nodes ({', '.join(candidates)}); "
                             f"an edge must name one of them, not the whole graph", node=name, field="edges")
        return candidates[0]

    def check_node_types(self, nodes: dict[str, Any]) -> None:
        """Refuse every node of an unsupported type, all named in one error."""
        supported = (nir.Input, nir.Output, nir.Affine, nir.Linear, nir.Flatten, *linear.SPATIAL, *NEURON_FIELDS,
                     *ELEMENTWISE_FIELDS)
        bad = []
        for name, node in nodes.items():
            if not isinstance(node, supported):
                kind = type(node).__name__
                what = "None (the frontend exported nothing for this layer)" if node is None \
                    else f"'{kind}'"
                bad.append((name, what))
        if len(bad) == 1:
            name, what = bad[0]
            raise self.error(f"unsupported node type {what}; supported: {', '.join(SUPPORTED_TYPES)}", node=name)
        if bad:
            listed = "; ".join(f"node '{name}' ({what})" for name, what in bad)
            raise self.error(f"{len(bad)} nodes of unsupported types: {listed}; supported: "
                             f"{', '.join(SUPPORTED_TYPES)}", field="nodes")

    def check_edges(self, nodes: dict[str, Any], edges: list[Edge]) -> None:
        seen: set[Edge] = set()
        for edge in edges:
            for end in edge:
                if end not in nodes:
                    raise self.error(f"edge {edge[0]!r} -> {edge[1]!r} refers to unknown node {end!r}; "
                                     f"known nodes: {', '.join(nodes)}", node=end, field="edges")
            if edge in seen:
                raise self.error(f"duplicate edge {edge[0]!r} -> {edge[1]!r}", node=edge[1], field="edges")
            seen.add(edge)

    def topological_order(self, nodes: dict[str, Any], edges: list[Edge]) -> list[str]:
        """Kahn's algorithm, ties broken by the input's node order; cycles are broken at a neuron's output.

        A depth-first search from the Inputs finds each cycle's closing edge
        (into a node still on the search path, the layer fed back to); the last
        neuron before that edge on the path, the one feeding back, has its edge
        along the path released: its target may come first, reading the neuron's
        output of the step before. A cycle without a neuron is an error.
        """
        position = {name: i for i, name in enumerate(nodes)}
        released: set[Edge] = set()
        while True:
            kept = [e for e in edges if e not in released]
            order = self._kahn(nodes, kept, position)
            if len(order) == len(nodes):
                return order
            neuron, target = self._feedback_edge(nodes, kept, position)
            released.add((neuron, target))
            self.notes.append(f"node '{neuron}': recurrent; '{target}' reads its output of the step before")

    @staticmethod
    def _kahn(nodes: dict[str, Any], edges: list[Edge], position: dict[str, int]) -> list[str]:
        indegree = {name: 0 for name in nodes}
        succs: dict[str, list[str]] = {name: [] for name in nodes}
        for a, b in edges:
            indegree[b] += 1
            succs[a].append(b)
        ready = [(position[n], n) for n, d in indegree.items() if d == 0]
        heapq.heapify(ready)
        order: list[str] = []
        while ready:
            _, name = heapq.heappop(ready)
            order.append(name)
            for b in succs[name]:
                indegree[b] -= 1
                if indegree[b] == 0:
                    heapq.heappush(ready, (position[b], b))
        return order

    def _feedback_edge(self, nodes: dict[str, Any], edges: list[Edge], position: dict[str, int]) -> Edge:
        """The edge to release for the first cycle a depth-first search from the Inputs meets."""
        succs: dict[str, list[str]] = {name: [] for name in nodes}
        for a, b in edges:
            succs[a].append(b)
        starts = sorted(nodes, key=lambda n: (not isinstance(nodes[n], nir.Input), position[n]))
        visited: set[str] = set()
        for start in starts:
            if start in visited:
                continue
            path, on_path = [start], {start}
            visited.add(start)
            todo = [iter(succs[start])]
            while todo:
                b = next(todo[-1], None)
                if b is None:
                    todo.pop()
                    on_path.discard(path.pop())
                elif b in on_path:  # the edge path[-1] -> b closes a cycle b ... path[-1]
                    loop = path[path.index(b):]
                    for i in range(len(loop) - 1, -1, -1):
                        if isinstance(nodes[loop[i]], tuple(NEURON_FIELDS)):
                            return loop[i], (loop[i + 1] if i + 1 < len(loop) else b)
                    names = sorted(loop, key=position.get)
                    raise self.error(f"graph has a cycle through nodes {', '.join(names)} with no neuron on it; a "
                                     f"loop of linear nodes alone (x = W x) has no discrete-time meaning (a "
                                     f"recurrent connection must pass through a neuron layer)", node=names[0],
                                     field="edges")
                elif b not in visited:
                    visited.add(b)
                    path.append(b)
                    on_path.add(b)
                    todo.append(iter(succs[b]))
        raise AssertionError("Kahn's algorithm stopped but no cycle was found")

    def check_io(self, nodes: dict[str, Any], edges: list[Edge], order: list[str]) -> None:
        inputs = [n for n in order if isinstance(nodes[n], nir.Input)]
        outputs = [n for n in order if isinstance(nodes[n], nir.Output)]
        if not inputs:
            raise self.error("graph has no Input node", field="nodes")
        if not outputs:
            raise self.error("graph has no Output node", field="nodes")
        for a, b in edges:
            if isinstance(nodes[b], nir.Input):
                raise self.error(f"Input node has an incoming edge from '{a}'", node=b, field="edges")
            if isinstance(nodes[a], nir.Output):
                raise self.error(f"Output node has an outgoing edge to '{b}'", node=a, field="edges")
        reached, grew = set(inputs), True
        while grew:  # until nothing new is reached (recurrent edges point backwards in the order)
            grew = False
            for a, b in edges:
                if a in reached and b not in reached:
                    reached.add(b)
                    grew = True
        lost = [n for n in order if n not in reached]
        if lost:
            raise self.error(f"not reachable from any Input node (unreachable: {', '.join(lost)})",
                             node=lost[0])

    # -- arrays and sizes --------------------------------------------------------

    def array(self, value: Any, node: str, field: str) -> np.ndarray:
        try:
            arr = _float_array(value)
        except (TypeError, ValueError) as exc:
            raise self.error(f"not a numeric array ({one_line(exc)})", node=node, field=field) from None
        bad = arr.size - int(np.count_nonzero(np.isfinite(arr)))
        if bad:
            raise self.error(f"{bad} of {arr.size} values are NaN or infinite", node=node, field=field)
        return arr

    def node_arrays(self, name: str, node: Any) -> dict[str, np.ndarray]:
        """Numeric fields of a node as float64 arrays, shapes checked but not yet broadcast."""
        if isinstance(node, (nir.Affine, nir.Linear)):
            weight = self.array(node.weight, name, "weight")
            if weight.ndim != 2:
                raise self.error(f"weight must be 2-D (out, in), got shape {weight.shape}", node=name, field="weight")
            raw_bias = getattr(node, "bias", None)
            bias = np.zeros(weight.shape[0]) if raw_bias is None else self.array(raw_bias, name, "bias")
            if bias.ndim == 0:
                bias = np.full(weight.shape[0], float(bias))
            if bias.size != weight.shape[0]:
                raise self.error(f"bias has {bias.size} values but weight has {weight.shape[0]} rows "
                                 f"(weight shape {weight.shape})", node=name, field="bias")
            return {"weight": weight, "bias": bias.reshape(-1)}
        if isinstance(node, (nir.Conv1d, nir.Conv2d)):
            return self.conv_arrays(name, node)
        if isinstance(node, linear.SPATIAL):  # pooling: sizes only, checked with the shapes
            return {}
        fields = NEURON_FIELDS.get(type(node)) or ELEMENTWISE_FIELDS.get(type(node), ())
        arrays = {}
        for field in fields:
            value = getattr(node, field, None)
            if value is None and field not in _DEFAULT_FILL:
                raise self.error("parameter is missing", node=name, field=field)
            if value is None:
                self.notes.append(f"node '{name}': {field} missing, set to {_DEFAULT_FILL[field]:g}")
            arrays[field] = self.array(_DEFAULT_FILL[field] if value is None else value, name, field).reshape(-1)
        return arrays

    def conv_arrays(self, name: str, node: nir.Conv1d | nir.Conv2d) -> dict[str, np.ndarray]:
        ndim = 3 if isinstance(node, nir.Conv1d) else 4
        weight = self.array(node.weight, name, "weight")
        if weight.ndim != ndim or 0 in weight.shape:
            raise self.error(f"weight must be {ndim}-D (C_out, C_in / groups, {'N' if ndim == 3 else 'kH, kW'}), "
                             f"got shape {weight.shape}", node=name, field="weight")
        raw_bias = getattr(node, "bias", None)
        bias = np.zeros(1) if raw_bias is None else self.array(raw_bias, name, "bias").reshape(-1)
        if bias.size not in (1, weight.shape[0]):
            raise self.error(f"bias has {bias.size} values but the weight has {weight.shape[0]} output channels",
                             node=name, field="bias")
        return {"weight": weight, "bias": np.broadcast_to(bias, (weight.shape[0],)).copy()}

    def spatial_shapes(self, nodes: dict[str, Any], arrays: dict[str, dict[str, np.ndarray]], edges: list[Edge],
                       order: list[str]) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
        """``(input shape, output shape)`` of every convolution and pooling node.

        Shapes flow forward from declared ``Input``/``Flatten`` shapes, neuron
        parameters of more than one dimension and other convolutions; a
        convolution's own ``input_shape`` wins. Other nodes pass shapes on when
        their size allows.
        """
        rank = {n: i for i, n in enumerate(order)}
        preds: dict[str, list[str]] = {n: [] for n in order}
        for a, b in edges:
            if rank[a] < rank[b]:
                preds[b].append(a)
        shape: dict[str, tuple[int, ...] | None] = {}
        spatial: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        for name in order:
            node = nodes[name]
            upstream = next((shape[p] for p in preds[name] if shape.get(p) is not None), None)
            if isinstance(node, linear.SPATIAL):
                in_shape = self._own_input_shape(name, node, arrays[name]) or upstream
                if in_shape is None:
                    raise self.error("cannot tell the (C, H, W) shape of this node's input: give the node an "
                                     "input_shape, or the Input node its full shape", node=name, field="input_shape")
                spatial[name] = (in_shape, linear.output_shape(name, node, in_shape))
                shape[name] = spatial[name][1]
            elif isinstance(node, nir.Input):
                declared = (node.input_type or {}).get("input")
                shape[name] = tuple(int(d) for d in np.asarray(declared).reshape(-1)) \
                    if declared is not None and np.size(declared) > 1 else None
            elif isinstance(node, (nir.Flatten, nir.Affine, nir.Linear, nir.Output)):
                shape[name] = None
            else:  # neurons, Scale, Delay: their own parameter shape, else what flows in
                own = next((np.shape(getattr(node, f)) for f in (NEURON_FIELDS.get(type(node))
                            or ELEMENTWISE_FIELDS.get(type(node), ())) if np.ndim(getattr(node, f, None)) > 1), None)
                shape[name] = tuple(int(d) for d in own) if own else upstream
        return spatial

    def _own_input_shape(self, name: str, node: Any, arrays: dict[str, np.ndarray]) -> tuple[int, ...] | None:
        """A convolution's input shape from its ``input_shape`` field and its weight, if given."""
        given = getattr(node, "input_shape", None)
        if given is None or not isinstance(node, (nir.Conv1d, nir.Conv2d)):
            return None
        spatial = np.asarray(given, dtype=np.float64).reshape(-1)
        ndim = 1 if isinstance(node, nir.Conv1d) else 2
        if spatial.size != ndim or np.any(spatial < 1) or np.any(spatial != np.round(spatial)):
            raise self.error(f"must be {ndim} positive integer(s), got {np.asarray(given).tolist()}", node=name,
                             field="input_shape")
        return (arrays["weight"].shape[1] * int(node.groups), *(int(d) for d in spatial))

    def declared_size(self, name: str, node: Any, arrays: dict[str, np.ndarray]) -> int | None:
        """Size a node fixes by itself, or None when it takes it from its neighbours."""
        if isinstance(node, (nir.Input, nir.Output, nir.Flatten)):
            key, attr = ("output", "output_type") if isinstance(node, nir.Output) else ("input", "input_type")
            shape = (getattr(node, attr, None) or {}).get(key)
            if shape is None or np.size(shape) == 0:
                return None
            try:
                dims = np.asarray(shape, dtype=np.float64).reshape(-1)
            except (TypeError, ValueError):
                raise self.error(f"shape is not a list of integers: {shape!r}", node=name, field=attr) from None
            if not np.all(np.isfinite(dims)) or np.any(dims <= 0) or np.any(dims != np.round(dims)):
                raise self.error(f"shape must hold positive integers, got {dims.tolist()}", node=name, field=attr)
            return limits.count(dims)
        sizes = {f: a.size for f, a in arrays.items() if a.size != 1}
        if not sizes:
            return None
        first, n = next(iter(sizes.items()))
        for field, size in sizes.items():
            if size != n:
                raise self.error(f"has {size} values but the node has {n} neurons (from '{first}')",
                                 node=name, field=field)
        return n

    def infer_sizes(self, nodes: dict[str, Any], arrays: dict[str, dict[str, np.ndarray]],
                    edges: list[Edge], order: list[str],
                    spatial: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]) -> dict[str, int]:
        """Per-node size (output size for Affine and convolutions): declared, else propagated along edges."""
        affine = {n for n in order if isinstance(nodes[n], (nir.Affine, nir.Linear))}
        fixed_in = {n: arrays[n]["weight"].shape[1] for n in affine} | {
            n: int(np.prod(shapes[0])) for n, shapes in spatial.items()}
        size: dict[str, int | None] = {
            n: arrays[n]["weight"].shape[0] if n in affine else int(np.prod(spatial[n][1])) if n in spatial
            else self.declared_size(n, nodes[n], arrays[n]) for n in order}

        def size_in(n: str) -> int | None:
            return fixed_in.get(n, size[n])

        rank = {n: i for i, n in enumerate(order)}
        ordered_edges = sorted(edges, key=lambda e: (rank[e[0]], rank[e[1]]))
        changed = True
        while changed:
            changed = False
            for a, b in ordered_edges:
                if size[b] is None and size[a] is not None:
                    size[b] = size[a]
                    changed = True
                if size[a] is None and size_in(b) is not None:
                    size[a] = size_in(b)
                    changed = True
        for a, b in ordered_edges:
            if size[a] != size_in(b):
                raise self.error(f"size mismatch on edge '{a}' -> '{b}': '{a}' gives {size[a]} values, "
                                 f"'{b}' takes {size_in(b)}", node=b, field="input")
        unknown = [n for n in order if size[n] is None]
        if unknown:
            raise self.error("cannot infer the number of neurons from the node or its neighbours",
                             node=unknown[0])
        return {n: int(s) for n, s in size.items()}

    def check_budget(self, nodes: dict[str, Any], arrays: dict[str, dict[str, np.ndarray]],
                     sizes: dict[str, int], order: list[str]) -> None:
        """Declared sizes against the memory budget, before parameters are broadcast to ``n`` neurons.

        A neuron node holds one float64 per field and neuron; an Input, Output or
        Flatten of ``n`` values costs a run at least ``n`` float64 outputs and
        voltages per sample and step.
        """
        total = 0
        for name in order:
            node, n = nodes[name], sizes[name]
            if isinstance(node, (nir.Input, nir.Output, nir.Flatten)):
                field = "output_type" if isinstance(node, nir.Output) else "input_type"
                what, elements, itemsize = "a run's outputs and voltages per sample and step", n, \
                    limits.RUN_BYTES_PER_VALUE
            elif isinstance(node, (nir.Affine, nir.Linear, nir.Conv1d, nir.Conv2d)):
                field, what, elements, itemsize = "weight", "the weight", arrays[name]["weight"].size, 8
            elif isinstance(node, linear.SPATIAL):
                field, what, elements, itemsize = "kernel_size", "the output", n, limits.RUN_BYTES_PER_VALUE
            else:
                fields = list(arrays[name])
                scalars = [f for f in fields if arrays[name][f].size == 1]
                field = (scalars or fields or ["input"])[0]
                what = f"{len(fields)} parameters x {n:,} neurons"
                elements, itemsize = n * max(len(fields), 1), 8
            total += elements * itemsize
            try:
                limits.check_alloc(what, elements, itemsize)
                limits.check_bytes("the graph's nodes together", total)
            except InputError as err:
                raise self.error(str(err), node=name, field=field) from None

    def resolve_dt(self, dt: float | None, metadata: Any, users: list[str], dt_from: str,
                   export_dt: Mapping[str, float] | None) -> float:
        """dt from the argument (``dt_from`` says whose), else the graph's metadata; never guessed where
        ``users`` (the nodes that depend on it) is not empty."""
        stored = metadata.get("dt") if isinstance(metadata, dict) else None
        where = "the file" if self.source else "the graph's metadata"
        if dt is not None:
            value = self.seconds(dt)
            origin = dt_from + _disagreement(stored, value, where)
        elif stored is not None:
            value, origin = self.seconds(stored), f"from {where}"
        elif users:
            raise self.missing_dt(users, export_dt)
        else:
            value, origin = DEFAULT_DT, "none given; no node depends on dt"
        self.notes.append(f"dt = {value:g} s ({origin})")
        return value

    def seconds(self, raw: Any) -> float:
        """A dt value as a positive number of seconds, or a :class:`GraphError` naming the field."""
        try:
            value = float(np.asarray(raw, dtype=np.float64).reshape(()))
        except (TypeError, ValueError):
            raise self.error(f"dt must be one number (seconds), got {raw!r}", field="dt") from None
        if not np.isfinite(value) or value <= 0:
            raise self.error(f"dt must be a positive number of seconds, got {value}", field="dt")
        return value

    def missing_dt(self, users: list[str], export_dt: Mapping[str, float] | None) -> DtMissingError:
        """The one-line refusal of a graph that depends on dt and gives none, naming --dt and the way in."""
        more = f" and {len(users) - 1} more depend" if len(users) > 1 else " depends"
        where = "the file's metadata" if self.source else "the graph's metadata"
        conventions = dt_conventions(export_dt or {})
        reason = (f"no dt: node {users[0]}{more} on the time step, and neither --dt nor {where} gives "
                  f"one; pass --dt SECONDS (the step the model was trained with), or convert the file with "
                  f"`st2chip import --from FRAMEWORK`, which writes dt into a canonical file"
                  + (f" ({conventions})" if conventions else ""))
        return DtMissingError(reason, field="dt", source=self.source)

    # -- canonical nodes ---------------------------------------------------------

    def build(self, name: str, node: Any, arrays: dict[str, np.ndarray], n: int, dt: float,
              shapes: tuple[tuple[int, ...], tuple[int, ...]] | None = None) -> nir.NIRNode:
        """The canonical node: broadcast parameters, checked values, 1-D shapes (full shapes for convolutions)."""
        meta = _plain(getattr(node, "metadata", None) or {})
        refractory_steps(name, node)
        max_spikes(name, node)
        if shapes is not None:
            return self.build_spatial(name, node, arrays, shapes, meta)
        if isinstance(node, SPIKING):
            if reset_mode(name, node) == "subtract" and np.any(arrays["v_reset"] != 0):
                self.notes.append(f"node '{name}': resets by subtraction; v_reset is not used")
        if isinstance(node, nir.Input):
            return nir.Input(input_type={"input": np.array([n])}, metadata=meta)
        if isinstance(node, nir.Output):
            return nir.Output(output_type={"output": np.array([n])}, metadata=meta)
        if isinstance(node, nir.Flatten):
            return nir.Flatten(input_type={"input": np.array([n])}, start_dim=0, end_dim=-1, metadata=meta)
        if isinstance(node, (nir.Affine, nir.Linear)):
            if isinstance(node, nir.Linear):
                self.notes.append(f"node '{name}': Linear -> Affine with zero bias")
            return nir.Affine(weight=arrays["weight"], bias=arrays["bias"], metadata=meta)
        if isinstance(node, nir.Threshold):  # y = [x > threshold]: a LIF that forgets its voltage every step
            self.notes.append(f"node '{name}': Threshold -> LIF with tau = dt (no memory), r = 1")
            theta = np.broadcast_to(arrays["threshold"], (n,)).copy()
            zeros = np.zeros(n)
            return nir.LIF(tau=np.full(n, dt), r=np.ones(n), v_leak=zeros, v_threshold=theta, v_reset=zeros.copy(),
                           metadata=meta)
        scalars = [field for field, a in arrays.items() if a.size == 1 and n > 1]
        if scalars:
            self.notes.append(f"node '{name}': {', '.join(scalars)} broadcast from one value to {n} neurons")
        params = {field: np.broadcast_to(a, (n,)).copy() for field, a in arrays.items()}
        if "delay" in params and np.any(params["delay"] < 0):
            raise self.error("delays must be >= 0 seconds", node=name, field="delay")
        for field in _POSITIVE:
            if field in params and np.any(params[field] <= 0):
                i = int(np.argmax(params[field] <= 0))
                why = "a time constant" if field in _TIME_CONSTANTS else "r <= 0 ignores or inverts the input"
                raise self.error(f"must be > 0 ({why}); neuron {i} has {params[field][i]}", node=name, field=field)
        for field in _TIME_CONSTANTS:
            if field in params and np.any(params[field] < dt):
                warnings.warn(
                    f"node '{name}': {field} = {params[field].min():g} s is below dt = {dt:g} s, so forward Euler "
                    f"overshoots (dt/{field} = {dt / params[field].min():g}); pass the dt the frontend assumed "
                    f"with --dt, or import the file with st2chip import --from "
                    f"FRAMEWORK (norse 1.1's to_nir writes tau = dt/tau_mem_inv, norse issue #411)",
                    TimeConstantWarning)
        return type(node)(**params, metadata=meta)

    def build_spatial(self, name: str, node: Any, arrays: dict[str, np.ndarray],
                      shapes: tuple[tuple[int, ...], tuple[int, ...]], meta: dict) -> nir.NIRNode:
        """A convolution or pooling node with explicit geometry and full ``(C, H, W)`` types."""
        in_shape, out_shape = shapes
        geo = linear.geometry(name, node)
        padding: Any = "same" if geo.same else geo.pad
        if isinstance(node, nir.Conv2d):
            new = nir.Conv2d(input_shape=in_shape[1:], weight=arrays["weight"], stride=geo.stride,
                             padding=padding, dilation=geo.dilation, groups=int(node.groups), bias=arrays["bias"],
                             metadata=meta)
        elif isinstance(node, nir.Conv1d):
            new = nir.Conv1d(input_shape=in_shape[1], weight=arrays["weight"], stride=geo.stride[0],
                             padding=padding if geo.same else geo.pad[0], dilation=geo.dilation[0],
                             groups=int(node.groups), bias=arrays["bias"], metadata=meta)
        else:
            new = type(node)(kernel_size=np.array(geo.kernel), stride=np.array(geo.stride),
                             padding=np.array(geo.pad), metadata=meta)
        new.input_type = {"input": np.array(in_shape)}
        new.output_type = {"output": np.array(out_shape)}
        return new
