r"""netx backend: the part of a ChipGraph that lava-dl's netx can express, as a netx HDF5 file.

lava-dl's ``netx.hdf5.Network(net_config=...)`` rebuilds a chain of layers from
an HDF5 file (the format slayer's ``export_hdf5`` writes): group ``layer/<i>``
per layer with a ``type`` (``input``, ``dense``, ``dense_rec``, ``conv``,
``flatten``; ``pool``, ``convT``, ``average`` and ``concat`` raise
``NotImplementedError`` in netx 0.6), a ``shape``, integer ``weight`` (and
``weight_rec``) matrices ``(out, in)``, an optional integer ``bias`` and
``delay``, and a ``neuron`` group ``{type: CUBA, iDecay, vDecay, vThMant,
refDelay, gradedSpike}``. netx turns a CUBA layer into Lava's ``LIF``
(``LIFReset`` when the network gets a ``reset_interval``) with ``du = iDecay -
1``, ``dv = vDecay``, ``vth = vThMant``, ``bias_mant = bias`` and a fixed
``bias_exp = 6``, behind a ``Dense`` (``Sparse`` with ``sparse_fc_layer=True``)
whose weights it re-scales to 8 bits with one exponent per layer
(``netx.utils.optimize_weight_bits``): a spike adds ``weight`` to the
neuron's synaptic input, exactly, whatever exponent netx picks. Its block
models carry the ``fixed_pt`` tag: run it on ``Loihi2SimCfg(select_tag="fixed_pt")``.

So a ChipGraph population maps to a netx CUBA layer with
``iDecay = du + 1``, ``vDecay = dv``, ``vThMant = vth``, ``weight = 2·m·2^e``
(what one spike adds on the chip) and ``bias = (bias_mant << bias_exp) / 64``.
:func:`export_netx` writes that for the feed-forward chain the chip graph
starts with — one population per layer (``decay_groups=1``), each fed only by
the layer before (the first by the one input port), plain ``dense`` or, with a
layer's recurrent connection to itself, ``dense_rec`` — and lists every layer
it could not express with the reason (:class:`NotExported`), instead of
dropping it:

- a layer split into several populations (decay groups, outlier neurons):
  netx has one neuron model (one ``du``, ``dv``, ``vth``) per layer;
- reset by subtraction: netx's CUBA neuron resets to zero;
- a refractory step after each spike (``refractory=1``, snnTorch's ``Synaptic``
  reset to zero): netx writes ``refDelay`` but builds Lava's ``LIF``, which has none;
- a second source (skip connection, branch, second input) or feedback to an
  earlier layer: a netx network is a chain with recurrence only within a layer;
- a graph-level delay (``nir.Delay``): netx stores synaptic delays, but the
  plain LIF neurons it builds cannot keep a delayed spike from reaching the next
  sample (st2chip's Lava backend silences such sources at the end of a window);
- weights netx cannot hold exactly: a negative exponent makes Lava shift the
  summed input (``floor(Σ 2m s / 2^k)``), netx adds integer weights per synapse,
  so weights ``2m`` that are not multiples of ``2^k`` are inexact; a largest
  weight over 254 (with negative ones) is clipped by netx;
- biases that are not multiples of 64 (netx fixes ``bias_exp = 6``).

Inexact weights and biases are rounded instead when ``approximate=True``; the
largest error is then recorded per layer. Everything after the first layer that
is not exported is listed too (a netx network is one chain). A chip whose first
layer cannot be expressed is refused with a :class:`~st2chip.errors.GraphError`
naming that layer.

What the file cannot say by itself:

- weights are stored dense (netx's HDF5 has no sparse layout): layers whose
  groups are CSR (pruned, or a convolution/pooling chain that st2chip keeps
  multiplied out) are exported as ``dense`` layers; build the network with
  ``sparse_fc_layer=True`` to get Lava ``Sparse`` synapses again. netx's
  ``conv``/``flatten`` blocks are not used (a ChipGraph stores no kernels);
- a readout population (non-spiking, ``vth = 2^17 - 1``) is a CUBA layer with
  that threshold, which it does not reach short of saturating ``v`` (as on the
  chip); its result is its voltage (probe
  ``network.layers[i].neuron.v``), not netx's output spikes;
- timing: netx gives every layer one step of synaptic delay, like a
  ChipGraph, so layer ``i`` (0-based) sits at depth ``i + 1``. Build the network
  with ``reset_interval = T + depth`` and ``reset_offset = 1`` (netx resets layer
  ``i`` at step ``reset_offset + 1 + i`` of each window: the step a sample's first
  input reaches it, as st2chip's Lava backend does) and feed samples back to
  back, each padded with ``depth`` silent steps; :meth:`NetxExport.network_kwargs`
  gives these arguments. Layer ``i`` shows sample ``k``'s step ``j`` at global
  step ``k (T + depth) + i + 2 + j`` (1-based), which :func:`run` cuts out.

:func:`run` builds ``netx.hdf5.Network`` from the file and runs it on Lava's
fixed-point simulator in a child process (as :mod:`.lava` does), returning
:class:`~st2chip.traces.Traces` per exported layer.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from st2chip.chip.chipgraph import BIAS_MANT_RANGE, ChipGraph, Population, SynapseGroup
from st2chip.chip.lowering.precision import RESIDUAL_SUFFIX
from st2chip.errors import GraphError, InputError
from st2chip.io import write_bytes
from st2chip.traces import Traces

FORMAT = "st2chip-netx/1"
NETX_BIAS_EXP = 6        # netx's CUBA layers: bias_mant = bias, bias_exp = 6
NETX_RESET_OFFSET = 1    # Network(reset_offset=1): layer i resets at window step 2 + i = its depth + 1
COMPRESS_ABOVE = 1 << 16  # weight matrices with more entries are stored gzip-compressed (mostly zeros when sparse)


@dataclass
class NetxLayer:
    """One exported layer: ``layer/<index>`` in the file."""

    index: int
    layer: str
    population: str
    kind: str            # "dense" or "dense_rec"
    size: int
    depth: int
    form: str            # st2chip's weight form: dense, sparse (CSR) or lowrank; stored dense in the file
    readout: bool = False
    weight_error: float = 0.0  # largest |exported - chip| weight, in synaptic input units (0: exact)
    bias_error: float = 0.0    # largest |exported - chip| bias, in voltage units (0: exact)

    @property
    def exact(self) -> bool:
        return self.weight_error == 0 and self.bias_error == 0


@dataclass
class NotExported:
    """A layer (or input) that netx cannot express, and why."""

    name: str
    reason: str


@dataclass
class NetxExport:
    """What :func:`export_netx` wrote (``layers``) and what it could not (``not_exported``)."""

    path: Path
    input: str
    input_size: int
    layers: list[NetxLayer]
    not_exported: list[NotExported] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def depth(self) -> int:
        """Steps from the input to the last exported layer (one per layer)."""
        return len(self.layers)

    @property
    def exact(self) -> bool:
        """True when every exported layer reproduces the chip bit for bit."""
        return all(layer.exact for layer in self.layers)

    @property
    def complete(self) -> bool:
        """True when the whole chip graph was exported."""
        return not self.not_exported

    @property
    def sparse(self) -> bool:
        """True when some exported weights came from CSR groups (build with ``sparse_fc_layer=True``)."""
        return any(layer.form == "sparse" for layer in self.layers)

    def network_kwargs(self, steps: int) -> dict:
        """Arguments for ``netx.hdf5.Network`` that run samples of ``steps`` steps back to back as the chip does."""
        return {"net_config": str(self.path), "reset_interval": int(steps) + self.depth,
                "reset_offset": NETX_RESET_OFFSET, "sparse_fc_layer": self.sparse}

    def to_dict(self) -> dict:
        return {"format": FORMAT, "path": str(self.path), "input": self.input, "input_size": self.input_size,
                "exact": self.exact, "layers": [asdict(layer) for layer in self.layers],
                "not_exported": [asdict(item) for item in self.not_exported], "notes": list(self.notes)}

    @classmethod
    def from_dict(cls, data: dict, path: str | os.PathLike | None = None) -> "NetxExport":
        return cls(Path(path if path is not None else data["path"]), data["input"], int(data["input_size"]),
                   [NetxLayer(**layer) for layer in data["layers"]],
                   [NotExported(**item) for item in data.get("not_exported", [])], list(data.get("notes", [])))

    def describe(self) -> str:
        """A few lines for people: what went where, what did not and why."""
        lines = [f"netx HDF5 written to {self.path}: {len(self.layers)} layer(s) from input "
                 f"'{self.input}' ({self.input_size})"]
        for layer in self.layers:
            errors = [f"{what} error <= {value:g}" for what, value in (("weight", layer.weight_error),
                                                                        ("bias", layer.bias_error)) if value]
            extra = f"  [approximate: {', '.join(errors)}]" if errors else ""
            lines.append(f"  layer/{layer.index}  {layer.kind:<9} {layer.layer} ({layer.size}, from {layer.form} "
                         f"weights{', readout' if layer.readout else ''}){extra}")
        if self.not_exported:
            lines.append("not exported (netx cannot express):")
            lines += [f"  {item.name}: {item.reason}" for item in self.not_exported]
        if self.notes:
            lines.append("notes:")
            lines += [f"  {note}" for note in self.notes]
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- weights


def _netx_effective(weight: np.ndarray) -> np.ndarray | None:
    """What one spike of each source adds to each target once netx 0.6 and Lava's fixed-point ``Dense`` have
    processed the integer matrix ``weight`` from the file; None where the result is not a per-synapse integer
    (the final shift would round the sum) or netx's arithmetic breaks down (shifts by a negative count).

    Mirrors ``lava.lib.dl.netx.utils.optimize_weight_bits`` (clip to [-256, 254], scale to 8 bits, one
    exponent) and ``PyDenseModelBitAcc`` (``clip_weights``, ``truncate_weights``, then the summed input
    shifted by the exponent).
    """
    w = np.asarray(weight, dtype=np.int64)
    if w.size == 0:
        return w
    mx, mn = int(w.max()), int(w.min())
    if (mx > 254 and mn < 0) or (mn < -256 and mx > 0):
        return None  # netx clips (and the clipped matrix could still be scaled: not what the chip computes)
    if mx < 0:
        signed, scale = 0, -256 / mn
    elif mn >= 0:
        if mx == 0:
            return None  # netx divides by the largest weight
        signed, scale = 0, 255 / mx
    else:
        signed = 1
        scale = min(127 / mx if mx > 0 else np.inf, -128 / mn)
    scale_bits = int(np.floor(np.log2(scale))) + signed
    n = 8
    while n > 0 and np.any(w % (1 << n)):
        n -= 1
    n -= signed
    num_weight_bits = 8 - scale_bits - n
    weight_exp = -scale_bits
    if scale_bits < 0:
        return None
    w = w << scale_bits
    # Lava's Dense model: sign mode from the weights, clip to 8 bits (+ sign), drop the truncated bits
    if w.min() >= 0:
        mode = "exc"
    elif w.max() <= 0:
        mode = "inh"
    else:
        mode = "mixed"
    mixed = int(mode == "mixed")
    if mode == "inh":
        w = -w
    w = np.clip(w, -256 * mixed, 255)
    truncate = 8 - num_weight_bits + mixed
    if truncate < 0:
        return None
    w = (w >> truncate) << truncate
    if mode == "inh":
        w = -w
    if weight_exp > 0:
        return w << weight_exp
    k = -weight_exp
    if np.any(w % (1 << k)):
        return None
    return w >> k


def _target_weights(group: SynapseGroup, approximate: bool) -> tuple[np.ndarray | None, float, str]:
    """Integer netx weights ``(out, in)`` for a group, the largest error, and why it is None when inexact."""
    two_m = 2 * group.dense()
    if group.exp >= 0:
        return two_m << group.exp, 0.0, ""
    k = -group.exp
    off = two_m % (1 << k) != 0
    if not off.any():
        return two_m >> k, 0.0, ""
    if not approximate:
        return None, 0.0, (f"weight exponent {group.exp} of '{group.name}': Lava shifts the summed input right by "
                           f"{k} bits, netx adds integer weights per synapse, and {int(off.sum())} of "
                           f"{two_m.size} weights (2 x mantissa) are not multiples of {1 << k} (--approximate "
                           f"rounds them)")
    exact = two_m / float(1 << k)
    rounded = np.rint(exact).astype(np.int64)
    return rounded, float(np.abs(rounded - exact).max()), ""


def _target_bias(pop: Population, approximate: bool) -> tuple[np.ndarray | None, float, str]:
    """netx ``bias`` (mantissa with exponent 6) for a population, its largest error (voltage units), why not."""
    bias = pop.bias
    lo, hi = BIAS_MANT_RANGE
    mant = bias >> NETX_BIAS_EXP
    if not np.any(bias % (1 << NETX_BIAS_EXP)) and mant.min(initial=0) >= lo and mant.max(initial=0) <= hi:
        return mant, 0.0, ""
    if not approximate:
        bad = int(np.count_nonzero(bias % (1 << NETX_BIAS_EXP)))
        return None, 0.0, (f"netx fixes the bias exponent at {NETX_BIAS_EXP} (bias = mantissa x 64) and "
                           f"{bad} of {bias.size} biases are not multiples of 64 or exceed its 13-bit mantissa "
                           f"(--approximate rounds them)")
    mant = np.clip(np.rint(bias / float(1 << NETX_BIAS_EXP)), lo, hi).astype(np.int64)
    return mant, float(np.abs((mant << NETX_BIAS_EXP) - bias).max(initial=0)), ""


# ----------------------------------------------------------------------------------------------- export


@dataclass
class _Planned:
    layer: NetxLayer
    pop: Population
    weight: np.ndarray
    weight_rec: np.ndarray | None
    bias: np.ndarray


def _structure_reason(chip: ChipGraph, layer: str, prev: str | None) -> tuple[str, Population | None, list, list]:
    """Why ``layer`` is not one netx layer fed by ``prev`` (``""`` when it is); its population and groups."""
    pops = chip.layer_populations(layer)
    if len(pops) != 1:
        outliers = [p.name for p in pops if p.name.endswith("/outliers")]
        why = (f"split into {len(pops)} populations ({', '.join(p.name for p in pops)}"
               + (", with outlier neurons in their own" if outliers else "")
               + "); a netx layer has one neuron model (one du, dv, vth): lower with decay_groups=1 "
                 "(--decay-groups 1)")
        return why, None, [], []
    pop = pops[0]
    if pop.graded:
        return ("a relay of graded values (a fan-in tree or a factored low-rank layer); netx's layers send 0/1 "
                "spikes", pop, [], [])
    if pop.always_on:
        return ("the always-on source of Affine biases into CubaLIF currents; netx's CUBA bias enters v only",
                pop, [], [])
    if pop.reset != "zero":
        return "resets by subtraction; netx's CUBA neuron (Lava's LIF) resets to zero", pop, [], []
    if pop.refractory:
        return ("is held for the step after each spike (refractory); netx's CUBA neuron (Lava's LIF) has no "
                "refractory step", pop, [], [])
    groups = chip.incoming(pop.name)
    forward = [s for s in groups if not s.feedback]
    feedback = [s for s in groups if s.feedback]
    sources = list(dict.fromkeys(s.source for s in forward))
    if not forward:
        return "has no feed-forward input", pop, [], []
    if prev is not None and sources != [prev]:
        others = [s for s in sources if s != prev]
        return (f"takes input from {', '.join(repr(s) for s in others)}"
                + (f" as well as '{prev}'" if prev in sources else f" instead of '{prev}'")
                + " (a skip connection, a branch or a second input); a netx network is a chain, each layer fed "
                  "only by the one before", pop, forward, feedback)
    if len(sources) != 1:
        layer_of = {p.name: p.layer for p in chip.populations}
        source_layers = list(dict.fromkeys(layer_of.get(s, s) for s in sources))
        if prev is None and len(source_layers) == 1:
            return "", pop, forward, feedback  # fed by a layer that is itself split: reported there
        return (f"takes input from {', '.join(repr(s) for s in source_layers)}; netx layers have one source",
                pop, [], [])
    if any(s.name.endswith(RESIDUAL_SUFFIX) for s in forward):
        return ("a residual weight group (--precision 16 or auto): netx holds one 8-bit matrix per layer; lower "
                "with --precision 8", pop, [], [])
    if len(forward) > 1 or forward[0].delay or forward[0].lag:
        delays = sorted({s.delay for s in forward})
        return (f"its input from '{sources[0]}' is delayed by {', '.join(map(str, delays))} extra step(s) "
                f"(nir.Delay); netx stores synaptic delays, but the plain LIF neurons it builds cannot keep "
                f"delayed spikes of one sample from reaching the next (st2chip's Lava backend silences them)",
                pop, forward, feedback)
    foreign = [s for s in feedback if s.source != pop.name]
    if foreign:
        return (f"gets feedback from {', '.join(repr(s.source) for s in foreign)} (a recurrent connection to an "
                f"earlier layer); netx has recurrence only within a layer (dense_rec)", pop, forward, feedback)
    if len(feedback) > 1:
        return "has several recurrent synapse groups; netx's dense_rec holds one", pop, forward, feedback
    return "", pop, forward, feedback


def _plan_layer(chip: ChipGraph, layer: str, prev: str, index: int, approximate: bool
                ) -> tuple[_Planned | None, str]:
    why, pop, forward, feedback = _structure_reason(chip, layer, prev)
    if why:
        return None, why
    assert pop is not None
    weight, w_err, why = _target_weights(forward[0], approximate)
    if weight is None:
        return None, why
    weight_rec = None
    if feedback:
        weight_rec, r_err, why = _target_weights(feedback[0], approximate)
        if weight_rec is None:
            return None, why
        w_err = max(w_err, r_err)
    joint = weight if weight_rec is None else np.hstack((weight, weight_rec))
    effective = _netx_effective(joint)
    if effective is None or not np.array_equal(effective, joint):
        if not joint.any():
            return None, "all its weights are zero (netx divides by the largest weight)"
        return None, (f"netx re-scales a layer's weights to 8 bits with one exponent and cannot hold these "
                      f"(range [{int(joint.min())}, {int(joint.max())}] per spike; netx keeps [-256, 254] and "
                      f"the 8-bit precision of the largest)")
    bias, b_err, why = _target_bias(pop, approximate)
    if bias is None:
        return None, why
    form = forward[0].form
    planned = NetxLayer(index=index, layer=layer, population=pop.name,
                        kind="dense_rec" if weight_rec is not None else "dense", size=pop.size, depth=index,
                        form=form, readout=pop.readout, weight_error=w_err, bias_error=b_err)
    return _Planned(planned, pop, weight, weight_rec, bias), ""


def _string(group, name: str, value: str) -> None:
    """netx's string fields: a (1,) array of fixed-length ASCII, as slayer writes them."""
    group.create_dataset(name, (1,), f"S{max(10, len(value))}", [value.encode("ascii")])


