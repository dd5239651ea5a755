"""Lava backend: a ChipGraph as lava-nc processes on ``Loihi2SimCfg(select_tag="fixed_pt")``.

One network is built and compiled once for a batch of samples; the samples are
fed one after another from one source process (:mod:`.lava_record`: a port per input), each in a window of
``steps + depth`` time steps, and every population is a ``LIFReset`` whose state
is zeroed at the step the sample's first input reaches it. Populations that
Lava's LIF cannot express run st2chip's own neuron model
(:mod:`.lava_neuron`): reset by subtraction, the refractory step after a spike, and the sources of recurrent
(feedback) or lagged groups, which stay silent in the last steps of each window
(:meth:`~st2chip.chip.chipgraph.ChipGraph.quiet_steps`) so that none of a
sample's spikes reaches the next sample. A synapse group that lowering kept
as a convolution kernel runs as lava-nc's ``Conv`` (its ``(W, H, C)`` ports
reshaped and transposed to st2chip's flat C-order vectors); every other group
as ``Dense``/``Sparse`` (``Delay*`` when delayed). A relay (a factored
low-rank layer's middle, :class:`~st2chip.chip.chipgraph.Relay`) is lava-nc's
``GradedVec`` with ``vth = 0`` (stateless: it sends its input as a graded
spike), and the groups out of it take graded input (``num_message_bits = 24``).
Spikes and voltages are recorded by one process of st2chip's
(:mod:`.lava_record`, in place of a sink and a ``Monitor`` per population; a
relay's values are what it sends) and cut back into per-sample windows.

The simulation runs in st2chip's Lava process, a slim interpreter of its own in
its own process group, started once and reused by later runs (:mod:`.lava_process`):
Lava forks its workers from there, not from a caller that may hold gigabytes.
Ctrl-C or SIGTERM, to this process or its whole group, ends that process and
every Lava process under it within seconds instead of hanging in Lava's
``runtime.stop()`` or leaving workers orphaned; a Lava worker or that process
itself that dies (SIGKILL, the out-of-memory killer) ends the run with a
:class:`~st2chip.errors.BackendError` (one line, exit 1) instead of a stall. The
graph and its input go there pickled; only the raw recordings come back (numpy
arrays). There the Lava runtime is stopped on every path, errors included. This
module imports no torch at import time (the engine's helpers are imported by
:func:`run`), so the Lava process stays slim.
"""

from __future__ import annotations

import gc
import sys
import tempfile
import threading
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

from st2chip import limits
from st2chip.chip.chipgraph import MESSAGE_BITS, ChipGraph, Population
from st2chip.traces import Traces

from .lava_compat import ensure_lava
from .lava_process import call_in_own_group


PROGRESS_CHUNKS = 50  # with a progress bar, the run is split into at most this many Lava runs
PROCESS_BYTES = 17 * 2**20  # memory per Lava process (each an OS process): 16.5 MB measured (README)
WEIGHT_BYTES = 48  # per stored weight of a Lava run, all copies together: 45 measured (Spikformer-4-384, 270 M)


def _monitored(pop: Population, voltages: bool) -> bool:
    """Whether a run records ``pop``'s voltage (a relay's value is what the recorder receives as its spike)."""
    return (voltages or pop.readout) and not pop.graded


def memory_bytes(chip: ChipGraph) -> int:
    """What a Lava run of ``chip`` holds at its peak: its processes, and every stored weight in the pickled graph
    and in the int32 copies st2chip's Lava process and the worker make of it (:data:`WEIGHT_BYTES` each)."""
    stored = sum(g.mantissa.nnz if sp.issparse(g.mantissa) else g.mantissa.size for g in chip.synapses)
    return process_count(chip) * PROCESS_BYTES + stored * WEIGHT_BYTES


def process_count(chip: ChipGraph) -> int:
    """Lava processes a run of ``chip`` starts, each an OS process: the one source of every input, populations,
    host products, synapse groups and the one recorder (:mod:`.lava_record`; recorded voltages cost no process)."""
    return 1 + len(chip.populations) + len(chip.hosts) + len(chip.synapses) + 1


