r"""Export a :class:`~st2chip.transformer.SpikingTransformer` as a deployment bundle folder.

Parts, in manifest order (tensors time-first ``(T, B, ...)``, ``N`` tokens of width ``D``):

=====================  =====  ============================================================
step                   kind   what
=====================  =====  ============================================================
``sps``                nir    stem convs + patch conv + position conv, each Conv2d (BN
                              folded) + LIF; outputs ``z`` (patch spikes) and ``r`` (RPE spikes)
``sps.residual``       op     ``add``: ``z + r``
``sps.tokens``         onnx   ``(T, B, D, H', W') -> (T, B, N, D)``
``blocks.i.qkv``       nir    Q, K, V: linear (BN folded) + LIF each, outputs ``q k v``
``blocks.i.product``   onnx   spike x spike attention :math:`s (Q K^\top) V` per head
``blocks.i.proj``      nir    attention LIF, output linear (BN folded) + LIF
``blocks.i.res1``      op     ``add``: residual stream + proj spikes
``blocks.i.mlp``       nir    fc1 + LIF, fc2 + LIF (BN folded)
``blocks.i.res2``      op     ``add``
``head``               nir    head Affine applied to every token and step
``readout``            onnx   mean over time and tokens -> scores ``(B, classes)``
=====================  =====  ============================================================

Since the head is affine, the mean of its outputs equals the torch model's
head of the mean token (up to float rounding). Batch norms (eval mode, running
statistics) fold into the preceding matrix: :math:`s = \gamma/\sqrt{\sigma^2+\epsilon}`,
:math:`W' = \mathrm{diag}(s) W`, :math:`b' = \beta - s\mu`, so pruned zeros stay zero.
A factored (DSP) matrix becomes two Affine nodes, ``.V`` (zero bias) then ``.U``
(scaled by ``s``, bias ``b'``), never multiplied out. Token parts describe one
token (type ``(D,)``) applied to all ``N`` tokens; neuron arrays are per neuron.
Every ONNX part is checked against torch with onnxruntime at export time.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import nir
import numpy as np
import torch
from torch import nn

from st2chip.graph.bundle import FORMAT, MANIFEST, VERSION
from st2chip.graph.nirfile import write_nir
from st2chip.errors import InputError, St2chipError
from st2chip.io import atomic_folder, write_json
from st2chip.converters.mlp import DEFAULT_DT, slif_to_nir, to_numpy
from st2chip.learn.pruning import LowRankLinear
from st2chip.learn.transformer import SpikingTransformer, _ConvBNSN

Nodes = list[tuple[str, nir.NIRNode]]


class BundleCheckError(St2chipError):
    """An exported part does not reproduce torch (exit code 1: verification found a difference)."""

    exit_code = 1


def _bn_fold(bn: nn.Module) -> tuple[np.ndarray, np.ndarray]:
    """Scale ``s`` and shift ``b'`` with ``BN(y) = s * y + b'`` in eval mode."""
    s = to_numpy(bn.weight) / np.sqrt(to_numpy(bn.running_var) + bn.eps)
    return s, to_numpy(bn.bias) - s * to_numpy(bn.running_mean)


def _matrix(name: str, m: nn.Module, bn: nn.Module) -> Nodes:
    """One Affine (dense or sparse) or two (``.V`` then ``.U``, low rank) with the BN folded in."""
    s, shift = _bn_fold(bn)
    if isinstance(m, LowRankLinear):
        return [(f"{name}.V", nir.Affine(weight=to_numpy(m.V), bias=np.zeros(m.rank))),
                (f"{name}.U", nir.Affine(weight=s[:, None] * to_numpy(m.U), bias=shift))]
    return [(f"{name}", nir.Affine(weight=s[:, None] * to_numpy(m.weight), bias=shift))]


def _conv(name: str, layer: _ConvBNSN, hw: tuple[int, int], dt: float) -> tuple[Nodes, tuple[int, int]]:
    s, shift = _bn_fold(layer.bn)
    c = layer.conv
    node = nir.Conv2d(input_shape=hw, weight=s[:, None, None, None] * to_numpy(c.weight), stride=c.stride,
                      padding=c.padding, dilation=c.dilation, groups=c.groups, bias=shift)
    out = tuple(int(v) for v in node.output_type["output"])
    return [(f"{name}.conv", node), (f"{name}.lif", slif_to_nir(layer.sn, out, dt))], out[1:]


class _Graph:
    """Collects chains of nodes between named Input and Output nodes."""

    def __init__(self, inputs: dict[str, tuple[int, ...]]) -> None:
        self.nodes: dict[str, nir.NIRNode] = {n: nir.Input(input_type={"input": np.array(s)})
                                              for n, s in inputs.items()}
        self.edges: list[tuple[str, str]] = []

    def chain(self, start: str, nodes: Nodes) -> str:
        """Append ``nodes`` after node ``start``; return the last node's name."""
        for name, node in nodes:
            self.nodes[name] = node
            self.edges.append((start, name))
            start = name
        return start

    def output(self, name: str, source: str, shape: tuple[int, ...]) -> None:
        self.nodes[name] = nir.Output(output_type={"output": np.array(shape)})
        self.edges.append((source, name))

    def write(self, path: Path, dt: float, steps: int) -> None:
        graph = nir.NIRGraph(nodes=self.nodes, edges=self.edges,
                             metadata={"dt": dt, "steps": steps, "producer": "st2chip"})
        write_nir(graph, path)
        nir.read(path)  # type-checks on read: the part must round-trip


