"""A XyloGraph on SynSense's xylosim 0.1.3 (``xylosim.v2``): the oracle st2chip's Xylo engine is checked against.

xylosim is a C++ simulator of one Xylo layer; it runs one sample at a time (state zeroed by
``reset_all()`` between samples) and records every neuron's ``v`` and ``i`` per step.
"""

from __future__ import annotations

import numpy as np

from st2chip.errors import InputError
from st2chip.targets.xylo_engine import check_counts
from st2chip.xylo.xylograph import RUN_FIELDS, XyloGraph, XyloRun


class XylosimLayer:
    """One XyloGraph built as a ``xylosim.v2.XyloLayer``.

    The C++ layer holds raw pointers to the XyloSynapse objects: this object keeps them referenced
    for as long as the layer lives (xylosim segfaults otherwise).
    """

    def __init__(self, graph: XyloGraph) -> None:
        xylosim = _import_xylosim()
        self.synapses = [_synapses(xylosim.XyloSynapse, w) for w in (graph.w_in, graph.w_rec, graph.w_out)]
        hid, out = graph.hidden, graph.outputs
        ints = lambda a: [int(v) for v in a]  # noqa: E731
        self.layer = xylosim.XyloLayer(
            *self.synapses, [[] for _ in range(graph.n_hidden)], ints(hid.threshold), ints(out.threshold), True,
            ints(hid.bias), ints(out.bias), graph.shift_in, graph.shift_rec, graph.shift_out, ints(hid.dash_mem),
            ints(out.dash_mem), [[int(d)] for d in hid.dash_syn], [[int(d)] for d in out.dash_syn], "st2chip")
        self.n_hidden, self.n_outputs = graph.n_hidden, graph.n_outputs

    def run(self, counts: np.ndarray, record: bool) -> dict[str, np.ndarray]:
        """One sample's counts ``(steps, n_inputs)`` from zero state: spikes (and v, i) as ``(steps, n)``."""
        self.layer.reset_all()
        steps = counts.shape[0]
        self.layer.evolve(counts.tolist())  # uint8 counts, which xylosim clips to 15 itself
        per_step = lambda rec, n: np.asarray(rec, dtype=np.int16).reshape(steps, n)  # noqa: E731
        per_neuron = lambda rec, n: np.asarray(rec, dtype=np.int16).reshape(n, steps).T  # noqa: E731
        run = {"hidden_spikes": per_step(self.layer.rec_recurrent_spikes, self.n_hidden),
               "output_spikes": per_step(self.layer.rec_out_spikes, self.n_outputs)}
        if record:
            run.update(hidden_v=per_neuron(self.layer.rec_v_mem, self.n_hidden),
                       hidden_i=per_neuron(self.layer.rec_i_syn, self.n_hidden),
                       output_v=per_neuron(self.layer.rec_v_mem_out, self.n_outputs),
                       output_i=per_neuron(self.layer.rec_i_syn_out, self.n_outputs))
        return run


def run_xylosim(graph: XyloGraph, counts, *, record: bool = True) -> XyloRun:
    """Run ``graph`` on input ``counts`` ``(batch, steps, n_inputs)`` in xylosim, one sample at a time:
    the same arrays as :func:`~st2chip.targets.xylo_engine.run_xylo`."""
    x = check_counts(graph, counts)
    sim = XylosimLayer(graph)
    runs = [sim.run(sample, record) for sample in x]
    steps = x.shape[1]
    sizes = {"hidden": graph.n_hidden, "output": graph.n_outputs}
    names = RUN_FIELDS if record else RUN_FIELDS[:2]
    return XyloRun(**{name: np.stack([r[name] for r in runs]) if runs else
                      np.zeros((0, steps, sizes[name.split("_")[0]]), np.int16) for name in names})


def _synapses(synapse: type, weights: np.ndarray) -> list[list]:
    """Per source row: a XyloSynapse to each target with a non-zero weight (the layer's one synapse, id 0)."""
    return [[synapse(int(j), 0, int(row[j])) for j in np.flatnonzero(row)] for row in weights]


def _import_xylosim():
    try:
        from xylosim import v2
    except ImportError as err:
        raise InputError(f"cross-checking on xylosim needs SynSense's xylosim 0.1.3, which is not installed here "
                         f"({err}); install it with: pip install xylosim==0.1.3 (or make)") from None
    return v2
