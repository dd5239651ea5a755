"""Lava runs in st2chip's Lava process: a slim interpreter of its own, not a fork of the caller, started once and
reused by later runs (Lava layer by layer's chunks), gone when its caller is."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import nir
import numpy as np
import pytest

from st2chip.chip.lower import lower
from st2chip.graph.normalize import normalize
from st2chip.targets import lava, lava_layers
from st2chip.targets.lava_process import call_in_own_group

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")

DT = 1e-3
ROOT = Path(__file__).resolve().parents[2]


def _chip():
    """input(8) -> LIF(8) -> LIF(4), two decay groups per layer: four populations, several Lava runs when
    each run may start only a few processes."""
    rng = np.random.default_rng(0)

    def lif(n: int) -> nir.LIF:
        beta = rng.uniform(0.7, 0.95, n)
        return nir.LIF(tau=DT / (1 - beta), r=1 / (1 - beta), v_leak=np.zeros(n), v_threshold=np.ones(n),
                       v_reset=np.zeros(n))

    nodes = {"input": nir.Input(input_type={"input": np.array([8])}),
             "f1": nir.Affine(weight=rng.normal(0.4, 0.3, (8, 8)), bias=np.zeros(8)), "l1": lif(8),
             "f2": nir.Affine(weight=rng.normal(0.4, 0.3, (4, 8)), bias=np.zeros(4)), "l2": lif(4),
             "output": nir.Output(output_type={"output": np.array([4])})}
    edges = [("input", "f1"), ("f1", "l1"), ("l1", "f2"), ("f2", "l2"), ("l2", "output")]
    graph = normalize(nir.NIRGraph(nodes=nodes, edges=edges, metadata={"dt": DT}, type_check=False))
    return lower(graph, decay_groups=2)


def _x(samples: int) -> dict[str, np.ndarray]:
    return {"input": (np.random.default_rng(1).random((samples, 10, 8)) < 0.4).astype(np.uint8)}


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a process, None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, ppid = text[text.rindex(")") + 2:].split()[:2]
    return state, int(ppid)


def _children(pid: int) -> set[int]:
    return {int(e) for e in os.listdir("/proc") if e.isdigit() and (_stat(int(e)) or ("", 0))[1] == pid}


def test_lava_workers_descend_from_the_slim_process_not_from_a_fork_of_the_caller():
    slim = call_in_own_group(os.getpid)
    assert _stat(slim)[1] == os.getpid()
    ours = Path("/proc/self/cmdline").read_bytes()
    assert Path(f"/proc/{slim}/cmdline").read_bytes() != ours  # a fresh interpreter, not a fork of this one
    assert b"st2chip.targets.lava_process" in Path(f"/proc/{slim}/cmdline").read_bytes()
    seen: set[int] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.update(_children(slim))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        before = _children(os.getpid())
        out = lava.run(_chip(), _x(60))
        after = _children(os.getpid())
    finally:
        done.set()
        watcher.join()
    assert len(seen) >= 5, "Lava's workers (one per population and synapse group) were never seen under it"
    assert after <= before | {slim}  # nothing of Lava's under the caller
    assert call_in_own_group(os.getpid) == slim  # and it is still there for the next run
    assert out.spikes


def test_the_slim_process_serves_every_chunk_of_a_layer_by_layer_check():
    pids: list[int] = []

    def simulate(graph, inputs, voltages):
        pids.append(call_in_own_group(os.getpid))
        return lava.run(graph, inputs, voltages=voltages)

    chip = _chip()
    out = lava_layers.run(chip, _x(3), max_processes=6, simulate=simulate)
    assert out.meta["runs"] == len(pids) >= 2 and out.meta["differences"] == []
    assert len(set(pids)) == 1 and pids[0] != os.getpid()


SLIM_THEN_SLEEP = """
import os, sys, time
import numpy as np
sys.path.insert(0, {tests!r})
from test_lava_process import _chip, _x
from st2chip.targets import lava
from st2chip.targets.lava_process import call_in_own_group
big = np.ones(400 * 2**20 // 8)  # the caller holds far more than the Lava process
lava.run(_chip(), _x(2))
print(call_in_own_group(os.getpid), flush=True)
time.sleep(60)
"""


def _rss_mb(pid: int) -> float:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def test_the_slim_process_stays_small_and_ends_with_its_caller():
    """After a Lava run it holds Lava, not the caller's memory nor torch; SIGKILL to the caller ends it (it
    would otherwise wait for calls for ever)."""
    caller = subprocess.Popen([sys.executable, "-c", SLIM_THEN_SLEEP.format(tests=str(Path(__file__).parent))],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, start_new_session=True)
    try:
        line = caller.stdout.readline()
        assert line.strip().isdigit(), caller.stderr.read().decode(errors="replace")
        slim = int(line)
        assert _rss_mb(slim) < 300 < _rss_mb(caller.pid)
        os.kill(caller.pid, signal.SIGKILL)
        caller.wait()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (_stat(slim) or ("Z",))[0] != "Z":
            time.sleep(0.05)
        assert (_stat(slim) or ("Z",))[0] == "Z", "the Lava process outlived its caller"
    finally:
        if caller.poll() is None:
            caller.kill()
            caller.wait()
        try:
            os.killpg(int(line), signal.SIGKILL)
        except (ValueError, NameError, ProcessLookupError, PermissionError):
            pass
