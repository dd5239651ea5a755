r"""A spiking Transformer bundle as **one** graph: what ``st2chip map|simulate|verify bundle/`` lower.

A bundle (:mod:`st2chip.graph.bundle`) is a list of steps over named tensors. This
module composes them into one canonical NIR graph (plus st2chip's
:class:`~st2chip.graph.product.SpikeProduct` node), in the manifest's order:

- each NIR part is normalized on its own and its nodes are added under the step's
  name (``blocks.0.qkv.attn.q.lif``). A **token part** (its Input is one token,
  ``(D,)``) runs on all ``N`` tokens alike: it is replicated as one layer of
  ``N`` copies, each Affine as the block-diagonal :math:`I_N \otimes W` (a scipy
  CSR matrix: ``N`` times the part's non-zeros, never ``N^2`` of them) and each
  neuron array tiled ``N`` times (token-major: element ``n D + d``);
- ``op: add`` (a residual sum of spike trains) becomes fan-in: every source of
  the sum feeds the consumer, as NIR adds a node's inputs;
- the token reshape ONNX becomes an Affine permutation (CSR) from ``(D, H', W')`` maps to
  tokens, read off the ONNX model itself by running it on ``0, 1, 2, ...``;
- the attention-product ONNX becomes a ``SpikeProduct`` node (the integer counts
  :math:`(Q K^\top) V`) and a ``Scale`` by the config's ``attn_scale`` (heads and
  scale checked against the ONNX model on random spikes);
- the image enters as :data:`LEVELS` graded levels (``round(255 x)``, the Input's
  ``metadata["levels"]``; the graph's ``metadata["encoding"] = "direct"``), scaled
  back by a ``Scale`` of ``1/255``: the chip receives integers, the float graph the
  same values;
- the readout ONNX (mean over steps and tokens) becomes an ``I`` neuron with
  :math:`r = 1 / (dt\,T)`, whose voltage after the last step is the scores, fed
  through the head's Affine with the mean over tokens folded in (checked against
  the ONNX model on random values).

An ONNX part that is not what its step claims is refused with the step named.
The float interpreter runs the composed graph like any other; its scores equal
:func:`~st2chip.graph.bundle.run_bundle`'s (tested).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import nir
import numpy as np
import scipy.sparse as sp
import torch

from st2chip import limits
from st2chip.errors import InputError
from st2chip.graph.bundle import MANIFEST, _load_nir, _load_onnx, check_parts, read_manifest
from st2chip.graph.nirfile import one_line
from st2chip.graph.normalize import normalize
from st2chip.graph.product import SpikeProduct

NEURON_TYPES = (nir.LIF, nir.IF, nir.CubaLIF, nir.LI, nir.I, nir.CubaLI)
LEVELS = 255  # a direct-encoded image enters as 8-bit levels: round(x * 255), x in [0, 1]


@dataclasses.dataclass
class _Composer:
    """The graph under construction and, per bundle tensor, the nodes whose outputs sum to it."""

    dt: float
    steps: int
    nodes: dict[str, nir.NIRNode] = dataclasses.field(default_factory=dict)
    edges: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    tensors: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    def add(self, name: str, node: nir.NIRNode, where: str) -> None:
        if name in self.nodes:
            raise InputError(f"{where}: node name {name!r} occurs twice in the composed graph")
        self.nodes[name] = node

    def feed(self, tensor: str, consumer: str, where: str) -> None:
        """Edges from every source of ``tensor`` into ``consumer``."""
        if tensor not in self.tensors:
            raise InputError(f"{where}: reads tensor {tensor!r}, which no earlier step writes")
        self.edges += [(src, consumer) for src in self.tensors[tensor]]


def bundle_graph(folder: str | Path) -> nir.NIRGraph:
    """The bundle in ``folder`` as one canonical graph with Input ``x`` and Output ``scores`` (see module docstring)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    parts = check_parts(folder, manifest)
    c = manifest["config"]
    comp = _Composer(float(manifest["dt"]), int(manifest["time_steps"]))
    src = folder / MANIFEST
    x = manifest["input"]["tensor"]
    size = c["in_channels"] * c["image_size"] ** 2
    comp.add(x, nir.Input(input_type={"input": np.array([size])}, metadata={"levels": LEVELS}), str(src))
    comp.add(f"{x}.levels", nir.Scale(scale=np.full(size, 1.0 / LEVELS)), str(src))
    comp.edges.append((x, f"{x}.levels"))
    comp.tensors[x] = [f"{x}.levels"]
    for i, step in enumerate(manifest["steps"]):
        where = f"{src}: steps[{i}] ({step['name']!r})"
        if step["kind"] == "nir":
            _nir_step(comp, step, _load_nir(parts[i], where), where)
        elif step["kind"] == "op":
            comp.tensors[step["outputs"][0]["tensor"]] = [s for p in step["inputs"] for s in _sources(comp, p, where)]
        else:
            _onnx_step(comp, step, manifest, _load_onnx(parts[i], where), where)
    scores = manifest["scores"]["tensor"]
    if scores not in comp.tensors:
        raise InputError(f"{src}: scores tensor {scores!r} is written by no step")
    comp.add("scores", nir.Output(output_type={"output": np.array([c["classes"]])}), str(src))
    comp.feed(scores, "scores", str(src))
    return nir.NIRGraph(nodes=comp.nodes, edges=comp.edges, type_check=False,
                        metadata={"dt": comp.dt, "steps": comp.steps, "producer": "st2chip bundle",
                                  "bundle": str(folder), "encoding": "direct", "levels": LEVELS,
                                  "image_shape": [c["in_channels"], c["image_size"], c["image_size"]]})


