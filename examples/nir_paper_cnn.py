"""The NIR paper's spiking CNN shape on the chip, from the command line, on random input spikes.

    python examples/nir_paper_cnn.py [--out DIR] [--samples 20] [--steps 10]

Writes ``OUT/nir_paper_cnn.nir``: Input (2, 34, 34) -> Conv2d 16x5x5 stride 2 -> IF ->
Conv2d 16x3x3 -> IF -> SumPool2d 2 -> Conv2d 8x3x3 -> IF -> SumPool2d 2 -> Flatten ->
Affine 128->32 -> IF -> Affine 32->10 -> IF (the layer sequence of the NIR paper's
N-MNIST CNN, Pedersen et al. 2024, with seeded random weights instead of trained ones),
and ``OUT/spikes.npy``, seeded random input spikes (B, T, 2, 34, 34) at a 20 % rate.
Then runs the commands a user would:

    st2chip map OUT/nir_paper_cnn.nir
    st2chip verify OUT/nir_paper_cnn.nir --inputs OUT/spikes.npy --lava-samples 2
    st2chip energy OUT/nir_paper_cnn.nir --inputs OUT/spikes.npy -o OUT

and exits with the first non-zero exit status (verify fails when the engine and
Lava differ, or float and chip agree on fewer than 95 % of spikes).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nir
import numpy as np

from st2chip.cli.main import main as st2chip

DT = 1e-3


def build(seed: int = 0) -> nir.NIRGraph:
    rng = np.random.default_rng(seed)

    def if_(shape) -> nir.IF:
        return nir.IF(r=np.full(shape, 1 / DT), v_threshold=np.ones(shape), v_reset=np.zeros(shape))

    def conv(c_out: int, c_in: int, k: int, stride: int, hw: tuple[int, int]) -> nir.Conv2d:
        weight = rng.normal(0.05, 0.3, (c_out, c_in, k, k)) * 2 / np.sqrt(c_in * k * k)
        return nir.Conv2d(input_shape=hw, weight=weight, stride=stride, padding=1, dilation=1, groups=1,
                          bias=np.zeros(c_out))

    def pool() -> nir.SumPool2d:
        return nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0]))

    nodes = {"input": nir.Input(input_type={"input": np.array([2, 34, 34])}),
             "conv1": conv(16, 2, 5, 2, (34, 34)), "if1": if_((16, 16, 16)),
             "conv2": conv(16, 16, 3, 1, (16, 16)), "if2": if_((16, 16, 16)), "pool2": pool(),
             "conv3": conv(8, 16, 3, 1, (8, 8)), "if3": if_((8, 8, 8)), "pool3": pool(),
             "flatten": nir.Flatten(input_type={"input": np.array([8, 4, 4])}, start_dim=0),
             "fc1": nir.Affine(weight=rng.normal(0.05, 0.2, (32, 128)), bias=np.zeros(32)), "if4": if_(32),
             "fc2": nir.Affine(weight=rng.normal(0.05, 0.3, (10, 32)), bias=np.zeros(10)), "if5": if_(10),
             "output": nir.Output(output_type={"output": np.array([10])})}
    order = list(nodes)
    return nir.NIRGraph(nodes=nodes, edges=list(zip(order[:-1], order[1:])), metadata={"dt": DT})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/nir_paper_cnn"))
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model, spikes = args.out / "nir_paper_cnn.nir", args.out / "spikes.npy"
    nir.write(model, build())
    rng = np.random.default_rng(1)
    np.save(spikes, (rng.random((args.samples, args.steps, 2, 34, 34)) < 0.2).astype(np.uint8))
    for command in (["map", str(model)],
                    ["verify", str(model), "--inputs", str(spikes), "--lava-samples", "2"],
                    ["energy", str(model), "--inputs", str(spikes), "-o", str(args.out)]):
        print(f"$ st2chip {' '.join(command)}", flush=True)
        code = st2chip(command)
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
