"""Lava starts one OS process per process of the network: a run that would not fit in memory is refused first."""

import nir
import numpy as np
import pytest

from st2chip import limits
from st2chip.chip.lower import lower
from st2chip.errors import InputError
from st2chip.graph.normalize import normalize
from st2chip.targets import lava

DT = 1e-3


def _recurrent_chip(decay_groups: int):
    """8 LIF neurons with 8 different leaks, fed by 4 inputs and by themselves."""
    beta = np.linspace(0.6, 0.95, 8)
    rng = np.random.default_rng(0)
    nodes = {"input": nir.Input(input_type={"input": np.array([4])}),
             "w_in": nir.Affine(weight=rng.normal(0.5, 0.2, (8, 4)), bias=np.zeros(8)),
             "lif": nir.LIF(tau=DT / (1 - beta), r=1 / (1 - beta), v_leak=np.zeros(8),
                            v_threshold=np.ones(8), v_reset=np.zeros(8)),
             "w_rec": nir.Affine(weight=rng.normal(0, 0.3, (8, 8)), bias=np.zeros(8)),
             "output": nir.Output(output_type={"output": np.array([8])})}
    edges = [("input", "w_in"), ("w_in", "lif"), ("lif", "w_rec"), ("w_rec", "lif"), ("lif", "output")]
    graph = normalize(nir.NIRGraph(nodes=nodes, edges=edges, metadata={"dt": DT}, type_check=False))
    return lower(graph, decay_groups=decay_groups)


def test_process_count_grows_with_the_populations():
    one, four = _recurrent_chip(1), _recurrent_chip(4)
    assert len(four.populations) == 4 and len(four.synapses) == 4 + 16
    # the one input source, 4 populations, 20 synapse groups, one recorder
    assert lava.process_count(four) == 1 + 4 + 20 + 1
    assert lava.process_count(one) == 1 + 1 + 2 + 1


def test_a_run_over_the_memory_budget_is_refused_before_lava_starts():
    chip = _recurrent_chip(4)
    x = {"input": np.ones((1, 5, 4), np.uint8)}
    limits.set_memory_budget("200M")
    try:
        with pytest.raises(InputError, match=r"lava: 26 Lava processes .*decay-groups.* would need 442"):
            lava.run(chip, x)
    finally:
        limits.set_memory_budget(None)
