"""normalize + read_graph: canonical form, frontend quirks, and one clear error per malformed input."""

from __future__ import annotations

from dataclasses import dataclass

import warnings
from pathlib import Path

import h5py
import nir
import numpy as np
import pytest
import torch

from st2chip.errors import GraphError, InputError
from st2chip.graph.nirfile import read_graph
from st2chip.graph.normalize import DEFAULT_DT, DtMissingError, TimeConstantWarning, dt_conventions, normalize

DT = 1e-3


def lif(n: int = 3, **kw) -> nir.LIF:
    p = dict(tau=np.full(n, 2 * DT), r=np.full(n, 2.0), v_leak=np.zeros(n), v_threshold=np.ones(n))
    p.update(kw)
    return nir.LIF(**p)


def mlp(metadata: dict | None = None) -> nir.NIRGraph:
    """Input(2) -> Affine -> LIF(3) -> Affine -> I(2) -> Output, with every array a plain numpy array."""
    rng = np.random.default_rng(0)
    nodes = {
        "input": nir.Input(input_type={"input": np.array([2])}),
        "fc1": nir.Affine(weight=rng.normal(size=(3, 2)), bias=rng.normal(size=3)),
        "lif1": lif(),
        "fc2": nir.Affine(weight=rng.normal(size=(2, 3)), bias=np.zeros(2)),
        "readout": nir.I(r=np.full(2, 1 / DT)),
        "output": nir.Output(output_type={"output": np.array([2])}),
    }
    edges = [("input", "fc1"), ("fc1", "lif1"), ("lif1", "fc2"), ("fc2", "readout"), ("readout", "output")]
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata or {"dt": DT}, type_check=False)


def graph(nodes: dict, edges: list, metadata: dict | None = None) -> nir.NIRGraph:
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata or {"dt": DT}, type_check=False)


def assert_canonical(g: nir.NIRGraph) -> None:
    for name, node in g.nodes.items():
        for field, value in vars(node).items():
            if field not in ("metadata", "input_type", "output_type", "start_dim", "end_dim"):
                assert isinstance(value, np.ndarray) and value.dtype == np.float64, (name, field)
        assert type(node).__name__ in ("Input", "Output", "Affine", "Flatten", "LIF", "CubaLIF", "IF", "LI", "I")
    g.check_types()  # nir's own check agrees that every edge joins equal 1-D shapes


# -- canonical form --------------------------------------------------------------------------------

def test_quirks_become_numpy_float64_per_neuron_arrays():
    """torch tensors, 0-d scalars, python floats, lists and Linear, as frontends hand them over."""
    nodes = {
        "out": nir.Output(output_type={"output": np.array([1, 2])}),  # batch dim, as norse writes it
        "li": nir.LI(tau=torch.tensor(0.01), r=torch.tensor(1.0), v_leak=np.array(0.0)),
        "cuba": nir.CubaLIF(tau_syn=torch.tensor(5e-3), tau_mem=torch.tensor(0.01), r=torch.tensor(1.0),
                            v_leak=torch.tensor(0.0), v_threshold=torch.tensor(1.0)),
        "lin2": nir.Linear(weight=np.zeros((2, 3))),
        "lin1": nir.Linear(weight=torch.ones(3, 4, dtype=torch.float32, requires_grad=True)),
        "in": nir.Input(input_type={"input": np.array([1, 4])}),
    }
    nodes["li"].r = 1.0  # a python float and a list, which nir's own constructors would refuse
    nodes["lin2"].weight = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    nodes["cuba"].w_in = [2.0]  # a one-element list
    edges = [("li", "out"), ("lin2", "li"), ("cuba", "lin2"), ("lin1", "cuba"), ("in", "lin1")]
    g = normalize(graph(nodes, edges))
    assert list(g.nodes) == ["in", "lin1", "cuba", "lin2", "li", "out"]
    assert g.edges == [("in", "lin1"), ("lin1", "cuba"), ("cuba", "lin2"), ("lin2", "li"), ("li", "out")]
    assert_canonical(g)
    assert isinstance(g.nodes["lin1"], nir.Affine)
    np.testing.assert_array_equal(g.nodes["lin1"].bias, np.zeros(3))
    np.testing.assert_array_equal(g.nodes["lin2"].weight, [[1, 2, 3], [4, 5, 6]])
    cuba = g.nodes["cuba"]
    assert cuba.tau_mem.shape == (3,) and cuba.v_reset.shape == (3,) and cuba.w_in.shape == (3,)
    np.testing.assert_array_equal(cuba.v_reset, 0.0)
    np.testing.assert_array_equal(cuba.w_in, [2.0, 2.0, 2.0])
    np.testing.assert_array_equal(g.nodes["li"].r, [1.0, 1.0])
    np.testing.assert_allclose(g.nodes["li"].tau, [0.01, 0.01])
    assert g.nodes["in"].input_type["input"].tolist() == [4]
    assert g.nodes["out"].output_type["output"].tolist() == [2]
    assert g.metadata == {"dt": DEFAULT_DT}


