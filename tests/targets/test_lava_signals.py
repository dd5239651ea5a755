"""Ctrl-C and SIGTERM during a Lava run end st2chip quickly and leave no Lava process behind.

A real ``st2chip verify`` runs in its own session; once Lava's worker processes
exist, SIGINT or SIGTERM goes to the main process or to its whole process group
(what a terminal's Ctrl-C does). st2chip must exit with 130 / 143 within
seconds, print ``st2chip: interrupted`` and no traceback, and no process of that
session may survive it.
"""

from __future__ import annotations

import os
import re
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


def _kill_all(sid: int, proc: subprocess.Popen) -> None:
    """Never leave strays to the next test: SIGKILL what is left of the session, and the CLI itself."""
    for pid in _session_members(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if proc.poll() is None:
        proc.kill()
        proc.wait()


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
        _kill_all(sid, proc)


# --- the Lava process itself ----------------------------------------------------------------------
# What runs there is pickled by reference: the functions below, from this file imported under its plain name
# (pytest's name for it, tests.targets..., is not importable: site-packages holds another 'tests').


@pytest.fixture
def here(monkeypatch):
    import importlib

    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    return importlib.import_module(Path(__file__).stem)


def _work(x):
    return x * 2, os.getpgid(0) == os.getpid(), os.getpid()


def _fail():
    raise ValueError("bad weights")


def _die(marker: str) -> None:
    grandchild = os.fork()  # stands in for a Lava worker: it holds the result pipe open
    if grandchild == 0:
        time.sleep(60)
        os._exit(0)
    Path(marker).write_text(str(grandchild))
    os.kill(os.getpid(), signal.SIGKILL)


def _wait_for_a_dead_worker() -> None:
    import multiprocessing as mp

    worker = mp.get_context("fork").Process(target=time.sleep, args=(60,))  # stands in for a Lava worker
    worker.start()
    os.kill(worker.pid, signal.SIGKILL)
    time.sleep(60)  # stands in for Lava's runtime, which waits for its workers' messages for ever


def test_call_in_own_group_returns_results_from_its_own_group(here):
    from st2chip.targets.lava_process import call_in_own_group

    doubled, own_group, pid = call_in_own_group(here._work, np.arange(5))
    np.testing.assert_array_equal(doubled, np.arange(5) * 2)
    assert own_group and pid != os.getpid()


def test_call_in_own_group_raises_the_childs_exception(here):
    from st2chip.targets.lava_process import call_in_own_group

    with pytest.raises(ValueError, match="bad weights") as info:
        call_in_own_group(here._fail)
    assert any("Lava process" in note for note in getattr(info.value, "__notes__", []))


def test_child_dying_alone_takes_its_descendants_along(here, tmp_path):
    from st2chip.targets.lava_process import ChildProcessDied, call_in_own_group

    marker = tmp_path / "grandchild"
    with pytest.raises(ChildProcessDied):
        call_in_own_group(here._die, str(marker))
    grandchild = marker.read_text()
    assert _wait_for(lambda: _stat(grandchild) is None or _stat(grandchild)[0] == "Z", 5)


def test_a_dead_worker_ends_the_wait_with_one_error(here):
    """A worker of the Lava process killed by a signal while the function still waits: WorkerDied, not a stall;
    the next call gets a fresh Lava process."""
    from st2chip.errors import BackendError
    from st2chip.targets.lava_process import WorkerDied, call_in_own_group

    t0 = time.monotonic()
    with pytest.raises(WorkerDied, match=r"a Lava worker process died \(signal 9, pid \d+\)") as info:
        call_in_own_group(here._wait_for_a_dead_worker)
    assert time.monotonic() - t0 < 10
    assert isinstance(info.value, BackendError) and info.value.exit_code == 1
    assert call_in_own_group(here._work, 1)[0] == 2


# --- a Lava process killed from outside during a CLI run ----------------------------------------

def _lava_child(sid: int) -> int | None:
    """The Lava child: the process of the session in a process group of its own."""
    for pid in _session_members(sid):
        stat = _stat(str(pid))
        if stat is not None and stat[1] == sid and stat[2] == pid:
            return pid
    return None


def _children(sid: int, parent: int) -> list[int]:
    """Live children of ``parent`` in session ``sid``, oldest first (for the Lava child: Lava's shared-memory
    server, then its workers)."""
    return sorted(pid for pid in _session_members(sid) if (_stat(str(pid)) or ("", 0))[1] == parent)


def _without_progress_bars(text: str) -> str:
    """stderr less tqdm's frames (``lava:  10%|█  | 60/600 [00:01<00:09, 55.0sample/s]``): a killed Lava
    process leaves its bar's last frame, which the error line then follows on the same line."""
    return re.sub(r"[\w ]+:\s*\d+%\|[^|]*\|[^\[\]]*\[[^\]]*\]", "", text.replace("\r", "\n"))


@pytest.mark.parametrize("victim", ["worker", "lava-child"])
def test_a_killed_lava_process_ends_st2chip_with_one_error(model_and_inputs, victim):
    """SIGKILL to one Lava worker (a grandchild) or to the Lava child: exit 1 within seconds, one error line,
    no traceback, nothing left behind (st2chip used to stall at 10 % for ever, or print a traceback)."""
    nir_path, x_path = model_and_inputs
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "st2chip.cli", "verify", str(nir_path), "--inputs", str(x_path),
         "--backends", "reference,lava", "--dt", "1e-3", *_all_samples_on_lava()],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True, env=env)
    sid = proc.pid
    try:
        started = _wait_for(lambda: len(_session_members(sid)) >= 6 or proc.poll() is not None, 60)
        assert started and proc.poll() is None, "Lava never started"
        time.sleep(0.5)
        child = _lava_child(sid)
        assert child is not None and proc.poll() is None
        target = _children(sid, child)[-1] if victim == "worker" else child
        t0 = time.monotonic()
        os.kill(target, signal.SIGKILL)
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            pytest.fail(f"st2chip still running 20 s after SIGKILL to the {victim}")
        elapsed = time.monotonic() - t0
        err_text = err.decode(errors="replace")
        lines = [line for line in _without_progress_bars(err_text).splitlines() if line.strip()]
        assert proc.returncode == 1, err_text
        assert elapsed < 8, f"took {elapsed:.1f} s to stop"
        expected = ("st2chip: error: a Lava worker process died (signal 9" if victim == "worker"
                    else "st2chip: error: st2chip's Lava process died (signal 9)")
        assert len(lines) == 1 and lines[0].startswith(expected), err_text
        gone = _wait_for(lambda: not _session_members(sid), 5)
        assert gone, f"processes left behind: {[(pid, _command(pid)) for pid in _session_members(sid)]}"
    finally:
        _kill_all(sid, proc)
