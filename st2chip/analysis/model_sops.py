r"""Synaptic operations of a torch model before mapping, counted from its real activity.

Forward hooks on every ``nn.Linear``, ``nn.Conv2d``, :class:`~st2chip.learn.pruning.LowRankLinear`
and attention :class:`~st2chip.learn.transformer.SpikeProduct` look at the actual inputs of each
call. Linear and convolution layers are counted **by NeuroBench** (``single_layer_MACs`` of
``neurobench.metrics``, the reference tool's own code): a binarised copy of the layer (pruned
zeros drop out, bias ignored) applied to the binarised input, so with :math:`x_j` an input
element and :math:`\mathrm{nnz}_j` the non-zero weights leaving it (for a convolution: the
non-zero kernel taps that reach an output, borders included), the count is
:math:`\sum_j [x_j \ne 0]\,\mathrm{nnz}_j`, ACs when every input lies in {-1, 0, 1}
(spikes), MACs otherwise (analog: direct-encoded pixels, the mean that feeds the head).
This is the count st2chip's chip counter (:mod:`st2chip.analysis.traffic`) makes on the mapped model.

What NeuroBench does not count the chip's way stays here:

- **counts** (non-negative integers, e.g. the ST residual stream, a sum of spike trains
  that reach the synapses separately): NeuroBench would binarise them into one MAC per
  non-zero element; the chip sees every spike, so :math:`\mathrm{ACs} = \sum_j x_j\,\mathrm{nnz}_j`
  (NeuroBench's binarised layer applied to the unbinarised counts);
- a :class:`LowRankLinear` counts two layers, ``name.V`` (on its input) and ``name.U``
  (MACs on V's non-zero graded outputs), as the factored relay on the chip;
- a spike product :math:`(QK^\top)V` counts one AC per coincident spike pair in
  :math:`QK^\top` and one per spike of :math:`V` meeting a non-zero score; it has no
  weights (it runs on host or product neurons) and NeuroBench does not see it.

Energy :math:`E = \mathrm{ACs}\,E_{AC} + \mathrm{MACs}\,E_{MAC}` with a profile from
``st2chip/analysis/profiles`` (45 nm: 0.9 pJ and 4.6 pJ). BN and neuron updates are not counted.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from st2chip.attention import attention_ops
from st2chip.errors import InputError
from st2chip.learn.data import Split
from st2chip.analysis.energy import Profile, load_profile
from st2chip.learn.pruning import LowRankLinear
from st2chip.learn.transformer import SpikeProduct

_KIND_ORDER = ("spikes", "counts", "analog")


@dataclass
class LayerOps:
    """Operations of one layer, summed over every sample seen (see :attr:`SopReport.samples`)."""

    name: str
    kind: str
    input: str = "spikes"
    acs: float = 0.0
    macs: float = 0.0
    nonzero_weights: int = 0
    weights: int = 0


@dataclass
class SopReport:
    """Per-layer operations of a model over ``samples`` inputs; totals are per sample."""

    layers: dict[str, LayerOps] = field(default_factory=dict)
    samples: int = 0

    @property
    def acs(self) -> float:
        """Accumulates per sample."""
        return sum(l.acs for l in self.layers.values()) / max(self.samples, 1)

    @property
    def macs(self) -> float:
        """Multiply-accumulates per sample."""
        return sum(l.macs for l in self.layers.values()) / max(self.samples, 1)

    @property
    def sops(self) -> float:
        """Synaptic operations (ACs + MACs) per sample."""
        return self.acs + self.macs

    def energy_pj(self, profile: Profile | str | os.PathLike = "45nm") -> float:
        """Energy per sample in pJ under ``profile`` (a Profile, name or path; see st2chip.energy)."""
        p = profile if isinstance(profile, Profile) else load_profile(profile)
        return self.acs * p.e_ac_pj + self.macs * p.e_mac_pj

    def to_dict(self, profile: Profile | str | os.PathLike = "45nm") -> dict:
        """Per-sample totals and per-layer rows, for JSON."""
        n = max(self.samples, 1)
        return {"samples": self.samples, "acs": self.acs, "macs": self.macs, "sops": self.sops,
                "energy_pj": self.energy_pj(profile),
                "layers": [{**asdict(l), "acs": l.acs / n, "macs": l.macs / n} for l in self.layers.values()]}


def _input_kind(x: torch.Tensor) -> str:
    if bool(((x == 0) | (x == 1)).all()):
        return "spikes"
    if bool((x >= 0).all()) and bool((x == x.round()).all()):
        return "counts"
    return "analog"


def _linear_ops(x: torch.Tensor, weight: torch.Tensor, analog: bool) -> float:
    """One low-rank factor: each input event (a spike, a count's spikes, a non-zero graded value) times its fan-out."""
    fanout = (weight != 0).sum(0).to(x.dtype)  # non-zero weights leaving each input
    events = (x != 0).to(x.dtype) if analog else x
    return float((events.reshape(-1, x.shape[-1]).sum(0) * fanout).sum())


def _neurobench_counters():
    """NeuroBench's two layer counters; imported when first used, as NeuroBench installs only with --no-deps."""
    try:
        from neurobench.metrics.utils.layers import single_layer_MACs
        from neurobench.metrics.utils.layers.macs import stateless_layer_macs
    except ImportError as err:
        raise InputError(f"counting a model's synaptic operations uses NeuroBench, which does not import here "
                         f"({err}); install it with: pip install --no-deps neurobench==2.3.0") from None
    return single_layer_MACs, stateless_layer_macs


def _neurobench_ops(x: torch.Tensor, module: nn.Module, kind: str) -> tuple[str, float]:
    """Input kind and operations of one Linear/Conv call, by NeuroBench's code (counts unbinarised: one AC per spike)."""
    single_layer_MACs, stateless_layer_macs = _neurobench_counters()
    if kind == "counts":
        return kind, float(stateless_layer_macs(x, module, total=False))
    ops, spiking = single_layer_MACs(x, module)
    return ("spikes" if spiking else "analog"), float(ops)


class SopCounter:
    """Context manager that counts operations of every countable layer of ``model`` while active."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.layers: dict[str, LayerOps] = {}
        self._handles: list = []
        self._counting = False  # NeuroBench runs a deep copy of the layer, hooks included: do not count that call

    def _add(self, name: str, kind: str, inp: str, ops: float, weights: list[torch.Tensor]) -> None:
        row = self.layers.setdefault(name, LayerOps(name, kind))
        if _KIND_ORDER.index(inp) > _KIND_ORDER.index(row.input):
            row.input = inp
        if inp == "analog":
            row.macs += ops
        else:
            row.acs += ops
        row.nonzero_weights = sum(int((w != 0).sum()) for w in weights)
        row.weights = sum(w.numel() for w in weights)

    def _hook(self, name: str):
        @torch.no_grad()
        def hook(module: nn.Module, args: tuple, _output) -> None:
            if self._counting:
                return
            self._counting = True
            try:
                self._count(name, module, args)
            finally:
                self._counting = False
        return hook

    def _count(self, name: str, module: nn.Module, args: tuple) -> None:
        """Count one call of a hooked layer (see the module docstring)."""
        x = args[0].detach()
        kind = _input_kind(x)
        if isinstance(module, SpikeProduct):
            self._add(name, "spike-product", kind, _product_ops(module, *args), [])
        elif isinstance(module, LowRankLinear):
            self._add(f"{name}.V", "lowrank.V", kind, _linear_ops(x, module.V, kind == "analog"), [module.V])
            hidden = F.linear(x, module.V)
            self._add(f"{name}.U", "lowrank.U", "analog", _linear_ops(hidden, module.U, True), [module.U])
        else:
            layer = "conv" if isinstance(module, nn.Conv2d) else "linear"
            self._add(name, layer, *_neurobench_ops(x, module, kind), [module.weight])

    def __enter__(self) -> "SopCounter":
        for name, m in self.model.named_modules():
            if isinstance(m, (nn.Linear, nn.Conv2d, LowRankLinear, SpikeProduct)):
                self._handles.append(m.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def _product_ops(module: SpikeProduct, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> float:
    t, b, n, d = q.shape
    return attention_ops(*(x.reshape(t, b, n * d) for x in (q, k, v)), tokens=n, heads=module.heads)


def _batches(split: Split, batch_size: int, device: torch.device | str) -> Iterator[torch.Tensor]:
    for start in range(0, len(split), batch_size):
        yield torch.as_tensor(split.x[start:start + batch_size], device=device)


@torch.no_grad()
def count_sops(model: nn.Module, split: Split, batch_size: int = 256,
               device: torch.device | str = "cpu") -> SopReport:
    """Run ``model`` (eval mode) over ``split`` and count its operations from the real spikes."""
    model.eval().to(device)
    with SopCounter(model) as counter:
        for x in _batches(split, batch_size, device):
            model(model.encode(x))
    return SopReport(counter.layers, len(split))
