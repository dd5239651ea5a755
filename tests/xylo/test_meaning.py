"""The Xylo meaning of a graph (st2chip.xylo.meaning): lowering it gives the chip it was read from, it holds the
chip's numbers, and the float interpreter on it agrees with the Xylo engine spike for spike (nearly)."""

import nir
import numpy as np
import pytest
import torch

import st2chip
from st2chip.errors import GraphError
from st2chip.graph.simulate import simulate
from st2chip.xylo.lower import lower_xylo
from st2chip.xylo.lowering.leaks import chip_decay
from st2chip.xylo.meaning import rewrite, same_chip, xylo_meaning
from st2chip.xylo.spec import load_spec
from st2chip.targets.xylo_run import run_traces

AUDIO3 = load_spec("xylo-audio3")


@pytest.fixture(scope="module")
def mnist1d():
    """A tiny sLIF MLP 16 -> 24 -> 10 (subtract reset) trained one epoch on 256 MNIST-1D samples, and 100 test
    samples."""
    from st2chip.converters.mlp import mlp_to_nir
    from st2chip.learn.data import Split, load_mnist1d_split, sequence_encode
    from st2chip.learn.mlp import MLPConfig, SpikingMLP
    from st2chip.learn.training import train_classifier
    train, test = load_mnist1d_split()
    torch.manual_seed(0)
    model = SpikingMLP(MLPConfig(sizes=[16, 24, 10], steps=40, encoding="sequence", reset="subtract"))
    train_classifier(model, Split(train.x[:256], train.y[:256]), Split(test.x[:32], test.y[:32]), epochs=1, seed=0,
                     device="cpu", progress=False)
    spikes = sequence_encode(test.x[:100], 16).numpy().transpose(1, 0, 2).astype(np.uint8)
    return st2chip.load(mlp_to_nir(model)), spikes


def _rnn() -> nir.NIRGraph:
    from st2chip.converters.rnn import rnn_to_nir
    from st2chip.learn.rnn import RNNConfig, SpikingRNN
    torch.manual_seed(1)
    return st2chip.load(rnn_to_nir(SpikingRNN(RNNConfig(inputs=16, hidden=24, steps=40, encoding="sequence",
                                                        levels=16, reset="subtract", readout="integrate"))))


def test_lowering_the_meaning_gives_the_chip_it_was_read_from(mnist1d) -> None:
    graph = mnist1d[0]
    meaning, chip = rewrite(graph, AUDIO3)
    assert same_chip(lower_xylo(meaning, AUDIO3), chip)
    assert same_chip(lower_xylo(xylo_meaning(graph, AUDIO3), AUDIO3), lower_xylo(graph, AUDIO3))


def test_the_meaning_of_a_recurrent_graph_is_a_fixed_point_of_the_rounding() -> None:
    """A readout's scale follows its weights and bias: the rewrite repeats until lowering reproduces it."""
    meaning = xylo_meaning(_rnn(), AUDIO3)
    again, chip = rewrite(meaning, AUDIO3)
    assert same_chip(lower_xylo(again, AUDIO3), chip)
    assert isinstance(meaning.nodes["lif"], nir.CubaLIF) and meaning.nodes["lif"].metadata["max_spikes"] == 31


def test_the_meaning_holds_the_chips_numbers(mnist1d) -> None:
    graph, _ = mnist1d
    meaning, chip = rewrite(graph, AUDIO3)
    lif, readout, dt = meaning.nodes["lif1"], meaning.nodes["readout"], graph.metadata["dt"]
    assert isinstance(lif, nir.CubaLIF) and isinstance(readout, nir.CubaLI)
    assert np.allclose(1 - dt / lif.tau_syn, chip_decay(chip.hidden.dash_syn)) and np.all(chip.hidden.dash_syn == 1)
    assert np.allclose(1 - dt / lif.tau_mem, chip_decay(chip.hidden.dash_mem))
    assert lif.metadata["max_spikes"] == 31 and lif.metadata["reset"] == "subtract"
    scale = chip.report["lif1"]["scale"]
    w8 = meaning.nodes["fc1"].weight * scale / 2 ** chip.shift_in
    assert np.allclose(w8, chip.w_in.T, atol=1e-6) and not meaning.nodes["fc1"].bias.any()
    assert np.allclose(dt / lif.tau_mem * lif.v_leak * scale, chip.hidden.bias)  # the leak offset: the chip's bias
    assert np.array_equal(np.floor(scale * lif.v_threshold) + 1, chip.hidden.threshold)


def test_the_float_meaning_agrees_with_the_engine_spike_for_spike(mnist1d) -> None:
    """Float on the original graph vs the chip: the synaptic filter and multi-spikes it lacks; float on the
    meaning graph: only integer rounding is left (measured: 99.4 % of the hidden counts equal, 100 samples)."""
    graph, spikes = mnist1d
    meaning = xylo_meaning(graph, AUDIO3)
    chip = run_traces(lower_xylo(meaning, AUDIO3), {"input": spikes})
    agree = float(np.mean(simulate(meaning, spikes).spikes["lif1"] == chip.spikes["lif1"]))
    before = float(np.mean(simulate(graph, spikes).spikes["lif1"] == chip.spikes["lif1"]))
    print(f"hidden spike agreement with the engine: original {before:.4f}, meaning {agree:.4f}")
    assert agree >= 0.98 > before


def test_a_layer_fed_through_a_scale_node_is_refused_naming_it(mnist1d) -> None:
    graph = xylo_meaning(mnist1d[0], AUDIO3)
    nodes = dict(graph.nodes)
    nodes["gain"] = nir.Scale(np.full(24, 2.0))
    edges = [e for e in graph.edges if e != ("fc1", "lif1")] + [("fc1", "gain"), ("gain", "lif1")]
    odd = st2chip.load(nir.NIRGraph(nodes, edges, metadata=dict(graph.metadata), type_check=False))
    with pytest.raises(GraphError, match="gain"):
        rewrite(odd, AUDIO3)