class _Tokens(nn.Module):
    """``(T, B, D, H, W)`` feature maps to ``(T, B, H*W, D)`` tokens."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(3).transpose(2, 3)


class _Readout(nn.Module):
    """Mean over time and tokens: ``(T, B, N, C) -> (B, C)``."""

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y.mean(dim=(0, 2))


def _write_onnx(module: nn.Module, shapes: dict[str, tuple[int, ...]], output: str, path: Path,
                time_first_output: bool = True) -> None:
    """Export ``module`` (time and batch axes dynamic) and check it with onnxruntime on spike samples."""
    import onnxruntime as ort

    gen = torch.Generator().manual_seed(0)
    sample = lambda batch: {n: (torch.rand(s[0], batch, *s[1:], generator=gen) < 0.5).float()
                            for n, s in shapes.items()}
    axes = {n: {0: "T", 1: "B"} for n in shapes}
    axes[output] = {0: "T", 1: "B"} if time_first_output else {0: "B"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, tuple(sample(2).values()), str(path), input_names=list(shapes),
                          output_names=[output], dynamic_axes=axes, dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    check = sample(3)  # another batch size than the export sample: the axes really are dynamic
    with torch.no_grad():
        expected = module(*check.values()).numpy()
    got = session.run([output], {n: v.numpy() for n, v in check.items()})[0]
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-5, atol=1e-6):
        raise BundleCheckError(f"{path.name}: onnxruntime differs from torch "
                               f"(max |diff| {np.abs(got - expected).max() if got.shape == expected.shape else 'shape'})")


def _port(tensor: str, shape: list, port: str | None = None) -> dict:
    return {"tensor": tensor, "shape": shape} | ({"port": port} if port else {})


def _write_parts(model: SpikingTransformer, folder: Path, dt: float) -> list[dict]:
    """Write every part into ``folder``; return the manifest's steps."""
    c = model.config
    t, d = c.steps, c.dim
    steps: list[dict] = []

    graph = _Graph({"input": (c.in_channels, c.image_size, c.image_size)})
    hw = (c.image_size, c.image_size)
    last = "input"
    for j, layer in enumerate(model.sps.stem):
        nodes, hw = _conv(f"stem.{j}", layer, hw, dt)
        last = graph.chain(last, nodes)
    nodes, hw = _conv("patch", model.sps.patch, hw, dt)
    z = graph.chain(last, nodes)
    nodes, _ = _conv("rpe", model.sps.rpe, hw, dt)
    r = graph.chain(z, nodes)
    maps = (d, *hw)
    graph.output("z", z, maps)
    graph.output("r", r, maps)
    graph.write(folder / "sps.nir", dt, t)
    n_tok = hw[0] * hw[1]
    tokens = [t, "B", n_tok, d]
    steps += [
        {"name": "sps", "kind": "nir", "file": "sps.nir",
         "inputs": [_port("x", [t, "B", c.in_channels, c.image_size, c.image_size], "input")],
         "outputs": [_port("sps.z", [t, "B", *maps], "z"), _port("sps.r", [t, "B", *maps], "r")]},
        {"name": "sps.residual", "kind": "op", "op": "add",
         "inputs": [_port("sps.z", [t, "B", *maps]), _port("sps.r", [t, "B", *maps])],
         "outputs": [_port("sps.u", [t, "B", *maps])]},
    ]
    _write_onnx(_Tokens(), {"maps": (t, *maps)}, "tokens", folder / "sps.tokens.onnx")
    steps.append({"name": "sps.tokens", "kind": "onnx", "file": "sps.tokens.onnx",
                  "inputs": [_port("sps.u", [t, "B", *maps], "maps")],
                  "outputs": [_port("u0", tokens, "tokens")]})

    u = "u0"
    for i, block in enumerate(model.blocks):
        p, attn, mlp = f"blocks.{i}", block.attn, block.mlp
        graph = _Graph({"input": (d,)})
        for n in ("q", "k", "v"):
            m, bn, sn = (getattr(attn, f"{n}{s}") for s in ("", "_bn", "_sn"))
            nodes = [*_matrix(f"attn.{n}", m, bn), (f"attn.{n}.lif", slif_to_nir(sn, (d,), dt))]
            graph.output(n, graph.chain("input", nodes), (d,))
        graph.write(folder / f"{p}.qkv.nir", dt, t)
        steps.append({"name": f"{p}.qkv", "kind": "nir", "file": f"{p}.qkv.nir",
                      "inputs": [_port(u, tokens, "input")],
                      "outputs": [_port(f"{p}.{n}", tokens, n) for n in ("q", "k", "v")]})

        _write_onnx(attn.product, {n: (t, n_tok, d) for n in ("q", "k", "v")}, "a", folder / f"{p}.product.onnx")
        steps.append({"name": f"{p}.product", "kind": "onnx", "file": f"{p}.product.onnx",
                      "inputs": [_port(f"{p}.{n}", tokens, n) for n in ("q", "k", "v")],
                      "outputs": [_port(f"{p}.a", tokens, "a")]})

        graph = _Graph({"input": (d,)})
        last = graph.chain("input", [("attn.lif", slif_to_nir(attn.attn_sn, (d,), dt)),
                                     *_matrix("attn.proj", attn.proj, attn.proj_bn),
                                     ("attn.proj.lif", slif_to_nir(attn.proj_sn, (d,), dt))])
        graph.output("output", last, (d,))
        graph.write(folder / f"{p}.proj.nir", dt, t)

        graph_mlp = _Graph({"input": (d,)})
        last = graph_mlp.chain("input", [*_matrix("mlp.fc1", mlp.fc1, mlp.fc1_bn),
                                         ("mlp.fc1.lif", slif_to_nir(mlp.fc1_sn, (c.mlp_hidden,), dt)),
                                         *_matrix("mlp.fc2", mlp.fc2, mlp.fc2_bn),
                                         ("mlp.fc2.lif", slif_to_nir(mlp.fc2_sn, (d,), dt))])
        graph_mlp.output("output", last, (d,))
        graph_mlp.write(folder / f"{p}.mlp.nir", dt, t)
        steps += [
            {"name": f"{p}.proj", "kind": "nir", "file": f"{p}.proj.nir",
             "inputs": [_port(f"{p}.a", tokens, "input")], "outputs": [_port(f"{p}.attn", tokens, "output")]},
            {"name": f"{p}.res1", "kind": "op", "op": "add",
             "inputs": [_port(u, tokens), _port(f"{p}.attn", tokens)], "outputs": [_port(f"{p}.u1", tokens)]},
            {"name": f"{p}.mlp", "kind": "nir", "file": f"{p}.mlp.nir",
             "inputs": [_port(f"{p}.u1", tokens, "input")], "outputs": [_port(f"{p}.mlp", tokens, "output")]},
            {"name": f"{p}.res2", "kind": "op", "op": "add",
             "inputs": [_port(f"{p}.u1", tokens), _port(f"{p}.mlp", tokens)], "outputs": [_port(f"{p}.u2", tokens)]},
        ]
        u = f"{p}.u2"

    graph = _Graph({"input": (d,)})
    graph.output("output", graph.chain("input", [("head", nir.Affine(weight=to_numpy(model.head.weight),
                                                                     bias=to_numpy(model.head.bias)))]), (c.classes,))
    graph.write(folder / "head.nir", dt, t)
    per_token = [t, "B", n_tok, c.classes]
    _write_onnx(_Readout(), {"y": (t, n_tok, c.classes)}, "scores", folder / "readout.onnx", time_first_output=False)
    steps += [
        {"name": "head", "kind": "nir", "file": "head.nir",
         "inputs": [_port(u, tokens, "input")], "outputs": [_port("head.y", per_token, "output")]},
        {"name": "readout", "kind": "onnx", "file": "readout.onnx",
         "inputs": [_port("head.y", per_token, "y")], "outputs": [_port("scores", ["B", c.classes], "scores")]},
    ]
    return steps


