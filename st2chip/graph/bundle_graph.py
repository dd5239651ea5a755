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
from st2chip.graph.reading import NEURONS

LEVELS = 255  # a direct-encoded image enters as 8-bit levels: round(x * 255), x in [0, 1]


@dataclasses.dataclass(frozen=True)
class _Shape:
    """A bundle tensor per sample and step, as its parts make it: ``tokens`` x ``width`` values (token-major;
    ``tokens`` is 1 for maps, images and scores)."""

    tokens: int
    width: int

    @property
    def size(self) -> int:
        return self.tokens * self.width

    def agrees(self, declared: list) -> bool:
        """Whether a manifest shape's sizes (after time and batch) describe this tensor."""
        return list(declared) == [self.tokens, self.width] if self.tokens > 1 else limits.count(declared) == self.width


@dataclasses.dataclass
class _Composer:
    """The graph under construction and, per bundle tensor, the nodes whose outputs sum to it and its shape."""

    dt: float
    steps: int
    nodes: dict[str, nir.NIRNode] = dataclasses.field(default_factory=dict)
    edges: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    tensors: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    shapes: dict[str, _Shape] = dataclasses.field(default_factory=dict)

    def add(self, name: str, node: nir.NIRNode, where: str) -> None:
        if name in self.nodes:
            raise InputError(f"{where}: node name {name!r} occurs twice in the composed graph")
        self.nodes[name] = node

    def feed(self, tensor: str, consumer: str, where: str) -> None:
        """Edges from every source of ``tensor`` into ``consumer``."""
        self.edges += [(src, consumer) for src in self.sources(tensor, where)]

    def sources(self, tensor: str, where: str) -> list[str]:
        if tensor not in self.tensors:
            raise InputError(f"{where}: reads tensor {tensor!r}, which no earlier step writes")
        return self.tensors[tensor]

    def write(self, port: dict, sources: list[str], shape: _Shape, where: str) -> None:
        """Tensor ``port["tensor"]`` is the sum of ``sources``' outputs, of ``shape``; a shape the manifest
        declares for it must say the same."""
        declared = port.get("shape")
        if declared is not None and not shape.agrees(declared[2:] if declared[0] != "B" else declared[1:]):
            want = f"{shape.tokens} tokens x {shape.width}" if shape.tokens > 1 else f"{shape.width} values"
            raise InputError(f"{where}: tensor {port['tensor']!r} is {want} per sample and step by the parts; "
                             f"the manifest declares shape {declared!r}")
        self.tensors[port["tensor"]] = sources
        self.shapes[port["tensor"]] = shape