def _matrix(group, name: str, matrix: np.ndarray) -> None:
    data = np.ascontiguousarray(matrix, dtype=np.int32)
    if data.size > COMPRESS_ABOVE:
        group.create_dataset(name, data=data, compression="gzip", compression_opts=4, shuffle=True)
    else:
        group.create_dataset(name, data=data)


def _write(image: io.BytesIO, export: NetxExport, planned: list[_Planned]) -> None:
    import h5py

    with h5py.File(image, "w") as fh:
        fh.attrs["st2chip"] = json.dumps({k: v for k, v in export.to_dict().items() if k != "path"})
        layers = fh.create_group("layer")
        first = layers.create_group("0")
        _string(first, "type", "input")
        first.create_dataset("shape", data=np.array([export.input_size]))
        for plan in planned:
            g = layers.create_group(str(plan.layer.index))
            _string(g, "type", plan.layer.kind)
            g.create_dataset("shape", data=np.array([plan.pop.size]))
            g.create_dataset("inFeatures", data=plan.weight.shape[1])
            g.create_dataset("outFeatures", data=plan.pop.size)
            _matrix(g, "weight", plan.weight)
            if plan.weight_rec is not None:
                _matrix(g, "weight_rec", plan.weight_rec)
            if np.any(plan.bias):
                g.create_dataset("bias", data=plan.bias.astype(np.int32))
            neuron = g.create_group("neuron")
            _string(neuron, "type", "CUBA")
            neuron.create_dataset("iDecay", data=plan.pop.du + 1)  # netx: du = iDecay - 1
            neuron.create_dataset("vDecay", data=plan.pop.dv)
            neuron.create_dataset("vThMant", data=plan.pop.vth)
            neuron.create_dataset("refDelay", data=1)
            neuron.create_dataset("gradedSpike", data=False)


