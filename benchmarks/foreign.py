"""Foreign networks: networks trained here in norse, snnTorch, SpikingJelly and sinabs, on the chip.

Each network is trained (seeded, surrogate gradients, a few epochs) by its own framework on the digits
data, rate-coded (``st2chip.learn.data.rate_encode``, ``--steps`` steps), with cross-entropy on the output
layer's spike counts; then exported by the framework's own exporter through st2chip's converter
(``st2chip.converters.<framework>.to_nir``, which st2chip's ``import --from`` also runs). Three take another
way in, each through the framework's own exporter and the converter's ``repair`` that ``import --from`` runs:
the recurrent snnTorch net through snnTorch's nirtorch export, a file and ``st2chip.import_model(...,
"snntorch")`` (as DESIGN.md documents for RSynaptic); the snnTorch conv net through the same export in memory
(its Conv2d has no input shape, which ``nir.write`` cannot store) and ``converters.snntorch.repair``; the
SpikingJelly conv net through ``export_to_nir``, a file and ``st2chip.import_model(..., "spikingjelly")``
(the converters' ``to_nir`` still refuse convolutions from these two frameworks). Per network, on the test
split:

- the framework's own accuracy (argmax of its output spike counts);
- st2chip's float accuracy (``st2chip.simulate``) and whether its output spikes equal the framework's, spike
  for spike on every test sample, and where they do not, whether they equal the framework run in float64 (the
  frameworks compute in float32: a voltage within ~1e-7 of its threshold can fall either way); the run exits 1
  where a converter that claims exactness disagrees in float64 too;
- chip accuracy on st2chip's engine after plain mapping (``st2chip.lower``), after ``precision="auto"``
  and after chip-in-the-loop fine-tuning (``st2chip.quantize_graph`` on the training split, whose own held-out
  fifth was seen by the framework's training, so the test split is the measure; a graph it refuses is
  recorded with the reason);
- engine = Lava: every layer's spikes and the scores on the first ``--lava-samples`` test samples, for each
  of the three chips.

    python benchmarks/foreign.py --quick          # smoke run, a minute or two
    python benchmarks/foreign.py                  # the full table
    python benchmarks/foreign.py --only sinabs-mlp
    python benchmarks/foreign.py --only cnn    # the conv nets only (every name ending in -cnn)

Writes benchmarks/results/foreign.json and foreign.png (foreign_quick.* with --quick, foreign_<name>.* with
--only); prints one summary line and the table (markdown) that README and docs/results.md show.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import st2chip  # noqa: E402
from st2chip.analysis.verify import output_layers  # noqa: E402
from st2chip.errors import GraphError, InputError  # noqa: E402
from st2chip.io import write_json, write_png  # noqa: E402
from st2chip.learn.data import load_digits_split, rate_encode  # noqa: E402

RESULTS = Path(__file__).parent / "results"
N_IN, N_OUT = 64, 10
CHANNELS = 8  # feature maps of every conv net's first convolution
SETTINGS = {"quick": dict(train=300, test=100, epochs=2, tune_epochs=1, lava_samples=2),
            "full": dict(train=None, test=None, epochs=10, tune_epochs=5, lava_samples=4)}

Forward = Callable[[torch.Tensor], torch.Tensor]  # (B, T, n_in) spikes -> (B, T, n_out) output spikes


@dataclass
class Net:
    """A framework's network: the module, its forward pass over time, how it is exported, what it is."""

    framework: str
    network: str
    model: torch.nn.Module
    forward: Forward
    export: Callable[[torch.Tensor], "st2chip.converters.frontend.Converted"]
    exact: bool = True  # the converter claims the same spikes as the framework


def _norse(hidden: int) -> Net:
    """Linear -> LIFBoxCell -> Linear -> LIFBoxCell (norse's defaults: dt 1 ms, tau_mem 10 ms)."""
    import torch.nn as nn
    return _norse_net("LIF MLP", nn.Linear(N_IN, hidden), nn.Linear(hidden, N_OUT), lambda x: x, lambda s: s[:, 0])


