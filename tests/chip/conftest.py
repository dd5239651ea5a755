"""Graphs that several chip tests build."""

import nir
import numpy as np
import pytest

DT = 1e-3


def _random_conv(rng: np.random.Generator, c_out: int, c_in: int, k: int, mean: float = 0.15, *, stride=1,
                padding=0, dilation=1, groups: int = 1) -> nir.Conv2d:
    """A Conv2d with weights drawn around ``mean`` (positive: the layers after it spike) and small biases."""
    return nir.Conv2d(input_shape=None, weight=rng.normal(mean, 0.4, (c_out, c_in // groups, k, k)), stride=stride,
                      padding=padding, dilation=dilation, groups=groups, bias=rng.normal(0, 0.02, c_out))


@pytest.fixture
def random_conv():
    """The Conv2d builder (``random_conv(rng, c_out, c_in, k, mean=0.15, stride=, padding=, dilation=, groups=)``)."""
    return _random_conv


@pytest.fixture
def strided_cnn():
    """``make(l1, l2, conv_mean)``: Input (2, 9, 9) -> Conv 4x3x3 stride 2 padding 1 -> ``l1`` (4, 5, 5) ->
    Conv 6x2x2 groups 2 dilation 2 -> ``l2`` (6, 3, 3) -> Flatten -> Affine -> LI readout (5), weights from
    seed 0, as a raw (not yet normalized) graph."""
    def make(l1: nir.NIRNode, l2: nir.NIRNode, conv_mean: float = 0.15) -> nir.NIRGraph:
        rng = np.random.default_rng(0)
        nodes = {"input": nir.Input(input_type={"input": np.array([2, 9, 9])}),
                 "c1": _random_conv(rng, 4, 2, 3, conv_mean, stride=2, padding=1), "l1": l1,
                 "c2": _random_conv(rng, 6, 4, 2, conv_mean, groups=2, dilation=2), "l2": l2,
                 "flat": nir.Flatten(input_type={"input": np.array([6, 3, 3])}),
                 "fc": nir.Affine(weight=rng.normal(0, 0.3, (5, 54)), bias=np.zeros(5)),
                 "out_neuron": nir.LI(tau=np.full(5, 0.005), r=np.ones(5), v_leak=np.zeros(5)),
                 "output": nir.Output(output_type={"output": np.array([5])})}
        edges = [("input", "c1"), ("c1", "l1"), ("l1", "c2"), ("c2", "l2"), ("l2", "flat"), ("flat", "fc"),
                 ("fc", "out_neuron"), ("out_neuron", "output")]
        return nir.NIRGraph(nodes=nodes, edges=edges, metadata={"dt": DT}, type_check=False)
    return make