def bundle_graph(folder: str | Path) -> nir.NIRGraph:
    """The bundle in ``folder`` as one canonical graph with Input ``x`` and Output ``scores`` (see module docstring).

    Sizes come from the parts and the config, never from the manifest's declared shapes alone: those must
    agree with the parts, and every array built here is checked against the memory budget first.
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    parts = check_parts(folder, manifest)
    c = manifest["config"]
    comp = _Composer(float(manifest["dt"]), int(manifest["time_steps"]))
    src = folder / MANIFEST
    x = manifest["input"]["tensor"]
    size = c["in_channels"] * c["image_size"] ** 2
    limits.check_alloc(f"the image input of {c['in_channels']} x {c['image_size']} x {c['image_size']} levels", size,
                       8 * limits.GRAPH_COPIES, str(src))
    comp.add(x, nir.Input(input_type={"input": np.array([size])}, metadata={"levels": LEVELS}), str(src))
    comp.add(f"{x}.levels", nir.Scale(scale=np.full(size, 1.0 / LEVELS)), str(src))
    comp.edges.append((x, f"{x}.levels"))
    comp.write(manifest["input"], [f"{x}.levels"], _Shape(1, size), str(src))
    for i, step in enumerate(manifest["steps"]):
        where = f"{src}: steps[{i}] ({step['name']!r})"
        if step["kind"] != "op":
            where = f"{where}: {folder / step['file']}"
        if step["kind"] == "nir":
            _nir_step(comp, step, _load_nir(parts[i], where), where)
        elif step["kind"] == "op":
            _add_step(comp, step, where)
        else:
            _onnx_step(comp, step, manifest, _load_onnx(parts[i], where), where)
    scores = manifest["scores"]["tensor"]
    comp.sources(scores, f"{src}: scores")
    if comp.shapes[scores] != _Shape(1, c["classes"]):
        raise InputError(f"{src}: scores: tensor {scores!r} holds {comp.shapes[scores].size} values per sample; "
                         f"the config's classes is {c['classes']}")
    comp.add("scores", nir.Output(output_type={"output": np.array([c["classes"]])}), str(src))
    comp.feed(scores, "scores", str(src))
    return nir.NIRGraph(nodes=comp.nodes, edges=comp.edges, type_check=False,
                        metadata={"dt": comp.dt, "steps": comp.steps, "producer": "st2chip bundle",
                                  "bundle": str(folder), "encoding": "direct", "levels": LEVELS,
                                  **_data(manifest, src),
                                  "image_shape": [c["in_channels"], c["image_size"], c["image_size"]]})


def _add_step(comp: _Composer, step: dict, where: str) -> None:
    """``op: add``: fan-in of every source of every input, all of one shape."""
    shapes = {comp.shapes[p["tensor"]] for p in step["inputs"] if p["tensor"] in comp.shapes}
    if len(shapes) > 1:
        raise InputError(f"{where}: 'add' of tensors of different sizes "
                         f"({', '.join(f'{s.tokens} x {s.width}' for s in sorted(shapes, key=str))})")
    sources = [s for p in step["inputs"] for s in comp.sources(p["tensor"], where)]
    comp.write(step["outputs"][0], sources, shapes.pop(), where)


def _data(manifest: dict, src: Path) -> dict:
    """``{"data": name}`` from the manifest's optional ``data`` (a data set st2chip knows), else nothing."""
    if "data" not in manifest:
        return {}
    from st2chip.learn.data import DATASETS
    if manifest["data"] not in DATASETS:
        raise InputError(f"{src}: field 'data' must be one of {', '.join(DATASETS)}, got {str(manifest['data'])!r:.40}")
    return {"data": manifest["data"]}


def _flat(shape) -> int:
    """The number of values of a NIR type (a shape array)."""
    return limits.count(np.asarray(shape).reshape(-1))


def _tokens(shape: _Shape, width: int, name: str, tensor: str, where: str) -> int:
    """Tokens a part whose Input ``name`` takes ``width`` values runs on when fed ``shape``: 1 when it takes
    the whole tensor, the tensor's tokens when it takes one token."""
    if shape.size == width:
        return 1
    if shape.width == width:
        return shape.tokens
    raise InputError(f"{where}: Input node {name!r} takes {width} values; tensor {tensor!r} has "
                     f"{shape.tokens} x {shape.width} per sample and step")


