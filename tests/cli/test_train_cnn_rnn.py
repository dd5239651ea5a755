"""`st2chip train --model cnn|rnn` and `st2chip export` of their checkpoints; the default inputs of 'rows' graphs."""

import nir
import numpy as np
import pytest
import torch

from st2chip.inputs import resolve_inputs
from st2chip.cli.main import main
from st2chip.graph.nirfile import read_graph
from st2chip.graph.normalize import normalize
from st2chip.graph.simulate import simulate
from st2chip.learn.checkpoint import load_checkpoint
from st2chip.learn.data import Split, load_digits_split, rows_encode
from st2chip.learn.training import evaluate


@pytest.fixture(autouse=True)
def small_data(monkeypatch):
    """Train on the first samples only: these tests check the wiring, not the accuracy."""
    from st2chip.cli import train
    from st2chip.learn.data import load_split

    def first(name, root=None):
        tr, te = load_split(name, root)
        return Split(tr.x[:256], tr.y[:256]), Split(te.x[:128], te.y[:128])
    monkeypatch.setattr(train, "load_split", first)


def _run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_train_and_export_a_cnn(tmp_path, capsys):
    ckpt, path = tmp_path / "cnn.pt", tmp_path / "cnn.nir"
    code, out, _ = _run(capsys, "train", "--model", "cnn", "--channels", "2", "4", "--steps", "6", "--epochs", "1",
                        "--device", "cpu", "--out", str(ckpt))
    assert code == 0 and "trained cnn" in out
    kind, model, extra = load_checkpoint(ckpt)
    assert kind == "cnn" and model.config.channels == [2, 4] and model.config.steps == 6
    assert extra["data"] == "digits" and extra["epochs"] == 1 and extra["seed"] == 0
    assert _run(capsys, "export", str(ckpt), "-o", str(path))[0] == 0
    graph = read_graph(path)
    assert graph.metadata["model"] == "cnn" and graph.metadata["encoding"] == "rate"
    assert isinstance(graph.nodes["conv2"], nir.Conv2d) and isinstance(graph.nodes["pool2"], nir.SumPool2d)


def test_train_and_export_an_rnn_that_resets_by_subtraction(tmp_path, capsys):
    ckpt, path = tmp_path / "rnn.pt", tmp_path / "rnn.nir"
    code, out, _ = _run(capsys, "train", "--model", "rnn", "--hidden", "24", "--steps", "8", "--reset", "subtract",
                        "--epochs", "2", "--device", "cpu", "--out", str(ckpt))
    assert code == 0 and "trained rnn" in out
    kind, model, extra = load_checkpoint(ckpt)
    assert kind == "rnn" and model.config.reset == "subtract" and model.config.encoding == "rows"
    assert (model.config.hidden, model.config.steps, model.config.hold, model.config.inputs) == (24, 8, 1, 32)
    assert _run(capsys, "export", str(ckpt), "-o", str(path))[0] == 0
    graph = normalize(path)
    assert graph.nodes["lif"].metadata == {"reset": "subtract"}
    assert graph.metadata["encoding"] == "rows" and graph.metadata["hold"] == 1
    # without --inputs, a 'rows' graph runs on the digits test split read row by row, with labels
    inputs = resolve_inputs(graph, None, 50, None)
    _, test = load_digits_split()
    assert inputs.steps == 8 and inputs.samples == 50 and "row by row" in inputs.origin
    np.testing.assert_array_equal(inputs.labels, test.y[:50])
    np.testing.assert_array_equal(inputs.spikes["input"], rows_encode(test.x[:50], 4, 1).numpy().transpose(1, 0, 2))
    # the float NIR reading classifies them as the torch model does
    traces = simulate(graph, inputs.spikes["input"])
    assert traces.accuracy(inputs.labels) == pytest.approx(evaluate(model, Split(test.x[:50], test.y[:50])))


def test_train_an_rnn_on_mnist1d(tmp_path, capsys):
    ckpt = tmp_path / "rnn.pt"
    code, out, _ = _run(capsys, "train", "--model", "rnn", "--data", "mnist1d", "--hidden", "8", "--epochs", "1",
                        "--device", "cpu", "--out", str(ckpt))
    assert code == 0 and "on mnist1d" in out
    kind, model, extra = load_checkpoint(ckpt)
    assert kind == "rnn" and model.config.encoding == "sequence" and model.config.steps == 40
    assert model.config.inputs == model.config.levels == 16 and extra["data"] == "mnist1d"
    path = tmp_path / "rnn.nir"
    assert _run(capsys, "export", str(ckpt), "-o", str(path))[0] == 0
    assert read_graph(path).metadata["encoding"] == "sequence"


def test_same_seed_same_checkpoint(tmp_path, capsys):
    states = []
    for name, seed in (("a", "5"), ("b", "5"), ("c", "6")):
        ckpt = tmp_path / f"{name}.pt"
        assert _run(capsys, "train", "--model", "rnn", "--hidden", "12", "--steps", "8", "--epochs", "1",
                    "--seed", seed, "--device", "cpu", "--out", str(ckpt))[0] == 0
        states.append(load_checkpoint(ckpt)[1].state_dict())
    for k in states[0]:
        torch.testing.assert_close(states[0][k], states[1][k], rtol=0, atol=0, msg=k)
    assert not torch.equal(states[0]["fc_in.weight"], states[2]["fc_in.weight"])