def test_lif_v_reset_none_and_if_broadcast():
    node = lif(3)
    node.v_reset = None
    nodes = {"in": nir.Input(input_type={"input": np.array([3])}), "lif": node,
             "if": nir.IF(r=np.array(1.0), v_threshold=np.array(0.5)),
             "out": nir.Output(output_type={"output": np.array([3])})}
    g = normalize(graph(nodes, [("in", "lif"), ("lif", "if"), ("if", "out")]))
    np.testing.assert_array_equal(g.nodes["lif"].v_reset, np.zeros(3))
    np.testing.assert_array_equal(g.nodes["if"].v_threshold, np.full(3, 0.5))
    assert_canonical(g)


def test_normalize_returns_new_graph_and_leaves_input_alone():
    src = mlp({"dt": DT, "steps": 16})
    weight = src.nodes["fc1"].weight
    before = weight.copy()
    out = normalize(src, dt=5e-4)
    assert out is not src and out.nodes["fc1"] is not src.nodes["fc1"]
    assert out.nodes["fc1"].weight is not weight
    out.nodes["fc1"].weight[:] = 0.0
    np.testing.assert_array_equal(weight, before)
    assert src.metadata == {"dt": DT, "steps": 16}
    assert out.metadata == {"dt": 5e-4, "steps": 16}


@pytest.mark.parametrize("metadata, dt, expected", [({"dt": 2e-3}, None, 2e-3), ({"dt": 2e-3}, 1e-4, 1e-4),
                                                    ({"steps": 4}, 1e-4, 1e-4)])
def test_dt_argument_then_metadata(metadata, dt, expected):
    assert normalize(mlp(metadata), dt=dt).metadata["dt"] == expected


def test_nested_graph_is_flattened_and_rewired():
    inner = graph({"i": nir.Input(input_type={"input": np.array([3])}), "lif": lif(3),
                   "o": nir.Output(output_type={"output": np.array([3])})}, [("i", "lif"), ("lif", "o")])
    nodes = {"in": nir.Input(input_type={"input": np.array([2])}),
             "fc": nir.Affine(weight=np.ones((3, 2)), bias=np.zeros(3)), "block": inner,
             "flat": nir.Flatten(input_type={"input": np.array([3])}),
             "out": nir.Output(output_type={"output": np.array([3])})}
    g = normalize(graph(nodes, [("in", "fc"), ("fc", "block"), ("block", "flat"), ("flat", "out")]))
    assert list(g.nodes) == ["in", "fc", "block.lif", "flat", "out"]
    assert g.edges == [("in", "fc"), ("fc", "block.lif"), ("block.lif", "flat"), ("flat", "out")]
    assert_canonical(g)


