r"""Run a spiking Transformer deployment bundle part by part, from its files alone.

A bundle (written by :func:`st2chip.converters.transformer.export_bundle`) is a folder with
``manifest.json``, NIR files (``*.nir``: neuron–synapse parts) and ONNX files
(``*.onnx``: spike x spike attention products, token reshape, readout mean).
The manifest lists ordered ``steps``; each reads named tensors and writes named
tensors, all time-first ``(T, B, ...)``. Step kinds:

- ``nir``: a NIR graph run by :func:`st2chip.graph.simulate.run_graph` (st2chip's one
  NIR interpreter) in float32 over whole time sequences. Its Input/Output node
  names are the ``port`` of each tensor. A graph describes one sample (and, for
  token parts, one token): the leading axes of a tensor beyond the graph's
  per-sample type are time (axis 0) and batch (and tokens).
- ``onnx``: an ONNX model run with onnxruntime; ``port`` is the ONNX input/output name.
- ``op``: ``add`` (element-wise sum of the inputs: a residual sum of spike trains).

NIR semantics are those of :mod:`st2chip.graph.simulate`, with ``dt = manifest["dt"]``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nir
import numpy as np
import torch

from st2chip.errors import InputError
from st2chip.graph.simulate import run_graph

MANIFEST = "manifest.json"
FORMAT = "st2chip-bundle"
VERSION = 1


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
            graph = nir.read(folder / step["file"])
            values = run_graph(graph, args, dt, dtype=torch.float32).values
            results = {n: values[n] for n, node in graph.nodes.items() if isinstance(node, nir.Output)}
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
