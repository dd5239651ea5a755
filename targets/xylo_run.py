"""A XyloGraph run as a whole chip run and read back as the float model's layers.

A sample of T steps runs as T + ``latency`` chip steps (the last ``latency`` of them zero input), on
st2chip's Xylo engine or on SynSense's xylosim, and each NIR layer of the chip is read at its own
depth: layer ``L`` at chip steps ``L.depth .. L.depth + T``, the outputs over ``run.aligned(latency, T)``.
Its :class:`~st2chip.traces.Traces` then line up step for step with the float interpreter's. A readout is
scored as the float model scores that layer (:func:`st2chip.graph.simulate.simulate`): spike counts over the
T steps, or, for output neurons that never spike (an LI / I readout: threshold at the top of the 16-bit
range), their voltage at the last step.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from st2chip.errors import InputError
from st2chip.traces import Traces
from st2chip.xylo.xylograph import READOUT_THRESHOLD, RUN_FIELDS, XyloGraph, XyloLayer, XyloRun

ENGINE = "engine"
ORACLE = "xylosim"


def counts_of(graph: XyloGraph, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The chip's input counts ``(batch, steps, n_inputs)``: each Input node's array, in ``input_names`` order."""
    names = list(dict.fromkeys(graph.input_names)) or list(inputs)
    missing = [n for n in names if n not in inputs]
    if missing:
        raise InputError(f"inputs: the Xylo graph reads Input node(s) {', '.join(names)}; missing "
                         f"{', '.join(missing)}")
    from st2chip.targets.xylo_engine import check_counts
    return check_counts(graph, np.concatenate([np.asarray(inputs[n]) for n in names], axis=2))


def _runner(backend: str, device: str | None) -> Callable[[XyloGraph, np.ndarray], XyloRun]:
    if backend in (ENGINE, "reference"):
        from st2chip.targets.xylo_engine import run_xylo
        return lambda graph, counts: run_xylo(graph, counts, record=True, device=device or "cpu")
    if backend == ORACLE:
        from st2chip.targets.xylosim_run import run_xylosim
        return lambda graph, counts: run_xylosim(graph, counts, record=True)
    raise InputError(f"--backend {backend}: a Xylo target runs on {ENGINE} or {ORACLE} (float: the NIR graph)")


def run_padded(graph: XyloGraph, counts: np.ndarray, *, backend: str = ENGINE, device: str | None = None,
               batch_size: int | None = None) -> XyloRun:
    """``counts`` ``(batch, T, n)`` on ``backend`` with ``graph.latency`` zero steps appended, ``batch_size``
    samples at a time (None: all at once): the whole chip run, T + latency steps."""
    if batch_size is not None and batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    run = _runner(backend, device)
    size = batch_size or max(counts.shape[0], 1)
    padded = np.concatenate([counts, np.zeros((counts.shape[0], graph.latency, counts.shape[2]), counts.dtype)], 1)
    parts = [run(graph, padded[i:i + size]) for i in range(0, padded.shape[0], size)]
    join = lambda name: (None if getattr(parts[0], name) is None  # noqa: E731
                         else np.concatenate([np.asarray(getattr(p, name)) for p in parts]))
    return XyloRun(*(join(name) for name in RUN_FIELDS))


def scored_by_voltage(graph: XyloGraph, layer: XyloLayer) -> bool:
    """An output layer whose neurons never spike (threshold at the top of the 16-bit range): a readout."""
    return layer.output and bool(np.all(graph.outputs.threshold[layer.start:layer.stop] == READOUT_THRESHOLD))


def xylo_traces(graph: XyloGraph, run: XyloRun, steps: int, inputs: dict[str, np.ndarray], backend: str) -> Traces:
    """A whole chip run (T + latency steps) as :class:`Traces` of the NIR layers, each read at its own depth."""
    spikes, voltages, scores = {}, {}, []
    for layer in graph.layers:
        s, v = (run.output_spikes, run.output_v) if layer.output else (run.hidden_spikes, run.hidden_v)
        window = slice(layer.depth, layer.depth + steps)
        cut = lambda a: a[:, window, layer.start:layer.stop]  # noqa: E731
        if v is not None:
            voltages[layer.name] = cut(v)
        if scored_by_voltage(graph, layer):
            scores.append(cut(v)[:, -1])
            continue
        spikes[layer.name] = cut(s).astype(np.uint8)
        if layer.output:
            scores.append(spikes[layer.name].sum(axis=1, dtype=np.int64))
    batch = run.output_spikes.shape[0]
    return Traces(backend, dict(inputs), spikes, voltages,
                  np.concatenate(scores, axis=1) if scores else np.zeros((batch, 0)),
                  meta={"steps": steps, "latency": graph.latency})


def run_traces(graph: XyloGraph, inputs: dict[str, np.ndarray], *, backend: str = ENGINE,
               device: str | None = None, batch_size: int | None = None, **_: Any) -> Traces:
    """``inputs`` (one array ``(batch, T, n)`` per Input node) through ``graph`` on ``backend``, as Traces
    (``batch_size`` samples at a time; None: all at once)."""
    counts = counts_of(graph, inputs)
    run = run_padded(graph, counts, backend=backend, device=device, batch_size=batch_size)
    return xylo_traces(graph, run, counts.shape[1], inputs, backend)