def _processes(chip: ChipGraph, source_data: dict[str, np.ndarray], window: int):
    """Lava's processes of ``chip`` by population and host product name, every input sent by one source."""
    from lava.proc.dense.process import Dense, DelayDense
    from lava.proc.graded.process import GradedVec
    from lava.proc.lif.process import LIFReset
    from lava.proc.sparse.process import DelaySparse, Sparse
    from lava.utils.weightutils import SignMode

    from .lava_neuron import CubaNeuron
    from .lava_record import source

    depths = chip.depths()
    quiet = chip.quiet_steps()
    sender = source(data=list(source_data.values()))
    sends = {name: getattr(sender, f"o{i}") for i, name in enumerate(source_data)}  # name -> the OutPort it sends on
    procs = {}
    graded = set(chip.source_bounds())  # relays, host products and analog ports send graded values
    for pop in chip.populations:
        if pop.graded:  # stateless, no threshold: nothing to reset between samples
            procs[pop.name] = GradedVec(shape=(pop.size,), vth=0)
            sends[pop.name] = procs[pop.name].s_out
            continue
        common = dict(shape=(pop.size,), du=pop.du, dv=pop.dv, vth=pop.vth, bias_mant=pop.bias_mant,
                      bias_exp=pop.bias_exp, reset_interval=window, reset_offset=(1 + depths[pop.name]) % window,
                      name=pop.name)
        own = pop.reset != "zero" or pop.refractory or pop.name in quiet
        procs[pop.name] = (CubaNeuron(**common, reset_mode=pop.reset, refractory=pop.refractory,
                                      quiet=quiet.get(pop.name, 0)) if own else LIFReset(**common))
        sends[pop.name] = procs[pop.name].s_out
    for h in chip.hosts:
        from .lava_host import host_product  # imports torch: only where a graph has host products

        pops = [chip.layer_populations(layer) for layer in h.inputs]
        procs[h.name] = host_product(heads=h.heads, tokens=h.tokens, dim=h.dim, name=h.name,
                                     parts=[[p.index for p in role] for role in pops])
        sends[h.name] = procs[h.name].s_out
        for role, role_pops in zip("qkv", pops):
            for i, pop in enumerate(role_pops):
                procs[pop.name].s_out.connect(getattr(procs[h.name], f"{role}{i}"))
    for syn in chip.synapses:
        if syn.conv is not None:
            _connect_conv(syn, sends[syn.source], procs[syn.target].a_in)
            continue
        weights = 2 * syn.mantissa
        kwargs = dict(weight_exp=syn.exp, num_weight_bits=8, sign_mode=SignMode.MIXED, name=syn.name,
                      num_message_bits=MESSAGE_BITS if syn.source in graded else 0)
        if sp.issparse(weights):
            csr = sp.csr_matrix(weights, dtype=np.int32)
            conn = (DelaySparse(weights=csr, delays=_sparse_delays(csr, syn.delay), **kwargs) if syn.delay
                    else Sparse(weights=csr, **kwargs))
        else:
            dense = np.asarray(weights, dtype=np.int32)
            conn = (DelayDense(weights=dense, delays=np.full(dense.shape, syn.delay, np.int64), **kwargs)
                    if syn.delay else Dense(weights=dense, **kwargs))
        sends[syn.source].connect(conn.s_in)
        conn.a_out.connect(procs[syn.target].a_in)
    return procs