def _sources(comp: _Composer, port: dict, where: str) -> list[str]:
    if port["tensor"] not in comp.tensors:
        raise InputError(f"{where}: reads tensor {port['tensor']!r}, which no earlier step writes")
    return comp.tensors[port["tensor"]]


def _tokens_of(port: dict) -> int:
    """Tokens of a ``(T, B, N, D)`` tensor; 1 for anything else (maps, images)."""
    shape = port.get("shape") or []
    return int(shape[2]) if len(shape) == 4 else 1


def _nir_step(comp: _Composer, step: dict, part: nir.NIRGraph, where: str) -> None:
    graph = normalize(part, dt=comp.dt, source=where)
    inputs = {p.get("port", "input"): p for p in step["inputs"]}
    outputs = {p.get("port", "output"): p for p in step["outputs"]}
    tokens = max((_tokens_of(p) for p in inputs.values()), default=1)
    prefix = f"{step['name']}."
    for name, node in graph.nodes.items():
        if not isinstance(node, (nir.Input, nir.Output)):
            comp.add(prefix + name, _replicate(node, tokens, f"{where}: node {name!r}"), where)
    for a, b in graph.edges:
        na, nb = graph.nodes[a], graph.nodes[b]
        if isinstance(na, nir.Input):
            if a not in inputs:
                raise InputError(f"{where}: Input node {a!r} is not a port the manifest feeds ({sorted(inputs)})")
            comp.feed(inputs[a]["tensor"], prefix + b, where)
        elif isinstance(nb, nir.Output):
            if b not in outputs:
                raise InputError(f"{where}: Output node {b!r} is not a port the manifest reads ({sorted(outputs)})")
            comp.tensors.setdefault(outputs[b]["tensor"], []).append(prefix + a)
        else:
            comp.edges.append((prefix + a, prefix + b))


def _replicate(node: nir.NIRNode, tokens: int, where: str) -> nir.NIRNode:
    """``node`` applied to ``tokens`` tokens side by side (itself when there is one)."""
    if tokens == 1:
        return node
    if isinstance(node, nir.Affine):  # block-diagonal, sparse: tokens x the part's non-zeros, never tokens^2
        weight = sp.csr_matrix(node.weight)
        limits.check_alloc(f"{where}: the Affine replicated over {tokens} tokens", weight.nnz * tokens, 16)
        return nir.Affine(weight=sp.kron(sp.identity(tokens, format="csr"), weight, format="csr"),
                          bias=np.tile(node.bias, tokens))
    if isinstance(node, NEURON_TYPES):
        fields = {f.name: np.tile(getattr(node, f.name), tokens) for f in dataclasses.fields(node)
                  if isinstance(getattr(node, f.name), np.ndarray) and f.name not in ("input_type", "output_type")}
        return dataclasses.replace(node, **fields)
    raise InputError(f"{where}: a token part holds a {type(node).__name__}; only Affine and neuron nodes are "
                     f"replicated over tokens")


def _run_onnx(session, feeds: dict[str, np.ndarray], where: str) -> np.ndarray:
    """The first output of an ONNX part on a probe; a part with other inputs, or one that fails, is refused."""
    needed = sorted(i.name for i in session.get_inputs())
    if needed != sorted(feeds):
        raise InputError(f"{where}: ONNX part takes inputs {needed}, its step gives {sorted(feeds)}")
    try:
        return np.asarray(session.run([session.get_outputs()[0].name], feeds)[0])
    except Exception as exc:  # noqa: BLE001 -- an untrusted part that does not run is bad input
        raise InputError(f"{where}: ONNX part does not run ({one_line(exc)})") from None


def _onnx_step(comp: _Composer, step: dict, manifest: dict, session, where: str) -> None:
    ins, outs = step["inputs"], step["outputs"]
    ports = sorted(p.get("port") for p in ins)
    if ports == ["maps"]:
        _tokens_step(comp, step, session, where)
    elif ports == ["k", "q", "v"]:
        _product_step(comp, step, manifest, session, where)
    elif ports == ["y"] and outs and outs[0]["tensor"] == manifest["scores"]["tensor"]:
        _readout_step(comp, step, session, where)
    else:
        raise InputError(f"{where}: an ONNX step with inputs {ports} is none of the parts st2chip maps "
                         f"(token reshape 'maps', attention product 'q', 'k', 'v', readout 'y')")


