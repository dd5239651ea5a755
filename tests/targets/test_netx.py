"""netx export: what lava-dl's netx can express is written as netx HDF5, rebuilt by ``netx.hdf5.Network`` and
run on Lava's fixed-point simulator with the chip's spikes; what it cannot express is listed with a reason.

Timing, as the checks below align it: the input RingBuffer sends a sample's step ``j`` (0-based) at Lava
step ``k W + j + 1`` (sample ``k``, window ``W = T + depth``); every synapse (netx's ``Dense`` as the
chip's) delays by one step, so netx layer ``i`` (1-based, depth ``i``) sees it at step ``k W + i + j + 1``,
and netx resets layer ``i`` at window step ``reset_offset + i = i + 1``, the step the sample's first input
arrives. The engine records a population at depth ``d`` from global step ``d + 1`` on; so netx's record at
0-based index ``k W + i + j`` is the engine's step ``j`` of sample ``k`` for that layer.
"""

from __future__ import annotations

import warnings

import h5py
import nir
import numpy as np
import pytest

from st2chip.chip.chipgraph import ChipGraph, InputPort, Population, SynapseGroup
from st2chip.chip.lower import lower
from st2chip.converters.mlp import mlp_to_nir
from st2chip.errors import GraphError, InputError
from st2chip.graph.normalize import normalize
from st2chip.targets import engine, netx

DT = 1e-3


# ----------------------------------------------------------------------------------------------- helpers


def _pop(name: str, n: int, *, layer: str | None = None, du=2000, dv=300, vth=200, bias=0, bias_exp=0,
         readout=False, reset="zero", index=None) -> Population:
    return Population(name, layer or name, np.arange(n) if index is None else index, du=du, dv=dv, vth=vth,
                      bias_mant=np.broadcast_to(bias, (n,)), bias_exp=bias_exp, readout=readout, reset=reset)


def _group(rng, source: str, target: str, n_t: int, n_s: int, *, exp=0, scale=127, feedback=False,
           mantissa=None) -> SynapseGroup:
    m = rng.integers(-scale, scale + 1, (n_t, n_s)) if mantissa is None else mantissa
    return SynapseGroup(f"{source}->{target}{'~' if feedback else ''}", source, target, m, exp, feedback=feedback)


def _spikes(seed: int, shape, rate: float = 0.3) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) < rate).astype(np.uint8)


def _assert_same(chip: ChipGraph, x: np.ndarray, traces, layers: list[str]) -> None:
    eng = engine.run(chip, {"input": x})
    for layer in layers:
        np.testing.assert_array_equal(traces.spikes[layer], eng.spikes[layer], err_msg=layer)
        if layer in traces.voltages:
            np.testing.assert_array_equal(traces.voltages[layer], eng.voltages[layer], err_msg=layer)
    for layer in chip.layers():
        if not chip.layer_populations(layer)[0].readout and layer in layers:
            assert eng.spikes[layer].sum() > 0, f"{layer} should spike for the comparison to mean something"


@pytest.fixture
def mlp_chip(random_mlp):
    """The sLIF MLP of the other chip tests, lowered with one population per layer; biases zero so that
    they are exact in netx (its bias exponent is fixed at 6)."""
    model = random_mlp(sizes=(64, 24, 16, 10))
    for lin in model.linears:
        lin.bias.data.zero_()
    chip = lower(normalize(mlp_to_nir(model)), decay_groups=1)
    assert all(len(chip.layer_populations(layer)) == 1 for layer in chip.layers())
    return chip


# ----------------------------------------------------------------------------------------------- no Lava


def test_export_writes_netx_layout(mlp_chip, tmp_path):
    path = tmp_path / "mlp.h5"
    export = netx.export_netx(mlp_chip, path)
    assert export.complete and export.exact and [layer.layer for layer in export.layers] == ["lif1", "lif2", "readout"]
    assert export.network_kwargs(8) == {"net_config": str(path), "reset_interval": 11, "reset_offset": 1,
                                        "sparse_fc_layer": False}
    with h5py.File(path) as fh:
        assert fh["layer/0/type"][0] == b"input" and list(fh["layer/0/shape"][()]) == [64]
        for layer in export.layers:
            g = fh[f"layer/{layer.index}"]
            pop = mlp_chip.population(layer.population)
            group = mlp_chip.incoming(pop.name)[0]
            assert g["type"][0] == b"dense"
            np.testing.assert_array_equal(g["weight"][()], 2 * group.dense() << group.exp)
            assert g["neuron/type"][0] == b"CUBA"
            assert (g["neuron/iDecay"][()], g["neuron/vDecay"][()], g["neuron/vThMant"][()]) == \
                (pop.du + 1, pop.dv, pop.vth)
    assert netx.read_export(path).to_dict() == export.to_dict()
    assert any("readout" in note for note in export.notes)
    assert [p.name for p in tmp_path.iterdir()] == ["mlp.h5"]  # no temporary file left behind


