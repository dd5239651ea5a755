"""--inputs: the user's own spikes for simulate, verify and energy; dt made visible; import of plain NIR."""

import os
import threading
import time
import zipfile

import nir
import numpy as np
import pytest

from st2chip.inputs import load_inputs
from st2chip.cli.main import main
from st2chip.errors import InputError
from st2chip.graph.normalize import normalize
from st2chip.graph.simulate import simulate


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_lif(threshold: float = 1.0) -> nir.NIRGraph:
    """A 1-wide input into one LIF neuron; no dt and no steps in the metadata."""
    return nir.NIRGraph(nodes={
        "in": nir.Input(input_type={"input": np.array([1])}),
        "w": nir.Affine(weight=np.array([[1.0]]), bias=np.array([0.0])),
        "lif": nir.LIF(tau=np.array([2e-3]), r=np.array([10.0]), v_leak=np.array([0.0]),
                       v_threshold=np.array([threshold]), v_reset=np.array([0.0])),
        "out": nir.Output(output_type={"output": np.array([1])})},
        edges=[("in", "w"), ("w", "lif"), ("lif", "out")], metadata={})


@pytest.fixture
def one_lif(tmp_path):
    path = tmp_path / "f.nir"
    nir.write(path, _one_lif())
    spikes = (np.random.default_rng(0).random((3, 30, 1)) < 0.9).astype(np.uint8)
    np.save(tmp_path / "x.npy", spikes)
    return path, tmp_path / "x.npy", spikes


def test_simulate_lava_with_own_inputs_and_dt(one_lif, tmp_path, capsys):
    """The acceptance case: 1-wide input, no dt, no steps; Lava traces at the float simulation's steps."""
    path, x_path, spikes = one_lif
    out = tmp_path / "t.npz"
    code, stdout, err = _run(capsys, "simulate", path, "--inputs", x_path, "--dt", "1e-4", "--backend", "lava",
                             "-o", out)
    assert code == 0, err
    assert "no labels" in stdout and "assuming dt" not in err
    with np.load(out) as traces:
        lava_spikes = traces["spikes/lif"]
    floats = simulate(normalize(path, dt=1e-4), spikes)
    assert lava_spikes.shape == (3, 30, 1)
    assert lava_spikes.sum() > 0
    np.testing.assert_array_equal(lava_spikes, floats.spikes["lif"])


def test_dt_changes_the_result_and_a_missing_dt_is_refused(one_lif, capsys):
    path, x_path, _ = one_lif
    code, _, err = _run(capsys, "simulate", path, "--inputs", x_path, "--backend", "float")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "pass --dt SECONDS" in err
    code, out_default, _ = _run(capsys, "simulate", path, "--inputs", x_path, "--backend", "float", "--dt", "1e-3")
    assert code == 0
    _, out_small, _ = _run(capsys, "simulate", path, "--inputs", x_path, "--backend", "float", "--dt", "1e-4")
    assert out_default != out_small  # dt = 1 ms and 0.1 ms give different spike counts


def test_map_needs_no_steps_and_shows_dt(one_lif, capsys):
    path, _, _ = one_lif
    code, out, _ = _run(capsys, "map", path, "--dt", "1e-4")
    assert code == 0 and "dt=0.0001 s" in out


def test_verify_and_energy_with_npz_labels(one_lif, tmp_path, capsys):
    path, _, spikes = one_lif
    npz = tmp_path / "x.npz"
    np.savez(npz, **{"in": spikes, "labels": np.zeros(3, dtype=np.int64)})
    code, out, err = _run(capsys, "verify", path, "--inputs", npz, "--dt", "1e-4", "--backends", "float,reference")
    assert code == 0, err
    assert "accuracy[float]" in out and "3 samples x 30 steps" in out
    code, out, err = _run(capsys, "energy", path, "--inputs", npz, "--dt", "1e-4", "--steps", "10")
    assert code == 0, err
    assert "3 samples x 10 steps" in out


