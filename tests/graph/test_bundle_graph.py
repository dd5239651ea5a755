"""A bundle composed into one graph: the float interpreter gives run_bundle's scores, and lowering takes it."""

import shutil

import numpy as np
import pytest
import torch

from st2chip.converters.transformer import export_bundle
from st2chip.errors import InputError
from st2chip.graph.bundle import run_bundle
from st2chip.graph.bundle_graph import bundle_graph
from st2chip.graph.product import SpikeProduct
from st2chip.graph.simulate import simulate
from st2chip.learn.transformer import SpikingTransformer, STConfig


def _bundle(tmp_path, name: str, **config):
    torch.manual_seed(0)
    model = SpikingTransformer(STConfig.tiny_digits(**config)).eval()
    return export_bundle(model, tmp_path / name)


def _levels(images: np.ndarray, steps: int) -> np.ndarray:
    """The composed graph's input: each image as 8-bit levels, repeated every step."""
    return np.repeat(np.round(np.asarray(images, float) * 255)[:, None, :], steps, axis=1)


@pytest.mark.parametrize("ranks", [{}, {"blocks.0.attn.q": 4, "blocks.0.mlp.fc1": 3}])
def test_composed_graph_gives_the_bundles_scores(tmp_path, digits, ranks):
    folder = _bundle(tmp_path, "b", ranks=ranks)
    graph = bundle_graph(folder)
    products = [n for n in graph.nodes.values() if isinstance(n, SpikeProduct)]
    assert len(products) == 1 and products[0].tokens == 16 and products[0].dim == 32
    x = np.asarray(digits[1].x[:24])
    want = run_bundle(folder, np.round(x * 255) / 255)
    got = simulate(graph, _levels(x, 4)).scores
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert (got.argmax(1) == want.argmax(1)).all()


def test_an_onnx_part_that_is_not_what_its_step_claims_is_refused(tmp_path):
    folder = _bundle(tmp_path, "b")
    other = _bundle(tmp_path, "other", attn_scale=0.5)
    shutil.copy(other / "blocks.0.product.onnx", folder / "blocks.0.product.onnx")
    with pytest.raises(InputError, match=r"blocks\.0\.product.*attn_scale 0\.25"):
        bundle_graph(folder)
    shutil.copy(other / "readout.onnx", folder / "blocks.0.product.onnx")
    with pytest.raises(InputError, match=r"blocks\.0\.product"):
        bundle_graph(folder)


@pytest.mark.parametrize("config", [STConfig.tiny_digits(norm=False), STConfig.tiny_mnist1d()])
def test_models_bundles_cannot_hold_yet_are_refused_on_export(tmp_path, config):
    with pytest.raises(InputError, match="not exported yet"):
        export_bundle(SpikingTransformer(config).eval(), tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_token_parts_are_replicated_from_their_non_zeros(tmp_path):
    """Every replicated Affine and the token permutation are CSR: tokens x the part's non-zeros, so a many-token
    model composes without a tokens^2 dense copy (here 10,000 tokens of a 40 x 30 part: 1.2e11 dense entries)."""
    import nir
    import scipy.sparse as sp

    from st2chip.graph.bundle_graph import _replicate
    w = np.random.default_rng(0).normal(size=(40, 30))
    w[w < 0.5] = 0
    big = _replicate(nir.Affine(weight=w, bias=np.arange(40.0)), 10_000, "test")
    assert sp.issparse(big.weight) and big.weight.shape == (400_000, 300_000)
    assert big.weight.nnz == 10_000 * np.count_nonzero(w) and big.bias.shape == (400_000,)
    np.testing.assert_array_equal(big.weight[40:80, 30:60].toarray(), w)
    graph = bundle_graph(_bundle(tmp_path, "b"))
    affines = {n: node for n, node in graph.nodes.items() if isinstance(node, nir.Affine)}
    assert affines and all(sp.issparse(node.weight) for node in affines.values())