def _tokens_step(comp: _Composer, step: dict, session, where: str) -> None:
    """Token reshape: a permutation, read off the model by running it on ``0, 1, 2, ...``."""
    t, _, *maps = step["inputs"][0]["shape"]
    size = int(np.prod(maps))
    probe = np.broadcast_to(np.arange(size, dtype=np.float32).reshape(1, 1, *maps), (t, 1, *maps)).copy()
    order = _run_onnx(session, {"maps": probe}, where)[0, 0].reshape(-1)
    if order.size != size or not np.array_equal(np.sort(order), np.arange(size)):
        raise InputError(f"{where}: the token reshape is not a permutation of its input")
    perm = sp.csr_matrix((np.ones(size), (np.arange(size), order.astype(np.int64))), shape=(size, size))
    name = step["name"]
    comp.add(name, nir.Affine(weight=perm, bias=np.zeros(size)), where)
    comp.feed(step["inputs"][0]["tensor"], name, where)
    comp.tensors[step["outputs"][0]["tensor"]] = [name]


def _single(comp: _Composer, step: dict, port: str, where: str) -> str:
    p = next(p for p in step["inputs"] if p.get("port") == port)
    sources = _sources(comp, p, where)
    if len(sources) != 1 or not isinstance(comp.nodes[sources[0]], (nir.LIF, nir.IF, nir.CubaLIF)):
        raise InputError(f"{where}: input {port!r} must be the spikes of one neuron layer")
    return sources[0]


def _product_step(comp: _Composer, step: dict, manifest: dict, session, where: str) -> None:
    """Attention product: a SpikeProduct, checked against the ONNX model on random spikes."""
    c = manifest["config"]
    t, _, tokens, dim = step["inputs"][0]["shape"]
    names = tuple(_single(comp, step, p, where) for p in ("q", "k", "v"))
    scale = float(c["attn_scale"])
    node = SpikeProduct(heads=int(c["heads"]), tokens=int(tokens), dim=int(dim), scale=1.0, inputs=names)
    rng = np.random.default_rng(0)
    probe = {p: (rng.random((t, 2, tokens, dim)) < 0.5).astype(np.float32) for p in ("q", "k", "v")}
    want = _run_onnx(session, probe, where).reshape(t, 2, -1)
    got = scale * node(*(torch.from_numpy(probe[p]).reshape(t, 2, -1).double() for p in ("q", "k", "v"))).numpy()
    if want.shape != got.shape or not np.allclose(want, got, rtol=1e-5, atol=1e-5):
        raise InputError(f"{where}: the ONNX attention product is not s (Q K^T) V with the config's heads "
                         f"{c['heads']} and attn_scale {c['attn_scale']}")
    name = step["name"]
    comp.add(name, node, where)
    comp.add(f"{name}.scale", nir.Scale(scale=np.full(node.size, scale)), where)
    comp.edges += [(n, name) for n in names] + [(name, f"{name}.scale")]
    comp.tensors[step["outputs"][0]["tensor"]] = [f"{name}.scale"]


def _readout_step(comp: _Composer, step: dict, session, where: str) -> None:
    """Mean over steps and tokens: an ``I`` readout (voltage after the last step) fed through the head's
    Affine with the token mean folded in, or through an averaging Affine when the head is not one."""
    t, _, tokens, classes = step["inputs"][0]["shape"]
    probe = np.random.default_rng(0).normal(size=(t, 2, tokens, classes)).astype(np.float32)
    if not np.allclose(_run_onnx(session, {"y": probe}, where), probe.mean(axis=(0, 2)), rtol=1e-4, atol=1e-5):
        raise InputError(f"{where}: the readout is not the mean over steps and tokens")
    readout = step["name"]
    comp.add(readout, nir.I(r=np.full(classes, 1.0 / (comp.dt * comp.steps))), where)
    mean = sp.kron(np.ones((1, tokens)) / tokens, sp.identity(classes), format="csr")
    sources = _sources(comp, step["inputs"][0], where)
    head = sources[0]
    node = comp.nodes[head]
    if len(sources) == 1 and isinstance(node, nir.Affine) and not any(a == head for a, _ in comp.edges):
        # the head is read only here: fold the token mean into it
        comp.nodes[head] = nir.Affine(weight=mean @ node.weight, bias=mean @ node.bias)
        comp.edges.append((head, readout))
    else:
        comp.add(f"{readout}.mean", nir.Affine(weight=mean, bias=np.zeros(classes)), where)
        comp.feed(step["inputs"][0]["tensor"], f"{readout}.mean", where)
        comp.edges.append((f"{readout}.mean", readout))
    comp.tensors[step["outputs"][0]["tensor"]] = [readout]