def test_layers_netx_cannot_express_are_listed(tmp_path):
    rng = np.random.default_rng(0)
    b_index = np.arange(8)
    chip = ChipGraph([InputPort("input", 6)],
                     [_pop("A", 8), _pop("B/g0", 4, layer="B", index=b_index[:4]),
                      _pop("B/g1", 4, layer="B", dv=900, index=b_index[4:]), _pop("C", 3)],
                     [_group(rng, "input", "A", 8, 6), _group(rng, "A", "B/g0", 4, 8), _group(rng, "A", "B/g1", 4, 8),
                      _group(rng, "B/g0", "C", 3, 4), _group(rng, "B/g1", "C", 3, 4)])
    export = netx.export_netx(chip, tmp_path / "part.h5")
    assert [layer.layer for layer in export.layers] == ["A"] and not export.complete
    reasons = {item.name: item.reason for item in export.not_exported}
    assert "split into 2 populations" in reasons["B"] and "decay_groups=1" in reasons["B"]
    assert "comes after layer 'B'" in reasons["C"]
    with h5py.File(tmp_path / "part.h5") as fh:
        assert sorted(fh["layer"].keys()) == ["0", "1"]
    assert "B: split into 2 populations" in export.describe()


@pytest.mark.parametrize("case, match", [
    ("subtract", "A.*resets by subtraction"),
    ("bias", "A.*multiples of 64"),
    ("exponent", "A.*weight exponent -2"),
    ("clipped", "A.*netx re-scales"),
    ("split", "A.*split into 2 populations"),
])
def test_first_layer_refused_with_its_name(case, match, tmp_path):
    rng = np.random.default_rng(1)
    pops = {"subtract": [_pop("A", 5, reset="subtract")], "bias": [_pop("A", 5, bias=100)],
            "exponent": [_pop("A", 5)], "clipped": [_pop("A", 5)],
            "split": [_pop("A/g0", 2, layer="A", index=np.arange(2)),
                      _pop("A/g1", 3, layer="A", index=np.arange(2, 5))]}[case]
    exp = {"exponent": -2, "clipped": 2}.get(case, 0)
    groups = [_group(rng, "input", p.name, p.size, 4, exp=exp) for p in pops]
    chip = ChipGraph([InputPort("input", 4)], pops, groups)
    target = tmp_path / "out.h5"
    target.write_bytes(b"old")
    with pytest.raises(GraphError, match=match):
        netx.export_netx(chip, target)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["out.h5"]


def test_skip_connections_and_foreign_feedback_are_listed(tmp_path):
    rng = np.random.default_rng(2)
    chip = ChipGraph([InputPort("input", 4)], [_pop("A", 5), _pop("B", 5), _pop("C", 3)],
                     [_group(rng, "input", "A", 5, 4), _group(rng, "A", "B", 5, 5), _group(rng, "B", "C", 3, 5),
                      _group(rng, "A", "C", 3, 5)])
    reasons = {i.name: i.reason for i in netx.export_netx(chip, tmp_path / "skip.h5").not_exported}
    assert list(reasons) == ["C"] and "takes input from 'A' as well as 'B'" in reasons["C"]
    chip = ChipGraph([InputPort("input", 4)], [_pop("A", 5), _pop("B", 5)],
                     [_group(rng, "input", "A", 5, 4), _group(rng, "A", "B", 5, 5),
                      _group(rng, "B", "A", 5, 5, feedback=True)])
    with pytest.raises(GraphError, match="A.*feedback from 'B'"):
        netx.export_netx(chip, tmp_path / "fb.h5")


def test_approximate_rounds_biases_and_weights(tmp_path):
    rng = np.random.default_rng(3)
    chip = ChipGraph([InputPort("input", 4)], [_pop("A", 5, bias=np.array([100, -7, 64, 0, 3000]))],
                     [_group(rng, "input", "A", 5, 4, exp=-2, mantissa=rng.integers(-127, 128, (5, 4)) | 1)])
    export = netx.export_netx(chip, tmp_path / "approx.h5", approximate=True)
    layer = export.layers[0]
    assert not export.exact and layer.weight_error == 0.5 and 0 < layer.bias_error <= 32
    with h5py.File(tmp_path / "approx.h5") as fh:
        np.testing.assert_array_equal(fh["layer/1/bias"][()], [2, 0, 1, 0, 47])


