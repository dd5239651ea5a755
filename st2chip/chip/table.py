"""A per-layer table of a ChipGraph that fits a terminal (what ``st2chip map`` prints)."""

from __future__ import annotations

from st2chip.chip.chipgraph import ChipGraph


def neuron_model(chip: ChipGraph, layer: str) -> str:
    """``LIF`` where Lava's own LIF runs the layer, else ``own (...)``: why it needs st2chip's neuron model."""
    pops = chip.layer_populations(layer)
    names = {p.name for p in pops}
    out = [s for s in chip.synapses if s.source in names]
    needs = [why for why, yes in (("subtract", any(p.reset == "subtract" for p in pops)),
                                  ("recurrent", any(s.feedback for s in out)),
                                  ("delayed", any(s.lag for s in out))) if yes]
    return f"own ({', '.join(needs)})" if needs else "LIF"


def layer_rows(chip: ChipGraph) -> list[dict]:
    """One dict per layer: neurons, populations, neuron model, synapses, non-zeros, bits, exponents, errors."""
    rows = []
    for layer in chip.layers():
        pops = chip.layer_populations(layer)
        names = {p.name for p in pops}
        syns = [s for s in chip.synapses if s.target in names]
        info = chip.report.get("layers", {}).get(layer, {})
        rows.append({
            "layer": layer,
            "kind": info.get("kind", "?"),
            "neurons": chip.layer_size(layer),
            "populations": len(pops),
            "model": neuron_model(chip, layer),
            "linear": info.get("chains", ["Affine"]),
            "dv": sorted({p.dv for p in pops}),
            "vth": sorted({p.vth for p in pops}) if not pops[0].readout else None,
            "synapses": sum(s.shape[0] * s.shape[1] for s in syns),
            "nonzero": sum(s.nnz for s in syns),
            "form": sorted({s.form for s in syns}),
            "weight_bits": 8,
            "exp": sorted({s.exp for s in syns}),
            "weight_error": info.get("weight_error", max((s.error for s in syns), default=0.0)),
            "leak_error": info.get("leak_error", 0.0),
            "bias_error": info.get("bias_error", 0.0),
        })
    return rows


def format_table(chip: ChipGraph) -> str:
    """Render :func:`layer_rows` as aligned text plus a totals line."""
    header = ("layer", "kind", "model", "neurons", "pops", "synapses", "nonzero", "form", "from", "bits", "exp",
              "w-err %", "leak-err", "vth")
    lines = []
    rows = layer_rows(chip)
    for r in rows:
        lines.append((r["layer"], r["kind"], r["model"], str(r["neurons"]), str(r["populations"]),
                      str(r["synapses"]), str(r["nonzero"]), "/".join(r["form"]), " + ".join(r["linear"]),
                      str(r["weight_bits"]),
                      ",".join(map(str, r["exp"])), f"{100 * r['weight_error']:.2f}",
                      f"{r['leak_error']:.2e}", "-" if r["vth"] is None else ",".join(map(str, r["vth"]))))
    widths = [max(len(h), *(len(l[i]) for l in lines)) if lines else len(h) for i, h in enumerate(header)]
    left = {0, 1, 2, 8}  # text columns
    fmt = "  ".join(f"{{:<{w}}}" if i in left else f"{{:>{w}}}" for i, w in enumerate(widths))
    out = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*l) for l in lines]
    total_syn = sum(r["synapses"] for r in rows)
    total_nnz = sum(r["nonzero"] for r in rows)
    out.append(f"{len(chip.populations)} populations, {sum(r['neurons'] for r in rows)} neurons, "
               f"{len(chip.synapses)} synapse groups, {total_nnz}/{total_syn} non-zero weights, "
               f"dt={chip.report['dt']:g} s, pipeline depth {chip.depth}")
    if any(r["model"] != "LIF" for r in rows):
        out.append("model 'own': st2chip's Lava neuron, not Lava's LIF (reset by subtraction; a recurrent or delayed "
                   "source is silenced at the end of each sample's window)")
    return "\n".join(out)
