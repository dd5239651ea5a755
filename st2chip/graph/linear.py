r"""Convolution and pooling nodes as shapes and as sparse matrices over flat signals.

NIR's ``Conv1d``, ``Conv2d``, ``SumPool2d`` and ``AvgPool2d`` act on ``(C, N)``
and ``(C, H, W)`` maps; st2chip's canonical signals are flat vectors in C order
(what ``torch.flatten`` and NIR's ``Flatten`` give). A convolution is a linear
map of the flat vector, so it is also a (very sparse) matrix: that is how a chain
of linear nodes between two neuron layers composes into one synapse group.
Pooling is a depthwise convolution with a kernel of ones (``SumPool2d``) or of
``1 / (k_h k_w)`` (``AvgPool2d``; padding counts, as torch's default).

Both readings, :func:`output_shape` and :func:`as_matrix`, use the same
:class:`Geometry`, so shapes and matrices cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

import nir
import numpy as np
import scipy.sparse as sp

from st2chip import limits
from st2chip.errors import GraphError

SPATIAL = (nir.Conv1d, nir.Conv2d, nir.SumPool2d, nir.AvgPool2d)


@dataclass(frozen=True)
class Geometry:
    """A convolution's sizes over 1 or 2 spatial dimensions: kernel, stride, dilation, padding before each dim."""

    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    pad: tuple[int, ...]
    same: bool = False  # padding "same": the output keeps the input's spatial size

    def out_spatial(self, spatial: tuple[int, ...]) -> tuple[int, ...]:
        if self.same:
            return tuple(spatial)
        return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1
                     for n, p, d, k, s in zip(spatial, self.pad, self.dilation, self.kernel, self.stride))


def _ints(value, ndim: int, name: str, field: str, minimum: int) -> tuple[int, ...]:
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.size == 1:
        arr = np.repeat(arr, ndim)
    if arr.size != ndim or not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)) or np.any(arr < minimum):
        raise GraphError(f"must be {ndim} integer(s) >= {minimum}, got {np.asarray(value).tolist()}",
                         node=name, field=field)
    return tuple(int(v) for v in arr)


