"""dt is never guessed: a graph that depends on dt and gives none is refused (exit 2, one line naming --dt);
the import notes say where dt came from (--dt, the file, the framework's export default)."""

import nir
import numpy as np
import pytest

import st2chip
from st2chip.cli.main import main
from st2chip.converters.registry import EXPORT_DT, framework_dt
from st2chip.errors import GraphError
from st2chip.graph.normalize import dt_conventions

N = 4


def _graph(metadata: dict, neuron: bool = True) -> nir.NIRGraph:
    """Input(4) -> Affine -> LIF (tau = 10 ms), or a Threshold where ``neuron`` is False."""
    layer = nir.LIF(tau=np.full(N, 1e-2), r=np.full(N, 20.0), v_leak=np.zeros(N), v_threshold=np.ones(N),
                    v_reset=np.zeros(N)) if neuron else nir.Threshold(threshold=np.full(N, 0.5))
    return nir.NIRGraph(nodes={"in": nir.Input(input_type={"input": np.array([N])}),
                               "fc": nir.Affine(weight=np.eye(N), bias=np.zeros(N)), "layer": layer,
                               "out": nir.Output(output_type={"output": np.array([N])})},
                        edges=[("in", "fc"), ("fc", "layer"), ("layer", "out")], metadata=metadata)


def _file(tmp_path, name: str, metadata: dict, neuron: bool = True):
    path = tmp_path / name
    nir.write(path, _graph(metadata, neuron))
    return path


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def inputs(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, (np.random.default_rng(0).random((2, 12, N)) < 0.5).astype(np.uint8))
    return path


def _args(command: str, inputs, tmp_path) -> list:
    return {"map": [], "simulate": ["--inputs", inputs, "--backend", "float", "-o", tmp_path / "t.npz"],
            "verify": ["--inputs", inputs, "--backends", "float,reference"]}[command]


@pytest.mark.parametrize("command", ["map", "simulate", "verify"])
def test_time_constants_without_dt_are_refused_and_run_with_one(command, tmp_path, inputs, capsys):
    bare = _file(tmp_path, "bare.nir", {})
    code, out, err = _run(capsys, command, bare, *_args(command, inputs, tmp_path))
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [err.strip()] and err.startswith(f"st2chip: error: {bare}, field 'dt': ")
    assert "node 'layer' (LIF: tau)" in err and "pass --dt SECONDS" in err and "st2chip import --from" in err
    code, _, err = _run(capsys, command, bare, "--dt", "1e-3", *_args(command, inputs, tmp_path))
    assert code == 0, err
    stored = _file(tmp_path, "stored.nir", {"dt": 1e-3})
    code, _, err = _run(capsys, command, stored, *_args(command, inputs, tmp_path))
    assert code == 0, err


def test_a_graph_that_does_not_depend_on_dt_runs_without_one(tmp_path, inputs, capsys):
    path = _file(tmp_path, "threshold.nir", {}, neuron=False)
    code, out, err = _run(capsys, "verify", path, *_args("verify", inputs, tmp_path))
    assert code == 0 and "warning" not in err, out + err


def test_api_load_refuses_a_missing_dt(tmp_path):
    bare = _file(tmp_path, "bare.nir", {})
    with pytest.raises(GraphError, match=r"field 'dt': no dt: .*pass --dt SECONDS"):
        st2chip.load(bare)
    assert st2chip.load(bare, dt=5e-4).metadata["dt"] == 5e-4


def test_import_notes_say_where_dt_came_from(tmp_path, capsys):
    bare, stored = _file(tmp_path, "bare.nir", {}), _file(tmp_path, "stored.nir", {"dt": 2e-3})
    cases = [(bare, "norse", ["--dt", "5e-4"], "dt = 0.0005 s (--dt)"),
             (bare, "norse", [], f"dt = {EXPORT_DT['norse']:g} s (norse's export default; --dt to change)"),
             (bare, "snntorch", [], f"dt = {EXPORT_DT['snntorch']:g} s (snntorch's export default; --dt to change)"),
             (stored, "norse", [], "dt = 0.002 s (from the file)"),
             (stored, "nir", [], "dt = 0.002 s (from the file)"),
             (bare, "nir", ["--dt", "5e-4"], "dt = 0.0005 s (--dt)")]
    for path, framework, flags, note in cases:
        code, out, err = _run(capsys, "import", path, "--from", framework, *flags, "-o", tmp_path / "c.nir")
        assert code == 0, err
        assert f"  {note}\n" in out, (framework, flags, out)
        assert [line.startswith("  dt = ") for line in out.splitlines()].count(True) == 1, out  # not 2 (CLI's)
    api = st2chip.import_model(bare, "norse")
    assert f"dt = {EXPORT_DT['norse']:g} s (norse's export default; --dt to change)" in api.notes


def test_plain_nir_import_without_dt_names_each_frameworks_convention(tmp_path, capsys):
    bare = _file(tmp_path, "bare.nir", {})
    code, out, err = _run(capsys, "import", bare, "--from", "nir", "-o", tmp_path / "c.nir")
    assert code == 2 and not (tmp_path / "c.nir").exists()
    assert len(err.strip().splitlines()) == 1 and "pass --dt SECONDS" in err
    assert err.strip().endswith(f"({dt_conventions(framework_dt())})")
    for framework in framework_dt():
        assert framework in err
