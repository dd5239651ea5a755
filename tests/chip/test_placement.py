"""Placement on neurocores and chips against a resource model (st2chip/chip/placement.py)."""

import json
import math
import time
from importlib import resources as importlib_resources

import numpy as np
import pytest
import scipy.sparse as sp

from st2chip.chip.chipgraph import ChipGraph, InputPort, Population, SynapseGroup
from st2chip.chip.lowering.report import LoweringReport
from st2chip.chip.lower import lower
from st2chip.chip.placement import FIGURES, PlacementError, Resources, load_resources, place
from st2chip.chip.table import format_cores, format_table, layer_rows
from st2chip.cli.main import main
from st2chip.converters.mlp import mlp_to_nir
from st2chip.errors import InputError
from st2chip.graph.nirfile import write_nir

LOIHI2 = load_resources("loihi2")


# --------------------------------------------------------------------------- helpers


def _pop(name, n, layer=None, readout=False):
    return Population(name, layer or name, np.arange(n), du=4095, dv=100, vth=1000, bias_mant=0, bias_exp=0,
                      readout=readout)


def _random_csr(rows, cols, per_row, rng):
    indptr = np.arange(rows + 1, dtype=np.int64) * per_row
    idx = rng.integers(0, cols, size=rows * per_row, dtype=np.int32)
    idx.reshape(rows, per_row).sort(axis=1)
    m = sp.csr_matrix((rng.integers(1, 127, size=rows * per_row, dtype=np.int8), idx, indptr), shape=(rows, cols))
    m.sum_duplicates()
    return m


def _synthetic(n_in, n_a, n_b, per_row, seed=0):
    """input -> A -> B with random sparse (CSR) groups of ``per_row`` non-zeros per target neuron."""
    rng = np.random.default_rng(seed)
    return ChipGraph([InputPort("in", n_in)], [_pop("A", n_a), _pop("B", n_b, readout=True)],
                     [SynapseGroup("in->A", "in", "A", _random_csr(n_a, n_in, per_row, rng), 0, form="sparse"),
                      SynapseGroup("A->B", "A", "B", _random_csr(n_b, n_a, per_row, rng), 0, form="sparse")],
                     lowering=LoweringReport(1e-3))


def _check(chip: ChipGraph, placement, res: Resources) -> None:
    """Every neuron placed exactly once; every per-core figure within its limit and equal to a brute-force count."""
    sizes = {p.name: p.size for p in chip.populations}
    seen = {name: np.zeros(n, dtype=np.int64) for name, n in sizes.items()}
    for core in placement.cores:
        for s in core.slices:
            seen[s.population][s.start:s.stop] += 1
    for name, hits in seen.items():
        assert np.all(hits == 1), f"population {name}: neurons placed {hits.min()}..{hits.max()} times"
    assignment = placement.assignment()
    assert all(np.all(a >= 0) for a in assignment.values())

    slice_of = {}  # population -> list of (start, stop) in placement order, for fan-out
    for core in placement.cores:
        for s in core.slices:
            slice_of.setdefault(s.population, []).append((s.start, s.stop))
    dests = {name: np.zeros(n, dtype=np.int64) for name, n in sizes.items()}
    for g in chip.synapses:
        w = g.dense() != 0
        for a, b in slice_of[g.target]:
            if g.source in dests:
                reach = np.ones(g.shape[1], bool) if not sp.issparse(g.mantissa) else w[a:b].any(axis=0)
                dests[g.source] += reach
    for core in placement.cores:
        assert 0 < core.neurons <= res.neurons_per_core
        assert core.memory_bits <= res.synapse_memory_per_core
        assert core.fan_in <= res.axons_in_per_core
        assert core.fan_out <= res.axons_out_per_core
        nnz = bits = fan_in = fan_out = 0
        for s in core.slices:
            fan_out += int(dests[s.population][s.start:s.stop].sum())
            for g in chip.incoming(s.population):
                w = g.dense()[s.start:s.stop] != 0
                nnz += int(w.sum())
                delay_bits = math.ceil(math.log2(g.delay + 1)) if g.delay else 0
                if sp.issparse(g.mantissa):
                    bits += int(w.sum()) * (res.weight_bits + res.sparse_index_bits + delay_bits)
                    fan_in += int(w.any(axis=0).sum())
                else:
                    bits += w.size * (res.weight_bits + delay_bits)
                    fan_in += g.shape[1]
        assert (core.synapses, core.memory_bits, core.fan_in, core.fan_out) == (nnz, bits, fan_in, fan_out)
    assert sum(c.synapses for c in placement.cores) == sum(g.nnz for g in chip.synapses)
    assert sum(c.neurons for c in placement.cores) == sum(sizes.values())
    _check_positions(placement, res)


