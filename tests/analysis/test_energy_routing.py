"""Routing from the placement: messages within a core, between cores, across chips and from the host."""

from __future__ import annotations

import numpy as np
import pytest

from st2chip.analysis.energy import TERMS, energy_report, load_profile
from st2chip.analysis.traffic import HOPS, ROUTES, count_ops
from st2chip.chip.chipgraph import ChipGraph, InputPort, Population, SynapseGroup
from st2chip.chip.placement import load_resources, place
from st2chip.traces import Traces

RNG = np.random.default_rng(5)
W1 = RNG.integers(-3, 4, size=(6, 5)) * (RNG.random((6, 5)) < 0.6)
W2 = RNG.integers(-3, 4, size=(4, 6)) * (RNG.random((4, 6)) < 0.6)
# 2 neurons per core, 2 cores per chip: fc1 spans three cores and two chips
TIGHT = load_resources("loihi2").replace(neurons_per_core=2, cores_per_chip=2)


def _pop(name: str, layer: str, n: int, readout: bool = False) -> Population:
    return Population(name, layer, np.arange(n), du=0, dv=0, vth=10, bias_mant=0, bias_exp=0, readout=readout)


def _chip() -> ChipGraph:
    return ChipGraph(inputs=[InputPort("x", 5)],
                     populations=[_pop("h", "fc1", 6), _pop("o", "out", 4, readout=True)],
                     synapses=[SynapseGroup("x->h", "x", "h", W1, exp=0), SynapseGroup("h->o", "h", "o", W2, exp=0)])


def _traces(seed: int) -> Traces:
    rng = np.random.default_rng(seed)
    x = (rng.random((3, 4, 5)) < 0.5).astype(np.uint8)
    h = (rng.random((3, 4, 6)) < 0.4).astype(np.uint8)
    return Traces("hand", inputs={"x": x}, spikes={"fc1": h, "out": np.zeros((3, 4, 4), np.uint8)},
                  voltages={}, scores=np.zeros((3, 4)))


def _board_xy(core, res) -> tuple[int, int, int, int]:
    """A core's position on the board by hand: chip grid column/row, then global X and Y."""
    rows = -(-res.cores_per_chip // res.mesh_columns)
    cx, cy = core.chip % res.chip_grid_columns, core.chip // res.chip_grid_columns
    return cx, cy, cx * res.mesh_columns + core.x, cy * rows + core.y


def _loop_routes(weights: np.ndarray, spikes: np.ndarray, src: np.ndarray | None, dst: np.ndarray,
                 placement) -> dict[str, int]:
    """Reference: every spike goes once to each distinct core holding a target it has a weight onto, along the
    mesh (chip links between the chips' grid positions, on-chip hops for the rest of the Manhattan path)."""
    out = dict.fromkeys((*ROUTES, *HOPS), 0)
    res, cores = placement.resources, placement.cores
    for _, _, j in zip(*np.nonzero(spikes)):
        for core in sorted({int(dst[i]) for i in range(weights.shape[0]) if weights[i, j] != 0}):
            if src is None:
                out["host"] += 1
                continue
            if src[j] == core:
                out["local"] += 1
                continue
            out["core" if cores[src[j]].chip == cores[core].chip else "chip"] += 1
            (ax, ay, gxa, gya), (bx, by, gxb, gyb) = _board_xy(cores[src[j]], res), _board_xy(cores[core], res)
            out["chip_links"] += abs(ax - bx) + abs(ay - by)
            out["hops_x"] += abs(gxa - gxb) - abs(ax - bx)
            out["hops_y"] += abs(gya - gyb) - abs(ay - by)
    return out


@pytest.mark.parametrize("seed", range(3))
def test_routes_match_an_event_loop(seed):
    chip, tr = _chip(), _traces(seed)
    placement = place(chip, TIGHT, max_chips=None)
    assert placement.n_chips >= 2
    where = placement.assignment()
    counts = count_ops(chip, tr, placement)
    expect_fc1 = _loop_routes(W1, tr.inputs["x"], None, where["h"], placement)
    expect_out = _loop_routes(W2, tr.spikes["fc1"], where["h"], where["o"], placement)
    for route in ROUTES:
        assert list(counts.by_layer(f"routed_{route}")) == [expect_fc1[route], expect_out[route]], route
    for quantity in HOPS:
        assert list(counts.by_layer(quantity)) == [expect_fc1[quantity], expect_out[quantity]], quantity
    assert counts.by_layer("routed_core")[1] + counts.by_layer("routed_chip")[1] > 0


def test_one_core_routes_nothing_between_cores():
    chip, tr = _chip(), _traces(0)
    counts = count_ops(chip, tr, place(chip, "loihi2"))
    assert counts.placement.n_cores == 1
    assert counts.by_core("routed_core").sum() == 0 and counts.by_core("routed_chip").sum() == 0
    assert counts.by_layer("routed_local")[1] > 0 and counts.by_layer("routed_host")[0] > 0


@pytest.mark.parametrize("profile", ["45nm", "loihi", "loihi2"])
def test_per_core_sums_equal_per_layer_totals(profile):
    chip, tr = _chip(), _traces(1)
    rep = energy_report(chip, tr, profile, placement=place(chip, TIGHT, max_chips=None))
    assert len(rep.cores) == rep.placement.n_cores > 1
    for term in TERMS:
        assert sum(c.energy_pj[term] for c in rep.cores) == pytest.approx(sum(r.energy_pj[term] for r in rep.layers))
    for key in ("acs", "macs", "neuron_updates", "spikes", "neurons"):
        assert sum(getattr(c, key) for c in rep.cores) == pytest.approx(sum(getattr(r, key) for r in rep.layers))
    for route in ROUTES:
        assert sum(c.spikes_routed[route] for c in rep.cores) == pytest.approx(rep.totals()["spikes_routed"][route])
    assert sum(c.total_pj for c in rep.cores) == pytest.approx(rep.total_pj)
    assert rep.partitions()["neurocore"]["energy_pj"]["total"] == pytest.approx(rep.total_pj)


def test_static_power_follows_the_cores_used():
    chip, tr = _chip(), _traces(2)
    prof = load_profile("loihi")
    one = energy_report(chip, tr, prof, placement=place(chip, "loihi2"))
    spread = energy_report(chip, tr, prof, placement=place(chip, TIGHT, max_chips=None))
    per_core = tr.inputs["x"].shape[1] * prof.t_step_us * prof.p_static_core_mw * 1e3
    assert one.totals()["energy_pj"]["static"] == pytest.approx(per_core)
    assert spread.totals()["energy_pj"]["static"] == pytest.approx(per_core * spread.placement.n_cores)
    # the same operations, priced the same, wherever they sit
    assert one.totals()["energy_pj"]["ac"] == pytest.approx(spread.totals()["energy_pj"]["ac"])
    assert spread.unpriced() == ["spikes routed (host) (no E_SPIKE_HOST_pJ)"]
    assert spread.totals()["hops"]["chip_links"] > 0
