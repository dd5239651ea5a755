"""Run a function in st2chip's Lava process, a slim process of its own, and stop it with all it started.

Lava's runtime forks one OS process per Lava process plus a shared-memory
server, and its own ``stop()`` cannot be trusted once a signal has reached
them: a terminal's Ctrl-C goes to the whole foreground process group, kills
the workers, and ``runtime.stop()`` then waits for them forever; SIGTERM to the
main process leaves them all orphaned. So :func:`call_in_own_group` runs the
function in a process of st2chip's in a process group of its own (terminal
signals reach only the caller); the result comes back through a pipe.

That process is a fresh interpreter, not a fork of the caller: Lava forks its
workers from it, and a fork copies the page tables of what it forks, seconds per
Lava run from a caller that holds gigabytes (a mapped CIFAR-size model), where
the fresh process holds only what the functions import (Lava without torch:
about 110 MB). It starts on the first call (about 1.5 s) and serves the caller's
later calls (Lava layer by layer makes one run per chunk of populations); the
function and its arguments are pickled on the way in (a module-level function),
the result on the way out. After any ending but a result it is stopped, and the
next call starts a new one; a copy of the caller made by ``fork`` starts its own.

On any exception in the caller (KeyboardInterrupt above all) the Lava process
gets SIGTERM: it SIGKILLs its worker processes, asks multiprocessing manager
servers to shut down (Lava's shared-memory server then unlinks its segments) and
exits. After a short grace the caller SIGKILLs the whole group anyway, so nothing
survives even if that tidy path hangs. When the caller ends, it stops the Lava
process (at exit), or the Lava process notices that its parent is gone (SIGKILL,
or SIGTERM without a handler) and stops itself the same way.

A Lava worker that dies (SIGKILLed, or the out-of-memory killer) leaves Lava's
runtime waiting for it forever; so a thread in the Lava process watches the
workers (every child process but multiprocessing's manager servers) and, when
one ends with a signal or a non-zero exit code while a function runs, reports it
to the caller, who stops everything as above and raises :class:`WorkerDied`.
Every ending that is not the function's own result or exception is a
:class:`~st2chip.errors.BackendError`: one line, exit code 1 on the command line.

Linux/POSIX only (process groups); Lava itself needs fork.
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import multiprocessing.connection
import multiprocessing.reduction
import multiprocessing.util
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from st2chip import limits
from st2chip.errors import BackendError
from st2chip.targets.lava_compat import ensure_lava

GRACE_S = 2.0  # how long the Lava process may take to stop its workers before everything is SIGKILLed
WATCH_S = 0.2  # how often the Lava process looks for a dead worker and for its parent
_SIGNALS = {signal.SIGINT, signal.SIGTERM}
_TRACKER_QUIET = "ignore:resource_tracker:UserWarning"  # the tracker's "leaked shared_memory objects"
_WORKER_DIED = "worker-died"  # the Lava process's message when one of its workers died: (tag, pid, exit code)
_MAIN = "import sys; sys.path[:] = {path!r}; from st2chip.targets.lava_process import _serve; _serve({fd}, {tracker})"
_owner_pid: int | None = None  # in the Lava process: its pid (its descendants inherit the handler, not the role)


class ChildProcessDied(BackendError):
    """The Lava process ended without sending a result (killed by a signal, say)."""


class WorkerDied(BackendError):
    """A process the Lava process started (a Lava worker) died while the function ran."""


@dataclass
class _Slim:
    """The caller's handle on its Lava process."""

    popen: subprocess.Popen
    conn: mp.connection.Connection
    owner: int = field(default_factory=os.getpid)  # the caller: a forked copy of it starts its own


_slim: _Slim | None = None
_calls = threading.Lock()  # one call at a time per Lava process (one pipe)


def call_in_own_group(fn: Callable[..., Any], *args: Any, grace: float = GRACE_S) -> Any:
    """``fn(*args)`` in st2chip's Lava process (started on first use, then reused); its result or exception
    comes back.

    ``fn`` must be picklable (a module-level function, importable on this process's import path as it is at
    the call), as must its arguments and result. Whatever interrupts the wait stops the Lava process and
    every process it started before it propagates.
    """
    with _calls:
        slim = _running()
        try:
            # the import path first, then the function and its arguments pickled, sent as they are (no copy of
            # a graph as large as its weights)
            slim.conn.send(list(sys.path))
            slim.conn.send_bytes(mp.reduction.ForkingPickler.dumps((fn, args)))
            message = _receive(slim.conn, slim.popen.pid)
        except BaseException:
            _stop(slim, grace)
            raise
        if message is None:  # it died (OOM killer, say): its workers may still run
            _stop(slim, 0.0)
            raise ChildProcessDied(f"st2chip's Lava process died ({_ending(slim.popen.returncode)}) before "
                                   f"sending its result; it and every process it started were stopped")
        limits.release_freed()  # the pickled graph sent and the results received
        if message[0] == "ok":
            return message[1]
        _stop(slim, grace)  # after a dead worker its runtime waits forever; after an error, a fresh one next time
        if message[0] == _WORKER_DIED:
            _, pid, code = message
            raise WorkerDied(f"a Lava worker process died ({_ending(code)}, pid {pid}); st2chip stopped the Lava "
                             f"run and all its processes (killed from outside, or by the out-of-memory killer?)")
        _, err, child_traceback = message
        err.add_note(f"raised in st2chip's Lava process:\n{child_traceback}")
        raise err