def _norse_cnn(channels: int) -> Net:
    """Conv2d(3x3, stride 2) -> LIFBoxCell -> Conv2d(4x4: one output per class) -> LIFBoxCell on the 8x8 digits
    (norse exports no Flatten, so the readout is a convolution over the whole 4x4 map)."""
    import torch.nn as nn
    return _norse_net("conv net", nn.Conv2d(1, channels, 3, stride=2, padding=1), nn.Conv2d(channels, N_OUT, 4),
                      _frames, lambda s: _frames(s[:1, 0])[0])


def _norse_net(name: str, first: torch.nn.Module, second: torch.nn.Module,
               shape: Callable[[torch.Tensor], torch.Tensor], sample: Callable[[torch.Tensor], torch.Tensor]) -> Net:
    """``first -> LIFBoxCell -> second -> LIFBoxCell`` in norse, fed ``shape(x[:, t])`` at each step and exported
    on ``sample(spikes)``."""
    import norse.torch as norse
    from st2chip.converters import norse as conv
    net = norse.SequentialState(first, norse.LIFBoxCell(), second, norse.LIFBoxCell())
    with torch.no_grad():  # LIFBoxCell integrates dt/tau = 0.1 of its input per step
        net[0].weight.mul_(20.0)
        net[2].weight.mul_(20.0)

    def forward(x: torch.Tensor) -> torch.Tensor:
        state, out = None, []
        for t in range(x.shape[1]):
            y, state = net(shape(x[:, t]), state)
            out.append(y.reshape(x.shape[0], N_OUT))
        return torch.stack(out, 1)
    return Net("norse", name, net, forward, lambda s: conv.to_nir(net, sample(s)))


def _frames(x: torch.Tensor) -> torch.Tensor:
    """``(..., 64)`` -> ``(-1, 1, 8, 8)`` images."""
    return x.reshape(-1, 1, 8, 8)


def _snntorch(hidden: int, reset: str) -> Net:
    """Linear -> Leaky -> Linear -> Leaky, with ``reset`` ("zero", or "subtract": snnTorch's default)."""
    import snntorch as snn
    from snntorch import utils
    from st2chip.converters import snntorch as conv
    net = torch.nn.Sequential(torch.nn.Linear(N_IN, hidden),
                              snn.Leaky(beta=0.9, init_hidden=True, reset_mechanism=reset),
                              torch.nn.Linear(hidden, N_OUT),
                              snn.Leaky(beta=0.9, init_hidden=True, reset_mechanism=reset))
    with torch.no_grad():
        net[0].weight.mul_(2.0)

    def forward(x: torch.Tensor) -> torch.Tensor:
        utils.reset(net)
        return torch.stack([net(x[:, t]) for t in range(x.shape[1])], 1)
    name = "LIF MLP" if reset == "zero" else "LIF MLP, subtract reset"
    return Net("snntorch", name, net, forward, lambda s: conv.to_nir(net, s[:, 0]))


def _snntorch_recurrent(hidden: int) -> Net:
    """Linear -> RSynaptic (recurrent CubaLIF) -> Linear (bias) -> Synaptic, reset to zero (the file cannot say
    which reset; snnTorch's default subtracts): exported by snnTorch's nirtorch
    mapping into a file and imported with ``--from snntorch``; snnTorch holds ``mem`` at 0 for the step after a
    spike, which NIR's CubaLIF cannot say, so its spikes are compared, not claimed equal."""
    import snntorch as snn
    net = torch.nn.Sequential(torch.nn.Linear(N_IN, hidden),
                              snn.RSynaptic(alpha=0.8, beta=0.9, linear_features=hidden, init_hidden=True,
                                            reset_mechanism="zero"),
                              torch.nn.Linear(hidden, N_OUT),
                              snn.Synaptic(alpha=0.8, beta=0.9, init_hidden=True, reset_mechanism="zero"))
    with torch.no_grad():
        net[1].recurrent.weight.mul_(0.5)

    def forward(x: torch.Tensor) -> torch.Tensor:
        for module in (net[1], net[3]):  # utils.reset keeps RSynaptic's graph from the previous batch
            module.reset_mem()
        return torch.stack([net(x[:, t]) for t in range(x.shape[1])], 1)
    return Net("snntorch", "recurrent CubaLIF, biases", net, forward, lambda s: _snntorch_file_import(net),
               exact=False)


