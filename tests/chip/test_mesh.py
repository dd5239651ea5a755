"""Cores on the chip's mesh and chips on a board (st2chip/chip/mesh.py, placement stage 5, the map report)."""

import numpy as np
import pytest
import scipy.sparse as sp

from st2chip.analysis.energy import energy_report, load_profile
from st2chip.chip.chipgraph import ChipGraph, InputPort, Population, SynapseGroup
from st2chip.chip.lowering.report import LoweringReport
from st2chip.chip.mesh import CROSSING_HOPS, Mesh, arrange, cost, traffic_hops, traffic_matrix, traffic_order
from st2chip.chip.placement import load_resources, place
from st2chip.chip.report import floorplan, write_report
from st2chip.traces import Traces

LOIHI2 = load_resources("loihi2")


def _pop(name: str, n: int, readout: bool = False) -> Population:
    return Population(name, name, np.arange(n), du=0, dv=0, vth=10, bias_mant=0, bias_exp=0, readout=readout)


def _chain(layers: int, width: int, seed: int = 0) -> ChipGraph:
    """input -> L0 -> ... -> L{layers-1} (readout), dense random weights, ``width`` neurons each."""
    rng = np.random.default_rng(seed)
    pops = [_pop(f"L{i}", width, readout=i == layers - 1) for i in range(layers)]
    groups = [SynapseGroup(f"{src}->L{i}", src, f"L{i}", rng.integers(1, 5, size=(width, width)), exp=0)
              for i, src in enumerate(["x", *(f"L{i}" for i in range(layers - 1))])]
    return ChipGraph(inputs=[InputPort("x", width)], populations=pops, synapses=groups, lowering=LoweringReport(1e-3))


def test_mesh_geometry_by_hand():
    mesh = Mesh(cores_per_chip=128, columns=16, chip_columns=4, n_chips=8)
    chip, x, y = mesh.coords(np.array([0, 17, 127, 128 + 5, 5 * 128 + 33]))
    assert list(chip) == [0, 0, 0, 1, 5] and list(x) == [0, 1, 15, 5, 1] and list(y) == [0, 1, 7, 0, 2]
    # slot 15 of chip 0 (x 15) to slot 0 of chip 1 (x 0): one chip link, no on-chip hop
    assert [int(h[0]) for h in mesh.hops(np.array([15]), np.array([128]))] == [0, 0, 1]
    # chip 0 (0, 0) to chip 5 (column 1, row 1), slot 0 each: 15 + 7 hops and 2 links on the way
    assert [int(h[0]) for h in mesh.hops(np.array([0]), np.array([5 * 128]))] == [15, 7, 2]
    assert mesh.slot_at(16 + 3, 8 + 2) == 5 * 128 + 2 * 16 + 3 and mesh.slot_at(64, 0) == -1
    assert sorted(mesh.snake()) == list(range(mesh.n_slots))
    steps = np.array(mesh.hops(mesh.snake()[:-1], mesh.snake()[1:])).sum(axis=0)
    assert np.all(steps[:127] == 1)  # consecutive slots of the snake are neighbours on a chip
    one = Mesh(cores_per_chip=128, columns=16, chip_columns=4, n_chips=1)
    _, x, y = one.coords(one.snake(16)[:16])
    assert x.max() == 3 and y.max() == 3  # 16 cores on one chip start as a 4 x 4 block


@pytest.mark.parametrize("seed", range(4))
def test_improvement_is_never_worse_than_the_greedy_start(seed):
    rng = np.random.default_rng(seed)
    n = 150
    src, dst = rng.integers(0, n, 600), rng.integers(0, n, 600)
    traffic = traffic_matrix(n, src, dst, rng.random(600))
    mesh = Mesh(cores_per_chip=32, columns=8, chip_columns=2, n_chips=5)
    done = arrange(mesh, traffic)
    start = cost(mesh, traffic, mesh.snake(n)[:n])
    assert done.layer_cost == pytest.approx(start) and done.start_cost <= start + 1e-6
    assert done.cost <= done.start_cost + 1e-6 and done.swaps > 0 and done.cost < done.start_cost
    assert done.cost == pytest.approx(cost(mesh, traffic, done.slots))
    assert np.unique(done.slots).size == n and done.slots.max() < mesh.n_slots
    # deterministic: the same input gives the same slots
    assert np.array_equal(arrange(mesh, traffic).slots, done.slots)


def _ladder(k: int) -> sp.csr_matrix:
    """Two layers of ``k`` cores each, layer order ``a0 .. a{k-1}, b0 .. b{k-1}``: ``a_i`` talks much with
    ``b_i`` (the same token or image region), little with ``a_{i+1}`` and ``b_{i+1}`` (its spatial neighbours)."""
    i = np.arange(k)
    src = np.concatenate([i, i[:-1], k + i[:-1]])
    dst = np.concatenate([k + i, i[1:], k + i[1:]])
    weight = np.concatenate([np.full(k, 10.0), np.ones(2 * (k - 1))])
    return traffic_matrix(2 * k, src, dst, weight)


