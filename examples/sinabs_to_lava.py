"""A sinabs CNN on Lava: convert, simulate in float, run on the fixed-point reference and Lava.

    python examples/sinabs_to_lava.py [--out DIR]

Builds a seeded sinabs CNN (Conv2d -> IAFSqueeze -> SumPool2d -> Conv2d ->
IAFSqueeze -> Flatten -> Linear -> IAFSqueeze, sinabs' defaults: MultiSpike,
reset by subtraction), converts it with :func:`st2chip.converters.sinabs.to_nir`
(per-step units at dt = 1, spikes at ``v >= threshold``, subtract reset; the
model runs once on the input to check that no layer emits two spikes in a
step), writes the canonical graph to ``OUT/sinabs.nir``, lowers it to a chip and
runs seeded random input frames through sinabs, st2chip's float simulation, the
bit-exact reference and Lava's fixed_pt simulator. Prints the conversion notes,
the chip table, the verify report and per-neuron output spike counts; writes
the energy report (45 nm profile) into OUT.

Exit status 1 when the reference and Lava disagree or sinabs and the float
simulation disagree, else 0.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nir
import numpy as np
import sinabs
import sinabs.layers as sl
import torch
from torch import nn

import st2chip
from st2chip.analysis.energy import write_energy_report
from st2chip.chip.table import format_table
from st2chip.converters.sinabs import to_nir

BATCH, STEPS, SIDE, SEED = 3, 16, 10, 0


def build_net() -> nn.Sequential:
    """The seeded sinabs CNN; positive weights scaled so that every layer spikes, at most once per step."""
    torch.manual_seed(SEED)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), sl.IAFSqueeze(batch_size=BATCH), sl.SumPool2d(2),
                        nn.Conv2d(4, 4, 3), sl.IAFSqueeze(batch_size=BATCH), nn.Flatten(),
                        nn.Linear(16, 3), sl.IAFSqueeze(batch_size=BATCH))
    with torch.no_grad():
        net[0].weight.abs_().mul_(0.4)
        net[3].weight.abs_().mul_(0.25)
        net[3].bias.fill_(-0.1)
        net[6].weight.abs_().mul_(0.2)
    return net


def run_sinabs(net: nn.Sequential, frames: torch.Tensor) -> np.ndarray:
    """sinabs' output spikes ``(B, T, n_out)`` for input frames ``(B * T, 1, H, W)``."""
    sinabs.reset_states(net)
    with torch.no_grad():
        out = net(frames)
    sinabs.reset_states(net)
    return out.reshape(BATCH, STEPS, -1).numpy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/examples/sinabs"), help="output folder")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)

    net = build_net()
    x = (np.random.default_rng(SEED).random((BATCH, STEPS, SIDE * SIDE)) < 0.3).astype(np.uint8)
    frames = torch.as_tensor(x, dtype=torch.float32).reshape(BATCH * STEPS, 1, SIDE, SIDE)
    sinabs_out = run_sinabs(net, frames)

    conv = to_nir(net, frames, steps=STEPS)  # runs the model on the frames: at most one spike per step
    print("conversion notes:\n  " + "\n  ".join(conv.notes))
    nir.write(args.out / "sinabs.nir", conv.graph)

    chip = st2chip.lower(conv.graph, decay_groups=1)
    print(format_table(chip))
    flt = st2chip.simulate(conv.graph, x)
    ref = st2chip.run(chip, x)
    report = st2chip.verify(conv.graph, x, chip=chip, lava_samples=BATCH)  # float, engine and Lava
    print(report.to_text())

    sinabs_counts = sinabs_out.sum(axis=1).astype(int)
    flt_counts = flt.scores.astype(int)
    print("output spike counts per neuron (sample: sinabs | st2chip float | chip):")
    for b in range(BATCH):
        print(f"  {b}: {sinabs_counts[b].tolist()} | {flt_counts[b].tolist()} | {ref.scores[b].astype(int).tolist()}")
    files = write_energy_report(st2chip.energy(chip, ref), args.out)
    print("wrote", args.out / "sinabs.nir", *files.values())

    sinabs_ok = np.array_equal(sinabs_counts, flt_counts)
    print(f"sinabs == float: {sinabs_ok}; reference == Lava: {report.chip_exact}")
    return 0 if sinabs_ok and report.chip_exact else 1


if __name__ == "__main__":
    sys.exit(main())