def _snntorch_export(net: torch.nn.Module, sample: torch.Tensor):
    """snnTorch's export (``export_to_nir`` without its failing final type check, DESIGN.md), its 0-d and torch
    arrays as 1-D numpy (what ``nir.write`` takes)."""
    import nirtorch
    import snntorch as snn
    from snntorch.export_nir import _extract_snntorch_module
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = nirtorch.extract_nir_graph(net, _extract_snntorch_module, sample, model_name="snntorch",
                                           ignore_submodules_of=[snn.RLeaky, snn.RSynaptic])
    for node in graph.nodes.values():
        for f in dataclasses.fields(node):
            value = getattr(node, f.name)
            if isinstance(value, (np.ndarray, np.generic, torch.Tensor)):
                setattr(node, f.name, np.atleast_1d(np.asarray(value.detach() if isinstance(value, torch.Tensor)
                                                               else value, dtype=np.float64)))
    return graph


def _snntorch_file_import(net: torch.nn.Module):
    """snnTorch's export to a file, then st2chip's import of that file as snnTorch wrote it."""
    import nir
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "snntorch.nir"
        nir.write(path, _snntorch_export(net, torch.zeros(1, N_IN)))
        return st2chip.import_model(path, "snntorch")


def _snntorch_cnn(channels: int) -> Net:
    """Conv2d(3x3) -> Leaky -> AvgPool2d(2) -> Conv2d(4x4: one output per class) -> Leaky, reset to zero (what
    the export's v_reset = 0 says); exported by snnTorch's nirtorch mapping (unbatched sample: st2chip's snnTorch
    repair drops a batch dimension only before an Affine) and repaired in memory as ``import --from snntorch``
    repairs a file."""
    import snntorch as snn
    from snntorch import utils
    from st2chip.converters import snntorch as conv
    from st2chip.converters.frontend import finish
    net = torch.nn.Sequential(torch.nn.Conv2d(1, channels, 3, padding=1),
                              snn.Leaky(beta=0.9, init_hidden=True, reset_mechanism="zero"), torch.nn.AvgPool2d(2),
                              torch.nn.Conv2d(channels, N_OUT, 4),
                              snn.Leaky(beta=0.9, init_hidden=True, reset_mechanism="zero"))
    with torch.no_grad():
        net[0].weight.mul_(2.0)

    def step(x: torch.Tensor) -> torch.Tensor:  # Sequential's loop, each layer's input in the model's dtype
        for layer in net:                         # (Leaky's spikes are float32 whatever the model's dtype)
            x = layer(x.to(net[0].weight.dtype))
        return x.reshape(-1, N_OUT)

    def forward(x: torch.Tensor) -> torch.Tensor:
        utils.reset(net)
        return torch.stack([step(_frames(x[:, t])) for t in range(x.shape[1])], 1)

    def export(_: torch.Tensor):
        graph, notes = conv.repair(_snntorch_export(net, torch.zeros(1, 8, 8)), conv.DEFAULT_DT)
        return finish(graph, dt=conv.DEFAULT_DT, notes=notes, producer="snntorch")
    return Net("snntorch", "conv net", net, forward, export)


