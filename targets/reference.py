"""Fixed-point reference: Lava's bit-accurate LIF/Dense arithmetic in numpy.

Small, exact and separate from the Lava backend: it implements the update of
:class:`~st2chip.chipgraph.Population` and :class:`~st2chip.chipgraph.SynapseGroup`
in int64 for a batch of samples at once, with Lava's timing (one step of delay
per synapse group; a population at depth ``d`` is reset when the sample's first
input reaches it). Equal to Lava spike for spike and voltage for voltage.
"""

from __future__ import annotations

import numpy as np

from st2chip.chip.chipgraph import ACT_SHIFT, DECAY_SHIFT, UV_MAX, ChipGraph, Population, SynapseGroup
from st2chip.traces import Traces

_UNITY = 1 << DECAY_SHIFT


def _decay(x: np.ndarray, factor: int) -> np.ndarray:
    """``trunc(x * factor / 4096)``: sign-magnitude shift, as Loihi does."""
    prod = x * factor
    return np.sign(prod) * (np.abs(prod) >> DECAY_SHIFT)


def _accumulate(syn: SynapseGroup, weights_t: np.ndarray, spikes: np.ndarray) -> np.ndarray:
    """Synaptic input ``(sum_j 2 m_ij s_j) << exp`` for spikes ``(B, n_src)``; ``weights_t`` is ``(2 m)^T``."""
    acc = spikes.astype(np.int64) @ weights_t
    return acc << syn.exp if syn.exp > 0 else acc >> -syn.exp


def neuron_step(pop: Population, u: np.ndarray, v: np.ndarray, a_in: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One Loihi CUBA-LIF step; returns new ``u``, ``v`` (after reset) and spikes."""
    u = _decay(u, _UNITY - (pop.du + 1)) + (a_in << ACT_SHIFT)
    u = np.where(u > UV_MAX, u - 2 * UV_MAX, u)
    u = np.where(u <= -UV_MAX, u + 2 * UV_MAX, u)
    v = _decay(v, _UNITY - pop.dv) + u + pop.bias
    v = np.clip(v, -UV_MAX + 1, UV_MAX - 1)
    s = v > (pop.vth << ACT_SHIFT)
    v = np.where(s, 0, v)
    return u, v, s


def run(chip: ChipGraph, inputs: dict[str, np.ndarray]) -> Traces:
    """Run ``inputs`` (name -> spikes ``(B, T, n)``) through ``chip``; traces per layer."""
    batch, steps = batch_steps(inputs)
    depths = chip.depths()
    horizon = steps + chip.depth
    state = {p.name: (np.zeros((batch, p.size), np.int64), np.zeros((batch, p.size), np.int64))
             for p in chip.populations}
    spikes_prev = {name: np.zeros((batch, x.shape[2]), bool) for name, x in inputs.items()}
    spikes_prev |= {p.name: np.zeros((batch, p.size), bool) for p in chip.populations}
    rec_s = {p.name: np.zeros((batch, steps, p.size), np.uint8) for p in chip.populations}
    rec_v = {p.name: np.zeros((batch, steps, p.size), np.int64) for p in chip.populations}
    weights_t = {syn.name: (2 * syn.dense()).T.copy() for syn in chip.synapses}
    for g in range(1, horizon + 1):
        a_in = {p.name: np.zeros((batch, p.size), np.int64) for p in chip.populations}
        for syn in chip.synapses:
            a_in[syn.target] += _accumulate(syn, weights_t[syn.name], spikes_prev[syn.source])
        current = {name: (x[:, g - 1].astype(bool) if g <= steps else np.zeros_like(spikes_prev[name]))
                   for name, x in inputs.items()}
        for pop in chip.populations:
            d = depths[pop.name]
            if g <= d:
                current[pop.name] = np.zeros((batch, pop.size), bool)
                continue
            u, v, s = neuron_step(pop, *state[pop.name], a_in[pop.name])
            state[pop.name] = (u, v)
            current[pop.name] = s
            local = g - d - 1
            if local < steps:
                rec_s[pop.name][:, local] = s
                rec_v[pop.name][:, local] = v
        spikes_prev = current
    return assemble(chip, "reference", inputs, rec_s, rec_v)


def batch_steps(inputs: dict[str, np.ndarray]) -> tuple[int, int]:
    """Batch size and time steps shared by all input arrays ``(B, T, n)``."""
    shapes = {name: np.shape(x)[:2] for name, x in inputs.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"inputs disagree in (batch, steps): {shapes}")
    return next(iter(shapes.values()))


def assemble(chip: ChipGraph, backend: str, inputs: dict[str, np.ndarray],
             pop_spikes: dict[str, np.ndarray], pop_volts: dict[str, np.ndarray]) -> Traces:
    """Gather per-population records ``(B, T, n_pop)`` into per-layer :class:`Traces`.

    A layer gets voltages only when every one of its populations recorded them.
    """
    batch, steps = batch_steps(inputs)
    spikes, volts = {}, {}
    for layer in chip.layers():
        n = chip.layer_size(layer)
        pops = chip.layer_populations(layer)
        spikes[layer] = np.zeros((batch, steps, n), np.uint8)
        for pop in pops:
            spikes[layer][:, :, pop.index] = pop_spikes[pop.name]
        if all(pop.name in pop_volts for pop in pops):
            volts[layer] = np.zeros((batch, steps, n), np.int64)
            for pop in pops:
                volts[layer][:, :, pop.index] = pop_volts[pop.name]
    readouts = chip.readout_layers()
    if readouts:
        scores = np.concatenate([volts[layer][:, -1] for layer in readouts], axis=1)
    else:
        last = chip.layers()[-1]
        scores = spikes[last].sum(axis=1)
    return Traces(backend, {k: np.asarray(v, np.uint8) for k, v in inputs.items()}, spikes, volts, scores)