def test_nested_graph_with_two_inputs_needs_named_ports():
    inner = graph({"a": nir.Input(input_type={"input": np.array([3])}),
                   "b": nir.Input(input_type={"input": np.array([3])}), "lif_a": lif(3), "lif_b": lif(3),
                   "o": nir.Output(output_type={"output": np.array([3])})},
                  [("a", "lif_a"), ("b", "lif_b"), ("lif_a", "o"), ("lif_b", "o")])
    nodes = {"in": nir.Input(input_type={"input": np.array([3])}), "block": inner,
             "out": nir.Output(output_type={"output": np.array([3])})}
    with pytest.raises(GraphError, match=r"node 'block', field 'edges': nested graph has 2 Input nodes"):
        normalize(graph(nodes, [("in", "block"), ("block", "out")]))
    g = normalize(graph(nodes, [("in", "block.a"), ("in", "block.b"), ("block", "out")]))
    assert list(g.nodes) == ["in", "block.lif_a", "block.lif_b", "out"]
    assert g.edges == [("in", "block.lif_a"), ("in", "block.lif_b"), ("block.lif_a", "out"),
                       ("block.lif_b", "out")]


def test_tau_below_dt_warns_naming_the_node():
    g = mlp()
    g.nodes["lif1"].tau = np.full(3, 1e-5)  # norse 1.1's tau = dt / tau_mem_inv
    with pytest.warns(TimeConstantWarning, match=r"node 'lif1': tau = 1e-05 s is below dt"):
        normalize(g)


# -- malformed graphs ------------------------------------------------------------------------------

def _set(node: str, field: str, value):
    def edit(g: nir.NIRGraph) -> None:
        setattr(g.nodes[node], field, value)
    return edit


def _add_edge(a: str, b: str):
    def edit(g: nir.NIRGraph) -> None:
        g.edges.append((a, b))
    return edit


def _drop_node(name: str):
    def edit(g: nir.NIRGraph) -> None:
        del g.nodes[name]
        g.edges[:] = [e for e in g.edges if name not in e]
    return edit


def _add_node(name: str, node):
    def edit(g: nir.NIRGraph) -> None:
        g.nodes[name] = node
    return edit


def _island(g: nir.NIRGraph) -> None:
    g.nodes["orphan"] = lif(3)
    g.edges.append(("orphan", "fc2"))


def _feed_input(g: nir.NIRGraph) -> None:
    g.nodes["in2"] = nir.Input(input_type={"input": np.array([2])})
    g.edges.append(("in2", "input"))


@dataclass(eq=False)
class _Foreign(nir.NIRNode):
    """A node type no NIR reader produces: what an unknown frontend's graph may hold in memory."""

    value: np.ndarray


def test_unsupported_nodes_are_all_named_in_one_error():
    g = mlp()
    g.nodes["a"], g.nodes["b"] = _Foreign(value=np.ones(1)), None
    g.edges += [("lif1", "a"), ("lif1", "b")]
    with pytest.raises(GraphError, match=r"2 nodes of unsupported types: node 'a' \('_Foreign'\); node 'b' \(None"):
        normalize(g, source="model.nir")


MALFORMED = [
    ("nan weight", _set("fc1", "weight", np.array([[np.nan, 1.0], [0, 0], [0, 0]])), "fc1", "weight", "NaN"),
    ("inf tau", _set("lif1", "tau", np.array([np.inf, 1.0, 1.0])), "lif1", "tau", "NaN or infinite"),
    ("nan torch bias", _set("fc2", "bias", torch.tensor([0.0, float("nan")])), "fc2", "bias", "NaN"),
    ("1-D weight", _set("fc1", "weight", np.ones(6)), "fc1", "weight", "2-D"),
    ("3-D weight", _set("fc1", "weight", np.ones((1, 3, 2))), "fc1", "weight", "2-D"),
    ("bias length", _set("fc1", "bias", np.zeros(4)), "fc1", "bias", "4 values but weight has 3 rows"),
    ("neuron param length", _set("lif1", "v_threshold", np.ones(4)), "lif1", "v_threshold", "4 values"),
    ("size along edge", _set("fc2", "weight", np.ones((2, 5))), "fc2", "input",
     "'lif1' gives 3 values, 'fc2' takes 5"),
    ("input shape", _set("input", "input_type", {"input": np.array([5])}), "fc1", "input",
     "'input' gives 5 values, 'fc1' takes 2"),
    ("unknown edge end", _add_edge("lif1", "ghost"), "ghost", "edges", "unknown node 'ghost'"),
    ("no input", _drop_node("input"), None, "nodes", "no Input node"),
    ("no output", _drop_node("output"), None, "nodes", "no Output node"),
    ("unreachable", _island, "orphan", None, "not reachable from any Input"),
    ("cycle", _add_edge("fc2", "fc2"), "fc2", "edges", "cycle through nodes fc2 with no neuron"),
    ("zero tau", _set("lif1", "tau", np.array([1e-3, 0.0, 1e-3])), "lif1", "tau", "must be > 0"),
    ("negative r", _set("readout", "r", np.array(-1.0)), "readout", "r", "must be > 0"),
    ("unsupported type", _add_node("foreign", _Foreign(value=np.ones(3))), "foreign", None,
     "unsupported node type '_Foreign'; supported: Input, Output, Affine"),
    ("None node", _add_node("3", None), "3", None, "unsupported node type None"),
    ("string param", _set("lif1", "r", "fast"), "lif1", "r", "not a numeric array"),
    ("missing param", _set("lif1", "tau", None), "lif1", "tau", "missing"),
    ("edge into Input", _feed_input, "input", "edges", "incoming edge from 'in2'"),
    ("duplicate edge", _add_edge("fc1", "lif1"), "lif1", "edges", "duplicate edge"),
]