def _spikingjelly(hidden: int) -> Net:
    """layer.Linear -> LIFNode(tau 2) -> layer.Linear -> LIFNode(tau 2), multi-step mode."""
    from spikingjelly.activation_based import functional, layer, neuron
    from st2chip.converters import spikingjelly as conv
    net = torch.nn.Sequential(layer.Linear(N_IN, hidden), neuron.LIFNode(tau=2.0), layer.Linear(hidden, N_OUT),
                              neuron.LIFNode(tau=2.0))
    functional.set_step_mode(net, "m")
    with torch.no_grad():
        net[0].weight.mul_(4.0)
        net[2].weight.mul_(2.0)

    def forward(x: torch.Tensor) -> torch.Tensor:
        functional.reset_net(net)
        out = net(x.permute(1, 0, 2)).permute(1, 0, 2)
        return out
    return Net("spikingjelly", "LIF MLP", net, forward, lambda s: conv.to_nir(net, s.permute(1, 0, 2)))


def _spikingjelly_cnn(channels: int) -> Net:
    """layer.Conv2d(3x3) -> LIFNode(tau 2) -> layer.AvgPool2d(2) -> layer.Flatten -> layer.Linear -> LIFNode(tau 2),
    multi-step mode; ``export_to_nir`` to a file, imported with ``st2chip.import_model(..., "spikingjelly")``."""
    import nir
    from spikingjelly.activation_based import functional, layer, neuron
    from spikingjelly.activation_based.nir_exchange import export_to_nir
    net = torch.nn.Sequential(layer.Conv2d(1, channels, 3, padding=1), neuron.LIFNode(tau=2.0), layer.AvgPool2d(2),
                              layer.Flatten(), layer.Linear(channels * 16, N_OUT), neuron.LIFNode(tau=2.0))
    functional.set_step_mode(net, "m")
    with torch.no_grad():
        net[0].weight.mul_(4.0)
        net[4].weight.mul_(4.0)

    def images(x: torch.Tensor) -> torch.Tensor:  # (B, T, 64) -> (T, B, 1, 8, 8)
        return x.permute(1, 0, 2).reshape(x.shape[1], x.shape[0], 1, 8, 8)

    def forward(x: torch.Tensor) -> torch.Tensor:
        functional.reset_net(net)
        return net(images(x)).permute(1, 0, 2)

    def export(s: torch.Tensor):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "spikingjelly.nir"
            nir.write(path, export_to_nir(net, images(s), dt=1e-4))
            return st2chip.import_model(path, "spikingjelly")
    return Net("spikingjelly", "conv net", net, forward, export)


def _sinabs(hidden: int) -> Net:
    """Linear -> LIF(tau_mem 5, single spike, subtract reset) -> Linear -> LIF, (batch, time, n)."""
    import sinabs
    import sinabs.layers as sl
    from sinabs.activation import SingleSpike
    from st2chip.converters import sinabs as conv
    net = torch.nn.Sequential(torch.nn.Linear(N_IN, hidden), sl.LIF(tau_mem=5.0, spike_fn=SingleSpike),
                              torch.nn.Linear(hidden, N_OUT), sl.LIF(tau_mem=5.0, spike_fn=SingleSpike))
    with torch.no_grad():
        net[0].weight.mul_(6.0)
        net[2].weight.mul_(4.0)

    def forward(x: torch.Tensor) -> torch.Tensor:
        sinabs.reset_states(net)
        return net(x)
    return Net("sinabs", "LIF MLP", net, forward, lambda s: conv.to_nir(net, s))


def _sinabs_cnn(channels: int, steps: int) -> Net:
    """Conv2d(3x3) -> IAFSqueeze -> SumPool2d(2) -> Flatten -> Linear -> IAFSqueeze on the 8x8 digits, single
    spikes, sinabs' default subtract reset; sinabs' squeezed layers take ``(batch * time, C, H, W)``."""
    import sinabs
    import sinabs.layers as sl
    from sinabs.activation import SingleSpike
    from st2chip.converters import sinabs as conv
    net = torch.nn.Sequential(torch.nn.Conv2d(1, channels, 3, padding=1),
                              sl.IAFSqueeze(num_timesteps=steps, spike_fn=SingleSpike), sl.SumPool2d(2),
                              torch.nn.Flatten(), torch.nn.Linear(channels * 16, N_OUT),
                              sl.IAFSqueeze(num_timesteps=steps, spike_fn=SingleSpike))

    def forward(x: torch.Tensor) -> torch.Tensor:
        sinabs.reset_states(net)
        return net(_frames(x)).reshape(x.shape[0], x.shape[1], N_OUT)
    return Net("sinabs", "conv net", net, forward, lambda s: conv.to_nir(net, _frames(s)))


