"""Ctrl-C and SIGTERM during a Lava run end st2chip quickly and leave no Lava process behind.

A real ``st2chip verify`` runs in its own session; once Lava's worker processes
exist, SIGINT or SIGTERM goes to the main process or to its whole process group
(what a terminal's Ctrl-C does). st2chip must exit with 130 / 143 within
seconds, print ``st2chip: interrupted`` and no traceback, and no process of that
session may survive it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from st2chip.converters.mlp import mlp_to_nir
from st2chip.graph.nirfile import write_nir

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")

STEPS = 10
SAMPLES = 600  # several seconds of Lava: the signal always lands mid-run


def _stat(pid: str) -> tuple[str, int, int, int] | None:
    """(state, ppid, pgrp, session) of a process, None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, ppid, pgrp, session = text[text.rindex(")") + 2:].split()[:4]
    return state, int(ppid), int(pgrp), int(session)


def _session_members(sid: int) -> list[int]:
    """Live (not zombie) processes whose session id is ``sid``."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(entry)
            if stat is not None and stat[3] == sid and stat[0] != "Z":
                members.append(int(entry))
    return members


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120]
    except OSError:
        return "?"


def _wait_for(predicate, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


@pytest.fixture(scope="module")
def model_and_inputs(tmp_path_factory):
    import torch

    from st2chip.learn.mlp import MLPConfig, SpikingMLP

    folder = tmp_path_factory.mktemp("lava_signals")
    torch.manual_seed(0)
    model = SpikingMLP(MLPConfig(sizes=[16, 8, 4], steps=STEPS))
    nir_path = write_nir(mlp_to_nir(model), folder / "model.nir")
    x = (np.random.default_rng(0).random((SAMPLES, STEPS, 16)) < 0.3).astype(np.uint8)
    np.save(folder / "x.npy", x)
    return nir_path, folder / "x.npy"


def _all_samples_on_lava() -> list[str]:
    """verify may cross-check only the first few samples on Lava; here Lava must run them all."""
    import inspect

    import st2chip.cli.main

    return ["--lava-samples", str(SAMPLES)] if "--lava-samples" in inspect.getsource(st2chip.cli.main) else []


def _terminal_sigint() -> None:
    """SIGINT as a terminal's program gets it: a test run started in the background (``make test &``) has it
    ignored, and an ignored disposition survives exec, so the CLI would never see the Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


CASES = {
    "sigint-process": (signal.SIGINT, False, 130),
    "sigint-group": (signal.SIGINT, True, 130),
    "sigterm-process": (signal.SIGTERM, False, 143),
    "sigterm-group": (signal.SIGTERM, True, 143),
}


@pytest.mark.parametrize("case", list(CASES))
def test_signal_during_lava_run_stops_everything(model_and_inputs, case):
    sig, to_group, expected = CASES[case]
    nir_path, x_path = model_and_inputs
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "st2chip.cli", "verify", str(nir_path), "--inputs", str(x_path),
         "--backends", "reference,lava", "--dt", "1e-3", *_all_samples_on_lava()],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, env=env,
        preexec_fn=_terminal_sigint)
    sid = proc.pid
    try:
        # Lava is running once the session holds the main process plus Lava's workers.
        started = _wait_for(lambda: len(_session_members(sid)) >= 6 or proc.poll() is not None, 60)
        assert started and proc.poll() is None, "Lava never started"
        time.sleep(0.5)
        assert proc.poll() is None, "Lava finished before the signal; make the run longer"
        t0 = time.monotonic()
        if to_group:
            os.killpg(sid, sig)
        else:
            os.kill(sid, sig)
        try:
            out, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            pytest.fail(f"st2chip still running 15 s after {case}; session: {_session_members(sid)}")
        elapsed = time.monotonic() - t0
        err_text = err.decode(errors="replace")
        assert proc.returncode == expected, err_text
        assert elapsed < 8, f"took {elapsed:.1f} s to stop"
        assert "st2chip: interrupted" in err_text
        assert "Traceback" not in err_text, err_text
        assert "leaked" not in err_text, err_text  # Lava's shared-memory server got to unlink its segments
        gone = _wait_for(lambda: not _session_members(sid), 5)
        assert gone, f"processes left behind: {[(pid, _command(pid)) for pid in _session_members(sid)]}"
    finally:
        for pid in _session_members(sid):  # never leave strays to the next test
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- the child-process runner itself -------------------------------------------------------------

def test_call_in_own_group_returns_results_from_its_own_group():
    from st2chip.targets.lava_process import call_in_own_group

    def work(x):
        return x * 2, os.getpgid(0) == os.getpid(), os.getpid()

    doubled, own_group, pid = call_in_own_group(work, np.arange(5))
    np.testing.assert_array_equal(doubled, np.arange(5) * 2)
    assert own_group and pid != os.getpid()


def test_call_in_own_group_raises_the_childs_exception():
    from st2chip.targets.lava_process import call_in_own_group

    def fail():
        raise ValueError("bad weights")

    with pytest.raises(ValueError, match="bad weights") as info:
        call_in_own_group(fail)
    assert any("Lava process" in note for note in getattr(info.value, "__notes__", []))


def test_child_dying_alone_takes_its_descendants_along(tmp_path):
    from st2chip.targets.lava_process import ChildProcessDied, call_in_own_group

    marker = tmp_path / "grandchild"

    def die():
        grandchild = os.fork()  # stands in for a Lava worker: it holds the result pipe open
        if grandchild == 0:
            time.sleep(60)
            os._exit(0)
        marker.write_text(str(grandchild))
        os.kill(os.getpid(), signal.SIGKILL)

    with pytest.raises(ChildProcessDied):
        call_in_own_group(die)
    grandchild = marker.read_text()
    assert _wait_for(lambda: _stat(grandchild) is None or _stat(grandchild)[0] == "Z", 5)
