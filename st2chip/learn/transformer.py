r"""A Spikformer-style spiking Transformer (ST) built from sLIF neurons.

Time-first tensors throughout: images ``(T, B, C, H, W)``, tokens ``(T, B, N, D)``.
Every spiking neuron ``SN`` is an :class:`~st2chip.neurons.SLIF` (per-neuron
learnable threshold and leak) or, with ``neuron="lif"``, a plain LIF
(:meth:`SLIF.plain`). With ``BN`` a batch norm over time and batch together:

.. math::

    \text{SPS:}\quad & z = SN(BN(\mathrm{Conv}_{p\times p}(\dots SN(BN(\mathrm{Conv}_{3\times3}(x)))))),
                     \quad u_0 = z + SN(BN(\mathrm{Conv}_{3\times3}(z)))        \\
    \text{SSA:}\quad & Q = SN(BN(u W_Q)),\; K = SN(BN(u W_K)),\; V = SN(BN(u W_V)) \\
                     & A = SN_{\theta_a}\big(s\,(Q K^\top) V\big) \quad\text{(per head, no softmax)} \\
                     & u' = u + SN(BN(A W_O))                                       \\
    \text{MLP:}\quad & u'' = u' + SN(BN(SN(BN(u' W_1)) W_2))                        \\
    \text{head:}\quad & y = W_h \, \tfrac{1}{T N} \textstyle\sum_{t,n} u_L[t, n]

The residual stream ``u`` is a sum of spike trains (non-negative integers), so
every block weight matrix is driven by spikes: on a chip, ``u W`` is the sum of
the binary spike trains that meet there, each through the same synapses. The
block matrices :math:`W_Q, W_K, W_V, W_O, W_1, W_2` (no bias; BN carries it)
are what L1P and DSP prune (see :mod:`st2chip.pruning`); a matrix named in
``STConfig.ranks`` is built as a factored :class:`~st2chip.pruning.LowRankLinear`.

**Sequences** (``layout="sequence"``, :meth:`STConfig.tiny_mnist1d`): a 1-D input
of ``image_size`` values (MNIST-1D: 40) goes through the same stages with 1-D
convolutions; the patch convolution (kernel = stride = ``patch_size``) cuts the
sequence into non-overlapping windows, one token per window (40 / 4 = 10 tokens
of 4 values each), and the whole sequence is direct-encoded, repeated ``T`` times.

**Chip-faithful models** (``norm=False``, :func:`fold_batch_norms`): no batch
norm; every matrix and convolution has a bias instead, as on the chip, where a
batch norm can only exist folded into weights and bias. Then a per-neuron
threshold is no longer absorbed by a trainable BN scale.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from st2chip.attention import attention_counts
from st2chip.learn.neurons import SLIF
from st2chip.learn.pruning import LowRankLinear

BLOCK_MATRICES = ("attn.q", "attn.k", "attn.v", "attn.proj", "mlp.fc1", "mlp.fc2")


@dataclass
class STConfig:
    """Everything needed to rebuild a :class:`SpikingTransformer` from a checkpoint.

    ``ranks`` maps block matrix names (``"blocks.0.attn.q"``) to the rank of a
    factored :class:`LowRankLinear`; absent names are dense ``nn.Linear``.
    """

    image_size: int = 8
    in_channels: int = 1
    patch_size: int = 2
    stem_channels: list[int] = field(default_factory=lambda: [16])
    dim: int = 32
    depth: int = 1
    heads: int = 2
    mlp_hidden: int = 64
    steps: int = 4
    classes: int = 10
    neuron: str = "slif"  # "slif" or "lif"
    threshold: float = 1.0
    leak: float = 0.5
    attn_threshold: float = 0.5
    attn_scale: float = 0.25
    reset: str = "zero"
    ranks: dict[str, int] = field(default_factory=dict)
    layout: str = "image"  # "image": (C, H, W) with 2-D convs; "sequence": (C, L) with 1-D convs, L = image_size
    norm: bool = True  # batch norms after every matrix; False: biases instead (chip-faithful, see fold_batch_norms)

    @classmethod
    def tiny_digits(cls, **overrides) -> "STConfig":
        """8x8 digits, 2x2 patches (16 tokens), dim 32, one block, T = 4."""
        return cls(**overrides)

    @classmethod
    def tiny_mnist1d(cls, **overrides) -> "STConfig":
        """MNIST-1D: 40 values, windows of 4 (10 tokens), dim 32, one block, T = 4."""
        base = dict(image_size=40, patch_size=4, layout="sequence")
        base.update(overrides)
        return cls(**base)

    @classmethod
    def cifar10(cls, **overrides) -> "STConfig":
        """32x32x3 CIFAR-10, 4x4 patches (64 tokens), dim 256, 2 blocks, T = 4."""
        base = dict(image_size=32, in_channels=3, patch_size=4, stem_channels=[64, 128], dim=256,
                    depth=2, heads=8, mlp_hidden=1024, steps=4, attn_scale=0.125)
        base.update(overrides)
        return cls(**base)

    @classmethod
    def spikformer_4_384(cls, **overrides) -> "STConfig":
        """Spikformer-4-384's size on 32x32x3 (Zhou et al. 2023): 64 tokens, dim 384, 4 blocks, 12 heads, T = 4."""
        base = dict(image_size=32, in_channels=3, patch_size=4, stem_channels=[96, 192], dim=384,
                    depth=4, heads=12, mlp_hidden=1536, steps=4, attn_scale=0.125)
        base.update(overrides)
        return cls(**base)

    def to_dict(self) -> dict:
        return asdict(self)


