"""Chip-in-the-loop fine-tuning: the model it leaves is one the chip holds exactly, decays tied into K pairs,
and the chip then computes what its float simulation computes; seeded."""

import numpy as np
import pytest
import torch

from st2chip.chip.lower import lower
from st2chip.converters.rnn import rnn_to_nir
from st2chip.graph.normalize import normalize
from st2chip.graph.simulate import simulate
from st2chip.chip.finetune import chip_finetune
from st2chip.learn.data import Split, rows_encode
from st2chip.learn.rnn import RNNConfig, SpikingRNN
from st2chip.learn.training import seed_everything, train_classifier
from st2chip.targets import engine


@pytest.fixture(scope="module")
def small(digits):
    train, test = digits
    return Split(train.x[:256], train.y[:256]), Split(test.x[:96], test.y[:96])


def _trained(small, seed: int = 0) -> SpikingRNN:
    seed_everything(seed)
    model = SpikingRNN(RNNConfig.digits(hidden=16, hold=1))
    train_classifier(model, *small, epochs=2, lr=1e-2, seed=seed, device="cpu", progress=False)
    return model


def test_the_fine_tuned_model_is_what_the_chip_holds(small):
    model = _trained(small)
    before = lower(normalize(rnn_to_nir(model)), decay_groups=2).report["layers"]["lif"]
    assert before["weight_error"] > 1e-3 and before["leak_error"] > 1e-3  # the float model is not on the chip
    result, summary = chip_finetune(model, "rnn", *small, decay_groups=2, epochs=2, lr=1e-3, seed=0,
                                    progress=False)
    assert summary["last_change"] == 0 and 0 <= result.test_accuracy <= 1
    graph = normalize(rnn_to_nir(model))
    chip = lower(graph, decay_groups=2)
    layer = chip.report["layers"]["lif"]
    assert layer["decay_groups"] <= 2 and len(chip.layer_populations("lif")) == layer["decay_groups"]
    assert layer["weight_error"] < 1e-6 and chip.report["layers"]["readout"]["weight_error"] < 1e-6
    assert layer["leak_error"] < 1e-6 and layer["current_leak_error"] < 1e-6
    # more groups on the map change nothing: the decays are already tied
    assert lower(graph, decay_groups=8).report["layers"]["lif"]["decay_groups"] == layer["decay_groups"]
    # what is left between float and chip is fixed-point state arithmetic: the same predictions
    spikes = rows_encode(small[1].x, 4, 1).numpy().transpose(1, 0, 2)
    float_traces = simulate(graph, spikes)
    chip_traces = engine.run(chip, {"input": spikes})
    assert np.mean(float_traces.predictions() == chip_traces.predictions()) >= 0.98
    assert np.mean(float_traces.spikes["lif"] == chip_traces.spikes["lif"]) >= 0.995


def test_same_seed_same_fine_tuned_model(small):
    states = []
    for seed in (3, 3, 4):
        model = _trained(small)
        chip_finetune(model, "rnn", *small, decay_groups=2, epochs=1, seed=seed, progress=False)
        states.append({k: v.clone() for k, v in model.state_dict().items()})
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert not all(torch.equal(states[0][k], states[2][k]) for k in states[0])


def test_chip_finetune_refuses_a_kind_it_does_not_know(small):
    from st2chip.learn.cnn import CNNConfig, SpikingCNN
    with pytest.raises(ValueError, match="mlp, rnn"):
        chip_finetune(SpikingCNN(CNNConfig()), "cnn", *small, progress=False)


def test_an_mlp_fine_tuned_with_the_chip_in_the_loop_is_what_the_chip_holds(small):
    from st2chip.converters.mlp import mlp_to_nir
    from st2chip.learn.mlp import MLPConfig, SpikingMLP
    seed_everything(0)
    model = SpikingMLP(MLPConfig(sizes=[64, 24, 16, 10], steps=8))
    _, summary = chip_finetune(model, "mlp", *small, decay_groups=2, epochs=1, progress=False)
    assert summary["last_change"] == 0
    chip = lower(normalize(mlp_to_nir(model)), decay_groups=2)
    for layer in ("lif1", "lif2", "readout"):
        assert chip.report["layers"][layer]["weight_error"] < 1e-6
    assert chip.report["layers"]["lif1"]["leak_error"] < 1e-6
