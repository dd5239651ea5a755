"""Fine-tuning for Xylo (st2chip.xylo.finetune): the graph trains as the chip computes it, and the tuned graph
lowers to exactly the weights it trained with."""

import numpy as np
import pytest
import torch

import st2chip
from st2chip.targets.xylo_run import run_traces
from st2chip.xylo.finetune import finetune_xylo, weight_steps
from st2chip.xylo.lower import lower_xylo
from st2chip.xylo.meaning import rewrite, same_chip, xylo_meaning
from st2chip.xylo.spec import load_spec

AUDIO3 = load_spec("xylo-audio3")


@pytest.fixture(scope="module")
def tuned():
    """A tiny MLP 16 -> 24 -> 10 (trained one epoch on 256 samples), fine-tuned one epoch on 300 more."""
    from st2chip.converters.mlp import mlp_to_nir
    from st2chip.learn.data import Split, load_mnist1d_split, sequence_encode
    from st2chip.learn.mlp import MLPConfig, SpikingMLP
    from st2chip.learn.training import train_classifier
    train, test = load_mnist1d_split()
    torch.manual_seed(0)
    model = SpikingMLP(MLPConfig(sizes=[16, 24, 10], steps=40, encoding="sequence", reset="subtract"))
    train_classifier(model, Split(train.x[:256], train.y[:256]), Split(test.x[:32], test.y[:32]), epochs=1, seed=0,
                     device="cpu", progress=False)
    graph = st2chip.load(mlp_to_nir(model))
    spikes = sequence_encode(train.x[256:556], 16).numpy().transpose(1, 0, 2).astype(np.uint8)
    tuning = finetune_xylo(graph, {"input": spikes}, train.y[256:556], spec=AUDIO3, epochs=1, lr=1e-3,
                           holdout=0.25, run_chip=run_traces, seed=0, progress=False)
    return graph, tuning


def test_the_tuned_graph_lowers_to_exactly_the_trained_held_weights(tuned) -> None:
    graph, tuning = tuned
    assert tuning.changed == 0
    chip = lower_xylo(tuning.graph, AUDIO3)
    steps = weight_steps(tuning.graph, AUDIO3)
    w_in = tuning.graph.nodes["fc1"].weight / steps["fc1"]
    w_out = tuning.graph.nodes["fc2"].weight / steps["fc2"]
    # a readout's scale moves a hair with its weights (its reachable |v|): its 8-bit weights do not
    assert np.allclose(w_in, np.rint(w_in), atol=1e-6) and np.array_equal(np.rint(w_in).T, chip.w_in)
    assert np.allclose(w_out, np.rint(w_out), atol=0.1) and np.array_equal(np.rint(w_out).T, chip.w_out)
    assert not np.array_equal(chip.w_in, lower_xylo(graph, AUDIO3).w_in)  # it did train
    again, read = rewrite(tuning.graph, AUDIO3)
    assert same_chip(lower_xylo(again, AUDIO3), read) and same_chip(read, chip)


def test_decays_stay_on_their_shift_grid(tuned) -> None:
    graph, tuning = tuned
    before, after = lower_xylo(xylo_meaning(graph, AUDIO3), AUDIO3), lower_xylo(tuning.graph, AUDIO3)
    for field in ("dash_syn", "dash_mem", "threshold", "bias"):
        assert np.array_equal(getattr(before.hidden, field), getattr(after.hidden, field))
    assert tuning.graph.nodes["lif1"].metadata["max_spikes"] == 31


def test_accuracy_before_and_after_are_measured_on_the_held_out_samples(tuned) -> None:
    _, tuning = tuned
    assert (tuning.train_samples, tuning.holdout_samples) == (225, 75)
    assert tuning.after.agreement >= 0.9
    assert set(tuning.to_dict()) >= {"before", "after", "changed", "layers", "temperature"}