def _connect_conv(syn, s_out, a_in) -> None:
    """``s_out -> Conv -> a_in`` for a group stored as a kernel (see :class:`~st2chip.chip.chipgraph.ConvKernel`).

    Lava's ``Conv`` takes ``(W, H, C)`` maps, its kernel as ``(C_out, k_w, k_h, C_in)``
    and convolves (flips the kernel), where st2chip keeps torch's cross-correlation
    on ``(C, H, W)``: the kernel is flipped and transposed here, the ports
    reshaped and transposed.
    """
    from lava.proc.conv.process import Conv

    k = syn.conv
    weight = (2 * k.kernel).transpose(0, 3, 2, 1)[:, ::-1, ::-1].astype(np.int32)
    conv = Conv(weight=np.ascontiguousarray(weight), input_shape=k.in_shape[::-1], padding=k.padding[::-1],
                stride=k.stride[::-1], dilation=k.dilation[::-1], groups=k.groups, weight_exp=0,
                num_weight_bits=8, name=syn.name)
    s_out.reshape(k.in_shape).transpose([2, 1, 0]).connect(conv.s_in)
    conv.a_out.transpose([2, 1, 0]).reshape((syn.shape[0],)).connect(a_in)


def _sparse_delays(weights: sp.csr_matrix, delay: int) -> sp.csr_matrix:
    """The same delay on every stored synapse, in the weights' sparsity pattern (what DelaySparse takes)."""
    delays = weights.astype(np.int64)  # DelaySparse checks for Python int's dtype
    delays.data = np.full(delays.data.shape, delay, np.int64)
    return delays


def _import_lava() -> None:
    """Import what a run uses (in the Lava process, once: later runs there find it imported)."""
    ensure_lava()
    import lava.magma.compiler.compiler  # noqa: F401 - imported lazily by Process.run
    import lava.magma.core.run_conditions  # noqa: F401
    import lava.magma.core.run_configs  # noqa: F401
    import lava.proc.conv.models  # noqa: F401 - process models: the compiler looks them up
    import lava.proc.conv.process  # noqa: F401
    import lava.proc.dense.models  # noqa: F401
    import lava.proc.dense.process  # noqa: F401
    import lava.proc.graded.models  # noqa: F401
    import lava.proc.graded.process  # noqa: F401
    import lava.proc.io.source  # noqa: F401
    import lava.proc.lif.models  # noqa: F401
    import lava.proc.lif.process  # noqa: F401
    import lava.proc.sparse.models  # noqa: F401
    import lava.proc.sparse.process  # noqa: F401
    from . import lava_neuron, lava_record  # noqa: F401 - st2chip's processes and their models


def _network(chip: ChipGraph, source_data: dict[str, np.ndarray], window: int, total: int,
             monitored: list[Population], folder: str):
    """Lava's processes of ``chip`` and the one recorder of every population's spikes and the ``monitored``
    voltages, writing into ``folder`` (reading Lava Vars back sends each value as a message of its own);
    returns the process a run starts from (Lava's compiler finds the rest through their connections)."""
    from .lava_record import recorder

    procs = _processes(chip, source_data, window)
    rec = recorder(spikes=[p.size for p in chip.populations], voltages=[p.size for p in monitored], steps=total,
                   folder=folder)
    for i, pop in enumerate(chip.populations):
        procs[pop.name].s_out.connect(getattr(rec, f"s{i}"))
    for i, pop in enumerate(monitored):
        getattr(rec, f"v{i}").connect_var(procs[pop.name].v)
    return procs[chip.populations[0].name]