@pytest.mark.parametrize("case, edit, node, field, text", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_graph_names_node_and_field(case, edit, node, field, text):
    g = mlp()
    edit(g)
    with pytest.raises(GraphError) as info:
        normalize(g, source="model.nir")
    err = info.value
    assert (err.node, err.field) == (node, field)
    message = str(err)
    assert "\n" not in message and message.startswith("model.nir")
    assert text in message
    if node is not None:
        assert f"node '{node}'" in message
    if field is not None:
        assert f"field '{field}'" in message


def test_bad_dt_is_refused():
    with pytest.raises(GraphError, match="field 'dt'"):
        normalize(mlp(), dt=-1.0)


def _one_node(node: nir.NIRNode, n: int = 3) -> nir.NIRGraph:
    """Input -> Affine -> ``node`` -> Output with no dt anywhere."""
    nodes = {"in": nir.Input(input_type={"input": np.array([n])}), "fc": nir.Affine(weight=np.eye(n), bias=np.zeros(n)),
             "x": node, "out": nir.Output(output_type={"output": np.array([n])})}
    return nir.NIRGraph(nodes=nodes, edges=[("in", "fc"), ("fc", "x"), ("x", "out")], metadata={}, type_check=False)


@pytest.mark.parametrize("node, fields", [
    (lif(), "LIF: tau"),
    (nir.CubaLIF(tau_syn=np.full(3, 5e-3), tau_mem=np.full(3, 1e-2), r=np.ones(3), v_leak=np.zeros(3),
                 v_threshold=np.ones(3)), "CubaLIF: tau_syn, tau_mem"),
    (nir.LI(tau=np.full(3, 1e-2), r=np.ones(3), v_leak=np.zeros(3)), "LI: tau"),
    (nir.IF(r=np.ones(3), v_threshold=np.ones(3)), "IF: r, as v += dt*r*I"),
    (nir.I(r=np.ones(3)), "I: r, as v += dt*r*I"),
    (nir.Delay(delay=np.array([0.0, 2e-3, 0.0])), "Delay: delay in seconds"),
])
def test_graph_that_depends_on_dt_and_gives_none_is_refused(node, fields, tmp_path: Path):
    """dt is never guessed: one line naming the node, --dt, the import route and each framework's convention."""
    with pytest.raises(DtMissingError) as err:
        normalize(_one_node(node), export_dt={"norse": 1e-3, "snntorch": 1e-4, "sinabs": 1.0})
    text = str(err.value)
    assert "\n" not in text and isinstance(err.value, GraphError)
    assert f"field 'dt': no dt: node 'x' ({fields})" in text and "neither --dt nor the graph's metadata" in text
    assert "pass --dt SECONDS" in text and "`st2chip import --from FRAMEWORK`" in text
    assert text.endswith("(norse exports assume dt = 1 ms, snntorch 0.1 ms, sinabs 1 (per-step units))")
    nir.write(tmp_path / "x.nir", _one_node(node))
    with pytest.raises(DtMissingError, match=r"x\.nir, field 'dt': no dt: .*neither --dt nor the file's metadata"):
        normalize(tmp_path / "x.nir")


@pytest.mark.parametrize("node", [nir.Threshold(threshold=np.full(3, 0.5)), nir.Delay(delay=np.zeros(3)),
                                  nir.Scale(scale=np.full(3, 2.0))])
def test_graph_whose_result_does_not_depend_on_dt_goes_on_without_one(node):
    notes: list[str] = []
    g = normalize(_one_node(node), notes=notes)
    assert g.metadata["dt"] == DEFAULT_DT
    assert f"dt = {DEFAULT_DT:g} s (none given; no node depends on dt)" in notes


def test_dt_notes_say_where_dt_came_from(tmp_path: Path):
    path = tmp_path / "mlp.nir"
    nir.write(path, mlp({"dt": 2e-3}))
    for kwargs, note in [({}, "dt = 0.002 s (from the file)"), ({"dt": 2e-3}, "dt = 0.002 s (--dt)"),
                         ({"dt": 1e-4}, "dt = 0.0001 s (--dt; the file says 0.002 s)")]:
        notes: list[str] = []
        normalize(path, notes=notes, **kwargs)
        assert note in notes, (kwargs, notes)
    notes = []
    normalize(mlp({"dt": 2e-3}), notes=notes)
    assert "dt = 0.002 s (from the graph's metadata)" in notes


def test_dt_conventions_group_frameworks_of_equal_dt():
    assert dt_conventions({"norse": 1e-3, "snntorch": 1e-4, "spikingjelly": 1e-4, "sinabs": 1.0}) == \
        "norse exports assume dt = 1 ms, snntorch and spikingjelly 0.1 ms, sinabs 1 (per-step units)"
    assert dt_conventions({}) == ""


# -- files -----------------------------------------------------------------------------------------

def test_round_trip_through_file_keeps_arrays_and_metadata(tmp_path: Path):
    src = normalize(mlp({"dt": DT, "steps": 16, "name": "mlp"}))
    src.nodes["fc1"].metadata = {"layer": 1, "note": "first"}
    path = tmp_path / "model.nir"
    nir.write(path, src)
    raw = nir.read(path)
    # nir.write/nir.read keep graph and node metadata (as NumPy scalars) but reorder nodes by name
    assert raw.metadata == {"dt": DT, "steps": 16, "name": "mlp"}
    assert raw.nodes["fc1"].metadata == {"layer": 1, "note": "first"}
    back = normalize(path)
    assert list(back.nodes) == list(src.nodes)
    assert back.metadata == {"dt": DT, "steps": 16, "name": "mlp"}
    assert type(back.metadata["steps"]) is int
    assert back.nodes["fc1"].metadata == {"layer": 1, "note": "first"}
    for name, node in src.nodes.items():
        for field, value in vars(node).items():
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(getattr(back.nodes[name], field), value)


def test_graph_failing_nir_type_check_is_still_read(tmp_path: Path):
    """snnTorch/norse-style: an Input shape with a batch dim that nir's type check rejects."""
    g = mlp()
    g.nodes["input"] = nir.Input(input_type={"input": np.array([1, 2])})
    path = tmp_path / "batch_dim.nir"
    nir.write(path, g)
    with pytest.raises(ValueError):
        nir.read(path)
    out = normalize(path)
    assert out.nodes["input"].input_type["input"].tolist() == [2]


def test_graph_error_from_file_names_the_file(tmp_path: Path):
    g = mlp()
    g.nodes["fc2"].weight = np.full((2, 3), np.nan)
    path = tmp_path / "nan.nir"
    nir.write(path, g)
    with pytest.raises(GraphError, match=rf"^{path}, node 'fc2', field 'weight'"):
        normalize(path)


def _empty(p: Path) -> None:
    p.write_bytes(b"")


def _garbage(p: Path) -> None:
    p.write_bytes(b"this is not an HDF5 file at all\x00\x01\x02" * 20)


def _truncated(p: Path) -> None:
    nir.write(p, mlp())
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


def _not_nir(p: Path) -> None:
    with h5py.File(p, "w") as f:
        f.create_dataset("weights", data=np.ones(3))


def _directory(p: Path) -> None:
    p.mkdir()


BAD_FILES = [("missing", lambda p: None, "no such file"), ("empty", _empty, "file is empty"),
             ("garbage", _garbage, "not a readable NIR"), ("truncated", _truncated, "not a readable NIR"),
             ("not nir", _not_nir, "no NIR graph"), ("directory", _directory, "is a directory")]


@pytest.mark.parametrize("case, make, text", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_unreadable_file_gives_one_line_input_error(tmp_path: Path, case, make, text):
    path = tmp_path / "model.nir"
    make(path)
    for call in (read_graph, normalize):
        with pytest.raises(InputError) as info:
            call(path)
        message = str(info.value)
        assert message.startswith(str(path)) and text in message and "\n" not in message
        assert "Traceback" not in message


# -- frontends -------------------------------------------------------------------------------------

@pytest.fixture
def norse_torch():
    pytest.importorskip("norse")
    import norse.torch as norse_torch
    return norse_torch


def _quiet(fn, *args):
    """Call a frontend export, hiding its deprecation chatter (torch.jit, nirtorch)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*deprecated.*")
        return fn(*args)


def test_norse_linear_lifbox_export(norse_torch, tmp_path: Path):
    torch.manual_seed(0)
    net = norse_torch.SequentialState(torch.nn.Linear(4, 3), norse_torch.LIFBoxCell())
    exported = _quiet(norse_torch.to_nir, net, torch.randn(1, 4))
    with pytest.raises(Exception):  # 0-d tensors: "Scalar datasets don't support chunk/filter options"
        nir.write(tmp_path / "raw.nir", exported)
    with pytest.warns(TimeConstantWarning, match="norse issue #411"):
        g = normalize(exported, dt=1e-3)
    assert_canonical(g)
    assert [type(n).__name__ for n in g.nodes.values()] == ["Input", "Affine", "LIF", "Output"]
    assert g.nodes["input"].input_type["input"].tolist() == [4]
    np.testing.assert_allclose(g.nodes["0"].weight, net[0].weight.detach().double().numpy())
    assert g.nodes["1"].tau.shape == (3,)
    nir.write(tmp_path / "normalized.nir", g)  # the canonical graph writes cleanly
    with pytest.warns(TimeConstantWarning):
        normalize(tmp_path / "normalized.nir")


def test_norse_licell_export_gives_clear_error(norse_torch):
    net = norse_torch.SequentialState(torch.nn.Linear(4, 3), norse_torch.LIFCell(),
                                      torch.nn.Linear(3, 2), norse_torch.LICell())
    exported = _quiet(norse_torch.to_nir, net, torch.randn(1, 4))
    with pytest.raises(GraphError, match=r"node '3'.*unsupported node type None"):
        normalize(exported)


def test_spikingjelly_export(tmp_path: Path):
    """SpikingJelly 2.0 exports for dt = 1e-4 s but does not store dt: another dt warns."""
    pytest.importorskip("spikingjelly")
    from spikingjelly.activation_based import layer, neuron
    from spikingjelly.activation_based.nir_exchange import export_to_nir

    net = torch.nn.Sequential(layer.Linear(4, 3), neuron.LIFNode(), layer.Linear(3, 2), neuron.IFNode())
    path = tmp_path / "sj.nir"
    nir.write(path, _quiet(export_to_nir, net, torch.randn(1, 4)))
    with pytest.warns(TimeConstantWarning, match="below dt = 0.001"):
        normalize(path, dt=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TimeConstantWarning)
        g = normalize(path, dt=1e-4)
    assert_canonical(g)
    assert [type(n).__name__ for n in g.nodes.values()] == ["Input", "Affine", "LIF", "Affine", "IF", "Output"]
    lif_node = next(n for n in g.nodes.values() if isinstance(n, nir.LIF))
    np.testing.assert_allclose(lif_node.tau, 2e-4)  # SpikingJelly tau = 2 steps, times dt
