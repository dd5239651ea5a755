"""A norse network on Lava: convert, simulate in float, run on the fixed-point reference and Lava.

    python examples/norse_to_lava.py [--out DIR]

Builds a seeded norse net (Linear(12, 8) -> LIFBoxCell -> Linear(8, 4) ->
LIFBoxCell, default 10 ms membranes, dt = 1 ms), converts it with
:func:`st2chip.converters.norse.to_nir` (which undoes norse's export quirks, e.g.
``tau = dt / tau_mem_inv``, norse issue #411), writes the canonical graph to
``OUT/norse.nir``, lowers it to a chip and runs seeded random input spikes
through norse, st2chip's float simulation, the bit-exact reference and Lava's
fixed_pt simulator. Prints the conversion notes, the chip table, the verify
report and per-neuron output spike counts; writes the energy report (45 nm
profile) into OUT.

Exit status 1 when the reference and Lava disagree or norse and the float
simulation disagree, else 0. (Float vs chip may differ by quantization and the
chip's one-step synaptic delay; that is reported, not failed.)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nir
import norse.torch as norse
import numpy as np
import torch

import st2chip
from st2chip.analysis.energy import write_energy_report
from st2chip.chip.table import format_table
from st2chip.converters.norse import to_nir

N_IN, BATCH, STEPS, SEED = 12, 4, 20, 0


def build_net() -> norse.SequentialState:
    """The seeded norse network; positive-leaning weights so that both layers spike."""
    torch.manual_seed(SEED)
    net = norse.SequentialState(torch.nn.Linear(N_IN, 8), norse.LIFBoxCell(),
                                torch.nn.Linear(8, 4), norse.LIFBoxCell())
    with torch.no_grad():
        net[0].weight.normal_(1.0, 1.5)
        net[2].weight.normal_(1.5, 2.0)
    return net


def run_norse(net: norse.SequentialState, x: np.ndarray) -> np.ndarray:
    """norse's output spikes ``(B, T, n_out)`` for input spikes ``x`` ``(B, T, n_in)``, one step at a time."""
    state, out = None, []
    with torch.no_grad():
        for t in range(x.shape[1]):
            z, state = net(torch.as_tensor(x[:, t], dtype=torch.float32), state)
            out.append(z.numpy())
    return np.stack(out, axis=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/examples/norse"), help="output folder")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)

    net = build_net()
    x = (np.random.default_rng(SEED).random((BATCH, STEPS, N_IN)) < 0.3).astype(np.uint8)
    norse_out = run_norse(net, x)

    conv = to_nir(net, torch.zeros(1, N_IN), steps=STEPS)  # the sample only sets shapes
    print("conversion notes:\n  " + "\n  ".join(conv.notes))
    nir.write(args.out / "norse.nir", conv.graph)

    chip = st2chip.lower(conv.graph, decay_groups=1)
    print(format_table(chip))
    flt = st2chip.simulate(conv.graph, x)
    ref = st2chip.run(chip, x)
    report = st2chip.verify(conv.graph, x, chip=chip, lava_samples=BATCH)  # float, engine and Lava
    print(report.to_text())

    norse_counts = norse_out.sum(axis=1).astype(int)
    flt_counts = flt.scores.astype(int)
    print("output spike counts per neuron (sample: norse | st2chip float | chip):")
    for b in range(BATCH):
        print(f"  {b}: {norse_counts[b].tolist()} | {flt_counts[b].tolist()} | {ref.scores[b].astype(int).tolist()}")
    files = write_energy_report(st2chip.energy(chip, ref), args.out)
    print("wrote", args.out / "norse.nir", *files.values())

    norse_ok = np.array_equal(norse_counts, flt_counts)
    print(f"norse == float: {norse_ok}; reference == Lava: {report.chip_exact}")
    return 0 if norse_ok and report.chip_exact else 1


if __name__ == "__main__":
    sys.exit(main())