def _nir_step(comp: _Composer, step: dict, part: nir.NIRGraph, where: str) -> None:
    graph = normalize(part, dt=comp.dt, source=where)
    inputs = {p.get("port", "input"): p for p in step["inputs"]}
    outputs = {p.get("port", "output"): p for p in step["outputs"]}
    ins = {n: node for n, node in graph.nodes.items() if isinstance(node, nir.Input)}
    for name in ins:
        if name not in inputs:
            raise InputError(f"{where}: Input node {name!r} is not a port the manifest feeds ({sorted(inputs)})")
    tokens = {_tokens(comp.shapes[inputs[n]["tensor"]], _flat(node.input_type["input"]), n, inputs[n]["tensor"], where)
              for n, node in ins.items()}
    if len(tokens) > 1:
        raise InputError(f"{where}: the part's inputs are fed tensors of different token counts {sorted(tokens)}")
    tokens = tokens.pop() if tokens else 1
    prefix = f"{step['name']}."
    for name, node in graph.nodes.items():
        if not isinstance(node, (nir.Input, nir.Output)):
            comp.add(prefix + name, _replicate(node, tokens, f"{where}: node {name!r}"), where)
    written: dict[str, list[str]] = {}
    for a, b in graph.edges:
        na, nb = graph.nodes[a], graph.nodes[b]
        if isinstance(na, nir.Input):
            comp.feed(inputs[a]["tensor"], prefix + b, where)
        elif isinstance(nb, nir.Output):
            if b not in outputs:
                raise InputError(f"{where}: Output node {b!r} is not a port the manifest reads ({sorted(outputs)})")
            written.setdefault(b, []).append(prefix + a)
        else:
            comp.edges.append((prefix + a, prefix + b))
    for port, p in outputs.items():
        if port not in written:
            raise InputError(f"{where}: the part has no Output node {port!r} feeding tensor {p['tensor']!r}")
        comp.write(p, written[port], _Shape(tokens, _flat(graph.nodes[port].output_type["output"])), where)


def _replicate(node: nir.NIRNode, tokens: int, where: str) -> nir.NIRNode:
    """``node`` applied to ``tokens`` tokens side by side (itself when there is one)."""
    if tokens == 1:
        return node
    if isinstance(node, nir.Affine):  # block-diagonal, sparse: tokens x the part's non-zeros, never tokens^2
        weight = sp.csr_matrix(node.weight)
        limits.check_alloc(f"{where}: the Affine replicated over {tokens} tokens", weight.nnz * tokens, 16)
        return nir.Affine(weight=sp.kron(sp.identity(tokens, format="csr"), weight, format="csr"),
                          bias=np.tile(node.bias, tokens))
    if isinstance(node, NEURONS):
        arrays = {f.name: getattr(node, f.name) for f in dataclasses.fields(node)
                  if isinstance(getattr(node, f.name), np.ndarray) and f.name not in ("input_type", "output_type")}
        limits.check_alloc(f"{where}: the neurons replicated over {tokens} tokens",
                           tokens * sum(a.size for a in arrays.values()), 8)
        return dataclasses.replace(node, **{k: np.tile(a, tokens) for k, a in arrays.items()})
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
    ports = sorted(p.get("port", p["tensor"]) for p in ins)
    if ports == ["maps"]:
        _tokens_step(comp, step, session, where)
    elif ports == ["k", "q", "v"]:
        _product_step(comp, step, manifest, session, where)
    elif ports == ["y"] and outs and outs[0]["tensor"] == manifest["scores"]["tensor"]:
        _readout_step(comp, step, manifest, session, where)
    else:
        raise InputError(f"{where}: an ONNX step with inputs {ports} is none of the parts st2chip maps "
                         f"(token reshape 'maps', attention product 'q', 'k', 'v', readout 'y')")
    if len(outs) != 1:
        raise InputError(f"{where}: an ONNX step st2chip maps has one output, the manifest gives {len(outs)}")


def _tokens_step(comp: _Composer, step: dict, session, where: str) -> None:
    """Token reshape: a permutation, read off the model by running it on ``0, 1, 2, ...``."""
    shape = comp.shapes[step["inputs"][0]["tensor"]]
    maps = [int(d) for d in session.get_inputs()[0].shape[2:]]  # fixed: _load_onnx checked them
    size = limits.count(maps)
    if shape.tokens != 1 or shape.size != size:
        raise InputError(f"{where}: the ONNX part takes maps of {' x '.join(map(str, maps))}; tensor "
                         f"{step['inputs'][0]['tensor']!r} has {shape.tokens} x {shape.width} per sample and step")
    limits.check_alloc("the token reshape's probe", comp.steps * size, 4 * 3 + 8 * 3, where)
    probe = np.broadcast_to(np.arange(size, dtype=np.float32).reshape(1, 1, *maps), (comp.steps, 1, *maps)).copy()
    out = _run_onnx(session, {"maps": probe}, where)
    order = out[0, 0].reshape(-1)
    if out.ndim != 4 or order.size != size or not np.array_equal(np.sort(order), np.arange(size)):
        raise InputError(f"{where}: the token reshape is not a permutation of its input into (T, B, N, D)")
    perm = sp.csr_matrix((np.ones(size), (np.arange(size), order.astype(np.int64))), shape=(size, size))
    name = step["name"]
    comp.add(name, nir.Affine(weight=perm, bias=np.zeros(size)), where)
    comp.feed(step["inputs"][0]["tensor"], name, where)
    comp.write(step["outputs"][0], [name], _Shape(out.shape[2], out.shape[3]), where)