def test_exact_negative_exponent_is_exported_exactly(tmp_path):
    rng = np.random.default_rng(4)
    mant = rng.integers(-31, 32, (5, 4)) * 4  # 2m divisible by 2^3
    chip = ChipGraph([InputPort("input", 4)], [_pop("A", 5, bias=128, bias_exp=1)],
                     [_group(rng, "input", "A", 5, 4, exp=-3, mantissa=mant)])
    export = netx.export_netx(chip, tmp_path / "neg.h5")
    assert export.exact
    with h5py.File(tmp_path / "neg.h5") as fh:
        np.testing.assert_array_equal(fh["layer/1/weight"][()], (2 * mant) >> 3)
        np.testing.assert_array_equal(fh["layer/1/bias"][()], np.full(5, 4))


def test_empty_chip_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="no input or no population"):
        netx.export_netx(ChipGraph([InputPort("input", 3)], [], []), tmp_path / "x.h5")


def test_cli_export_netx(random_mlp, tmp_path, capsys):
    from st2chip.cli.main import main
    from st2chip.graph.nirfile import write_nir

    model = random_mlp()
    biased = write_nir(mlp_to_nir(model), tmp_path / "biased.nir")
    out = tmp_path / "model.h5"
    assert main(["export-netx", str(biased), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "node 'lif1'" in err and "multiples of 64" in err and "--approximate" in err and not out.exists()
    assert main(["export-netx", str(biased), "-o", str(out), "--approximate", "--json", str(tmp_path / "x.json")]) == 0
    stdout = capsys.readouterr().out
    assert "layer/1  dense     lif1" in stdout and "approximate: bias error" in stdout and out.exists()
    assert netx.read_export(out).layers[0].bias_error > 0 and (tmp_path / "x.json").exists()
    assert main(["export-netx", str(biased), "-o", str(out), "--decay-groups", "3"]) == 2
    assert "split into" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- with lava-dl


@pytest.fixture(scope="module")
def lava_netx():
    from st2chip.targets.lava_compat import ensure_lava
    ensure_lava()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from lava.lib.dl import netx as lava_netx
    return lava_netx


def test_effective_weights_follow_netx_and_lava(lava_netx):
    """The exactness check mirrors netx's optimize_weight_bits and Lava's Dense arithmetic."""
    from lava.utils.weightutils import clip_weights, determine_sign_mode, truncate_weights

    def lava_input(w: np.ndarray, s: np.ndarray) -> np.ndarray:
        opt, bits, exp, _ = lava_netx.utils.optimize_weight_bits(w.copy())
        mode = determine_sign_mode(opt)
        opt = truncate_weights(clip_weights(opt, mode, num_bits=8), mode, bits)
        acc = opt[:, s.astype(bool)].sum(axis=1)
        return np.left_shift(acc, exp) if exp > 0 else np.right_shift(acc, -exp)

    rng = np.random.default_rng(5)
    cases = [2 * rng.integers(-128, 128, (6, 9)), rng.integers(-127, 128, (6, 9)), rng.integers(0, 255, (6, 9)),
             -2 * rng.integers(1, 128, (6, 9)), 8 * rng.integers(-16, 16, (6, 9)), 2 * rng.integers(-20, 21, (6, 9)),
             rng.integers(-3, 4, (6, 9)), rng.integers(-255, 200, (6, 9))]
    spikes = rng.random((20, 9)) < 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # netx divides by a zero largest weight
        for w in cases:
            eff = netx._netx_effective(w)
            assert eff is not None and np.array_equal(eff, w)
            for s in spikes:
                np.testing.assert_array_equal(lava_input(w, s), w @ s)
        # refused: netx's arithmetic breaks down (odd non-positive weights: a negative truncation count)
        odd_negative = -(2 * rng.integers(0, 128, (6, 9)) + 1)
        odd_negative[0, 0] = 0
        assert netx._netx_effective(odd_negative) is None
        assert any(not np.array_equal(lava_input(odd_negative, s), odd_negative @ s) for s in spikes)
    assert netx._netx_effective(np.array([[300, -2]])) is None  # netx clips
    assert netx._netx_effective(np.zeros((2, 2), int)) is None  # netx divides by the largest weight


def test_network_rebuilt_by_netx_holds_the_chip_parameters(mlp_chip, tmp_path, lava_netx):
    export = netx.export_netx(mlp_chip, tmp_path / "mlp.h5")
    net = lava_netx.hdf5.Network(**export.network_kwargs(8))
    assert len(net.layers) == 3
    for block, layer in zip(net.layers, export.layers):
        pop = mlp_chip.population(layer.population)
        neuron = block.neuron
        assert type(neuron).__name__ == "LIFReset"
        assert (int(neuron.du.init), int(neuron.dv.init), int(neuron.vth.init)) == (pop.du, pop.dv, pop.vth)
        assert neuron.proc_params["reset_offset"] == 1 + layer.depth


def test_mlp_spikes_equal_the_engine(mlp_chip, digit_spikes, tmp_path, lava_netx):
    """Dense MLP: hidden spikes and readout voltages of netx on Lava equal the engine's, sample by sample,
    with the samples back to back in one run (reset per window)."""
    export = netx.export_netx(mlp_chip, tmp_path / "mlp.h5")
    x = digit_spikes(4, 8)
    traces = netx.run(tmp_path / "mlp.h5", {"input": x})
    assert set(traces.voltages) == {"readout"}
    _assert_same(mlp_chip, x, traces, [layer.layer for layer in export.layers])


def test_conv_chain_as_sparse_layers_equals_the_engine(tmp_path, lava_netx):
    """Conv -> LIF -> SumPool -> Conv -> LIF -> Flatten -> Affine -> LI: st2chip keeps each chain multiplied
    out as CSR; netx gets dense matrices and builds Sparse synapses (sparse_fc_layer=True)."""
    rng = np.random.default_rng(6)

    def lif(shape):
        beta = rng.uniform(0.8, 0.9, shape)
        return nir.LIF(tau=DT / (1 - beta), r=1 / (1 - beta), v_leak=np.zeros(shape),
                       v_threshold=rng.uniform(0.9, 1.1, shape), v_reset=np.zeros(shape))

    def conv(c_out, c_in):
        return nir.Conv2d(input_shape=None, weight=rng.normal(0.2, 0.5, (c_out, c_in, 3, 3)), stride=1, padding=1,
                          dilation=1, groups=1, bias=np.zeros(c_out))

    nodes = {"input": nir.Input(input_type={"input": np.array([1, 6, 6])}),
             "c1": conv(3, 1), "l1": lif((3, 6, 6)),
             "pool": nir.SumPool2d(kernel_size=np.array([2, 2]), stride=np.array([2, 2]), padding=np.array([0, 0])),
             "c2": conv(4, 3), "l2": lif((4, 3, 3)),
             "flat": nir.Flatten(input_type={"input": np.array([4, 3, 3])}),
             "fc": nir.Affine(weight=rng.normal(0, 0.4, (5, 36)), bias=np.zeros(5)),
             "out": nir.LI(tau=np.full(5, 0.005), r=np.ones(5), v_leak=np.zeros(5)),
             "output": nir.Output(output_type={"output": np.array([5])})}
    order = list(nodes)
    graph = normalize(nir.NIRGraph(nodes=nodes, edges=list(zip(order[:-1], order[1:])), metadata={"dt": DT},
                                   type_check=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        chip = lower(graph, decay_groups=1)
    assert {s.form for s in chip.synapses if s.target == "l1"} == {"sparse"}
    export = netx.export_netx(chip, tmp_path / "cnn.h5")
    assert export.complete and export.sparse and any("sparse_fc_layer=True" in n for n in export.notes)
    x = _spikes(7, (3, 10, 36), 0.4)
    _assert_same(chip, x, netx.run(export, x), ["l1", "l2", "out"])


def test_recurrent_layer_becomes_dense_rec_and_equals_the_engine(tmp_path, lava_netx):
    rng = np.random.default_rng(8)
    chip = ChipGraph([InputPort("input", 12)], [_pop("A", 10), _pop("B", 6)],
                     [_group(rng, "input", "A", 10, 12), _group(rng, "A", "A", 10, 10, scale=60, feedback=True),
                      _group(rng, "A", "B", 6, 10)])
    export = netx.export_netx(chip, tmp_path / "rec.h5")
    assert [layer.kind for layer in export.layers] == ["dense_rec", "dense"]
    with h5py.File(tmp_path / "rec.h5") as fh:
        np.testing.assert_array_equal(fh["layer/1/weight_rec"][()], 2 * chip.synapses[1].dense())
    x = _spikes(9, (2, 10, 12), 0.4)
    _assert_same(chip, x, netx.run(export, x), ["A", "B"])  # one run per sample (recurrence)
