"""Record the Lava corpus: small graphs, their lowering options, inputs, and real Lava spikes and voltages.

``tests/targets/test_lava_corpus.py`` lowers each graph here with the recorded
options, runs st2chip's engine, and checks that its spikes and voltages equal
these Lava recordings exactly, without importing Lava. Together the cases hold
every synapse kind (dense, sparse CSR, low-rank product, factored through a
graded relay, convolution kernel), synaptic and graph-level delays, recurrence
and feedback, a host partition (the spiking Transformer's spike x spike product)
with an analog input port, reset by subtraction and CubaLIF.

Run it where Lava is installed (``make install``), from the repository root, when
lowering or Lava is meant to change what the chip computes::

    .venv/bin/python tests/data/lava_corpus/record.py           # every case
    .venv/bin/python tests/data/lava_corpus/record.py conv      # only the named cases

It writes beside itself ``cases.json`` (per case: the graph file, the lowering
options, what it covers, the input names and the recording's provenance), the
graphs (``<graph>.nir``, a bundle folder) and ``<case>.npz`` (``input/<port>``,
``spikes/<layer>``, ``voltages/<layer>``, ``scores``).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nir
import numpy as np
import torch

from st2chip.chip.chipgraph import ChipGraph
from st2chip.chip.lower import lower
from st2chip.converters.transformer import export_bundle
from st2chip.graph.bundle_graph import bundle_graph
from st2chip.graph.nirfile import write_nir
from st2chip.graph.normalize import normalize
from st2chip.io import write_json, write_npz
from st2chip.learn.data import load_digits_split
from st2chip.learn.transformer import SpikingTransformer, STConfig
from st2chip.targets import engine, lava

HERE = Path(__file__).resolve().parent
CASES = HERE / "cases.json"
DT = 1e-3


def _lif(n: int, rng: np.random.Generator, reset: str = "zero") -> nir.LIF:
    """LIF neurons with spread leaks and thresholds (folding and decay grouping both matter)."""
    beta = rng.uniform(0.7, 0.95, n)
    return nir.LIF(tau=DT / (1 - beta), r=1 / (1 - beta), v_leak=np.zeros(n), v_threshold=rng.uniform(0.6, 1.4, n),
                   v_reset=np.zeros(n), metadata={"reset": reset})


def _cuba(n: int, rng: np.random.Generator, reset: str) -> nir.CubaLIF:
    beta_syn, beta_mem = rng.choice([0.55, 0.75], n), rng.choice([0.82, 0.93], n)
    return nir.CubaLIF(tau_syn=DT / (1 - beta_syn), tau_mem=DT / (1 - beta_mem), r=1 / (1 - beta_mem),
                       v_leak=np.zeros(n), v_threshold=rng.uniform(0.8, 1.2, n), v_reset=np.zeros(n),
                       w_in=1 / (1 - beta_syn), metadata={"reset": reset})


def _li(n: int) -> nir.LI:
    return nir.LI(tau=np.full(n, 0.004), r=np.ones(n), v_leak=np.zeros(n))


def _affine(rng: np.random.Generator, n_out: int, n_in: int, mean: float = 0.2, prune: float = 0.0) -> nir.Affine:
    w = rng.normal(mean, 0.5, (n_out, n_in))
    w[rng.random(w.shape) < prune] = 0
    return nir.Affine(weight=w, bias=rng.normal(0, 0.02, n_out))


def _graph(nodes: dict, edges: list[tuple[str, str]]) -> nir.NIRGraph:
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata={"dt": DT}, type_check=False)


def feedforward() -> nir.NIRGraph:
    """Dense into a subtract-reset LIF, pruned (CSR) into a LIF, a readout; a skip path from the input through
    a graph-level Delay of 2 steps into the readout (synaptic delay and lag)."""
    rng = np.random.default_rng(10)
    nodes = {"input": nir.Input(input_type={"input": np.array([12])}),
             "fc1": _affine(rng, 10, 12), "lif1": _lif(10, rng, "subtract"),
             "fc2": _affine(rng, 8, 10, 0.4, prune=0.7), "lif2": _lif(8, rng),
             "fc3": _affine(rng, 4, 8, 0.0), "readout": _li(4),
             "delay": nir.Delay(delay=np.full(12, 2 * DT)), "skip": _affine(rng, 4, 12, 0.0, prune=0.5),
             "output": nir.Output(output_type={"output": np.array([4])})}
    edges = [("input", "fc1"), ("fc1", "lif1"), ("lif1", "fc2"), ("fc2", "lif2"), ("lif2", "fc3"), ("fc3", "readout"),
             ("input", "delay"), ("delay", "skip"), ("skip", "readout"), ("readout", "output")]
    return _graph(nodes, edges)


def recurrent() -> nir.NIRGraph:
    """A self-recurrent CubaLIF (subtract reset), a LIF after it feeding back into it, a readout."""
    rng = np.random.default_rng(11)
    nodes = {"input": nir.Input(input_type={"input": np.array([10])}),
             "w_in": _affine(rng, 12, 10, 0.15), "hidden": _cuba(12, rng, "subtract"),
             "w_rec": _affine(rng, 12, 12, 0.0), "w_ab": _affine(rng, 6, 12, 0.3), "b": _lif(6, rng),
             "w_ba": _affine(rng, 12, 6, 0.0), "w_out": _affine(rng, 4, 12, 0.0), "readout": _li(4),
             "output": nir.Output(output_type={"output": np.array([4])})}
    edges = [("input", "w_in"), ("w_in", "hidden"), ("hidden", "w_rec"), ("w_rec", "hidden"), ("hidden", "w_ab"),
             ("w_ab", "b"), ("b", "w_ba"), ("w_ba", "hidden"), ("hidden", "w_out"), ("w_out", "readout"),
             ("readout", "output")]
    return _graph(nodes, edges)


def lowrank() -> nir.NIRGraph:
    """input -> lif0 -> lif1 -> lif2 -> readout, and a pruned rank-2 U·V from the input into lif2 (through a
    relay one step shorter than lif1's path: V takes a delay)."""
    rng = np.random.default_rng(12)
    v, u = rng.normal(size=(2, 8)) * 1.5, rng.normal(size=(6, 2)) * 1.5
    v[rng.random(v.shape) < 0.3] = 0
    nodes = {"input": nir.Input(input_type={"input": np.array([8])}),
             "fc0": _affine(rng, 5, 8), "lif0": _lif(5, rng), "fc1": _affine(rng, 5, 5), "lif1": _lif(5, rng),
             "fc2": _affine(rng, 6, 5), "V": nir.Affine(weight=v, bias=np.zeros(2)),
             "U": nir.Affine(weight=u, bias=np.zeros(6)), "lif2": _lif(6, rng), "fc3": _affine(rng, 3, 6, 0.0),
             "readout": _li(3), "output": nir.Output(output_type={"output": np.array([3])})}
    edges = [("input", "fc0"), ("fc0", "lif0"), ("lif0", "fc1"), ("fc1", "lif1"), ("lif1", "fc2"), ("fc2", "lif2"),
             ("input", "V"), ("V", "U"), ("U", "lif2"), ("lif2", "fc3"), ("fc3", "readout"), ("readout", "output")]
    return _graph(nodes, edges)


def _if(shape: tuple[int, ...], thresholds: list[float]) -> nir.IF:
    """IF neurons with one threshold per channel: the convolutions stay kernels (lava-nc's Conv)."""
    theta = np.broadcast_to(np.asarray(thresholds).reshape(-1, *([1] * (len(shape) - 1))), shape).copy()
    return nir.IF(r=np.full(shape, 1.0 / DT), v_threshold=theta, v_reset=np.zeros(shape))


def _conv(rng: np.random.Generator, c_out: int, in_shape: tuple[int, int, int], k: int, **kw) -> nir.Conv2d:
    groups = kw.get("groups", 1)
    return nir.Conv2d(input_shape=np.array(in_shape[1:]), weight=rng.normal(0.1, 0.4, (c_out, in_shape[0] // groups, k, k)),
                      stride=kw.get("stride", 1), padding=kw.get("padding", 0), dilation=kw.get("dilation", 1),
                      groups=groups, bias=rng.normal(0, 0.02, c_out))


def conv() -> nir.NIRGraph:
    """Input (2, 9, 9) -> Conv 4x3x3 stride 2 padding 1 -> IF -> Conv 6x2x2 groups 2 dilation 2 -> IF -> Flatten
    -> Affine -> LI."""
    rng = np.random.default_rng(0)
    nodes = {"input": nir.Input(input_type={"input": np.array([2, 9, 9])}),
             "c1": _conv(rng, 4, (2, 9, 9), 3, stride=2, padding=1), "l1": _if((4, 5, 5), [1.0, 0.8, 1.2, 1.5]),
             "c2": _conv(rng, 6, (4, 5, 5), 2, groups=2, dilation=2), "l2": _if((6, 3, 3), [1.0, 1.3, 0.9, 1.1, 1.2, 0.8]),
             "flat": nir.Flatten(input_type={"input": np.array([6, 3, 3])}),
             "fc": nir.Affine(weight=rng.normal(0, 0.3, (5, 54)), bias=np.zeros(5)), "readout": _li(5),
             "output": nir.Output(output_type={"output": np.array([5])})}
    edges = [("input", "c1"), ("c1", "l1"), ("l1", "c2"), ("c2", "l2"), ("l2", "flat"), ("flat", "fc"),
             ("fc", "readout"), ("readout", "output")]
    return _graph(nodes, edges)


def spiking_transformer(folder: Path) -> None:
    """A tiny spiking Transformer bundle (8x8 digits, 16 tokens) with a rank-4 DSP MLP matrix, livelier than a
    fresh initialisation so that every layer spikes."""
    torch.manual_seed(1)
    model = SpikingTransformer(STConfig.tiny_digits(ranks={"blocks.0.mlp.fc2": 4})).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.ndim > 1:
                p.mul_(4.0)
            elif name.endswith("leak_logit"):
                p.add_(torch.randn_like(p))
    export_bundle(model, folder)


def _spikes(seed: int, shape: tuple[int, ...], rate: float = 0.35) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) < rate).astype(np.uint8)


def _digit_levels(samples: int, steps: int) -> np.ndarray:
    """Test digits as the bundle's analog port takes them: 8-bit levels, the same each step."""
    x = np.round(np.asarray(load_digits_split()[1].x[:samples]) * 255).astype(np.uint8)
    return np.repeat(x[:, None, :], steps, axis=1)


@dataclass
class Case:
    """One recording: a graph (``.nir`` file or bundle folder), how it is lowered, and its inputs."""

    name: str
    graph: str
    options: dict
    covers: list[str]
    inputs: Callable[[], dict[str, np.ndarray]] = field(repr=False)


GRAPHS: dict[str, Callable[[Path], None]] = {
    "feedforward.nir": lambda p: write_nir(feedforward(), p),
    "recurrent.nir": lambda p: write_nir(recurrent(), p),
    "lowrank.nir": lambda p: write_nir(lowrank(), p),
    "conv.nir": lambda p: write_nir(conv(), p),
    "st_bundle": spiking_transformer,
}

ALL = [
    Case("feedforward", "feedforward.nir", {"decay_groups": 2, "lowrank": "product"},
         ["dense", "sparse", "subtract reset", "decay groups", "synaptic delay", "graph-level delay (lag)"],
         lambda: {"input": _spikes(1, (3, 16, 12))}),
    Case("recurrent", "recurrent.nir", {"decay_groups": 2, "lowrank": "product"},
         ["CubaLIF", "subtract reset", "recurrence", "feedback to an earlier layer"],
         lambda: {"input": _spikes(2, (3, 20, 10))}),
    Case("lowrank_factored", "lowrank.nir", {"decay_groups": 1, "lowrank": "factored"},
         ["factored low rank", "graded relay", "synaptic delay"], lambda: {"input": _spikes(3, (3, 12, 8), 0.4)}),
    Case("lowrank_product", "lowrank.nir", {"decay_groups": 1, "lowrank": "product"},
         ["low-rank product"], lambda: {"input": _spikes(3, (3, 12, 8), 0.4)}),
    Case("conv", "conv.nir", {"decay_groups": 1, "lowrank": "product"},
         ["convolution kernel (lava Conv)", "IF"], lambda: {"input": _spikes(4, (3, 12, 162), 0.3)}),
    Case("spiking_transformer", "st_bundle", {"decay_groups": 1, "lowrank": "factored"},
         ["host partition (spike x spike product)", "analog input port", "factored low rank", "graded relay"],
         lambda: {"x": _digit_levels(2, 4)}),
]


def load_graph(path: Path) -> nir.NIRGraph:
    """A corpus graph as the test reads it: a bundle folder composed, a ``.nir`` file normalized."""
    return bundle_graph(path) if path.is_dir() else normalize(path)


def _record(case: Case) -> dict:
    graph = load_graph(HERE / case.graph)
    chip: ChipGraph = lower(graph, **case.options)
    inputs = case.inputs()
    lav = lava.run(chip, inputs)
    eng = engine.run(chip, inputs)
    differ = [layer for layer in lav.spikes if not (np.array_equal(eng.spikes[layer], lav.spikes[layer])
                                                    and np.array_equal(eng.voltages[layer], lav.voltages[layer]))]
    silent = [layer for layer in lav.spikes if not lav.spikes[layer].any() and layer not in chip.readout_layers()]
    print(f"{case.name}: {len(chip.populations)} populations, {len(chip.synapses)} synapse groups, "
          f"engine {'= Lava' if not differ else 'differs from Lava in ' + ', '.join(differ)}"
          + (f"; silent layers: {', '.join(silent)}" if silent else ""))
    arrays = {f"input/{k}": v for k, v in inputs.items()}
    arrays |= {f"spikes/{k}": v for k, v in lav.spikes.items()}
    arrays |= {f"voltages/{k}": v for k, v in lav.voltages.items()}
    arrays["scores"] = lav.scores
    write_npz(HERE / f"{case.name}.npz", arrays)
    return {"name": case.name, "graph": case.graph, "options": case.options, "covers": case.covers,
            "inputs": sorted(inputs)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("only", nargs="*", help="record only these cases (default: all)")
    names = parser.parse_args(argv).only or [c.name for c in ALL]
    unknown = sorted(set(names) - {c.name for c in ALL})
    if unknown:
        parser.error(f"unknown case(s) {unknown}; known: {[c.name for c in ALL]}")
    chosen = [c for c in ALL if c.name in names]
    for graph in dict.fromkeys(c.graph for c in chosen):
        GRAPHS[graph](HERE / graph)
    recorded = {c["name"]: c for c in json.loads(CASES.read_text())["cases"]} if CASES.exists() else {}
    recorded |= {case.name: _record(case) for case in chosen}
    write_json(CASES, {"recorded_with": {p: importlib.metadata.version(p) for p in ("lava-nc", "torch", "nir")},
                       "cases": [recorded[c.name] for c in ALL if c.name in recorded]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