def _simulate(chip: ChipGraph, source_data: dict[str, np.ndarray], window: int, total: int,
              voltages: bool, progress: bool = False) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Build, run and stop the Lava network (in the Lava process); raw spikes ``(total, n)`` and voltages.

    With ``progress`` the run is split into at most :data:`PROGRESS_CHUNKS` runs of whole sample
    windows (Lava continues where the last run stopped) under a progress bar over samples.
    """
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg

    _import_lava()
    from .lava_record import load

    monitored = [p for p in chip.populations if _monitored(p, voltages)]
    # Lava's compiler flattens its process list by recursion, one level per process: a graph with many
    # populations (K decay groups make up to K^2 of them per layer, and a group per pair) needs more
    # than Python's default of 1000 (this runs in the Lava process)
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 1000 + 4 * process_count(chip)))
    samples = total // window
    per_run = max(1, -(-samples // PROGRESS_CHUNKS)) if progress else samples
    # tqdm's default lock makes a multiprocessing semaphore, which Lava's workers would inherit and the
    # caller's resource tracker would track: a thread lock does for the one bar here
    tqdm.set_lock(threading.RLock())
    with tempfile.TemporaryDirectory(prefix="st2chip-lava-") as folder:
        anchor = _network(chip, source_data, window, total, monitored, folder)
        bar = tqdm(total=samples, desc="lava", unit="sample", leave=False, disable=not progress)
        with _frozen_heap():
            try:
                for done in range(0, samples, per_run):
                    n = min(per_run, samples - done)
                    anchor.run(condition=RunSteps(num_steps=n * window), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
                    bar.update(n)
                spikes, volts = load(folder, len(chip.populations), len(monitored))
            finally:
                bar.close()
                anchor.stop()
    return ({p.name: s for p, s in zip(chip.populations, spikes)},
            {p.name: v for p, v in zip(monitored, volts)})


@contextmanager
def _frozen_heap() -> Iterator[None]:
    """Every object this process holds, collected, then frozen while Lava forks and runs its workers.

    Each worker is a fork of this process; its garbage collector would otherwise walk the inherited heap and
    so copy the pages it touches (copy on write): measured in st2chip's Lava process, which serves run after
    run, 21.5 MiB private per worker instead of 7.3 MiB from its second run on, and seconds more per run.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _source_data(chip: ChipGraph, inputs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int, int]:
    """What the source sends, per input ``(n, total)``: the samples one after another, each in a window of its
    steps, the pipeline depth, and room for spikes a graph-level delay (lag) still holds, so that none of them
    reaches the next sample; and the window and total steps."""
    from .engine import batch_steps

    batch, steps = batch_steps(inputs)
    window = steps + chip.depth + max((s.lag for s in chip.synapses), default=0)
    total = batch * window
    source_data = {}
    for name, x in inputs.items():
        padded = np.zeros((batch, window, x.shape[2]), np.int32)
        padded[:, :steps] = x
        source_data[name] = padded.reshape(total, x.shape[2]).T.copy()
    return source_data, window, total


def run(chip: ChipGraph, inputs: dict[str, np.ndarray], *, voltages: bool = True,
        progress: bool = False) -> Traces:
    """Run ``inputs`` (name -> spikes ``(B, T, n)``) on Lava's fixed-point CPU simulator (``progress``: a
    progress bar over samples).

    ``voltages=False`` records voltages of readout populations only (their final
    voltage is the output): each recorded voltage is one more read per step.
    """
    from .engine import assemble, batch_steps

    batch, steps = batch_steps(inputs)
    n = process_count(chip)
    limits.check_bytes(f"{n:,} Lava processes (each an OS process of about {limits.human(PROCESS_BYTES)}) and "
                       f"their weights (fewer --decay-groups make fewer populations and synapse groups; verify "
                       f"--lava-mode layers bounds them; --backends float,reference leaves Lava out)",
                       memory_bytes(chip), where="lava")
    ensure_lava()  # a missing Lava is one line here, before the Lava process starts
    source_data, window, total = _source_data(chip, inputs)
    raw_s, raw_v = call_in_own_group(_simulate, chip, source_data, window, total, voltages, progress)
    depths = chip.depths()
    rec_s, rec_v = {}, {}
    for pop in chip.populations:
        # global step g (1-based) of sample k, local step j: g = k*window + d + 1 + j
        idx = np.arange(batch)[:, None] * window + depths[pop.name] + np.arange(steps)[None, :]
        rec_s[pop.name] = (raw_s[pop.name][idx] != 0).astype(np.uint8)
        if pop.graded and voltages:
            rec_v[pop.name] = raw_s[pop.name][idx].astype(np.int64)
        elif pop.name in raw_v:
            rec_v[pop.name] = raw_v[pop.name][idx].astype(np.int64)
    return assemble(chip, "lava", inputs, rec_s, rec_v)