def _running() -> _Slim:
    """This process's Lava process, started if there is none (or it ended while idle)."""
    global _slim
    if _slim is not None and _slim.owner == os.getpid() and not _exited(_slim.popen.pid):
        return _slim
    if _slim is not None and _slim.owner == os.getpid():
        _stop(_slim, 0.0)
    _slim = _start()
    return _slim


def _start() -> _Slim:
    """A fresh interpreter in a process group of its own, serving calls on one end of a pipe.

    It shares this process's resource tracker (see :func:`_start_resource_tracker`) and import path, and
    starts with SIGINT and SIGTERM blocked (no Ctrl-C between the start and knowing its pid); it unblocks
    them once its own handlers are in place.
    """
    tracker = _start_resource_tracker()
    mine, theirs = mp.Pipe(duplex=True)
    fds = (theirs.fileno(),) + ((tracker,) if tracker is not None else ())
    code = _MAIN.format(path=list(sys.path), fd=theirs.fileno(), tracker=tracker)
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    try:
        popen = subprocess.Popen([sys.executable, "-c", code], pass_fds=fds, process_group=0,
                                 stdin=subprocess.DEVNULL)
    finally:
        theirs.close()
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)  # a pending Ctrl-C is raised here
    return _Slim(popen, mine)


@atexit.register
def _stop_at_exit() -> None:
    if _slim is not None and _slim.owner == os.getpid():
        _stop(_slim, GRACE_S)


def _receive(receiver: mp.connection.Connection, pid: int) -> Any:
    """The Lava process's message, or None if it exits without one.

    Not a plain ``recv()``: Lava's workers inherit the pipe's other end, so a
    Lava process that dies alone would not close it.
    """
    while not receiver.poll(0.1):
        if _exited(pid) and not receiver.poll(0):
            return None
    try:
        return receiver.recv()
    except EOFError:
        return None


def _start_resource_tracker() -> int | None:
    """Start multiprocessing's resource tracker here, outside the Lava process's group; its pipe's fd.

    Every process that touches shared memory registers it with the tracker it
    was handed (Lava's, this one); started here, it outlives a SIGKILLed group and unlinks
    what that group left behind (it ignores SIGINT and SIGTERM and exits once
    all its users have). It would warn about each kind of segment it unlinks
    then, on st2chip's stderr after st2chip's own one-line error, which already
    says that the Lava processes were stopped: it is started without that warning
    (a ``-W`` option, which it takes from ``sys.warnoptions``).
    """
    sys.warnoptions.append(_TRACKER_QUIET)
    try:
        from multiprocessing import resource_tracker
        return resource_tracker.getfd()
    except Exception:  # noqa: BLE001 - best effort: Lava runs without it, it only cleans up
        return None
    finally:
        sys.warnoptions.remove(_TRACKER_QUIET)


def _ending(code: int | None) -> str:
    """How a process ended, from its exit code (negative: the signal that killed it; 128 + SIGTERM: ended
    by st2chip's own SIGTERM handler)."""
    if code is not None and code < 0:
        return f"signal {-code}"
    if code == 128 + signal.SIGTERM:
        return f"signal {signal.SIGTERM.value}"
    return f"exit code {code}"


def _exited(pid: int) -> bool:
    """Whether the Lava process has exited, without reaping it (its pid must stay its group's id)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _stop(slim: _Slim, grace: float) -> None:
    """SIGTERM the Lava process, wait up to ``grace`` s, SIGKILL its whole group, reap it, forget it.

    A second interrupt while waiting skips the rest of the wait; nothing here
    returns before the group has been killed.
    """
    global _slim
    pid = slim.popen.pid
    asked = False
    deadline = time.monotonic() + grace
    while True:
        try:
            if not asked:
                asked = True
                if _slim is slim:
                    _slim = None
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            while time.monotonic() < deadline and not _exited(pid):
                time.sleep(0.01)
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            slim.popen.wait()
            slim.conn.close()
            return
        except KeyboardInterrupt:  # impatient user: kill now
            deadline = 0.0


# ---------------------------------------------------------------------------------------------
# in the Lava process


@dataclass
class _Call:
    """The call being served: one message goes back, its result or a worker's death, whichever is first."""

    conn: mp.connection.Connection
    lock: threading.Lock = field(default_factory=threading.Lock)
    running: bool = False  # a function runs (its workers are watched)
    decided: bool = True  # its one message is decided


