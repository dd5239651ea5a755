"""A SpikingJelly network on Lava: convert, simulate in float, run on the fixed-point reference and Lava.

    python examples/spikingjelly_to_lava.py [--out DIR]

Builds a seeded SpikingJelly net (Linear(10, 8) -> LIFNode(tau=2) -> Linear(8, 4)
-> IFNode), converts it with :func:`st2chip.converters.spikingjelly.to_nir`,
writes the canonical graph to ``OUT/spikingjelly.nir``, lowers it to a chip and
runs seeded random input spikes through SpikingJelly, st2chip's float
simulation, the bit-exact reference and Lava's fixed_pt simulator. Prints the
conversion notes, the chip table, the verify report and per-neuron output spike
counts; writes the energy report (45 nm profile) into OUT.

Exit status 1 when the reference and Lava disagree or SpikingJelly and the
float simulation disagree, else 0. (Float vs chip may differ by quantization;
that is reported, not failed.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nir
import numpy as np
import torch
from spikingjelly.activation_based import functional, layer, neuron

import st2chip
from st2chip.analysis.energy import write_energy_report
from st2chip.chip.table import format_table
from st2chip.converters.spikingjelly import to_nir

N_IN, BATCH, STEPS, SEED = 10, 4, 20, 0


def build_net() -> torch.nn.Sequential:
    """The seeded SpikingJelly network, multi-step mode, weights scaled so both layers spike."""
    torch.manual_seed(SEED)
    net = torch.nn.Sequential(layer.Linear(N_IN, 8), neuron.LIFNode(tau=2.0), layer.Linear(8, 4), neuron.IFNode())
    with torch.no_grad():
        net[0].weight.mul_(6.0)
        net[2].weight.mul_(3.0)
    functional.set_step_mode(net, "m")
    return net


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/examples/spikingjelly"), help="output folder")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    net = build_net()
    x = (np.random.default_rng(SEED).random((BATCH, STEPS, N_IN)) < 0.3).astype(np.uint8)
    functional.reset_net(net)
    with torch.no_grad():
        sj_out = net(torch.as_tensor(x, dtype=torch.float32).permute(1, 0, 2)).permute(1, 0, 2).numpy()
    functional.reset_net(net)

    conv = to_nir(net, torch.zeros(STEPS, BATCH, N_IN), steps=STEPS)
    print("conversion notes:\n  " + "\n  ".join(conv.notes))
    nir.write(args.out / "spikingjelly.nir", conv.graph)

    chip = st2chip.lower(conv.graph, decay_groups=1)
    print(format_table(chip))
    flt = st2chip.simulate(conv.graph, x)
    ref = st2chip.run(chip, x)
    report = st2chip.verify(conv.graph, x, chip=chip, lava_samples=BATCH)  # float, engine and Lava
    print(report.to_text())

    sj_counts = sj_out.sum(axis=1).astype(int)
    flt_counts = flt.scores.astype(int)
    print("output spike counts per neuron (sample: SpikingJelly | st2chip float | chip):")
    for b in range(BATCH):
        print(f"  {b}: {sj_counts[b].tolist()} | {flt_counts[b].tolist()} | {ref.scores[b].astype(int).tolist()}")
    files = write_energy_report(st2chip.energy(chip, ref), args.out)
    print("wrote", args.out / "spikingjelly.nir", *files.values())

    sj_ok = np.array_equal(sj_counts, flt_counts)
    print(f"SpikingJelly == float: {sj_ok}; reference == Lava: {report.chip_exact}")
    return 0 if sj_ok and report.chip_exact else 1


if __name__ == "__main__":
    sys.exit(main())