def export_netx(chip: ChipGraph, path: str | os.PathLike, *, approximate: bool = False) -> NetxExport:
    """Write the netx-expressible chain at the start of ``chip`` to the HDF5 file ``path`` (atomically).

    Returns the :class:`NetxExport`: the exported layers, the layers (and inputs) netx cannot express, each
    with its reason, and notes on how to run the file. ``approximate=True`` rounds weights and biases netx
    cannot hold exactly (recording the largest error) instead of stopping there. Raises
    :class:`~st2chip.errors.GraphError` naming the first layer when not even that can be exported, and
    :class:`~st2chip.errors.InputError` for a chip graph without inputs or populations.
    """
    if not chip.inputs or not chip.populations:
        raise InputError("netx export: the chip graph has no input or no population")
    layers = chip.layers()
    first = chip.layer_populations(layers[0])
    start = None
    if len(first) == 1:
        sources = {s.source for s in chip.incoming(first[0].name) if not s.feedback}
        if len(sources) == 1 and next(iter(sources)) in {i.name for i in chip.inputs}:
            start = next(iter(sources))
    if start is None:
        why, *_ = _structure_reason(chip, layers[0], None)
        raise GraphError(f"netx export: {why or 'not fed by one input port'}; nothing to export", node=layers[0])
    port = next(i for i in chip.inputs if i.name == start)
    planned: list[_Planned] = []
    not_exported: list[NotExported] = []
    stopped: str | None = None
    prev = start
    for layer in layers:
        if stopped is None:
            plan, why = _plan_layer(chip, layer, prev, len(planned) + 1, approximate)
            if plan is not None:
                planned.append(plan)
                prev = plan.pop.name
                continue
            if not planned:
                raise GraphError(f"netx export: {why}; nothing to export", node=layer)
            stopped = layer
            not_exported.append(NotExported(layer, why))
            continue
        own, *_ = _structure_reason(chip, layer, None)
        not_exported.append(NotExported(layer, own or f"comes after layer '{stopped}', which is not exported "
                                                    f"(a netx network is one chain)"))
    not_exported += [NotExported(i.name, f"input port; a netx network has one input (exported: '{start}')")
                     for i in chip.inputs if i.name != start]
    notes = [f"every layer adds one step: build netx.hdf5.Network(net_config, reset_interval=T + {len(planned)}, "
             f"reset_offset={NETX_RESET_OFFSET}) for samples of T steps fed back to back, each followed by "
             f"{len(planned)} silent steps; layer/i (depth i) shows a sample's step j at step i + j of its "
             f"window, counting from 0"]
    if any(p.layer.form == "sparse" for p in planned):
        notes.append("weights of CSR groups (pruned, or a convolution/pooling chain) are stored as dense "
                     "matrices (netx's HDF5 has no sparse layout; no conv blocks: a ChipGraph keeps no kernels): "
                     "pass sparse_fc_layer=True to netx.hdf5.Network for Lava Sparse synapses")
    if any(p.layer.form == "lowrank" for p in planned):
        notes.append("low-rank (U·V) groups are exported multiplied out, as the chip graph holds them")
    for p in planned:
        if p.layer.readout:
            notes.append(f"layer/{p.layer.index} ('{p.layer.layer}') is a readout: a CUBA layer with vThMant "
                         f"{p.pop.vth} that it does not reach; its result is its voltage (probe "
                         f"network.layers[{p.layer.index - 1}].neuron.v), not netx's output spikes")
    if port.kind == "analog":
        notes.append(f"input '{start}' is analog on the chip graph; netx's input here takes binary spikes")
    if any(p.layer.kind == "dense_rec" for p in planned):
        notes.append("dense_rec layers: a spike in the last step of one sample reaches the next sample through "
                     "the recurrent synapse (netx's LIFReset integrates what arrives at its reset step); run "
                     "samples in separate runs for exact results (st2chip.targets.netx.run does)")
    export = NetxExport(Path(path), start, port.size, [p.layer for p in planned], not_exported, notes)
    image = io.BytesIO()  # built in memory, written with plain file I/O: a failing write is one OSError
    _write(image, export, planned)
    write_bytes(path, image.getbuffer())
    return export