def _serve(fd: int, tracker: int | None) -> None:
    """The Lava process's loop: run each call that comes through the pipe, until it closes."""
    global _owner_pid
    _owner_pid = os.getpid()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the caller decides; workers inherit this
    signal.signal(signal.SIGTERM, _on_sigterm)
    if tracker is not None:  # the caller's resource tracker, as multiprocessing's spawn hands it on
        from multiprocessing import resource_tracker
        resource_tracker._resource_tracker._fd = tracker
    call = _Call(mp.connection.Connection(fd))
    # started while SIGINT/SIGTERM are blocked (as the caller started this process): the thread keeps them blocked
    _watch(call, os.getppid())
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
    while True:
        try:
            path, request = call.conn.recv(), call.conn.recv_bytes()
        except (EOFError, OSError):  # the caller closed its end
            return
        with call.lock:
            call.running, call.decided = True, False
        try:
            sys.path[:] = path  # each call on the caller's import path of the moment
            ensure_lava()  # ``import lava...`` works here, as it does in the caller (once; then a no-op)
            fn, args = pickle.loads(request)
            del request  # the pickled graph, as large as its weights: not held while they run
            message = ("ok", fn(*args))
        except BaseException as err:  # noqa: BLE001 - everything goes back to the caller
            message = ("error", err, traceback.format_exc())
        fn = args = None  # the run's graph and inputs: freed for the trim below
        with call.lock:
            call.running = False
            if call.decided:  # the watcher reported a dead worker: the caller stops this process
                continue
            call.decided = True
            _send_result(call.conn, message)
        message = None
        limits.release_freed()  # a served run's graph and records: this process waits lean for the next


def _send_result(conn: mp.connection.Connection, message: tuple) -> None:
    try:
        conn.send(message)
    except BrokenPipeError:
        return
    except Exception:  # noqa: BLE001 - unpicklable result or exception
        detail = traceback.format_exc() if message[0] == "ok" else message[2]
        conn.send(("error", RuntimeError("the Lava process could not send its result back"), detail))


def _watch(call: _Call, parent: int) -> None:
    """Stop this process once its caller is gone; report the first worker that dies while a function runs."""
    def watch() -> None:
        while True:
            time.sleep(WATCH_S)
            if os.getppid() != parent:  # reparented: the caller is gone
                os.kill(os.getpid(), signal.SIGTERM)
                return
            with call.lock:
                if not call.running or call.decided:
                    continue
                dead = _dead_worker()
                if dead is None:
                    continue
                call.decided = True
                try:
                    call.conn.send((_WORKER_DIED, *dead))
                except OSError:  # the caller is gone; the check above stops this process
                    pass

    threading.Thread(target=watch, name="st2chip-lava-watch", daemon=True).start()


def _dead_worker() -> tuple[int, int] | None:
    """``(pid, exit code)`` of a child (not a manager server) that ended with a signal (negative code) or
    a non-zero exit code; it is not reaped, so Lava's own join still finds it."""
    servers = [f._args[0] for f in _manager_finalizers() if f._args]
    for child in list(mp.process._children):  # the children this process started and has not joined
        if any(child is server for server in servers):
            continue
        try:
            pid = child.pid
            info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except (ValueError, TypeError, ChildProcessError):  # closed, not started, or reaped meanwhile
            continue
        if info is None:
            continue
        killed = info.si_code in (os.CLD_KILLED, os.CLD_DUMPED)
        code = -info.si_status if killed else info.si_status
        if code != 0:
            return pid, code
    return None


def _on_sigterm(signum: int, frame: Any) -> None:
    if os.getpid() != _owner_pid:  # a Lava worker that inherited this handler
        os._exit(128 + signum)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        _stop_children()
    finally:
        os._exit(128 + signum)


def _stop_children() -> None:
    """SIGKILL Lava's workers; shut manager servers down so that they unlink their shared memory."""
    managers = _manager_finalizers()
    servers = [f._args[0] for f in managers if f._args]  # (process, address, authkey, ...)
    workers = [p for p in mp.active_children() if all(p is not server for server in servers)]
    for p in workers:
        try:
            os.kill(p.pid, signal.SIGKILL)
        except (ProcessLookupError, TypeError):
            pass
    for p in workers:  # reap them (Lava's SystemProcess.join takes no timeout)
        try:
            mp.process.BaseProcess.join(p, 0.5)
        except Exception:  # noqa: BLE001
            pass
    for finalizer in managers:
        try:
            finalizer()  # 'shutdown' to the server (it unlinks its segments), join; kill after ~1 s
        except Exception:  # noqa: BLE001 - the caller SIGKILLs the group anyway
            pass


def _manager_finalizers() -> list:
    """multiprocessing's finalizers of manager servers (Lava's shared-memory server) in this process."""
    return [f for f in list(mp.util._finalizer_registry.values())
            if getattr(getattr(f, "_callback", None), "__name__", "") == "_finalize_manager"]
