"""Energy stage: SOP counts from traces, profiles, reports and files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp

from st2chip.chip.chipgraph import ChipGraph, InputPort, Population, SynapseGroup
from st2chip.analysis.energy import available_profiles, energy_report, load_profile, write_energy_report
from st2chip.analysis.traffic import count_ops
from st2chip.chip.placement import place
from st2chip.errors import InputError
from st2chip.traces import Traces

# fanout per input column: 2, 0, 2, 2
W1 = np.array([[1, 0, 2, 0],
               [0, 0, 3, 1],
               [4, 0, 0, -1]])
# fanout per hidden neuron: 1, 1, 1
W2 = np.array([[1, 0, -2],
               [0, 5, 0]])


def _pop(name: str, layer: str, index, readout: bool = False) -> Population:
    return Population(name, layer, np.asarray(index), du=0, dv=0, vth=10, bias_mant=0, bias_exp=0,
                      readout=readout)


def _chip(w1: np.ndarray = W1, kind: str = "spike") -> ChipGraph:
    """x(4) -> fc1 (3 neurons, dense) -> out (2 neurons, sparse CSR, readout)."""
    return ChipGraph(
        inputs=[InputPort("x", 4, kind)],
        populations=[_pop("h", "fc1", [0, 1, 2]), _pop("o", "out", [0, 1], readout=True)],
        synapses=[SynapseGroup("x->h", "x", "h", w1, exp=0),
                  SynapseGroup("h->o", "h", "o", sp.csr_matrix(W2), exp=0, form="sparse")])


def _split_chip() -> ChipGraph:
    """The same network with layer fc1 split into populations of neurons [0, 2] and [1]."""
    a, b = [0, 2], [1]
    return ChipGraph(
        inputs=[InputPort("x", 4)],
        populations=[_pop("hA", "fc1", a), _pop("hB", "fc1", b), _pop("o", "out", [0, 1], readout=True)],
        synapses=[SynapseGroup("x->hA", "x", "hA", W1[a], exp=0),
                  SynapseGroup("x->hB", "x", "hB", W1[b], exp=0),
                  SynapseGroup("hA->o", "hA", "o", W2[:, a], exp=0),
                  SynapseGroup("hB->o", "hB", "o", W2[:, b], exp=0)])


def count_sops(chip: ChipGraph, traces: Traces):
    """Counts on the chip placed on one Loihi 2 core (these graphs are tiny)."""
    return count_ops(chip, traces, place(chip, "loihi2"))


def _traces(x: np.ndarray, h: np.ndarray) -> Traces:
    b, t = x.shape[:2]
    return Traces("hand", inputs={"x": x}, spikes={"fc1": h, "out": np.zeros((b, t, 2), np.uint8)},
                  voltages={}, scores=np.zeros((b, 2)))


def _hand_traces() -> Traces:
    """B=2, T=3. Input spikes per neuron: 3, 4, 1, 2; hidden spikes per neuron: 2, 0, 3."""
    x = np.zeros((2, 3, 4), np.uint8)
    for b, t, j in [(0, 0, 0), (0, 1, 0), (1, 2, 0),
                    (0, 0, 1), (0, 2, 1), (1, 0, 1), (1, 1, 1),
                    (1, 1, 2),
                    (0, 1, 3), (1, 2, 3)]:
        x[b, t, j] = 1
    h = np.zeros((2, 3, 3), np.uint8)
    for b, t, j in [(0, 1, 0), (1, 2, 0), (0, 0, 2), (0, 2, 2), (1, 1, 2)]:
        h[b, t, j] = 1
    return _traces(x, h)


def _random_traces(seed: int, batch: int = 5, steps: int = 3) -> Traces:
    rng = np.random.default_rng(seed)
    return _traces((rng.random((batch, steps, 4)) < 0.4).astype(np.uint8),
                   (rng.random((batch, steps, 3)) < 0.3).astype(np.uint8))


def _loop_acs(weights: np.ndarray, spikes: np.ndarray) -> int:
    """Reference: walk every spike event and add the non-zero weights of its column."""
    total = 0
    for b, t, j in zip(*np.nonzero(spikes)):
        total += sum(1 for i in range(weights.shape[0]) if weights[i, j] != 0)
    return total


def test_counts_match_hand_computation():
    c = count_sops(_chip(), _hand_traces())
    assert (c.samples, c.steps) == (2, 3)
    g = {x.name: x for x in c.groups}
    # input 1 has no non-zero weight: its 4 spikes cost nothing and are not sent anywhere
    assert (g["x->h"].acs, g["x->h"].macs, g["x->h"].routed, g["x->h"].nnz) == (3*2 + 4*0 + 1*2 + 2*2, 0, 6, 6)
    assert (g["h->o"].acs, g["h->o"].routed, g["h->o"].nnz) == (2*1 + 0*1 + 3*1, 5, 3)
    assert list(c.by_layer("acs")) == [12, 5]
    assert list(c.by_layer("neuron_updates")) == [3 * 3 * 2, 2 * 3 * 2]
    assert list(c.by_layer("spikes")) == [5, 0]
    assert list(c.by_layer("routed_host")) == [6, 0] and list(c.by_layer("routed_local")) == [0, 5]


@pytest.mark.parametrize("seed", range(4))
def test_counts_match_event_loop(seed):
    tr = _random_traces(seed)
    g = {x.name: x for x in count_sops(_chip(), tr).groups}
    assert g["x->h"].acs == _loop_acs(W1, tr.inputs["x"])
    assert g["h->o"].acs == _loop_acs(W2, tr.spikes["fc1"])


@pytest.mark.parametrize("i, j", [(0, 0), (1, 2), (2, 3)])
def test_zeroing_a_weight_removes_exactly_its_sources_spikes(i, j):
    tr = _random_traces(7)
    pruned = W1.copy()
    pruned[i, j] = 0
    before = count_sops(_chip(), tr).by_layer("acs")[0]
    after = count_sops(_chip(pruned), tr).by_layer("acs")[0]
    assert before - after == int(tr.inputs["x"][:, :, j].sum()) > 0


def test_sparse_explicit_zeros_cost_nothing():
    stored = sp.csr_matrix((np.array([1, 0, 5]), np.array([0, 1, 2]), np.array([0, 2, 3])), shape=(2, 3))
    assert stored.nnz == 3  # the zero is stored
    chip = _chip()
    chip.synapses[1] = SynapseGroup("h->o", "h", "o", stored, exp=0, form="sparse")
    tr = _hand_traces()
    group = count_sops(chip, tr).groups[1]
    assert group.nnz == 2
    assert group.acs == _loop_acs(stored.toarray(), tr.spikes["fc1"]) == 2 + 3


def test_split_layer_reads_each_populations_neurons():
    tr = _random_traces(3)
    whole, split = count_sops(_chip(), tr), count_sops(_split_chip(), tr)
    for q in ("acs", "neuron_updates", "spikes", "routed_local"):
        assert list(split.by_layer(q)) == list(whole.by_layer(q)), q
    # one message per synapse group and destination core, to the inputs with a non-zero weight into it
    x = tr.inputs["x"]
    assert whole.by_layer("routed_host")[0] == int(x[:, :, [0, 2, 3]].sum())
    assert split.by_layer("routed_host")[0] == int(x[:, :, [0, 2, 3]].sum() + x[:, :, [2, 3]].sum())
    g = {x.name: x for x in split.groups}
    h = tr.spikes["fc1"]
    assert g["hB->o"].routed == int(h[:, :, 1].sum())
    assert g["hA->o"].acs == _loop_acs(W2[:, [0, 2]], h[:, :, [0, 2]])


def test_analog_inputs_cost_macs_per_nonzero_value():
    x = np.array([[[0.5, 0.0, -1.0, 0.0],
                   [0.0, 0.0, 2.0, 0.25]]])  # B=1, T=2; non-zero steps per element: 1, 0, 2, 1
    tr = _traces(x, np.zeros((1, 2, 3), np.uint8))
    c = count_sops(_chip(kind="analog"), tr)
    g = c.groups[0]
    assert (g.source_kind, g.acs, g.macs) == ("analog", 0, 1*2 + 0*0 + 2*2 + 1*2)
    rep = energy_report(_chip(kind="analog"), tr, "45nm")
    assert rep.layers[0].energy_pj["mac"] == pytest.approx(8 * 4.6)
    assert rep.layers[0].energy_pj["ac"] == 0


def test_45nm_energy_per_sample():
    rep = energy_report(_chip(), _hand_traces(), "45nm")
    fc1, out = rep.layers
    assert (fc1.acs, out.acs) == (12 / 2, 5 / 2)
    assert fc1.total_pj == pytest.approx(6 * 0.9)
    assert rep.total_pj == pytest.approx((6 + 2.5) * 0.9)
    assert rep.partitions()["neurocore"]["energy_pj"]["total"] == pytest.approx(rep.total_pj)
    d = rep.to_dict()
    assert sum(l["share"] for l in d["layers"]) == pytest.approx(1.0)
    assert d["total"]["acs"] == pytest.approx(8.5)


def test_averaging_is_per_sample():
    tr = _random_traces(11)
    doubled = Traces("hand", inputs={"x": np.concatenate([tr.inputs["x"]] * 2)},
                     spikes={k: np.concatenate([v] * 2) for k, v in tr.spikes.items()},
                     voltages={}, scores=np.zeros((10, 2)))
    once, twice = count_sops(_chip(), tr), count_sops(_chip(), doubled)
    assert twice.samples == 2 * once.samples
    assert list(twice.by_layer("acs")) == [2 * a for a in once.by_layer("acs")]
    r1, r2 = energy_report(_chip(), tr, "loihi2"), energy_report(_chip(), doubled, "loihi2")
    t1, t2 = r1.totals(), r2.totals()
    for nested in ("energy_pj", "spikes_routed", "hops"):
        assert t2.pop(nested) == pytest.approx(t1.pop(nested))
    assert t2 == pytest.approx(t1)


def test_loihi_profile_terms():
    prof = load_profile("loihi2")
    assert prof.e_neuron_update_pj > 0 and prof.e_spike_local_pj > 0 and prof.p_static_core_mw > 0
    assert "Davies" in prof.source and "proxy" in prof.source
    rep = energy_report(_chip(), _hand_traces(), prof)
    fc1, out = rep.layers
    assert rep.placement.n_cores == 1 and fc1.cores == 1
    assert fc1.energy_pj["ac"] == pytest.approx(6 * prof.e_ac_pj)
    assert fc1.energy_pj["neuron"] == pytest.approx(9 * prof.e_neuron_update_pj)
    assert fc1.energy_pj["routing"] == 0 and out.energy_pj["routing"] == pytest.approx(2.5 * prof.e_spike_local_pj)
    # one core for 3 steps, shared by fc1 (3 neurons) and out (2 neurons)
    static = 3 * prof.t_step_us * prof.p_static_core_mw * 1e3
    assert fc1.energy_pj["static"] == pytest.approx(static * 3 / 5)
    assert rep.totals()["energy_pj"]["static"] == pytest.approx(static)


def test_bundled_profiles_load():
    assert {"45nm", "loihi", "loihi2"} <= set(available_profiles())
    p = load_profile("45nm")
    assert (p.e_ac_pj, p.e_mac_pj, p.p_static_core_mw) == (0.9, 4.6, 0.0)
    assert "Horowitz" in p.source


@pytest.mark.parametrize("content, needle", [
    (None, "cannot read"),
    ("{not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ('{"name": "p", "source": "s", "E_MAC_pJ": 1}', "'E_AC_pJ'"),
    ('{"name": "p", "source": "s", "E_AC_pJ": -1, "E_MAC_pJ": 1}', "'E_AC_pJ'"),
    ('{"name": "p", "source": "s", "E_AC_pJ": 1, "E_MAC_pJ": "4.6"}', "'E_MAC_pJ'"),
    ('{"name": "p", "source": "s", "E_AC_pJ": 1, "E_MAC_pJ": 1, "P_STATIC_CORE_mW": 1}', "'T_STEP_us'"),
])
def test_bad_profile_files_name_file_and_key(tmp_path, content, needle):
    path = tmp_path / "bad.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InputError) as err:
        load_profile(path)
    assert "bad.json" in str(err.value) and needle in str(err.value)


def test_unknown_profile_name_lists_the_known_ones():
    with pytest.raises(InputError, match="45nm"):
        load_profile("7nm-imaginary")


def test_missing_or_mismatched_traces_are_input_errors():
    tr = _hand_traces()
    del tr.spikes["fc1"]
    with pytest.raises(InputError, match="fc1"):
        count_sops(_chip(), tr)
    tr = _hand_traces()
    tr.inputs["x"] = tr.inputs["x"][:, :2]
    with pytest.raises(InputError, match="shape"):
        count_sops(_chip(), tr)


def test_report_files(tmp_path):
    rep = energy_report(_chip(), _hand_traces(), "loihi2")
    out = tmp_path / "run"
    paths = write_energy_report(rep, out)
    assert sorted(p.name for p in out.iterdir()) == ["energy.json", "energy.md", "energy.png", "energy_cores.png"]
    data = json.loads(paths["json"].read_text())
    assert data["samples"] == 2 and [l["layer"] for l in data["layers"]] == ["fc1", "out"]
    assert data["total"]["energy_pj"]["total"] == pytest.approx(rep.total_pj)
    assert data["total"]["energy_per_step_pj"] == pytest.approx(rep.total_pj / 3)
    assert [c["core"] for c in data["cores"]] == [0]
    for key in ("plot", "cores_plot"):
        assert paths[key].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = paths["markdown"].read_text()
    assert all(len(line) <= 80 for line in md.splitlines() if line.startswith("|"))
    assert "fc1" in md and "loihi2" in md and "per time step" in md


def test_profile_that_is_not_utf8_or_huge_is_one_clear_error(tmp_path):
    latin = tmp_path / "latin.json"
    latin.write_bytes('{"name": "caf\xe9"}'.encode("latin-1"))
    with pytest.raises(InputError, match=r"latin.json'.*not UTF-8"):
        load_profile(latin)
    huge = tmp_path / "huge.json"
    huge.write_bytes(b" " * (2 << 20))
    with pytest.raises(InputError, match="a profile is a small JSON file"):
        load_profile(huge)


def test_pruning_90_percent_of_a_layer_cuts_exactly_the_removed_synapses_operations():
    """L1 magnitude pruning (torch.nn.utils.prune) of 90 % of a layer: with the same spikes, the counted
    ACs fall by the spikes that reached each removed weight, no more and no less."""
    import torch
    from torch.nn.utils import prune

    rng = np.random.default_rng(11)
    w = rng.integers(-127, 128, (30, 50))
    w[w == 0] = 1
    linear = torch.nn.Linear(50, 30, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(w.astype(np.float32)))
    prune.l1_unstructured(linear, "weight", amount=0.9)
    kept = linear.weight_mask.numpy().astype(bool)
    assert kept.sum() == 150  # 10 % of 1,500
    x = (rng.random((6, 9, 50)) < 0.3).astype(np.uint8)

    def acs(weights: np.ndarray) -> int:
        chip = ChipGraph([InputPort("x", 50)], [_pop("h", "fc", np.arange(30))],
                         [SynapseGroup("x->h", "x", "h", sp.csr_matrix(weights), exp=0, form="sparse")])
        traces = Traces("hand", inputs={"x": x}, spikes={"fc": np.zeros((6, 9, 30), np.uint8)},
                        voltages={}, scores=np.zeros((6, 30)))
        return int(count_sops(chip, traces).by_layer("acs")[0].sum())

    spikes_per_source = x.sum(axis=(0, 1))
    removed = (~kept) * spikes_per_source[None, :]
    assert acs(w) - acs(np.where(kept, w, 0)) == int(removed.sum()) > 0
