"""Run a function in a child process that st2chip owns, and stop it together with all it started.

Lava's runtime forks one OS process per Lava process plus a shared-memory
server, and its own ``stop()`` cannot be trusted once a signal has reached
them: a terminal's Ctrl-C goes to the whole foreground process group, kills
the workers, and ``runtime.stop()`` then waits for them forever; SIGTERM to the
main process leaves them all orphaned. So :func:`call_in_own_group` forks a
child, puts it in a process group of its own (terminal signals reach only the
caller) and runs the function there; the caller reads the result from a pipe.

On any exception in the caller (KeyboardInterrupt above all) the child gets
SIGTERM: it SIGKILLs its worker processes, asks multiprocessing manager servers
to shut down (Lava's shared-memory server then unlinks its segments) and exits.
After a short grace the caller SIGKILLs the whole group anyway, so nothing
survives even if that tidy path hangs. A child whose caller dies (SIGKILL, or
SIGTERM without a handler) notices through multiprocessing's parent sentinel
and stops itself the same way.

A Lava worker that dies (SIGKILLed, or the out-of-memory killer) leaves Lava's
runtime waiting for it forever; so a thread in the child watches the workers
(every child process but multiprocessing's manager servers) and, when one ends
with a signal or a non-zero exit code while the function runs, reports it to
the caller, who stops everything as above and raises :class:`WorkerDied`.
Every ending that is not the function's own result or exception is a
:class:`~st2chip.errors.BackendError`: one line, exit code 1 on the command line.

Linux/POSIX only (fork, process groups); Lava itself needs fork.
"""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.connection
import multiprocessing.util
import os
import signal
import sys
import threading
import time
import traceback
from typing import Any, Callable

from st2chip.errors import BackendError

GRACE_S = 2.0  # how long the child may take to stop its workers before everything is SIGKILLed
WATCH_S = 0.2  # how often the child looks for a dead worker
_SIGNALS = {signal.SIGINT, signal.SIGTERM}
_TRACKER_QUIET = "ignore:resource_tracker:UserWarning"  # the tracker's "leaked shared_memory objects"
_WORKER_DIED = "worker-died"  # the child's message when one of its workers died: (tag, pid, exit code)
_owner_pid: int | None = None  # in the child: its pid (its descendants inherit the handler, not the role)
_finished = threading.Event()  # in the child: set once its one message (result or a worker's death) is decided


class ChildProcessDied(BackendError):
    """The child process ended without sending a result (killed by a signal, say)."""


class WorkerDied(BackendError):
    """A process the child started (a Lava worker) died while the function ran."""


def call_in_own_group(fn: Callable[..., Any], *args: Any, grace: float = GRACE_S) -> Any:
    """``fn(*args)`` in a forked child in its own process group; its result or exception comes back.

    Arguments are inherited through fork (nothing is pickled on the way in);
    the result is pickled back through a pipe. Whatever interrupts the wait
    stops the child and every process it started before it propagates.
    """
    _start_resource_tracker()
    ctx = mp.get_context("fork")
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_main, args=(fn, args, sender), name="st2chip-lava", daemon=False)
    # No Ctrl-C between fork and knowing the child's pid; the child unblocks for itself.
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    try:
        try:
            proc.start()
            _set_own_group(proc.pid)
        finally:
            sender.close()
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)  # a pending Ctrl-C is raised here
        message = _receive(receiver, proc.pid)
        if message is not None and message[0] != _WORKER_DIED:
            proc.join()
    except BaseException:
        _stop(proc, grace)
        raise
    finally:
        receiver.close()
    if message is None:  # it died (OOM killer, say): its workers may still run
        _stop(proc, 0.0)
        raise ChildProcessDied(f"st2chip's Lava process died ({_ending(proc.exitcode)}) before sending its "
                               f"result; it and every process it started were stopped")
    if message[0] == _WORKER_DIED:  # the child's runtime waits for it forever: stop them all
        _stop(proc, grace)
        _, pid, code = message
        raise WorkerDied(f"a Lava worker process died ({_ending(code)}, pid {pid}); st2chip stopped the Lava "
                         f"run and all its processes (killed from outside, or by the out-of-memory killer?)")
    if message[0] == "ok":
        return message[1]
    _, err, child_traceback = message
    err.add_note(f"raised in st2chip's Lava process:\n{child_traceback}")
    raise err


def _receive(receiver: mp.connection.Connection, pid: int) -> Any:
    """The child's message, or None if it exits without one.

    Not a plain ``recv()``: Lava's workers inherit the pipe's write end, so a
    child that dies alone would not close it.
    """
    while not receiver.poll(0.1):
        if _exited(pid) and not receiver.poll(0):
            return None
    try:
        return receiver.recv()
    except EOFError:
        return None