@pytest.mark.parametrize("k", [8, 400])  # a dense eigensolver below DENSE_EIGEN cores, the sparse one above
def test_the_traffic_order_start_keeps_a_region_s_layers_together(k):
    """Layer order puts a_i and b_i k cores apart (on different chips); the traffic order puts them side by side."""
    traffic = _ladder(k)
    mesh = Mesh(cores_per_chip=8, columns=4, chip_columns=2, n_chips=-(-2 * k // 8))
    layers = mesh.snake(2 * k)[:2 * k]
    done = arrange(mesh, traffic)
    assert done.start == "traffic" and done.start_cost < done.layer_cost == pytest.approx(cost(mesh, traffic, layers))
    assert done.cost <= done.start_cost + 1e-6 and done.cost < 0.5 * done.layer_cost
    _, crossings = traffic_hops(mesh, traffic, done.slots)
    _, layer_crossings = traffic_hops(mesh, traffic, layers)
    assert crossings < 0.5 * layer_crossings
    order = traffic_order(traffic)
    assert sorted(order) == list(range(2 * k))
    # deterministic: the same input gives the same order and slots
    assert np.array_equal(traffic_order(traffic), order) and np.array_equal(arrange(mesh, traffic).slots, done.slots)


def test_the_start_is_never_worse_than_layer_order():
    """A chain in layer order: layer order is already best, and the start must not be worse."""
    n = 40
    traffic = traffic_matrix(n, np.arange(n - 1), np.arange(1, n), np.ones(n - 1))
    mesh = Mesh(cores_per_chip=8, columns=4, chip_columns=2, n_chips=5)
    done = arrange(mesh, traffic)
    assert done.start_cost <= done.layer_cost and done.cost <= done.layer_cost
    assert traffic_order(traffic_matrix(2, np.array([0]), np.array([1]), np.array([1.0]))).tolist() == [0, 1]


def test_the_objective_counts_chip_links_as_crossing_hops():
    mesh = Mesh(cores_per_chip=4, columns=2, chip_columns=2, n_chips=2)
    traffic = traffic_matrix(2, np.array([0]), np.array([1]), np.array([3.0]))
    # slot 1 (chip 0, x 1) and slot 4 (chip 1, x 0): one link; slot 0 to 1: one hop
    assert cost(mesh, traffic, np.array([1, 4])) == 3.0 * CROSSING_HOPS
    assert cost(mesh, traffic, np.array([0, 1])) == 3.0


def test_placement_puts_talking_cores_close_and_reports_the_mesh():
    chip = _chain(layers=6, width=4)
    few = LOIHI2.replace(neurons_per_core=4, cores_per_chip=8, mesh_columns=4, chip_grid_columns=2)
    placed = place(chip, few, max_chips=None)
    use = placed.mesh_use
    assert use.cost <= use.start_cost and use.activity == "expected" and use.messages > 0
    positions = {(c.chip, c.x, c.y) for c in placed.cores}
    assert len(positions) == placed.n_cores == 6
    d = placed.to_dict()
    assert d["mesh"]["columns"] == 4 and d["mesh"]["mean_hops"] == pytest.approx(use.mean_hops)
    assert {"x", "y", "chip"} <= set(d["cores"][0]) and d["chips"][0]["grid"] == [0, 0]
    assert "links per message between cores" in placed.summary()


def test_measured_activity_steers_the_placement():
    """Cores A, X, Y, B in a line; traffic A -> B and X -> Y. Expected traffic pulls B next to A; measured
    traffic with A silent leaves them three hops apart (nothing to gain)."""
    one = np.ones((4, 4), dtype=np.int64)
    chip = ChipGraph(inputs=[InputPort("x", 4)],
                     populations=[_pop("A", 4), _pop("X", 4), _pop("Y", 4, readout=True), _pop("B", 4, readout=True)],
                     synapses=[SynapseGroup("x->A", "x", "A", one, exp=0), SynapseGroup("x->X", "x", "X", one, exp=0),
                               SynapseGroup("X->Y", "X", "Y", one, exp=0), SynapseGroup("A->B", "A", "B", one, exp=0)])
    line = LOIHI2.replace(neurons_per_core=4, cores_per_chip=4, mesh_columns=1)

    def a_to_b(placed) -> int:
        slots = placed.slots()
        return int(np.array(placed.mesh.hops(slots[[0]], slots[[3]])).sum())

    expected = place(chip, line)
    measured = place(chip, line, activity={"A": np.zeros(4), "X": np.ones(4), "Y": np.zeros(4), "B": np.zeros(4)})
    assert expected.mesh_use.activity == "expected" and measured.mesh_use.activity == "measured"
    assert a_to_b(expected) == 1 and a_to_b(measured) == 3
    assert measured.mesh_use.messages == pytest.approx(4.0)  # X's 4 neurons, one message each to Y's core


def test_hop_priced_energy_equals_a_hand_count():
    """Two neurons on two chips of 2 x 2 cores side by side: one spike of ``a`` crosses to ``b``."""
    chip = ChipGraph(inputs=[InputPort("x", 1)], populations=[_pop("a", 1), _pop("b", 1, readout=True)],
                     synapses=[SynapseGroup("x->a", "x", "a", np.array([[1]]), exp=0),
                               SynapseGroup("a->b", "a", "b", np.array([[2]]), exp=0)])
    tiny = LOIHI2.replace(neurons_per_core=1, cores_per_chip=1, mesh_columns=1, chip_grid_columns=2)
    placed = place(chip, tiny, max_chips=None)
    assert placed.n_chips == 2
    spikes = np.zeros((1, 3, 1), np.uint8)
    spikes[0, 1, 0] = 1  # one spike of a
    traces = Traces("hand", inputs={"x": np.ones((1, 3, 1), np.uint8)}, spikes={"a": spikes,
                    "b": np.zeros((1, 3, 1), np.uint8)}, voltages={}, scores=np.zeros((1, 1)))
    prof = load_profile("loihi2")
    rep = energy_report(chip, traces, prof, placement=placed)
    b = rep.layers[1]
    assert b.spikes_routed == {"local": 0.0, "core": 0.0, "chip": 1.0, "host": 0.0}
    assert b.hops == {"hops_x": 0.0, "hops_y": 0.0, "chip_links": 1.0}
    # one message: delivered (1.7 pJ) after one chip-to-chip link (100 pJ)
    assert b.energy_pj["routing"] == pytest.approx(prof.e_spike_chip_pj + prof.e_chip_link_pj) == 101.7
    assert "| b " in rep.to_markdown() and "links/msg" in rep.to_markdown()
    # placed by the report itself: on the traffic these traces measure
    assert energy_report(chip, traces, prof).placement.mesh_use.activity == "measured"


def test_hops_on_one_chip_priced_by_direction():
    """a on one core, b two cores east and one south on the same chip (a 2 x 3 mesh, filled in order)."""
    chip = _chain(layers=6, width=1)
    res = LOIHI2.replace(neurons_per_core=1, cores_per_chip=6, mesh_columns=3)
    placed = place(chip, res)
    slots = placed.slots()
    spikes = {f"L{i}": np.zeros((1, 2, 1), np.uint8) for i in range(6)}
    spikes["L0"][0, 0, 0] = 1
    traces = Traces("hand", inputs={"x": np.zeros((1, 2, 1), np.uint8)}, spikes=spikes, voltages={},
                    scores=np.zeros((1, 1)))
    prof = load_profile("loihi")
    rep = energy_report(chip, traces, prof, placement=placed)
    hx, hy, links = (int(h[0]) for h in placed.mesh.hops(slots[[0]], slots[[1]]))
    assert links == 0 and rep.layers[1].hops == {"hops_x": float(hx), "hops_y": float(hy), "chip_links": 0.0}
    assert rep.layers[1].energy_pj["routing"] == pytest.approx(1.7 + 3.0 * hx + 4.0 * hy)


def test_the_map_report_holds_the_floorplan(tmp_path):
    chip = _chain(layers=9, width=4)
    few = LOIHI2.replace(neurons_per_core=4, cores_per_chip=4, mesh_columns=2, chip_grid_columns=2)
    placed = place(chip, few, max_chips=None)
    paths = write_report(chip, placed, tmp_path)
    assert tmp_path / "floorplan.png" in paths and (tmp_path / "floorplan.png").read_bytes()[:4] == b"\x89PNG"
    text = (tmp_path / "report.md").read_text()
    assert "## Chips and the mesh" in text and "![floorplan](floorplan.png)" in text and "| 1 | 1, 0 |" in text
    grid = floorplan(placed)
    assert grid.shape == (2 * 2, 2 * 2)  # 2 rows of chips (3 chips, 2 per row), each 2 x 2 cores
    assert sorted(grid[~np.isnan(grid)].astype(int)) == list(range(9))
    assert not list(tmp_path.glob("*.tmp*"))


def test_no_report_floorplan_without_a_placement(tmp_path):
    paths = write_report(_chain(layers=2, width=2), None, tmp_path)
    assert [p.name for p in paths] == ["report.json", "report.md", "report.png"]


def test_sparse_traffic_counts_each_source_once_per_core():
    """A sparse group where one source feeds two targets on one core: one message, not two."""
    w = sp.csr_matrix(np.array([[1, 0], [1, 0], [0, 1]]))
    chip = ChipGraph(inputs=[InputPort("x", 2)], populations=[_pop("a", 2), _pop("b", 3, readout=True)],
                     synapses=[SynapseGroup("x->a", "x", "a", np.eye(2, dtype=np.int64), exp=0),
                               SynapseGroup("a->b", "a", "b", w, exp=0, form="sparse")])
    res = LOIHI2.replace(neurons_per_core=2, cores_per_chip=4, mesh_columns=2)
    placed = place(chip, res, activity={"a": np.array([5.0, 7.0]), "b": np.zeros(3)})
    # cores: a -> 0; b[0:2] -> 1; b[2:3] -> 2. a0 sends 5 to core 1 once; a1 sends 7 to core 2.
    assert placed.mesh_use.messages == pytest.approx(12.0)