def _single(comp: _Composer, step: dict, port: str, where: str) -> str:
    p = next(p for p in step["inputs"] if p.get("port", p["tensor"]) == port)
    sources = comp.sources(p["tensor"], where)
    if len(sources) != 1 or not isinstance(comp.nodes[sources[0]], (nir.LIF, nir.IF, nir.CubaLIF)):
        raise InputError(f"{where}: input {port!r} must be the spikes of one neuron layer")
    return sources[0]


def _product_step(comp: _Composer, step: dict, manifest: dict, session, where: str) -> None:
    """Attention product: a SpikeProduct, checked against the ONNX model on random spikes."""
    c = manifest["config"]
    shapes = {comp.shapes[p["tensor"]] for p in step["inputs"]}
    shape = shapes.pop()
    if shapes or shape.width % c["heads"]:
        raise InputError(f"{where}: q, k and v must be tensors of one shape, N tokens x D with D divisible by the "
                         f"config's heads {c['heads']}; got {sorted((s.tokens, s.width) for s in [shape, *shapes])}")
    t, tokens, dim = comp.steps, shape.tokens, shape.width
    names = tuple(_single(comp, step, p, where) for p in ("q", "k", "v"))
    limits.check_alloc(f"the attention product's probe ({t} steps x 2 samples, {tokens} tokens x {dim})",
                       t * 2 * (5 * tokens * dim + c["heads"] * tokens * tokens), 8, where)
    scale = float(c["attn_scale"])
    node = SpikeProduct(heads=c["heads"], tokens=tokens, dim=dim, scale=1.0, inputs=names)
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
    comp.write(step["outputs"][0], [f"{name}.scale"], shape, where)


def _readout_step(comp: _Composer, step: dict, manifest: dict, session, where: str) -> None:
    """Mean over steps and tokens: an ``I`` readout (voltage after the last step) fed through the head's
    Affine with the token mean folded in, or through an averaging Affine when the head is not one."""
    shape = comp.shapes[step["inputs"][0]["tensor"]]
    t, tokens, classes = comp.steps, shape.tokens, shape.width
    if classes != manifest["config"]["classes"]:
        raise InputError(f"{where}: the readout's input has {classes} values per token; the config's classes is "
                         f"{manifest['config']['classes']}")
    limits.check_alloc(f"the readout's probe ({t} steps x 2 samples, {tokens} tokens x {classes})",
                       t * 2 * tokens * classes * 2 + tokens * classes * 3, 8, where)
    probe = np.random.default_rng(0).normal(size=(t, 2, tokens, classes)).astype(np.float32)
    got = _run_onnx(session, {"y": probe}, where)
    if got.shape != (2, classes) or not np.allclose(got, probe.mean(axis=(0, 2)), rtol=1e-4, atol=1e-5):
        raise InputError(f"{where}: the readout is not the mean over steps and tokens")
    readout = step["name"]
    comp.add(readout, nir.I(r=np.full(classes, 1.0 / (comp.dt * comp.steps))), where)
    mean = sp.kron(np.ones((1, tokens)) / tokens, sp.identity(classes), format="csr")
    sources = comp.sources(step["inputs"][0]["tensor"], where)
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
    comp.write(step["outputs"][0], [readout], _Shape(1, classes), where)