def _check_positions(placement, res: Resources) -> None:
    """Every core on a chip the placement counts, inside that chip's mesh, and no two cores in one place."""
    rows = -(-res.cores_per_chip // res.mesh_columns)
    seen = set()
    for core in placement.cores:
        assert 0 <= core.chip < placement.n_chips
        assert 0 <= core.x < res.mesh_columns and 0 <= core.y < rows
        assert core.core == core.y * res.mesh_columns + core.x < res.cores_per_chip
        seen.add((core.chip, core.x, core.y))
    assert len(seen) == placement.n_cores


# --------------------------------------------------------------------------- resource files


def test_builtin_resource_files_cite_a_source_for_every_figure():
    for name in ("loihi2", "loihi1"):
        path = importlib_resources.files("st2chip.chip") / "resources" / f"{name}.json"
        data = json.loads(path.read_text())
        assert set(data["figures"]) == set(FIGURES)
        for fig, entry in data["figures"].items():
            assert entry["source"].strip() and isinstance(entry["certain"], bool), fig
    assert (LOIHI2.cores_per_chip, LOIHI2.embedded_cpus_per_chip) == (128, 6)
    assert (LOIHI2.neurons_per_chip, LOIHI2.synapses_per_chip) == (1_000_000, 120_000_000)
    assert LOIHI2.neurons_per_core == 8192 and LOIHI2.synapse_memory_per_core == 128 * 1024 * 8
    assert {"neurons_per_core", "synapse_memory_per_core", "axons_in_per_core", "axons_out_per_core"} <= \
        set(LOIHI2.uncertain())
    loihi1 = load_resources("loihi1")
    assert (loihi1.neurons_per_core, loihi1.axons_in_per_core, loihi1.synapse_memory_per_core) == (1024, 4096, 2**20)


def _user_file(tmp_path, edit):
    data = json.loads((importlib_resources.files("st2chip.chip") / "resources" / "loihi2.json").read_text())
    edit(data["figures"])
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(data))
    return path


def test_a_user_resource_file_changes_a_figure(tmp_path):
    def edit(f):
        f["axons_in_per_core"].update(value=1024, source="my lab's measurement")
        f["synapse_memory_per_core"].update(value=64, unit="KiB")
    res = load_resources(_user_file(tmp_path, edit))
    assert res.axons_in_per_core == 1024 and res.synapse_memory_per_core == 64 * 1024 * 8
    assert res.source.endswith("mine.json")


@pytest.mark.parametrize("edit, named", [
    (lambda f: f.pop("neurons_per_core"), "figures.neurons_per_core' is missing"),
    (lambda f: f["neurons_per_core"].pop("source"), "figures.neurons_per_core.source' is missing"),
    (lambda f: f["neurons_per_core"].update(value=float("nan")), "figures.neurons_per_core.value' must be finite"),
    (lambda f: f["neurons_per_core"].update(value=float("inf")), "figures.neurons_per_core.value' must be finite"),
    (lambda f: f["axons_in_per_core"].update(value=-4), "figures.axons_in_per_core.value' must be positive"),
    (lambda f: f["sparse_index_bits"].update(value=-1), "figures.sparse_index_bits.value' must be non-negative"),
    (lambda f: f["synapse_memory_per_core"].update(unit="kB"), "figures.synapse_memory_per_core.unit' 'kB'"),
    (lambda f: f["cores_per_chip"].update(unit="neurons"), "figures.cores_per_chip.unit' 'neurons'"),
    (lambda f: f["neurons_per_core"].update(value=10.5), "whole number"),
    (lambda f: f["neurons_per_core"].update(value="8192"), "must be a number"),
    (lambda f: f["neurons_per_core"].update(certain="yes"), "figures.neurons_per_core.certain'"),
    (lambda f: f.update(neuron_per_core=f["neurons_per_core"]), "figures.neuron_per_core' is not a known figure"),
])
def test_bad_user_resource_files_name_file_and_field(tmp_path, edit, named):
    path = _user_file(tmp_path, edit)
    with pytest.raises(InputError) as err:
        load_resources(path)
    assert str(path) in str(err.value) and named in str(err.value)