def geometry(name: str, node: nir.NIRNode) -> Geometry:
    """The node's kernel, stride, dilation and padding, checked."""
    ndim = 1 if isinstance(node, nir.Conv1d) else 2
    if isinstance(node, (nir.Conv1d, nir.Conv2d)):
        kernel = tuple(int(k) for k in np.shape(node.weight)[2:])
        stride = _ints(node.stride, ndim, name, "stride", 1)
        dilation = _ints(node.dilation, ndim, name, "dilation", 1)
        padding = node.padding
    else:
        kernel = _ints(node.kernel_size, ndim, name, "kernel_size", 1)
        stride = _ints(node.stride, ndim, name, "stride", 1)
        dilation = (1,) * ndim
        padding = node.padding
    if isinstance(padding, str):
        if padding == "valid":
            return Geometry(kernel, stride, dilation, (0,) * ndim)
        if padding != "same":
            raise GraphError(f"padding must be 'same', 'valid' or integers, got {padding!r}", node=name,
                             field="padding")
        if any(s != 1 for s in stride):
            raise GraphError("padding 'same' needs stride 1 (as in torch)", node=name, field="padding")
        # torch pads d*(k-1) in all, the smaller half first
        return Geometry(kernel, stride, dilation, tuple(d * (k - 1) // 2 for d, k in zip(dilation, kernel)), True)
    return Geometry(kernel, stride, dilation, _ints(padding, ndim, name, "padding", 0))


def output_shape(name: str, node: nir.NIRNode, in_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Output ``(C_out, *spatial)`` of a convolution or pooling node on an input of ``in_shape`` ``(C, *spatial)``."""
    geo = geometry(name, node)
    if len(in_shape) != 1 + len(geo.kernel):
        raise GraphError(f"takes ({'C, N' if len(geo.kernel) == 1 else 'C, H, W'}) maps, but its input has shape "
                         f"{list(in_shape)}", node=name, field="input_type")
    channels = in_shape[0]
    if isinstance(node, (nir.Conv1d, nir.Conv2d)):
        groups = int(node.groups)
        c_out, c_in_group = np.shape(node.weight)[:2]
        if groups < 1 or channels != c_in_group * groups or c_out % groups:
            raise GraphError(f"weight {list(np.shape(node.weight))} with groups={groups} takes "
                             f"{c_in_group * groups} channels, the input has {channels}", node=name, field="weight")
        channels = c_out
    spatial = geo.out_spatial(tuple(in_shape[1:]))
    if min(spatial) < 1:
        raise GraphError(f"the output would be empty ({list(spatial)}) for input {list(in_shape)}", node=name,
                         field="kernel_size")
    return (channels, *spatial)


STACK_CHUNK = 2**20  # synapses per block of output channels that :func:`_channels_stacked` writes at a time


def _channels_stacked(weight: np.ndarray, tap: np.ndarray, offset: np.ndarray, indptr_one: np.ndarray,
                      first: np.ndarray, n_in: int) -> sp.csr_matrix:
    """The convolution's CSR matrix, one output channel's rows after another, zero weights dropped.

    Output channel ``co`` holds ``weight[co, tap]`` at input indices ``offset + first[co]`` in the rows that
    ``indptr_one`` (one channel's) gives. Blocks of channels are written into arrays made once: a block's
    index arrays stay small, and no per-channel matrices are stacked (a copy of the whole matrix).
    """
    c_out, per_channel = weight.shape[0], tap.size
    total = c_out * per_channel
    data = np.empty(total, dtype=np.float64)
    indices = np.empty(total, dtype=np.int64 if max(n_in, total) > np.iinfo(np.int32).max else np.int32)
    counts = np.empty((c_out, indptr_one.size - 1), dtype=np.int64)
    step = max(1, STACK_CHUNK // max(per_channel, 1))
    at = 0
    for lo in range(0, c_out, step):
        values = weight[lo:lo + step][:, tap]
        keep = values != 0
        kept = np.concatenate([np.zeros((keep.shape[0], 1), np.int64), np.cumsum(keep, axis=1)], axis=1)
        counts[lo:lo + step] = kept[:, indptr_one[1:]] - kept[:, indptr_one[:-1]]
        n = int(kept[:, -1].sum())
        data[at:at + n] = values[keep]
        indices[at:at + n] = (offset[None, :] + first[lo:lo + step, None])[keep]
        at += n
    if at < total:
        data, indices = data[:at].copy(), indices[:at].copy()
    indptr = np.concatenate([np.zeros(1, np.int64), np.cumsum(counts.reshape(-1))])
    return sp.csr_matrix((data, indices, indptr), shape=(c_out * (indptr_one.size - 1), n_in))


def as_matrix(name: str, node: nir.NIRNode, in_shape: tuple[int, ...]) -> tuple[sp.csr_matrix, np.ndarray]:
    """The node as ``(W, b)`` with ``y = W x + b`` on flat C-order vectors, ``W`` sparse ``(n_out, n_in)``."""
    geo = geometry(name, node)
    out_shape = output_shape(name, node, in_shape)
    if isinstance(node, (nir.Conv1d, nir.Conv2d)):
        weight = np.asarray(node.weight, dtype=np.float64)
        groups = int(node.groups)
        bias = np.asarray(node.bias, dtype=np.float64).reshape(-1) if node.bias is not None else np.zeros(1)
    else:  # pooling: a depthwise convolution
        value = 1.0 if isinstance(node, nir.SumPool2d) else 1.0 / float(np.prod(geo.kernel))
        weight = np.full((in_shape[0], 1, *geo.kernel), value)
        groups, bias = in_shape[0], np.zeros(1)
    if len(geo.kernel) == 1:  # Conv1d as a 2-D convolution of height 1
        weight = weight[:, :, None, :]
        geo = Geometry((1, *geo.kernel), (1, *geo.stride), (1, *geo.dilation), (0, *geo.pad), geo.same)
        in_shape, out_shape2 = (in_shape[0], 1, in_shape[1]), (out_shape[0], 1, out_shape[1])
    else:
        out_shape2 = out_shape
    c_out, c_in_group, kh, kw = weight.shape
    _, h_in, w_in = in_shape
    _, h_out, w_out = out_shape2
    per_out = h_out * w_out
    limits.check_alloc(f"the matrix of {name}", c_out * per_out * c_in_group * kh * kw, 12)
    # index arrays of one output channel's synapses, never of the whole matrix
    oy, ox, ci, ky, kx = np.meshgrid(np.arange(h_out), np.arange(w_out), np.arange(c_in_group), np.arange(kh),
                                     np.arange(kw), indexing="ij")
    y = oy * geo.stride[0] - geo.pad[0] + ky * geo.dilation[0]
    x = ox * geo.stride[1] - geo.pad[1] + kx * geo.dilation[1]
    inside = (y >= 0) & (y < h_in) & (x >= 0) & (x < w_in)
    row = (oy * w_out + ox)[inside]
    offset = ((ci * h_in + y) * w_in + x)[inside]  # input index within the channel group
    tap = (ci * kh + ky) * kw + kx
    tap = tap[inside]
    order = np.argsort(row, kind="stable")  # CSR order: by output position
    row, offset, tap = row[order], offset[order], tap[order]
    indptr_one = np.searchsorted(row, np.arange(per_out + 1))
    matrix = _channels_stacked(weight.reshape(c_out, -1), tap, offset, indptr_one,
                               (np.arange(c_out) // (c_out // groups)) * c_in_group * h_in * w_in,
                               int(np.prod(in_shape)))
    full_bias = np.repeat(np.broadcast_to(bias, (c_out,)), h_out * w_out)
    return matrix, full_bias.astype(np.float64)