NETWORKS: dict[str, Callable[[int, int], Net]] = {
    "norse-mlp": lambda h, t: _norse(h),
    "snntorch-mlp": lambda h, t: _snntorch(h, "zero"),
    "snntorch-subtract": lambda h, t: _snntorch(h, "subtract"),
    "snntorch-rsynaptic": lambda h, t: _snntorch_recurrent(h),
    "spikingjelly-mlp": lambda h, t: _spikingjelly(h),
    "sinabs-mlp": lambda h, t: _sinabs(h),
    "norse-cnn": lambda h, t: _norse_cnn(CHANNELS),
    "snntorch-cnn": lambda h, t: _snntorch_cnn(CHANNELS),
    "spikingjelly-cnn": lambda h, t: _spikingjelly_cnn(CHANNELS),
    "sinabs-cnn": lambda h, t: _sinabs_cnn(CHANNELS, t),
}


def _data(steps: int, train: int | None, test: int | None):
    """Rate-coded digits, ``(B, T, 64)`` float spikes, and labels: train and test splits."""
    tr, te = load_digits_split()

    def encode(split, n):
        x, y = split.x[:n], split.y[:n]
        return rate_encode(x, steps).permute(1, 0, 2).contiguous(), torch.as_tensor(y)
    return encode(tr, train), encode(te, test)


def _train(net: Net, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int, lr: float, batch: int) -> None:
    """Adam on cross-entropy of the output spike counts, seeded shuffles."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.model.parameters(), lr=lr)
    net.model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=gen).split(batch):
            loss = torch.nn.functional.cross_entropy(net.forward(x[idx]).sum(1), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.model.eval()


def _framework_spikes(net: Net, x: torch.Tensor, batch: int = 128, dtype: torch.dtype = torch.float32) -> np.ndarray:
    """The framework's output spikes ``(B, T, n_out)``, computed in ``dtype`` (the model is left in float32)."""
    net.model.to(dtype)
    try:
        with torch.no_grad():
            return np.concatenate([net.forward(part.to(dtype)).numpy() for part in x.split(batch)]).astype(np.uint8)
    finally:
        net.model.to(torch.float32)


def _same_as_lava(chip, x: np.ndarray) -> bool:
    """Every layer's spikes and the readout scores, engine against Lava."""
    eng, lav = st2chip.run(chip, x, voltages=False), st2chip.run(chip, x, backend="lava", voltages=False)
    return (eng.spikes.keys() == lav.spikes.keys() and np.array_equal(eng.scores, lav.scores)
            and all(np.array_equal(eng.spikes[k], lav.spikes[k]) for k in eng.spikes))


def _chip_row(graph, x: np.ndarray, y: np.ndarray, lava_samples: int, **lowering) -> dict:
    chip = st2chip.lower(graph, **lowering)
    layers = chip.report["layers"]
    return {"accuracy": st2chip.run(chip, x, voltages=False).accuracy(y),
            "engine_equals_lava": _same_as_lava(chip, x[:lava_samples]),
            "weight_error": {name: info["weight_error"] for name, info in layers.items()},
            "precision": {name: info["precision"]["chosen"] for name, info in layers.items() if "precision" in info}}