def bundle_manifest(model: SpikingTransformer, steps: list[dict], dt: float, data: str | None = None) -> dict:
    """The manifest that wires the parts together (``data``: the data set the model was trained on, if known)."""
    c = model.config
    return {**({"data": data} if data is not None else {}),
        "format": FORMAT, "version": VERSION, "model": "st", "config": c.to_dict(),
        "dt": dt, "time_steps": c.steps,
        "input": {"tensor": "x", "shape": [c.steps, "B", c.in_channels, c.image_size, c.image_size],
                  "encoding": "direct: the image (values in [0, 1]) repeated at every time step"},
        "steps": steps,
        "scores": {"tensor": "scores", "shape": ["B", c.classes],
                   "formed": "mean over time steps and tokens of the head's per-token outputs "
                             "(= head applied to the mean token, as in torch); prediction = argmax"},
        "residuals": "explicit 'add' op steps (sums of spike trains), not NIR fan-in",
        "ranks": dict(c.ranks),
    }


def export_bundle(model: SpikingTransformer, folder: str | os.PathLike, dt: float = DEFAULT_DT,
                  data: str | None = None) -> Path:
    """Write the bundle of ``model`` to ``folder`` atomically (built beside it, then renamed into place).

    An existing ``folder`` is replaced only if it is an st2chip bundle (or empty). ``data`` (the data set the
    model was trained on, from its checkpoint) lets ``verify``/``simulate`` run that data set's test split
    without ``--inputs``.
    """
    if model.config.reset != "zero":
        raise InputError("NIR 1.0 LIF resets to v_reset; only reset='zero' models can be exported")
    if model.config.layout != "image" or not model.config.norm:
        raise InputError(f"bundles hold image-layout models with batch norms (folded on export); this model has "
                         f"layout '{model.config.layout}', norm {model.config.norm}: not exported yet")
    target = Path(folder)
    if target.exists() and not (target.is_dir() and ((target / MANIFEST).is_file() or not any(target.iterdir()))):
        raise InputError(f"{target}: exists and is not an st2chip bundle; not overwriting it")
    model.eval()
    with atomic_folder(target, replace=True) as tmp:
        with torch.no_grad():
            steps = _write_parts(model, tmp, dt)
        write_json(tmp / MANIFEST, bundle_manifest(model, steps, dt, data))
    return target
