"""Tiny graphs and plans for testing each lowering pass alone."""

import dataclasses
from types import SimpleNamespace

import nir
import numpy as np
import pytest
import scipy.sparse as sp

from st2chip.chip.lower import PASSES, start
from st2chip.chip.lowering.plan import Options, Plan
from st2chip.graph.normalize import normalize

DT = 1e-3


def lif(thresholds, tau=0.005) -> nir.LIF:
    n = len(thresholds)
    return nir.LIF(tau=np.broadcast_to(np.asarray(tau, float), (n,)).copy(), r=np.ones(n), v_leak=np.zeros(n),
                   v_threshold=np.asarray(thresholds, float), v_reset=np.zeros(n))


def li(n: int, tau: float = 0.01) -> nir.LI:
    return nir.LI(tau=np.full(n, tau), r=np.ones(n), v_leak=np.zeros(n))


def chain_graph(weights: list[np.ndarray], neurons: list[nir.NIRNode], extra_nodes=None,
                extra_edges=()) -> nir.NIRGraph:
    """input -> fc1 -> n1 -> fc2 -> n2 ... -> output, with ``weights[i]`` into ``neurons[i]``."""
    nodes = {"input": nir.Input(input_type={"input": np.array([weights[0].shape[1]])})}
    edges, prev = [], "input"
    for i, (w, neuron) in enumerate(zip(weights, neurons), start=1):
        nodes[f"fc{i}"] = nir.Affine(weight=np.asarray(w, float), bias=np.zeros(w.shape[0]))
        nodes[f"n{i}"] = neuron
        edges += [(prev, f"fc{i}"), (f"fc{i}", f"n{i}")]
        prev = f"n{i}"
    nodes["output"] = nir.Output(output_type={"output": np.array([weights[-1].shape[0]])})
    nodes |= extra_nodes or {}
    edges += [(prev, "output"), *extra_edges]
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata={"dt": DT}, type_check=False)


UV_RNG = np.random.default_rng(0)
V, U = UV_RNG.normal(size=(2, 30)), UV_RNG.normal(size=(30, 2))


def uv_graph() -> nir.NIRGraph:
    """input (30) -> V (2 x 30) -> U (30 x 2) -> LIF (30), and x2 -> skip Affine -> the same LIF."""
    graph = chain_graph([U @ V], [lif(np.ones(30))], extra_nodes={
        "V": nir.Affine(weight=V, bias=np.zeros(2)), "skip": nir.Affine(weight=np.eye(30) * 0.5, bias=np.zeros(30)),
        "x2": nir.Input(input_type={"input": np.array([30])})})
    graph.nodes["fc1"] = nir.Affine(weight=U, bias=np.zeros(30))
    graph.edges = [("input", "V"), ("V", "fc1"), ("x2", "skip"), ("skip", "n1")] + [
        e for e in graph.edges if e != ("input", "fc1")]
    return graph


def plan_before(graph: nir.NIRGraph, pass_name: str, **options) -> Plan:
    """``graph`` normalized, as a plan after every pass that runs before ``pass_name``."""
    plan = start(normalize(graph), Options(**options))
    for name, run in PASSES:
        if name == pass_name:
            return plan
        plan = run(plan)
    raise KeyError(pass_name)


def record_bytes(value) -> object:
    """A comparable form of a chip record, bit for bit: arrays and floats by their bytes, CSR by its arrays."""
    if sp.issparse(value):
        m = sp.csr_matrix(value)
        return ("csr", m.shape, *((a.dtype.str, a.tobytes()) for a in (m.data, m.indices, m.indptr)))
    if isinstance(value, np.ndarray):
        return ("array", value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, float):
        return ("float", np.float64(value).tobytes())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (type(value).__name__,
                *((f.name, record_bytes(getattr(value, f.name))) for f in dataclasses.fields(value)))
    if isinstance(value, dict):
        return tuple((k, record_bytes(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return tuple(record_bytes(v) for v in value)
    return value


@pytest.fixture
def tiny() -> SimpleNamespace:
    """The builders: ``lif(thresholds, tau, reset)``, ``li(n)``, ``chain(weights, neurons, extra_nodes,
    extra_edges)``, ``uv()`` (a low-rank path V -> U beside a skip), ``before(graph, pass_name, **options)`` and
    ``record_bytes(record)`` (a chip record in a form compared bit for bit)."""
    return SimpleNamespace(lif=lif, li=li, chain=chain_graph, uv=uv_graph, before=plan_before,
                           record_bytes=record_bytes)