def _quantized_row(graph, train, x: np.ndarray, y: np.ndarray, cfg: dict, seed: int) -> dict:
    """``st2chip.quantize_graph`` on the training split, then the tuned graph's chip on the test split; a graph
    it does not fine-tune yet is recorded with its one-line reason (accuracy None)."""
    start = time.perf_counter()
    try:
        tuning = st2chip.quantize_graph(graph, train[0].numpy().astype(np.uint8), train[1].numpy(),
                                        epochs=cfg["tune_epochs"], seed=seed, device="cpu")
    except (GraphError, InputError) as err:
        return {"accuracy": None, "engine_equals_lava": None, "refused": str(err)}
    seconds = round(time.perf_counter() - start, 1)
    report = tuning.to_dict()
    return {**_chip_row(tuning.graph, x, y, cfg["lava_samples"]), "holdout_before": report["before"],
            "holdout_after": report["after"], "seconds": seconds}


def _measure(name: str, args, cfg: dict, data) -> dict:
    (x_tr, y_tr), (x_te, y_te) = data
    torch.manual_seed(args.seed)
    net = NETWORKS[name](args.hidden, args.steps)
    start = time.perf_counter()
    _train(net, x_tr, y_tr, cfg["epochs"], args.seed, args.lr, args.batch)
    train_s = time.perf_counter() - start
    theirs = _framework_spikes(net, x_te)
    labels = y_te.numpy()
    converted = net.export(x_te[:8])
    graph = converted.graph
    spikes = x_te.numpy().astype(np.uint8)
    flt = st2chip.simulate(graph, spikes)
    out = output_layers(graph).spiking[0]
    ours = flt.spikes[out]
    equal = ours.shape == theirs.shape and np.array_equal(ours, theirs)
    # unequal: is it the framework's float32 rounding (a voltage within ~1e-7 of its threshold)? its float64 run says
    equal64 = equal or np.array_equal(ours, _framework_spikes(net, x_te, dtype=torch.float64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lowering's quantization warnings: the accuracies below measure them
        plain = _chip_row(graph, spikes, labels, cfg["lava_samples"])
        auto = _chip_row(graph, spikes, labels, cfg["lava_samples"], precision="auto")
        tuned = _quantized_row(graph, (x_tr, y_tr), spikes, labels, cfg, args.seed)
    return {"framework": net.framework, "network": net.network, "exact_claimed": net.exact,
            "framework_accuracy": float(np.mean(theirs.sum(1).argmax(1) == labels)),
            "float_accuracy": flt.accuracy(labels), "output_layer": out, "spikes_equal": bool(equal),
            "spikes_equal_float64": bool(equal64),
            "output_spike_agreement": float(np.mean(ours == theirs)) if ours.shape == theirs.shape else 0.0,
            "output_spike_rate": float(theirs.mean()), "chip_plain": plain, "chip_precision_auto": auto,
            "chip_quantized": tuned,
            "train_seconds": round(train_s, 1), "notes": converted.notes}


def _selected(only: str | None) -> list[str]:
    """The networks ``--only`` names: all, one, or (``cnn``) the conv nets."""
    if only == "cnn":
        return [n for n in NETWORKS if n.endswith("-cnn")]
    return [only] if only else list(NETWORKS)


def _percent(value: float | None) -> str:
    return "refused" if value is None else f"{value:.3f}"


def _points(value: float | None) -> str:
    return "refused" if value is None else f"{100 * value:.1f}"


def _equal(row: dict) -> str:
    if row["spikes_equal"]:
        return "yes"
    share = f"{100 * row['output_spike_agreement']:.3f} % of output spikes"
    return f"yes in float64 ({share} in float32)" if row["spikes_equal_float64"] else f"no ({share})"


def table(rows: dict) -> str:
    """The corpus as a markdown table: accuracies in percent, float = framework spike for spike, engine = Lava
    on every chip row."""
    lines = ["| framework | network | framework acc. | st2chip float | spikes equal | chip, plain | "
             "chip, --precision auto | chip, quantize | engine = Lava |", "|" + " --- |" * 9]
    for r in rows.values():
        lava = all(r[k]["engine_equals_lava"] is not False for k in ("chip_plain", "chip_precision_auto",
                                                                      "chip_quantized"))
        lines.append(f"| {r['framework']} | {r['network']} | {_points(r['framework_accuracy'])} | "
                     f"{_points(r['float_accuracy'])} | {_equal(r)} | "
                     f"{_points(r['chip_plain']['accuracy'])} | {_points(r['chip_precision_auto']['accuracy'])} | "
                     f"{_points(r['chip_quantized']['accuracy'])} | {'yes' if lava else 'no'} |")
    return "\n".join(lines)


def _plot(rows: dict, path: Path) -> None:
    keys = [("framework_accuracy", "framework"), ("float_accuracy", "st2chip float"),
            ("chip_plain", "chip, plain"), ("chip_precision_auto", "chip, precision auto"),
            ("chip_quantized", "chip, quantize")]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(keys)
    for k, (key, label) in enumerate(keys):
        values = [r[key]["accuracy"] if isinstance(r[key], dict) else r[key] for r in rows.values()]
        ax.bar(np.arange(len(rows)) + k * width, [np.nan if v is None else 100 * v for v in values], width,
               label=label)
    ax.set_xticks(np.arange(len(rows)) + 0.4 - width / 2)
    ax.set_xticklabels([f"{r['framework']}\n{r['network'].replace(', ', chr(10))}" for r in rows.values()],
                       fontsize=6)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(50, 100)
    ax.set_title("networks trained in other frameworks, digits: framework vs st2chip")
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    write_png(path, fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer samples and epochs: checks that it runs")
    parser.add_argument("--only", choices=[*sorted(NETWORKS), "cnn"],
                        help="run this network only (cnn: the conv nets)")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and shuffles (default 0)")
    parser.add_argument("--steps", type=int, default=16, help="rate-code steps per sample (default 16)")
    parser.add_argument("--hidden", type=int, default=64, help="hidden neurons (default 64)")
    parser.add_argument("--lr", type=float, default=1e-2, help="framework training learning rate (default 1e-2)")
    parser.add_argument("--batch", type=int, default=64, help="training batch size (default 64)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = SETTINGS["quick" if args.quick else "full"]
    data = _data(args.steps, cfg["train"], cfg["test"])
    start = time.perf_counter()
    rows = {}
    for name in _selected(args.only):
        rows[name] = _measure(name, args, cfg, data)
        r = rows[name]
        print(f"{name}: framework {r['framework_accuracy']:.3f} float {r['float_accuracy']:.3f} "
              f"equal {r['spikes_equal']} chip {r['chip_plain']['accuracy']:.3f} auto "
              f"{r['chip_precision_auto']['accuracy']:.3f} quantize {_percent(r['chip_quantized']['accuracy'])}",
              file=sys.stderr)
    stem = "foreign" + ("_quick" if args.quick else "") + (f"_{args.only}" if args.only else "")
    print(table(rows))
    out = {"settings": {**cfg, **vars(args)}, "samples": {"train": len(data[0][1]), "test": len(data[1][1])},
           "torch": torch.__version__, "machine": platform.machine(), "date": time.strftime("%Y-%m-%d"),
           "seconds": round(time.perf_counter() - start, 1), "networks": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / f"{stem}.json", out)
    _plot(rows, RESULTS / f"{stem}.png")
    unequal = [n for n, r in rows.items() if r["exact_claimed"] and not r["spikes_equal_float64"]]
    lava = all(r[k]["engine_equals_lava"] is not False for r in rows.values()
               for k in ("chip_plain", "chip_precision_auto", "chip_quantized"))
    worst = min(max(r["chip_precision_auto"]["accuracy"], r["chip_quantized"]["accuracy"] or 0.0)
                - r["framework_accuracy"] for r in rows.values())
    print(f"foreign networks: {len(rows)}; float = framework spike for spike on "
          f"{sum(r['spikes_equal'] for r in rows.values())}/{len(rows)}; worst chip (best of auto, quantize) minus "
          f"framework {100 * worst:+.1f} points; engine = Lava: {lava}; {out['seconds']:.0f} s")
    if unequal:
        print(f"FAILED: float differs from the framework on {', '.join(unequal)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
