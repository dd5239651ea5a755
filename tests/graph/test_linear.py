"""Convolution and pooling as matrices over flat C-order signals, against torch's own operators."""

import nir
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from st2chip.errors import GraphError
from st2chip.graph.linear import as_matrix, output_shape

CONV2D = [  # (c_in, c_out, groups, kernel, stride, padding, dilation, H, W)
    (2, 4, 1, 3, 1, 1, 1, 7, 6),
    (4, 6, 2, 3, 2, 0, 1, 9, 9),
    (3, 3, 3, 2, 1, "same", 2, 5, 5),
    (2, 16, 1, 5, 2, 0, 1, 34, 34),  # the NIR paper's first convolution
    (2, 2, 1, 3, 1, "valid", 1, 5, 4),
]


@pytest.mark.parametrize("c_in, c_out, groups, k, stride, padding, dilation, h, w", CONV2D)
def test_conv2d_matrix_equals_torch(c_in, c_out, groups, k, stride, padding, dilation, h, w):
    rng = np.random.default_rng(0)
    weight, bias = rng.normal(size=(c_out, c_in // groups, k, k)), rng.normal(size=c_out)
    node = nir.Conv2d(input_shape=(h, w), weight=weight, stride=stride, padding=padding, dilation=dilation,
                      groups=groups, bias=bias)
    matrix, b = as_matrix("conv", node, (c_in, h, w))
    x = rng.normal(size=(c_in, h, w))
    expected = F.conv2d(torch.tensor(x)[None], torch.tensor(weight), torch.tensor(bias), stride, padding, dilation,
                        groups)[0].numpy()
    assert output_shape("conv", node, (c_in, h, w)) == expected.shape
    np.testing.assert_allclose(matrix @ x.ravel() + b, expected.ravel(), atol=1e-12)


def test_conv1d_and_pooling_matrices_equal_torch():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(4, 2, 3))
    node = nir.Conv1d(input_shape=10, weight=w, stride=2, padding=1, dilation=1, groups=1, bias=np.zeros(4))
    x = rng.normal(size=(2, 10))
    matrix, _ = as_matrix("c", node, (2, 10))
    np.testing.assert_allclose(matrix @ x.ravel(), F.conv1d(torch.tensor(x)[None], torch.tensor(w), None, 2, 1)[0]
                               .numpy().ravel(), atol=1e-12)
    img = rng.normal(size=(3, 6, 5))
    pool = nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0]))
    matrix, _ = as_matrix("p", pool, (3, 6, 5))
    np.testing.assert_allclose(matrix @ img.ravel(), 4 * F.avg_pool2d(torch.tensor(img)[None], 2, 2)[0].numpy().ravel())
    pool = nir.AvgPool2d(kernel_size=np.array([3, 3]), stride=np.array([2, 2]), padding=np.array([1, 1]))
    matrix, _ = as_matrix("p", pool, (3, 6, 5))
    np.testing.assert_allclose(matrix @ img.ravel(), F.avg_pool2d(torch.tensor(img)[None], 3, 2, 1)[0].numpy().ravel(),
                               atol=1e-12)


def test_wrong_channels_and_empty_output_name_the_node():
    node = nir.Conv2d(input_shape=(4, 4), weight=np.ones((2, 3, 3, 3)), stride=1, padding=0, dilation=1, groups=1,
                      bias=np.zeros(2))
    with pytest.raises(GraphError, match="takes 3 channels, the input has 2") as info:
        output_shape("c1", node, (2, 4, 4))
    assert info.value.node == "c1"
    with pytest.raises(GraphError, match="output would be empty"):
        output_shape("c1", node, (3, 2, 2))