def test_digits_without_steps_asks_for_them(one_lif, capsys):
    path, _, _ = one_lif
    code, _, err = _run(capsys, "simulate", path, "--backend", "float", "--dt", "1e-3")
    assert code == 2 and "--steps" in err and "--inputs" in err


@pytest.mark.parametrize("case,needle", [
    ("wrong_width", "takes 1"),
    ("not_spikes", "must hold spikes"),
    ("two_dims", "expected (batch, steps"),
    ("pickle", "dtype object"),
    ("unknown_npz_key", "match no Input node"),
    ("missing_npz_key", "no array for input node(s) in"),
    ("bad_labels", "'labels'"),
    ("too_many_steps", "more steps than the inputs hold"),
])
def test_bad_inputs_exit_2_naming_the_problem(one_lif, tmp_path, capsys, case, needle):
    path, _, spikes = one_lif
    bad = tmp_path / f"{case}.npz" if "npz" in case or case == "bad_labels" else tmp_path / f"{case}.npy"
    extra = []
    if case == "wrong_width":
        np.save(bad, np.zeros((2, 5, 3)))
    elif case == "not_spikes":
        np.save(bad, np.full((2, 5, 1), 0.5))
    elif case == "two_dims":
        np.save(bad, np.zeros((2, 5)))
    elif case == "pickle":
        np.save(bad, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif case == "unknown_npz_key":
        np.savez(bad, **{"in": spikes, "other": spikes})
    elif case == "missing_npz_key":
        np.savez(bad, other=spikes)
    elif case == "bad_labels":
        np.savez(bad, **{"in": spikes, "labels": np.zeros(2)})
    elif case == "too_many_steps":
        np.save(bad, spikes)
        extra = ["--steps", "99"]
    code, out, err = _run(capsys, "simulate", path, "--inputs", bad, "--backend", "float", "--dt", "1e-3", *extra)
    assert code == 2, (out, err)
    assert needle in err and bad.name in err and len(err.strip().splitlines()) == 1


def _npy_bytes(shape: tuple, descr: str = "|u1", data: bytes = b"") -> bytes:
    """A .npy header declaring ``shape`` and ``descr``, followed by ``data`` (as much or as little as wanted)."""
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": False, "shape": shape})
    return buffer.getvalue() + data


def _zip(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _pickled_npz(path, labels: bool):
    """Object arrays as numpy writes them with allow_pickle=True: as the input, or as the labels."""
    spikes = np.zeros((3, 30, 1), np.uint8)
    objects = np.array([{"a": 1}, None, 3], dtype=object)
    np.savez(path, **({"in": spikes, "labels": objects} if labels else {"in": objects}))
    return path


NPZ_CASES = {
    # case: (build the file in tmp_path, words the one-line error must hold)
    "object-input": (lambda p: _pickled_npz(p, labels=False), ["'in'", "dtype object"]),
    "object-labels": (lambda p: _pickled_npz(p, labels=True), ["'labels'", "dtype object"]),
    "truncated-member": (lambda p: _zip(p, {"in.npy": _npy_bytes((3, 30, 1), data=bytes(10))}),
                         ["'in.npy'", "not a readable .npy array"]),
    "huge-member-without-npy": (lambda p: _zip(p, {"in": _npy_bytes((10 ** 6, 10 ** 5, 800), "<f8")}),
                                ["'in'", "(1000000, 100000, 800)", "budget"]),
    "huge-second-member": (lambda p: _zip(p, {"in.npy": _npy_bytes((3, 30, 1), data=bytes(90)),
                                              "labels": _npy_bytes((10 ** 12,), "<i8")}),
                           ["'labels'", "budget"]),
    "complex-input": (lambda p: _zip(p, {"in.npy": _npy_bytes((3, 30, 1), "<c16", bytes(3 * 30 * 16))}),
                      ["'in'", "complex128"]),
    "string-input": (lambda p: _zip(p, {"in.npy": _npy_bytes((3, 30, 1), "<U1", bytes(3 * 30 * 4))}),
                     ["'in'", "<U1"]),
    "float-labels": (lambda p: np.savez(p, **{"in": np.zeros((3, 30, 1), np.uint8), "labels": np.zeros(3)}) or p,
                     ["'labels'", "float64", "integer"]),
    "member-not-npy": (lambda p: _zip(p, {"in.npy": _npy_bytes((3, 30, 1), data=bytes(90)), "labels": b"hello"}),
                       ["'labels'", "not a .npy array"]),
    "two-members-one-name": (lambda p: _zip(p, {"in.npy": _npy_bytes((3, 30, 1), data=bytes(90)),
                                                "in": _npy_bytes((3, 30, 1), data=bytes(90))}),
                             ["'in.npy'", "'in'", "both"]),
}


@pytest.mark.parametrize("case", list(NPZ_CASES))
def test_hostile_npz_members_are_refused_before_their_data_is_read(one_lif, tmp_path, capsys, case):
    """Exit 2, one line naming the file and the member; np.load's lazy reads never run outside the checks."""
    build, words = NPZ_CASES[case]
    path, _, _ = one_lif
    bad = build(tmp_path / f"{case}.npz")
    t0 = time.monotonic()
    code, out, err = _run(capsys, "simulate", path, "--inputs", bad, "--backend", "float", "--dt", "1e-3")
    assert code == 2, (out, err)
    assert time.monotonic() - t0 < 10
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("st2chip: error:") and "Traceback" not in err, err
    assert bad.name in err and all(word in err for word in words), err


def test_a_good_npz_without_npy_suffixes_still_loads(tmp_path):
    graph = normalize(_one_lif(), dt=1e-3)
    bad = _zip(tmp_path / "plain.npz", {"in": _npy_bytes((2, 4, 1), data=bytes(8)),
                                        "labels": _npy_bytes((2,), "<i8", bytes(16))})
    inputs = load_inputs(bad, graph)
    assert inputs.spikes["in"].shape == (2, 4, 1) and inputs.labels.tolist() == [0, 0]


@pytest.fixture
def fifo(tmp_path):
    """A FIFO nobody writes to; every 3 s a thread opens and closes its write end, so that a reader blocked
    on it (the code before the fix) gets end-of-file and the test fails instead of hanging."""
    path = tmp_path / "spikes.npy"
    os.mkfifo(path)
    done = threading.Event()

    def rescue():
        while not done.wait(3.0):
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:  # no reader blocked on it: nothing to rescue
                pass

    thread = threading.Thread(target=rescue, daemon=True)
    thread.start()
    yield path
    done.set()
    thread.join()


@pytest.mark.parametrize("how", ["fifo", "symlink-to-fifo", "char-device", "directory"])
def test_inputs_must_be_a_regular_file(fifo, tmp_path, how):
    """A FIFO with no writer (directly or through a symlink), a device or a folder: refused at once."""
    target = {"fifo": fifo, "char-device": "/dev/null", "directory": tmp_path, "symlink-to-fifo": fifo}[how]
    path = target
    if how == "symlink-to-fifo":
        path = tmp_path / "link.npy"
        path.symlink_to(fifo)
    graph = normalize(_one_lif(), dt=1e-3)
    t0 = time.monotonic()
    with pytest.raises(InputError) as info:
        load_inputs(path, graph)
    assert time.monotonic() - t0 < 2
    kind = {"fifo": "FIFO", "symlink-to-fifo": "FIFO", "char-device": "character device", "directory": "directory"}
    message = str(info.value)
    assert message.startswith(f"--inputs {path}: is ") and kind[how] in message and "regular" in message


def test_npy_input_shape_may_be_the_input_shape(tmp_path):
    graph = normalize(nir.NIRGraph(nodes={
        "in": nir.Input(input_type={"input": np.array([2, 3])}),
        "w": nir.Affine(weight=np.ones((2, 6)), bias=np.zeros(2)),
        "lif": nir.LIF(tau=np.ones(2), r=np.ones(2), v_leak=np.zeros(2), v_threshold=np.ones(2),
                       v_reset=np.zeros(2)),
        "out": nir.Output(output_type={"output": np.array([2])})},
        edges=[("in", "w"), ("w", "lif"), ("lif", "out")], metadata={"dt": 1e-3}, type_check=False))
    np.save(tmp_path / "x.npy", np.ones((4, 7, 2, 3), dtype=bool))
    inputs = load_inputs(tmp_path / "x.npy", graph)
    assert inputs.spikes["in"].shape == (4, 7, 6) and inputs.labels is None
    with pytest.raises(InputError, match="takes 6"):
        np.save(tmp_path / "y.npy", np.ones((4, 7, 5)))
        load_inputs(tmp_path / "y.npy", graph)


def test_import_plain_nir_writes_canonical_file_and_lists_changes(tmp_path, capsys):
    raw = _one_lif()
    raw.nodes["lif"] = nir.LIF(tau=np.array([2e-3]), r=np.array([10.0]), v_leak=np.array([0.0]),
                               v_threshold=np.array([1.0]), v_reset=np.array([0.0]))  # one value for 2 neurons
    raw.nodes["w"] = nir.Linear(weight=np.ones((2, 1)))
    raw.nodes["out"] = nir.Output(output_type={"output": np.array([2])})
    nir.write(tmp_path / "raw.nir", raw)
    out = tmp_path / "canon.nir"
    code, stdout, err = _run(capsys, "import", tmp_path / "raw.nir", "--from", "nir", "--dt", "1e-4",
                             "--steps", "12", "-o", out)
    assert code == 0, err
    assert "Linear -> Affine" in stdout and "broadcast" in stdout and "dt = 0.0001 s" in stdout
    graph = nir.read(out)
    assert graph.metadata["dt"] == pytest.approx(1e-4) and graph.metadata["steps"] == 12
    assert graph.nodes["lif"].tau.shape == (2,)
    code, stdout, _ = _run(capsys, "map", out)
    assert code == 0 and "dt=0.0001 s" in stdout


def test_lowering_errors_name_the_file_and_tau_below_dt_names_the_remedy(tmp_path, capsys):
    g = _one_lif()
    g.nodes["lif"].v_reset = np.array([0.5])
    nir.write(tmp_path / "reset.nir", g)
    code, _, err = _run(capsys, "map", tmp_path / "reset.nir", "--dt", "1e-3")
    assert code == 2 and "reset.nir" in err and "node 'lif'" in err and "v_reset" in err
    code, _, err = _run(capsys, "map", tmp_path / "reset.nir", "--dt", "1e-2")  # tau = 2 ms < dt
    assert code == 2 and "--dt" in err and "tau" in err
    assert "st2chip: warning:" in err and "--dt" in err.splitlines()[0]


def test_a_sequence_model_runs_on_the_mnist1d_test_split_by_default(tmp_path, capsys):
    import torch

    from st2chip.converters.mlp import mlp_to_nir
    from st2chip.graph.nirfile import write_nir
    from st2chip.learn.mlp import MLPConfig, SpikingMLP

    torch.manual_seed(0)
    model = SpikingMLP(MLPConfig(sizes=[16, 8, 10], steps=40, encoding="sequence"))
    path = write_nir(mlp_to_nir(model), tmp_path / "seq.nir")
    assert nir.read(path).metadata["encoding"] == "sequence"
    code, out, err = _run(capsys, "simulate", path, "--backend", "float", "--samples", "50")
    assert code == 0, err
    assert "50 samples x 40 steps from the MNIST-1D test split" in out and "accuracy" in out


def test_an_mnist1d_model_fine_tunes_on_its_training_split_by_default():
    import torch

    import st2chip
    from st2chip.converters.mlp import mlp_to_nir
    from st2chip.inputs import mnist1d_training_inputs
    from st2chip.learn.mlp import MLPConfig, SpikingMLP

    torch.manual_seed(0)
    graph = st2chip.load(mlp_to_nir(SpikingMLP(MLPConfig(sizes=[16, 8, 10], steps=40, encoding="sequence"))))
    inputs = mnist1d_training_inputs(graph)
    assert inputs.spikes["input"].shape == (4000, 40, 16) and inputs.labels.shape == (4000,)
    assert "training split" in inputs.origin
    graph.metadata.pop("encoding")
    with pytest.raises(InputError, match="--inputs"):
        mnist1d_training_inputs(graph)


def test_run_width_counts_a_convolutions_outputs_not_its_kernel():
    from st2chip.inputs import graph_width
    from st2chip.graph.normalize import normalize

    conv = nir.Conv2d(input_shape=(10, 10), weight=np.ones((4, 1, 3, 3)), stride=1, padding=1, dilation=1, groups=1,
                      bias=np.zeros(4))
    lif = nir.IF(r=np.ones((4, 10, 10)), v_threshold=np.ones((4, 10, 10)), v_reset=np.zeros((4, 10, 10)))
    graph = normalize(nir.NIRGraph(
        nodes={"in": nir.Input(input_type={"input": np.array([1, 10, 10])}), "conv": conv, "lif": lif,
               "out": nir.Output(output_type={"output": np.array([400])})},
        edges=[("in", "conv"), ("conv", "lif"), ("lif", "out")], metadata={"dt": 1e-3}, type_check=False))
    assert graph_width(graph) == 100 + 400 + 400 + 400  # input, conv output, neurons, output


@pytest.fixture(scope="module")
def rgb_bundle(tmp_path_factory):
    """A tiny spiking Transformer at CIFAR-10's 32x32x3 shape, exported as trained on digits32."""
    import torch

    from st2chip.converters.transformer import export_bundle
    from st2chip.learn.transformer import SpikingTransformer, STConfig

    torch.manual_seed(0)
    model = SpikingTransformer(STConfig.cifar10(stem_channels=[4], dim=8, heads=2, mlp_hidden=8, depth=1, steps=2))
    return export_bundle(model, tmp_path_factory.mktemp("rgb") / "bundle", data="digits32")


def test_a_bundle_trained_on_digits32_runs_that_test_split_by_default(rgb_bundle):
    import json

    from st2chip.graph.bundle_graph import bundle_graph
    from st2chip.inputs import direct_inputs
    from st2chip.learn.data import load_split

    graph = bundle_graph(rgb_bundle)
    assert graph.metadata["data"] == "digits32"
    run = direct_inputs(graph, 3, None)
    _, test = load_split("digits32")
    (x,) = run.spikes.values()
    assert x.shape == (3, 2, 3 * 32 * 32) and "digits32 test split" in run.origin
    np.testing.assert_array_equal(run.labels, test.y[:3])
    np.testing.assert_array_equal(x[:, 1], np.round(test.x[:3].reshape(3, -1) * 255))
    manifest = json.loads((rgb_bundle / "manifest.json").read_text())
    for data, message in (("cifar10", "give its images as --inputs"), ("../etc", "field 'data' must be one of")):
        (rgb_bundle / "manifest.json").write_text(json.dumps({**manifest, "data": data}))
        with pytest.raises(InputError, match=message):
            direct_inputs(bundle_graph(rgb_bundle), 3, None)
    (rgb_bundle / "manifest.json").write_text(json.dumps({k: v for k, v in manifest.items() if k != "data"}))
    with pytest.raises(InputError, match="takes 3072 values; the digits images have 64"):
        direct_inputs(bundle_graph(rgb_bundle), 3, None)