def _start_resource_tracker() -> None:
    """Start multiprocessing's resource tracker here, outside the child's group.

    Every process that touches shared memory registers it with the tracker its
    ancestors started; started here, it outlives a SIGKILLed group and unlinks
    what that group left behind (it ignores SIGINT and SIGTERM and exits once
    all its users have). It would warn about each kind of segment it unlinks
    then, on st2chip's stderr after st2chip's own one-line error, which already
    says that the Lava processes were stopped: it is started without that warning
    (a ``-W`` option, which it takes from ``sys.warnoptions``).
    """
    sys.warnoptions.append(_TRACKER_QUIET)
    try:
        from multiprocessing import resource_tracker
        resource_tracker.ensure_running()
    except Exception:  # noqa: BLE001 - best effort: Lava runs without it, it only cleans up
        pass
    finally:
        sys.warnoptions.remove(_TRACKER_QUIET)


def _set_own_group(pid: int) -> None:
    # Both parent and child call setpgid: whichever runs first wins the race, the other is a no-op.
    try:
        os.setpgid(pid, pid)
    except OSError:  # the child did it already, or is gone
        pass


def _ending(code: int | None) -> str:
    """How a process ended, from its exit code (negative: the signal that killed it; 128 + SIGTERM: ended
    by st2chip's own SIGTERM handler)."""
    if code is not None and code < 0:
        return f"signal {-code}"
    if code == 128 + signal.SIGTERM:
        return f"signal {signal.SIGTERM.value}"
    return f"exit code {code}"


def _exited(pid: int) -> bool:
    """Whether the child has exited, without reaping it (its pid must stay its group's id)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _stop(proc: mp.process.BaseProcess, grace: float) -> None:
    """SIGTERM the child, wait up to ``grace`` s, SIGKILL its whole group, reap it.

    A second interrupt while waiting skips the rest of the wait; nothing here
    returns before the group has been killed.
    """
    pid = proc.pid
    if pid is None:
        return
    asked = False
    deadline = time.monotonic() + grace
    while True:
        try:
            if not asked:
                asked = True
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
            proc.join()
            return
        except KeyboardInterrupt:  # impatient user: kill now
            deadline = 0.0


# ---------------------------------------------------------------------------------------------
# in the child


def _child_main(fn: Callable[..., Any], args: tuple, sender: mp.connection.Connection) -> None:
    global _owner_pid
    _owner_pid = os.getpid()
    _set_own_group(0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the caller decides; workers inherit this
    signal.signal(signal.SIGTERM, _on_sigterm)
    send_lock = threading.Lock()  # one message goes back: the result, or a worker's death, whichever is first
    # both threads are started while SIGINT/SIGTERM are blocked: they keep them blocked
    _watch_parent()
    _watch_workers(sender, send_lock)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
    try:
        message = ("ok", fn(*args))
    except BaseException as err:  # noqa: BLE001 - everything goes back to the caller
        message = ("error", err, traceback.format_exc())
    with send_lock:
        if _finished.is_set():  # the watcher reported a dead worker: the caller stops this process
            return
        _finished.set()
        _send_result(sender, message)


def _send_result(sender: mp.connection.Connection, message: tuple) -> None:
    try:
        sender.send(message)
    except BrokenPipeError:
        return
    except Exception:  # noqa: BLE001 - unpicklable result or exception
        detail = traceback.format_exc() if message[0] == "ok" else message[2]
        sender.send(("error", RuntimeError("the Lava process could not send its result back"), detail))
    finally:
        sender.close()


def _watch_parent() -> None:
    parent = mp.parent_process()
    sentinel = getattr(parent, "sentinel", None)
    if sentinel is None:
        return
    owner = os.getpid()

    def watch() -> None:
        mp.connection.wait([sentinel])  # readable once the caller is gone
        os.kill(owner, signal.SIGTERM)

    threading.Thread(target=watch, name="st2chip-parent-watch", daemon=True).start()


def _watch_workers(sender: mp.connection.Connection, send_lock: threading.Lock) -> None:
    """Report the first worker that dies while the function runs (then stop watching)."""
    def watch() -> None:
        while not _finished.wait(WATCH_S):
            dead = _dead_worker()
            if dead is None:
                continue
            with send_lock:
                if _finished.is_set():
                    return
                _finished.set()
                try:
                    sender.send((_WORKER_DIED, *dead))
                except OSError:  # the caller is gone; its sentinel stops this process
                    pass
            return

    threading.Thread(target=watch, name="st2chip-worker-watch", daemon=True).start()


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