def _bn(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Batch-normalize the last axis of ``x``, treating all leading axes as samples."""
    return norm(x.reshape(-1, x.shape[-1])).reshape(x.shape)


class _Factory:
    """Builds neurons and block matrices by one config, so that every layer follows it."""

    def __init__(self, config: STConfig) -> None:
        if config.neuron not in ("slif", "lif"):
            raise ValueError(f"neuron must be 'slif' or 'lif', not {config.neuron!r}")
        if config.layout not in ("image", "sequence"):
            raise ValueError(f"layout must be 'image' or 'sequence', not {config.layout!r}")
        self.config = config
        self.spatial = 1 if config.layout == "sequence" else 2

    def conv(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int) -> nn.Module:
        conv = nn.Conv1d if self.spatial == 1 else nn.Conv2d
        return conv(c_in, c_out, kernel, stride, padding, bias=not self.config.norm)

    def norm(self, n: int, spatial: int = 0) -> nn.Module:
        """A batch norm over ``n`` channels (``spatial`` trailing axes), or an identity without norms."""
        if not self.config.norm:
            return nn.Identity()
        return nn.BatchNorm2d(n) if spatial == 2 else nn.BatchNorm1d(n)

    def channel_shape(self, c: int) -> tuple[int, ...]:
        """Shape of per-channel neuron parameters of a feature map."""
        return (c,) + (1,) * self.spatial

    def neuron(self, shape: tuple[int, ...], threshold: float | None = None) -> SLIF:
        c = self.config
        theta = c.threshold if threshold is None else threshold
        if c.neuron == "lif":
            return SLIF.plain(theta, c.leak, reset=c.reset)  # type: ignore[arg-type]
        return SLIF(shape, theta, c.leak, reset=c.reset)  # type: ignore[arg-type]

    def matrix(self, name: str, n_in: int, n_out: int) -> nn.Module:
        rank, bias = self.config.ranks.get(name), not self.config.norm
        if rank is None:
            return nn.Linear(n_in, n_out, bias=bias)
        return LowRankLinear(n_in, n_out, rank, bias=bias)


class SpikeProduct(nn.Module):
    r"""Multi-head spike attention without softmax: :math:`s\,(Q K^\top) V` per head.

    A module of its own so that the synaptic-operation counter can see its inputs;
    spike x spike products have no weights, so they run on host or ProdNeuron cores.
    """

    def __init__(self, heads: int, scale: float) -> None:
        super().__init__()
        self.heads = heads
        self.scale = scale

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Attend ``(T, B, N, D)`` spike tensors; returns ``(T, B, N, D)``."""
        t, b, n, d = q.shape
        flat = (x.reshape(t, b, n * d) for x in (q, k, v))
        return (attention_counts(*flat, tokens=n, heads=self.heads) * self.scale).reshape(t, b, n, d)


class SpikingSelfAttention(nn.Module):
    """Q, K, V = Linear + BN + SN; spike attention; SN; output Linear + BN + SN."""

    def __init__(self, f: _Factory, prefix: str) -> None:
        super().__init__()
        c = f.config
        if c.dim % c.heads:
            raise ValueError(f"dim {c.dim} is not divisible by heads {c.heads}")
        d = c.dim
        self.q, self.k, self.v, self.proj = (f.matrix(f"{prefix}.{n}", d, d) for n in ("q", "k", "v", "proj"))
        self.q_bn, self.k_bn, self.v_bn, self.proj_bn = (f.norm(d) for _ in range(4))
        self.q_sn, self.k_sn, self.v_sn, self.proj_sn = (f.neuron((d,)) for _ in range(4))
        self.product = SpikeProduct(c.heads, c.attn_scale)
        self.attn_sn = f.neuron((d,), threshold=c.attn_threshold)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        q = self.q_sn(_bn(self.q_bn, self.q(u)))
        k = self.k_sn(_bn(self.k_bn, self.k(u)))
        v = self.v_sn(_bn(self.v_bn, self.v(u)))
        a = self.attn_sn(self.product(q, k, v))
        return self.proj_sn(_bn(self.proj_bn, self.proj(a)))


class SpikingMLPBlock(nn.Module):
    """Linear + BN + SN, twice."""

    def __init__(self, f: _Factory, prefix: str) -> None:
        super().__init__()
        c = f.config
        self.fc1 = f.matrix(f"{prefix}.fc1", c.dim, c.mlp_hidden)
        self.fc1_bn, self.fc1_sn = f.norm(c.mlp_hidden), f.neuron((c.mlp_hidden,))
        self.fc2 = f.matrix(f"{prefix}.fc2", c.mlp_hidden, c.dim)
        self.fc2_bn, self.fc2_sn = f.norm(c.dim), f.neuron((c.dim,))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        h = self.fc1_sn(_bn(self.fc1_bn, self.fc1(u)))
        return self.fc2_sn(_bn(self.fc2_bn, self.fc2(h)))


class Block(nn.Module):
    """One ST block: residual SSA then residual spiking MLP."""

    def __init__(self, f: _Factory, prefix: str) -> None:
        super().__init__()
        self.attn = SpikingSelfAttention(f, f"{prefix}.attn")
        self.mlp = SpikingMLPBlock(f, f"{prefix}.mlp")

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        u = u + self.attn(u)
        return u + self.mlp(u)


class _ConvBNSN(nn.Module):
    """Conv (no bias) + BN + SN on time-first feature maps ``(T, B, C, H, W)`` or ``(T, B, C, L)``."""

    def __init__(self, f: _Factory, c_in: int, c_out: int, kernel: int, stride: int, padding: int) -> None:
        super().__init__()
        self.conv = f.conv(c_in, c_out, kernel, stride, padding)
        self.bn = f.norm(c_out, f.spatial)
        self.sn = f.neuron(f.channel_shape(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t, b = x.shape[:2]
        y = self.bn(self.conv(x.flatten(0, 1)))
        return self.sn(y.reshape(t, b, *y.shape[1:]))


class SpikingPatchSplitting(nn.Module):
    """3x3 conv stages, a patch conv (kernel = stride = patch size), a conv position embedding."""

    def __init__(self, f: _Factory) -> None:
        super().__init__()
        c = f.config
        if c.image_size % c.patch_size:
            raise ValueError(f"image_size {c.image_size} is not divisible by patch_size {c.patch_size}")
        widths = [c.in_channels, *c.stem_channels]
        self.stem = nn.Sequential(*(_ConvBNSN(f, a, b, 3, 1, 1) for a, b in zip(widths[:-1], widths[1:])))
        self.patch = _ConvBNSN(f, widths[-1], c.dim, c.patch_size, c.patch_size, 0)
        self.rpe = _ConvBNSN(f, c.dim, c.dim, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(T, B, C, H, W)`` images or ``(T, B, C, L)`` sequences to ``(T, B, N, D)`` tokens."""
        z = self.patch(self.stem(x))
        u = z + self.rpe(z)
        return u.flatten(3).transpose(2, 3)


class SpikingTransformer(nn.Module):
    """Spiking patch splitting, ``depth`` ST blocks, a linear head on the mean token."""

    def __init__(self, config: STConfig) -> None:
        super().__init__()
        f = _Factory(config)
        self.config = config
        self.sps = SpikingPatchSplitting(f)
        self.blocks = nn.ModuleList(Block(f, f"blocks.{i}") for i in range(config.depth))
        self.head = nn.Linear(config.dim, config.classes)
        unknown = set(config.ranks) - set(self.block_matrix_names())
        if unknown:
            raise ValueError(f"ranks name layers that are not block matrices: {sorted(unknown)}")

    def block_matrix_names(self) -> list[str]:
        """Names of the ST block weight matrices (q, k, v, proj, fc1, fc2 of every block)."""
        return [f"blocks.{i}.{m}" for i in range(self.config.depth) for m in BLOCK_MATRICES]

    def block_matrices(self) -> dict[str, nn.Module]:
        """The ST block weight matrices by name: what L1P and DSP prune."""
        modules = dict(self.named_modules())
        return {name: modules[name] for name in self.block_matrix_names()}

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Direct encoding: images ``(B, H*W*C)`` or ``(B, C, H, W)`` (sequences ``(B, C*L)``) repeated ``T`` times."""
        c = self.config
        x = torch.as_tensor(x, dtype=torch.float32)
        side = (c.image_size,) * (1 if c.layout == "sequence" else 2)
        x = x.reshape(x.shape[0], c.in_channels, *side)
        return x.unsqueeze(0).expand(c.steps, *x.shape).contiguous()

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        """Class scores ``(B, classes)`` from encoded input ``(T, B, C, H, W)``."""
        u = self.sps(inp)
        for block in self.blocks:
            u = block(u)
        return self.head(u.mean(dim=(0, 2)))


def _normed_matrix(norm_name: str) -> str:
    """The module a batch norm follows: ``attn.q_bn`` -> ``attn.q``, ``stem.0.bn`` -> ``stem.0.conv``."""
    if norm_name.endswith("_bn"):
        return norm_name[:-3]
    return norm_name.rpartition(".")[0] + ".conv"


@torch.no_grad()
def fold_batch_norms(model: SpikingTransformer) -> SpikingTransformer:
    r"""A chip-faithful copy of ``model`` (``norm=False``): every batch norm folded into the matrix before it.

    In eval mode a BN is the per-channel affine map :math:`y \mapsto s\,y + b'` with
    :math:`s = \gamma / \sqrt{\sigma^2 + \epsilon}` and :math:`b' = \beta - s\mu`
    (running statistics); so :math:`W' = \mathrm{diag}(s) W` (for a factored matrix,
    :math:`U' = \mathrm{diag}(s) U`) and the bias is :math:`b'`. The copy computes
    what ``model`` computes in eval mode and trains without batch norms afterwards.
    Fold before pruning: pruning masks are not carried over.
    """
    if not model.config.norm:
        raise ValueError("the model has no batch norms to fold (config.norm is False)")
    state = model.state_dict()
    modules = dict(model.named_modules())
    for name, bn in modules.items():
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
            continue
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        target = _normed_matrix(name)
        key = f"{target}.U" if isinstance(modules[target], LowRankLinear) else f"{target}.weight"
        state[key] = state[key] * scale.reshape(-1, *[1] * (state[key].dim() - 1))
        state[f"{target}.bias"] = bn.bias - scale * bn.running_mean
        for k in [k for k in state if k.startswith(f"{name}.")]:
            del state[k]
    folded = SpikingTransformer(dataclasses.replace(model.config, norm=False, ranks=dict(model.config.ranks)))
    folded.load_state_dict(state)
    return folded.to(next(model.parameters()).device)