@pytest.mark.parametrize("extra_args, message", [
    (["--model", "cnn", "--data", "mnist1d"], "--model mlp or --model rnn"),
    (["--model", "rnn", "--steps", "12"], "multiple of 8"),
    (["--model", "mlp", "--channels", "4"], "--model cnn"),
    (["--model", "cnn", "--levels", "4"], "--model rnn"),
    (["--model", "st", "--reset", "subtract"], "mlp, cnn and rnn"),
    (["--model", "rnn", "--data", "mnist1d", "--steps", "16"], "T is 40"),
])
def test_train_refuses_what_a_model_cannot_do(tmp_path, capsys, extra_args, message):
    code, _, err = _run(capsys, "train", *extra_args, "--epochs", "1", "--out", str(tmp_path / "m.pt"))
    assert code == 2 and message in err
    assert not (tmp_path / "m.pt").exists()


def test_rows_inputs_follow_the_graph_and_refuse_what_does_not_fit():
    from st2chip.converters.rnn import rnn_to_nir
    from st2chip.errors import InputError
    from st2chip.learn.rnn import RNNConfig, SpikingRNN

    torch.manual_seed(0)
    graph = normalize(rnn_to_nir(SpikingRNN(RNNConfig.digits(hidden=6, levels=3, hold=3))))
    inputs = resolve_inputs(graph, None, 7, 20)  # --steps keeps the first 20 of 24
    assert inputs.spikes["input"].shape == (7, 20, 24)
    del graph.metadata["hold"]  # the hold follows from the steps
    assert resolve_inputs(graph, None, 2, None).spikes["input"].shape == (2, 24, 24)
    with pytest.raises(InputError, match="more steps"):
        resolve_inputs(graph, None, 2, 30)
    del graph.metadata["steps"]
    with pytest.raises(InputError, match="neither 'hold' nor 'steps'"):
        resolve_inputs(graph, None, 2, None)
    odd = normalize(rnn_to_nir(SpikingRNN(RNNConfig.mnist1d(hidden=6, levels=5))))
    odd.metadata["encoding"] = "rows"
    with pytest.raises(InputError, match="takes 5 values"):
        resolve_inputs(odd, None, 2, None)


def test_quantize_an_rnn_and_map_it_with_its_decay_groups(tmp_path, capsys):
    ckpt, tuned, path = tmp_path / "rnn.pt", tmp_path / "rnn-q.pt", tmp_path / "rnn-q.nir"
    assert _run(capsys, "train", "--model", "rnn", "--hidden", "16", "--steps", "8", "--epochs", "1",
                "--device", "cpu", "--out", str(ckpt))[0] == 0
    code, out, _ = _run(capsys, "quantize", str(ckpt), "--decay-groups", "3", "--epochs", "1", "--device", "cpu",
                        "--out", str(tuned))
    assert code == 0 and "holds its weights exactly" in out
    _, _, extra = load_checkpoint(tuned)
    assert extra["chip_aware"]["decay_groups"] == 3 and extra["chip_aware"]["last_change"] == 0
    assert _run(capsys, "export", str(tuned), "-o", str(path))[0] == 0
    assert read_graph(path).metadata["decay_groups"] == 3
    table = tmp_path / "map.json"
    assert _run(capsys, "map", str(path), "--json", str(table))[0] == 0
    import json
    layers = json.loads(table.read_text())["layers"]
    lif = next(layer for layer in layers if layer["layer"] == "lif")
    assert lif["weight_error"] < 1e-6 and lif["leak_error"] < 1e-6 and 1 < lif["populations"] <= 3


def test_quantize_refuses_what_it_does_not_cover(tmp_path, capsys):
    ckpt = tmp_path / "cnn.pt"
    assert _run(capsys, "train", "--model", "cnn", "--channels", "2", "2", "--steps", "4", "--epochs", "1",
                "--device", "cpu", "--out", str(ckpt))[0] == 0
    code, _, err = _run(capsys, "quantize", str(ckpt), "--out", str(tmp_path / "q.pt"))
    assert code == 2 and "mlp, rnn" in err and not (tmp_path / "q.pt").exists()
    code, _, err = _run(capsys, "quantize", str(ckpt), "--decay-groups", "0", "--out", str(tmp_path / "q.pt"))
    assert code == 2 and not (tmp_path / "q.pt").exists()


def test_decay_groups_come_from_the_option_else_the_graph_else_four():
    from st2chip.pipeline import decay_groups_of
    from st2chip.errors import GraphError
    graph = nir.NIRGraph(nodes={}, edges=[], metadata={"decay_groups": np.int64(3)}, type_check=False)
    assert decay_groups_of(graph, None) == 3 and decay_groups_of(graph, 5) == 5
    graph.metadata = {}
    assert decay_groups_of(graph, None) == 4
    for bad in ("3", 0, 2.5, True):
        graph.metadata = {"decay_groups": bad}
        with pytest.raises(GraphError, match="decay_groups"):
            decay_groups_of(graph, None)