def test_unreadable_or_missing_resource_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="bad.json: cannot read"):
        load_resources(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(InputError, match="bad.json: a resource file holds one JSON object"):
        load_resources(bad)
    with pytest.raises(InputError, match="nope.json: no such resource file"):
        load_resources(tmp_path / "nope.json")
    with pytest.raises(InputError, match="field 'neurons_per_core' must be positive"):
        LOIHI2.replace(neurons_per_core=0)


# --------------------------------------------------------------------------- placement


def test_mlp_every_neuron_once_within_limits(random_mlp):
    chip = lower(mlp_to_nir(random_mlp()), decay_groups=3)
    placement = place(chip, LOIHI2)
    _check(chip, placement, LOIHI2)
    assert placement.n_chips == 1 and placement.n_cores <= len(chip.populations)
    assert placement.inputs == {"input": 64}  # the host's input port takes no core

    # tight limits: populations span several cores, and each limit binds somewhere
    tight = LOIHI2.replace(neurons_per_core=5, synapse_memory_per_core=8 * 64 * 3)
    placement = place(chip, tight, max_chips=None)
    _check(chip, placement, tight)
    assert placement.n_cores > 10
    assert set(placement.bound.values()) >= {"memory"}
    rows = layer_rows(chip, placement)
    assert [r["cores"] for r in rows] == [placement.layer_cores()[r["layer"]] for r in rows]


def test_fan_in_and_fan_out_bind_and_are_respected():
    chip = _synthetic(200, 300, 300, per_row=12, seed=1)
    res = LOIHI2.replace(axons_in_per_core=60)
    placement = place(chip, res, max_chips=None)
    _check(chip, placement, res)
    assert placement.bound["B"] == "fan-in"
    res = LOIHI2.replace(axons_out_per_core=30)  # each A neuron reaches about 12 B neurons
    placement = place(chip, res, max_chips=None)
    _check(chip, placement, res)
    assert placement.bound["A"] == "fan-out" and placement.layer_cores()["A"] > 1


def test_packing_shares_cores_only_when_asked(random_mlp):
    chip = lower(mlp_to_nir(random_mlp()), decay_groups=4)
    packed, alone = place(chip, LOIHI2), place(chip, LOIHI2, pack=False)
    _check(chip, packed, LOIHI2)
    _check(chip, alone, LOIHI2)
    assert all(len(c.populations) == 1 for c in alone.cores)
    assert packed.n_cores < alone.n_cores == len(chip.populations)


def test_sparse_group_uses_less_synapse_memory_than_dense():
    rng = np.random.default_rng(0)
    w = np.where(rng.random((50, 100)) < 0.1, rng.integers(-128, 128, (50, 100)), 0)
    placements = {}
    for form, mant in (("dense", w), ("sparse", sp.csr_matrix(w))):
        chip = ChipGraph([InputPort("in", 100)], [_pop("p", 50)],
                         [SynapseGroup("g", "in", "p", mant, 0, form=form)], lowering=LoweringReport(1e-3))
        placements[form] = place(chip, LOIHI2)
        _check(chip, placements[form], LOIHI2)
    dense, sparse = (placements[f].cores[0] for f in ("dense", "sparse"))
    assert sparse.synapses == dense.synapses == np.count_nonzero(w)
    assert dense.memory_bits == 50 * 100 * LOIHI2.weight_bits
    assert sparse.memory_bits == np.count_nonzero(w) * (LOIHI2.weight_bits + LOIHI2.sparse_index_bits)
    assert sparse.memory_bits < dense.memory_bits
    assert sparse.fan_in <= dense.fan_in == 100


def test_what_cannot_fit_names_every_offending_layer_with_both_numbers(random_mlp):
    chip = lower(mlp_to_nir(random_mlp()))  # 64 -> lif1 (24) -> lif2 ... -> readout (10), dense
    fan_ins = {layer: chip.incoming(chip.layer_populations(layer)[0].name)[0].shape[1] for layer in chip.layers()}
    tiny = LOIHI2.replace(axons_in_per_core=30, synapse_memory_per_core=150)
    with pytest.raises(PlacementError) as err:
        place(chip, tiny)
    text = str(err.value)
    assert "\n" not in text
    assert f"layer 'lif1': fan-in {fan_ins['lif1']} axons > 30 per core" in text
    for layer, n_src in fan_ins.items():  # one neuron of every layer needs 8 bits per source > 150 bits
        assert f"layer '{layer}': synapse memory {n_src * 8} bits for one neuron > 150 bits per core" in text
    assert "uncertain figures" in text

    # too many chips: every layer's cores are listed
    few = LOIHI2.replace(neurons_per_core=2, cores_per_chip=4)
    with pytest.raises(PlacementError, match=r"needs \d+ chips \(\d+ cores at 4 per chip\) > 1 allowed") as err:
        place(chip, few, max_chips=1)
    assert all(f"'{layer}'" in str(err.value) for layer in chip.layers())
    assert place(chip, few, max_chips=None).n_chips > 1


def test_delay_beyond_the_limit_is_named():
    chip = ChipGraph([InputPort("in", 4)], [_pop("p", 3, layer="late")],
                     [SynapseGroup("g", "in", "p", np.ones((3, 4), np.int64), 0, delay=5)], lowering=LoweringReport(1e-3))
    with pytest.raises(PlacementError, match=r"layer 'late': synaptic delay 6 steps \(group 'g'\) > 4 steps"):
        place(chip, LOIHI2.replace(max_synaptic_delay=4))
    placement = place(chip, LOIHI2)
    assert placement.cores[0].memory_bits == 3 * 4 * (8 + 3)  # 3 delay bits for delay 5


def test_hundred_thousand_sparse_neurons_place_in_seconds():
    chip = _synthetic(1000, 50_000, 50_000, per_row=40)
    start = time.perf_counter()
    placement = place(chip, LOIHI2, max_chips=None)
    seconds = time.perf_counter() - start
    assert seconds < 30, f"placing 1e5 neurons took {seconds:.1f} s"
    sizes = {p.name: p.size for p in chip.populations}
    assert {k: int((v >= 0).sum()) for k, v in placement.assignment().items()} == sizes
    assert sum(c.synapses for c in placement.cores) == sum(g.nnz for g in chip.synapses)
    res = LOIHI2
    assert max(c.fan_in for c in placement.cores) <= res.axons_in_per_core
    assert max(c.memory_bits for c in placement.cores) <= res.synapse_memory_per_core
    view = format_cores(placement, max_rows=20)
    assert len(view.splitlines()) < 40 and "more cores" in view and "min-max" in view


@pytest.mark.slow
def test_a_million_neurons_and_a_hundred_million_synapses_place_in_seconds(request):
    if "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("about 2 GB and 10 s: run with -m slow")
    chip = _synthetic(1000, 500_000, 500_000, per_row=100)
    start = time.perf_counter()
    placement = place(chip, LOIHI2, max_chips=None)
    assert time.perf_counter() - start < 60
    assert sum(c.synapses for c in placement.cores) == sum(g.nnz for g in chip.synapses)


# --------------------------------------------------------------------------- table and CLI


def test_table_gains_a_cores_column_only_with_a_placement(random_mlp):
    chip = lower(mlp_to_nir(random_mlp()))
    plain = format_table(chip)
    assert "cores" not in plain.splitlines()[0]
    placement = place(chip, LOIHI2)
    table = format_table(chip, placement)
    assert table.splitlines()[0].split()[5] == "cores"
    assert f"placement (loihi2): {placement.n_cores} core" in table
    view = format_cores(placement)
    assert view.splitlines()[0].split()[:3] == ["chip", "core", "populations"]
    assert len(view.splitlines()) == placement.n_cores + 3


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_map_places_by_default_and_shows_cores(random_mlp, tmp_path, capsys):
    path = write_nir(mlp_to_nir(random_mlp()), tmp_path / "m.nir")
    code, out, err = _run(capsys, "map", path)
    assert code == 0, err
    assert out.splitlines()[0].split()[5] == "cores" and "placement (loihi2):" in out and "on 1 chip" in out
    code, out, _ = _run(capsys, "map", path, "--cores", "--resources", "loihi1", "--json", tmp_path / "m.json")
    assert code == 0 and "placement (loihi1):" in out and "fan-in" in out and "mem KiB" in out
    data = json.loads((tmp_path / "m.json").read_text())
    assert data["placement"]["resources"] == "loihi1" and data["placement"]["cores_used"] >= 1
    assert all("cores" in row for row in data["layers"])
    code, out, _ = _run(capsys, "map", path, "--resources", "none")
    assert code == 0 and "placement" not in out and "cores" not in out.splitlines()[0]


def test_cli_map_that_does_not_fit_is_one_line_naming_the_layers(random_mlp, tmp_path, capsys):
    path = write_nir(mlp_to_nir(random_mlp()), tmp_path / "m.nir")
    # (a fan-in over a core's axons no longer refuses: lowering builds a fan-in tree; a chip too small does)
    small = _user_file(tmp_path, lambda f: (f["neurons_per_core"].update(value=16),
                                            f["cores_per_chip"].update(value=2)))
    report = tmp_path / "out.json"
    report.write_text("keep me")
    code, out, err = _run(capsys, "map", path, "--resources", small, "--json", report)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "chips (" in err and "> 1 allowed (max_chips, --max-chips)" in err and "'lif1' " in err
    assert "lif1" in out  # the lowered table is still shown
    assert report.read_text() == "keep me"
    bad = _user_file(tmp_path, lambda f: f["neurons_per_core"].update(value=-1))
    code, _, err = _run(capsys, "map", path, "--resources", bad)
    assert code == 2 and "mine.json" in err and "figures.neurons_per_core.value" in err
    code, _, err = _run(capsys, "map", path, "--max-chips", "0")
    assert code == 2 and "--max-chips" in err
    code, _, err = _run(capsys, "map", path, "--resources", tmp_path / "none.json")
    assert code == 2 and "none.json: no such resource file" in err
