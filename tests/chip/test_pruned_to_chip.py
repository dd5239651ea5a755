"""Pruning reaches the chip: L1P zeros become CSR synapses and cost no synaptic operations."""

import torch

from st2chip.analysis.energy import energy_report
from st2chip.chip.lower import lower
from st2chip.graph.normalize import normalize
from st2chip.converters.mlp import mlp_to_nir
from st2chip.learn.pruning import magnitude_prune, make_permanent
from st2chip.targets import engine


def test_l1p_sparsity_survives_lowering_and_cuts_sops(random_mlp, digit_spikes):
    dense = random_mlp()
    pruned = random_mlp()
    magnitude_prune(pruned, 0.8, "layer")
    make_permanent(pruned)
    x = {"input": digit_spikes(6)}
    chips = {name: lower(mlp_to_nir(m)) for name, m in (("dense", dense), ("pruned", pruned))}
    for chip, model in ((chips["pruned"], pruned),):
        for syn, linear in zip(chip.synapses, model.linears):
            zeros = (linear.weight == 0).numpy()
            assert syn.form == "sparse"
            assert not syn.dense()[zeros].any(), "a pruned weight came back on chip"
            assert syn.nnz <= int((~torch.as_tensor(zeros)).sum())
    sops = {name: energy_report(chip, engine.run(chip, x)).totals()["acs"] for name, chip in chips.items()}
    assert sops["pruned"] < 0.5 * sops["dense"]


def test_low_rank_chain_is_multiplied_out(random_mlp):
    import nir
    import numpy as np

    graph = mlp_to_nir(random_mlp())
    w = graph.nodes["fc1"].weight
    u, s, vt = np.linalg.svd(w, full_matrices=False)
    rank = 3
    v_node = nir.Affine(weight=(np.diag(s[:rank]) @ vt[:rank]), bias=np.zeros(rank))
    u_node = nir.Affine(weight=u[:, :rank], bias=graph.nodes["fc1"].bias)
    graph.nodes.pop("fc1")
    graph.nodes["fc1.V"], graph.nodes["fc1.U"] = v_node, u_node
    graph.edges = [e for e in graph.edges if "fc1" not in e] + [("input", "fc1.V"), ("fc1.V", "fc1.U"),
                                                                 ("fc1.U", "lif1")]
    chip = lower(normalize(graph))
    syn = next(s for s in chip.synapses if s.source == "input")
    assert syn.form == "lowrank" and chip.report["layers"]["lif1"]["affines"] == 2


def test_affine_chain_product_and_bias():
    import nir
    import numpy as np

    from st2chip.chip.lowering.paths import chains as _chains

    rng = np.random.default_rng(0)
    v_w, v_b = rng.normal(size=(2, 5)), rng.normal(size=2)
    u_w, u_b = rng.normal(size=(4, 2)), rng.normal(size=4)
    graph = nir.NIRGraph(nodes={"in": nir.Input(input_type={"input": np.array([5])}),
                                "V": nir.Affine(weight=v_w, bias=v_b), "U": nir.Affine(weight=u_w, bias=u_b),
                                "n": nir.IF(r=np.ones(4), v_threshold=np.ones(4), v_reset=np.zeros(4)),
                                "out": nir.Output(output_type={"output": np.array([4])})},
                         edges=[("in", "V"), ("V", "U"), ("U", "n"), ("n", "out")], type_check=False)
    preds = {dst: [src] for src, dst in graph.edges}
    [path] = _chains(graph, "U", "n", preds, set(), 1e-3)  # from the edge into neuron n
    assert (path.source, path.affines, path.lag, path.recurrent) == ("in", 2, 0, False)
    np.testing.assert_allclose(path.weight.multiplied_out("in", "n").toarray(), u_w @ v_w)  # held as its factors
    np.testing.assert_allclose(path.bias, u_w @ v_b + u_b)


def test_a_sum_into_a_linear_node_splits_into_one_path_per_branch():
    """NIR adds a node's inputs: U fed by two sources is two paths through U, U's bias counted once."""
    import nir
    import numpy as np

    from st2chip.chip.lowering.paths import chains as _chains

    rng = np.random.default_rng(1)
    u_w, u_b = rng.normal(size=(3, 4)), rng.normal(size=3)
    lif = lambda n: nir.IF(r=np.ones(n), v_threshold=np.ones(n), v_reset=np.zeros(n))  # noqa: E731
    graph = nir.NIRGraph(nodes={"in": nir.Input(input_type={"input": np.array([4])}),
                                "a": lif(4), "s": nir.Scale(scale=np.full(4, 2.0)),
                                "U": nir.Affine(weight=u_w, bias=u_b), "n": lif(3),
                                "out": nir.Output(output_type={"output": np.array([3])})},
                         edges=[("in", "a"), ("in", "s"), ("a", "U"), ("s", "U"), ("U", "n"), ("n", "out")],
                         type_check=False)
    preds: dict = {}
    for src, dst in graph.edges:
        preds.setdefault(dst, []).append(src)
    paths = _chains(graph, "U", "n", preds, set(), 1e-3)
    assert [p.source for p in paths] == ["a", "in"]
    np.testing.assert_allclose(paths[0].weight.toarray(), u_w)
    np.testing.assert_allclose(paths[1].weight.toarray(), 2 * u_w)
    np.testing.assert_allclose(paths[0].bias + paths[1].bias, u_b)
