r"""Run a spiking Transformer deployment bundle part by part, from its files alone.

A bundle (written by :func:`st2chip.converters.transformer.export_bundle`) is a folder with
``manifest.json``, NIR files (``*.nir``: neuron–synapse parts) and ONNX files
(``*.onnx``: spike x spike attention products, token reshape, readout mean).
The manifest lists ordered ``steps``; each reads named tensors and writes named
tensors, all time-first ``(T, B, ...)``. Step kinds:

- ``nir``: a NIR graph run by :func:`run_nir` over whole time sequences. Its
  Input/Output node names are the ``port`` of each tensor. A graph describes one
  sample (and, for token parts, one token): the leading axes of a tensor beyond
  the graph's per-sample type are time (axis 0) and batch (and tokens).
- ``onnx``: an ONNX model run with onnxruntime; ``port`` is the ONNX input/output name.
- ``op``: ``add`` (element-wise sum of the inputs: a residual sum of spike trains).

NIR semantics (discrete time, forward Euler with ``dt = manifest["dt"]``, state
zero at the start of every sample; a node's inputs add up):

- ``Affine``: :math:`y = W x + b` over the last axis;
- ``Conv2d``: 2-D convolution with bias of ``(C, H, W)`` maps;
- ``LIF``: :math:`v \leftarrow (1 - \tfrac{dt}{\tau}) v + \tfrac{dt}{\tau}(v_{leak} + r I)`,
  spike :math:`s = [v > v_{threshold}]`, then :math:`v \leftarrow v_{reset}` where :math:`s`;
  with st2chip's mapping (:mod:`st2chip.converters.mlp`) this is sLIF's :math:`v \leftarrow \beta v + I`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nir
import numpy as np
import torch
import torch.nn.functional as F

from st2chip.errors import GraphError, InputError

MANIFEST = "manifest.json"
FORMAT = "st2chip-bundle"
VERSION = 1


def _topological(graph: nir.NIRGraph) -> list[str]:
    preds = {n: [a for a, b in graph.edges if b == n] for n in graph.nodes}
    order: list[str] = []
    while len(order) < len(preds):
        ready = [n for n, p in preds.items() if n not in order and all(a in order for a in p)]
        if not ready:
            raise GraphError("the graph has a cycle; bundle NIR parts must be feed-forward")
        order += ready
    return order


def _lif(node: nir.LIF, dt: float, current: torch.Tensor) -> torch.Tensor:
    """Spikes ``(T, ...)`` of a NIR LIF driven by ``current`` ``(T, ...)``."""
    f64 = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64))
    g = dt / f64(node.tau)  # decay and gain in float64, then float32 like the torch model: beta, 1
    decay, gain, offset = (1 - g).float(), (g * f64(node.r)).float(), (g * f64(node.v_leak)).float()
    theta, v_reset = f64(node.v_threshold).float(), f64(node.v_reset).float()
    v = torch.zeros_like(current[0])
    spikes = []
    for i_t in current:
        v = decay * v + gain * i_t + offset
        s = v > theta
        v = torch.where(s, v_reset.expand_as(v), v)
        spikes.append(s.to(current.dtype))
    return torch.stack(spikes)


def _apply(name: str, node: nir.NIRNode, x: torch.Tensor, dt: float) -> torch.Tensor:
    t32 = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)
    if isinstance(node, (nir.Input, nir.Output)):
        return x
    if isinstance(node, nir.Affine):
        return F.linear(x, t32(node.weight), t32(node.bias))
    if isinstance(node, nir.Conv2d):
        lead = x.shape[:-3]
        y = F.conv2d(x.reshape(-1, *x.shape[-3:]), t32(node.weight), t32(node.bias),
                     tuple(node.stride), node.padding if isinstance(node.padding, str) else tuple(node.padding),
                     tuple(node.dilation), node.groups)
        return y.reshape(*lead, *y.shape[1:])
    if isinstance(node, nir.LIF):
        return _lif(node, dt, x)
    raise GraphError(f"bundle NIR parts hold Input, Output, Affine, Conv2d and LIF only, not {type(node).__name__}",
                     node=name)


def run_nir(graph: nir.NIRGraph, inputs: dict[str, torch.Tensor], dt: float) -> dict[str, torch.Tensor]:
    """Run a feed-forward NIR graph on whole sequences ``(T, ...)``; returns each Output node's value by name.

    Node by node in topological order (each node sees its inputs' full sequences):
    exact for graphs without recurrence and delays, as the bundle's are.
    """
    missing = [n for n, node in graph.nodes.items() if isinstance(node, nir.Input) and n not in inputs]
    if missing:
        raise InputError(f"NIR part needs inputs {missing}")
    values: dict[str, torch.Tensor] = {}
    for name in _topological(graph):
        node = graph.nodes[name]
        if isinstance(node, nir.Input):
            x = inputs[name].float()
        else:
            preds = [values[a] for a, b in graph.edges if b == name]
            if not preds:
                raise GraphError("node has no input edge", node=name)
            x = preds[0] if len(preds) == 1 else torch.stack(preds).sum(0)
        values[name] = _apply(name, node, x, dt)
    return {n: values[n] for n, node in graph.nodes.items() if isinstance(node, nir.Output)}


def read_manifest(folder: str | os.PathLike) -> dict:
    """The bundle's manifest; an absent or foreign one is an :class:`InputError`."""
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: not a readable bundle manifest ({err})") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise InputError(f"{path}: not an {FORMAT} version {VERSION} manifest")
    return manifest


def encode(manifest: dict, x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Direct encoding: images ``(B, C*H*W)`` or ``(B, C, H, W)`` repeated ``T`` times."""
    c = manifest["config"]
    x = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    x = x.reshape(x.shape[0], c["in_channels"], c["image_size"], c["image_size"])
    return x.unsqueeze(0).expand(manifest["time_steps"], *x.shape).contiguous()


def run_bundle(folder: str | os.PathLike, x: np.ndarray | torch.Tensor) -> np.ndarray:
    """Class scores ``(B, classes)`` of images ``x`` by executing the bundle's steps in order."""
    import onnxruntime as ort

    folder = Path(folder)
    manifest = read_manifest(folder)
    dt = float(manifest["dt"])
    env: dict[str, torch.Tensor] = {manifest["input"]["tensor"]: encode(manifest, x)}
    for step in manifest["steps"]:
        args = {p.get("port", p["tensor"]): env[p["tensor"]] for p in step["inputs"]}
        if step["kind"] == "nir":
            results = run_nir(nir.read(folder / step["file"]), args, dt)
        elif step["kind"] == "onnx":
            session = ort.InferenceSession(str(folder / step["file"]), providers=["CPUExecutionProvider"])
            names = [o.name for o in session.get_outputs()]
            arrays = session.run(names, {k: v.numpy() for k, v in args.items()})
            results = {n: torch.from_numpy(a) for n, a in zip(names, arrays)}
        elif step["kind"] == "op" and step["op"] == "add":
            results = {step["outputs"][0]["tensor"]: torch.stack(list(args.values())).sum(0)}
        else:
            raise InputError(f"step {step['name']!r}: unknown kind {step['kind']!r}")
        for p in step["outputs"]:
            env[p["tensor"]] = results[p.get("port", p["tensor"])]
    return env[manifest["scores"]["tensor"]].numpy()
