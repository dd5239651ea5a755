"""``st2chip map --target xylo-…``: a XyloGraph per layer, and how much of the chip it uses."""

from __future__ import annotations

import numpy as np

from st2chip.xylo.spec import XyloSpec
from st2chip.xylo.xylograph import XyloGraph, XyloLayer

HEADER = ("layer", "neurons", "slice", "depth", "dash_syn", "dash_mem", "leak-err", "w-err %", "shift", "vth")


def _span(values: np.ndarray) -> str:
    if not values.size:
        return "-"
    lo, hi = int(values.min()), int(values.max())
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


def _shift(graph: XyloGraph, layer: XyloLayer) -> tuple[str, int]:
    """The weight matrix into ``layer`` (input, recurrent or output) and its shift."""
    if layer.output:
        return "out", graph.shift_out
    return ("in", graph.shift_in) if layer.depth == 0 else ("rec", graph.shift_rec)


def layer_rows(graph: XyloGraph) -> list[dict]:
    """One record per NIR layer: where it lies, its leak shifts and thresholds, the lowering's errors."""
    rows = []
    for layer in graph.layers:
        neurons = graph.outputs if layer.output else graph.hidden
        part = slice(layer.start, layer.stop)
        matrix, shift = _shift(graph, layer)
        errors = graph.report.get(layer.name, {})
        rows.append({"layer": layer.name, "neurons": layer.size, "population": "output" if layer.output else "hidden",
                     "start": layer.start, "stop": layer.stop, "depth": layer.depth,
                     "dash_syn": _span(neurons.dash_syn[part]), "dash_mem": _span(neurons.dash_mem[part]),
                     "threshold": _span(neurons.threshold[part]), "matrix": matrix, "shift": shift,
                     "leak_error": errors.get("leak_error"), "weight_error": errors.get("weight_error")})
    return rows


def chip_use(graph: XyloGraph, spec: XyloSpec) -> dict:
    """Inputs, hidden and output neurons used, against the chip's limits."""
    return {"chip": spec.name, "latency": graph.latency,
            "inputs": [graph.n_inputs, spec.inputs], "hidden": [graph.n_hidden, spec.hidden],
            "outputs": [graph.n_outputs, spec.outputs]}


def _number(value, scale: float = 1.0, spec: str = ".2e") -> str:
    return "-" if value is None else format(scale * float(value), spec)


def format_table(graph: XyloGraph, spec: XyloSpec) -> str:
    """:func:`layer_rows` as aligned text, then one line of chip use."""
    lines = [(r["layer"], str(r["neurons"]), f"{r['population'][:3]} {r['start']}:{r['stop']}", str(r["depth"]),
              r["dash_syn"], r["dash_mem"], _number(r["leak_error"]), _number(r["weight_error"], 100, ".2f"),
              f"{r['matrix']} {r['shift']}", r["threshold"]) for r in layer_rows(graph)]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(HEADER)]
    left = {0, 2, 8}
    cell = lambda text, i: text.ljust(widths[i]) if i in left else text.rjust(widths[i])  # noqa: E731
    out = ["  ".join(cell(h, i) for i, h in enumerate(HEADER)).rstrip()]
    out += ["  ".join(cell(t, i) for i, t in enumerate(line)).rstrip() for line in lines]
    use = chip_use(graph, spec)
    out.append(f"{spec.name}: inputs {use['inputs'][0]}/{spec.inputs}, hidden neurons {use['hidden'][0]}/"
               f"{spec.hidden}, output neurons {use['outputs'][0]}/{spec.outputs}; outputs lag inputs by "
               f"{graph.latency} step{'s' if graph.latency != 1 else ''}; design rules passed")
    return "\n".join(out)
