"""snnTorch -> NIR -> Loihi-style chip -> Lava, checked step by step.

Builds a small seeded snnTorch network (Linear -> Leaky -> Linear -> Leaky, reset
to zero), converts it with :func:`st2chip.converters.snntorch.to_nir`, writes the
canonical NIR graph, lowers it to the fixed-point chip model and runs seeded
random input spikes through snnTorch, st2chip's float NIR simulation, the bit-exact
reference and Lava's fixed_pt CPU simulator. Prints the verify report and the
per-neuron output spike counts of snnTorch and st2chip, and writes an energy report.

    python examples/snntorch_to_lava.py [--out DIR]

Exit status: 0 when snnTorch and the float simulation agree spike for spike and
the reference equals Lava; 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nir
import numpy as np
import snntorch as snn
import torch
from snntorch import utils as snn_utils

import st2chip
from st2chip.analysis.energy import write_energy_report
from st2chip.chip.table import format_table
from st2chip.converters.snntorch import to_nir

N_IN, HIDDEN, N_OUT = 16, 12, 4
SAMPLES, STEPS, SEED = 4, 20, 0


def build_network() -> torch.nn.Sequential:
    """A seeded snnTorch network with positive weights, so every layer spikes."""
    torch.manual_seed(SEED)
    net = torch.nn.Sequential(
        torch.nn.Linear(N_IN, HIDDEN),
        snn.Leaky(beta=0.9, init_hidden=True, reset_mechanism="zero"),
        torch.nn.Linear(HIDDEN, N_OUT),
        snn.Leaky(beta=torch.linspace(0.6, 0.9, N_OUT), threshold=0.8, init_hidden=True, reset_mechanism="zero"),
    )
    with torch.no_grad():
        net[0].weight.abs_().mul_(1.5)
        net[2].weight.abs_()
    return net


def run_snntorch(net: torch.nn.Sequential, x: np.ndarray) -> np.ndarray:
    """Output spikes (B, T, n_out) of the network run step by step in snnTorch."""
    snn_utils.reset(net)
    with torch.no_grad():
        out = [net(torch.as_tensor(x[:, t], dtype=torch.float32)) for t in range(x.shape[1])]
    return torch.stack(out, 1).numpy().astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/examples/snntorch"),
                        help="folder for the .nir graph and the energy report (default: %(default)s)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    net = build_network()
    converted = to_nir(net, torch.zeros(SAMPLES, N_IN), steps=STEPS)
    print("conversion notes:\n  " + "\n  ".join(converted.notes))
    nir_path = args.out / "snntorch.nir"
    nir.write(nir_path, converted.graph)
    chip = st2chip.lower(converted.graph, decay_groups=N_OUT)  # per-neuron leaks of the output layer: one decay each
    print(format_table(chip))

    x = (np.random.default_rng(SEED).random((SAMPLES, STEPS, N_IN)) < 0.3).astype(np.uint8)
    theirs = run_snntorch(net, x)
    floats = st2chip.simulate(converted.graph, x)
    out_layer = list(converted.graph.nodes)[-2]  # the Leaky layer feeding the Output node
    ref = st2chip.run(chip, x)
    report = st2chip.verify(converted.graph, x, chip=chip, lava_samples=SAMPLES)  # float, engine and Lava
    print(report.to_text())

    ours = floats.spikes[out_layer]
    print(f"output spike counts per neuron (summed over {SAMPLES} samples x {STEPS} steps):")
    print(f"  snnTorch  {theirs.sum(axis=(0, 1)).tolist()}")
    print(f"  st2chip   {ours.sum(axis=(0, 1)).tolist()}  (float NIR simulation; spike for spike equal to "
          f"snnTorch: {np.array_equal(theirs, ours)})")
    print(f"  chip      {ref.spikes[out_layer].sum(axis=(0, 1)).tolist()}  (reference = Lava: {report.chip_exact})")
    paths = write_energy_report(st2chip.energy(chip, ref), args.out)
    print(f"wrote {nir_path}, " + ", ".join(str(p) for p in paths.values()))

    same = np.array_equal(theirs, ours)
    if not same:
        print("FAIL: snnTorch and the float NIR simulation disagree", file=sys.stderr)
    if not report.chip_exact:
        print("FAIL: reference and Lava disagree", file=sys.stderr)
    return 0 if same and report.chip_exact else 1


if __name__ == "__main__":
    sys.exit(main())
