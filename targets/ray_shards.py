"""The engine over many machines: samples sharded across Ray workers, gathered back in sample order.

``run(chip, inputs, address=None)`` starts (or joins) Ray — a local instance by
default, the cluster at ``address`` when given (``ray://host:10001`` or
``auto``) — puts the ChipGraph in Ray's object store once, runs
:func:`st2chip.targets.engine.run` on contiguous shards of the samples as Ray
tasks, and joins their traces in order: the result is the single-process run's,
bit for bit (every sample is independent on the chip).
"""

from __future__ import annotations

import numpy as np

from st2chip.chip.chipgraph import ChipGraph
from st2chip.traces import Traces

from .engine import batch_steps, run as run_engine


def _shard_bounds(samples: int, shards: int) -> list[tuple[int, int]]:
    """Contiguous, nearly equal ``[lo, hi)`` ranges covering ``samples``."""
    edges = np.linspace(0, samples, min(shards, samples) + 1).round().astype(int)
    return [(int(lo), int(hi)) for lo, hi in zip(edges[:-1], edges[1:]) if hi > lo]


def run(chip: ChipGraph, inputs: dict[str, np.ndarray], *, address: str | None = None, shards: int | None = None,
        voltages: bool = True, device: str = "cpu", batch_size: int | None = None,
        num_cpus: int | None = None) -> Traces:
    """Run ``inputs`` through ``chip`` on Ray workers; same traces as :func:`st2chip.targets.engine.run`.

    ``shards`` defaults to the cluster's CPU count; ``num_cpus`` bounds a local instance.
    """
    import ray

    if not ray.is_initialized():
        ray.init(address=address, num_cpus=num_cpus if address is None else None, include_dashboard=False,
                 log_to_driver=False, logging_level="ERROR")
    batch, _ = batch_steps(inputs)
    shards = shards or max(1, int(ray.cluster_resources().get("CPU", 1)))
    chip_ref = ray.put(chip)
    task = ray.remote(num_cpus=1)(_run_shard)
    bounds = _shard_bounds(batch, shards)
    futures = [task.remote(chip_ref, {k: x[lo:hi] for k, x in inputs.items()}, voltages, device, batch_size)
               for lo, hi in bounds]
    return Traces.concat(ray.get(futures))


def _run_shard(chip: ChipGraph, inputs: dict[str, np.ndarray], voltages: bool, device: str,
               batch_size: int | None) -> Traces:
    import torch
    torch.set_num_threads(1)
    return run_engine(chip, inputs, device=device, batch_size=batch_size, voltages=voltages)
