"""Whether a quantized synapse group is exactly one convolution, and its kernel when it is.

A ``Conv2d`` between two neuron layers lowers to a sparse matrix
(:func:`st2chip.graph.linear.as_matrix`) whose entries, after threshold folding
and quantization, are 8-bit mantissas. lava-nc's ``Conv`` process stores a
kernel instead: one weight per tap, shared by every output position of a
channel. That is the same synaptic input only when every synapse that reads one
tap holds the same mantissa; per-neuron thresholds that differ within a channel
break it. So the check is made on the mantissas themselves, not on the float
graph: a kernel is returned only when rebuilding the matrix from it gives the
group's matrix back exactly.
"""

from __future__ import annotations

import dataclasses

import nir
import numpy as np
import scipy.sparse as sp

from st2chip.chip.chipgraph import ConvKernel
from st2chip.graph import linear


def conv_kernel(name: str, node: nir.Conv2d, in_shape: tuple[int, int, int], mantissa: sp.csr_matrix
                ) -> ConvKernel | str:
    """The kernel of ``mantissa`` (the quantized matrix of Conv2d ``name`` on ``(C, H, W)`` maps), or the
    reason it is not one convolution in the form lava's ``Conv`` takes."""
    geo = linear.geometry(name, node)
    if geo.same and any(d * (k - 1) % 2 for d, k in zip(geo.dilation, geo.kernel)):
        return "padding 'same' with an even kernel pads unevenly; lava's Conv pads both sides alike"
    weight = np.asarray(node.weight)
    ids = np.arange(1, weight.size + 1, dtype=np.float64).reshape(weight.shape)
    taps, _ = linear.as_matrix(name, dataclasses.replace(node, weight=ids, bias=np.zeros(weight.shape[0])),
                               in_shape)
    tap = taps.data.astype(np.int64) - 1  # which kernel entry each synapse of the convolution reads
    rows = np.repeat(np.arange(taps.shape[0]), np.diff(taps.indptr))
    values = np.asarray(mantissa[rows, taps.indices]).ravel().astype(np.int64)
    if np.count_nonzero(values) != mantissa.count_nonzero():
        return "the matrix has synapses outside the convolution's pattern"
    kernel = np.zeros(weight.size, np.int64)
    kernel[tap] = values
    if not np.array_equal(kernel[tap], values):
        return "the weights of one channel differ between positions (per-neuron thresholds)"
    return ConvKernel(kernel.reshape(weight.shape), tuple(in_shape),
                      linear.output_shape(name, node, tuple(in_shape)), geo.stride, geo.pad, geo.dilation,
                      int(node.groups))