def read_export(path: str | os.PathLike) -> NetxExport:
    """The :class:`NetxExport` record stored in a file that :func:`export_netx` wrote."""
    import h5py

    try:
        with h5py.File(path, "r") as fh:
            meta = fh.attrs.get("st2chip")
    except OSError as err:
        raise InputError(f"{path}: not a readable HDF5 file ({err})") from None
    if meta is None:
        raise InputError(f"{path}: no st2chip record; was it written by st2chip's netx export?")
    data = json.loads(meta)
    if data.get("format") != FORMAT:
        raise InputError(f"{path}: unknown st2chip netx format {data.get('format')!r} (expected {FORMAT})")
    return NetxExport.from_dict(data, path)


# ----------------------------------------------------------------------------------------------- run


def _import_netx() -> None:
    """Import lava and netx here, once, so that the forked child does not import them again."""
    from .lava import _import_lava

    _import_lava()
    import lava.lib.dl.netx  # noqa: F401


def _simulate(export: NetxExport, source: np.ndarray, window: int, total: int, voltages: list[int]
              ) -> tuple[list[np.ndarray], dict[int, np.ndarray]]:
    """Build ``netx.hdf5.Network`` from the file, run ``total`` steps, return raw spikes and voltages."""
    from lava.lib.dl import netx
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.io.sink import RingBuffer as SpikeSink
    from lava.proc.io.source import RingBuffer
    from lava.proc.monitor.process import Monitor

    kwargs = export.network_kwargs(window - export.depth)
    net = netx.hdf5.Network(**kwargs)
    if len(net.layers) != export.depth:
        raise InputError(f"{export.path}: netx built {len(net.layers)} layers, the st2chip record lists "
                         f"{export.depth}")
    src = RingBuffer(data=source)
    src.s_out.connect(net.inp)
    sinks, monitors = [], {}
    for i, block in enumerate(net.layers):
        sinks.append(SpikeSink(shape=block.neuron.s_out.shape, buffer=total))
        block.neuron.s_out.connect(sinks[-1].a_in)
        if i in voltages:
            monitors[i] = Monitor()
            monitors[i].probe(block.neuron.v, total)
    try:
        net.run(condition=RunSteps(num_steps=total), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
        raw_s = [np.asarray(sink.data.get()).T for sink in sinks]
        raw_v = {i: np.asarray(next(iter(mon.get_data().values()))["v"]).reshape(total, -1)
                 for i, mon in monitors.items()}
    finally:
        net.stop()
    return raw_s, raw_v


def _simulate_each(export: NetxExport, sources: list[np.ndarray], window: int, voltages: list[int]):
    """One run per sample (recurrent layers: nothing of one sample can reach the next)."""
    runs = [_simulate(export, source, window, window, voltages) for source in sources]
    raw_s = [np.concatenate([r[0][i] for r in runs]) for i in range(export.depth)]
    raw_v = {i: np.concatenate([r[1][i] for r in runs]) for i in voltages}
    return raw_s, raw_v


def run(export: NetxExport | str | os.PathLike, inputs: dict[str, np.ndarray] | np.ndarray, *,
        voltages: bool = False, separate: bool | None = None) -> Traces:
    """Run a file from :func:`export_netx` through ``netx.hdf5.Network`` on ``Loihi2SimCfg(select_tag="fixed_pt")``.

    ``inputs``: spikes ``(B, T, n)`` for the exported input (or a dict holding them under its name). Returns
    :class:`~st2chip.traces.Traces` (backend ``"netx"``) with the spikes of every exported layer, aligned as
    the engine's (each layer's record starts at the step the sample's first input reaches it), and the
    voltages of readout layers (of every layer with ``voltages=True``). ``separate`` runs each sample in a
    run of its own (default: when a layer is ``dense_rec``, whose last spikes would reach the next sample).
    """
    from .engine import batch_steps
    from .lava_process import call_in_own_group

    if not isinstance(export, NetxExport):
        export = read_export(export)
    x = inputs[export.input] if isinstance(inputs, dict) else inputs
    x = np.asarray(x)
    if x.ndim != 3 or x.shape[2] != export.input_size:
        raise InputError(f"netx run: input '{export.input}' needs spikes (B, T, {export.input_size}), "
                         f"got shape {x.shape}")
    batch, steps = batch_steps({export.input: x})
    if separate is None:
        separate = any(layer.kind == "dense_rec" for layer in export.layers)
    _import_netx()
    window = steps + export.depth
    padded = np.zeros((batch, window, x.shape[2]), np.int32)
    padded[:, :steps] = x
    record_v = [i for i, layer in enumerate(export.layers) if voltages or layer.readout]
    if separate:
        sources = [padded[k].T.copy() for k in range(batch)]
        raw_s, raw_v = call_in_own_group(_simulate_each, export, sources, window, record_v)
    else:
        total = batch * window
        source = padded.reshape(total, x.shape[2]).T.copy()
        raw_s, raw_v = call_in_own_group(_simulate, export, source, window, total, record_v)
    spikes, volts = {}, {}
    for i, layer in enumerate(export.layers):
        # 0-based global step of sample k, local step j at depth d: k * window + d + j
        idx = np.arange(batch)[:, None] * window + layer.depth + np.arange(steps)[None, :]
        spikes[layer.layer] = raw_s[i][idx].astype(np.uint8)
        if i in raw_v:
            volts[layer.layer] = raw_v[i][idx].astype(np.int64)
    readouts = [layer.layer for layer in export.layers if layer.readout]
    if readouts:
        scores = np.concatenate([volts[name][:, -1] for name in readouts], axis=1)
    else:
        scores = spikes[export.layers[-1].layer].sum(axis=1)
    return Traces("netx", {export.input: np.asarray(x, np.uint8)}, spikes, volts, scores,
                  {"netx_file": str(export.path)})
