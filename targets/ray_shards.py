"""The engine over many machines: samples sharded across Ray workers, gathered back in sample order.

``run(chip, inputs, address=None)`` starts (or joins) Ray — a local instance by
default, the cluster at ``address`` when given (``ray://host:10001`` or
``auto``) — puts the ChipGraph in Ray's object store once, runs
:func:`st2chip.targets.engine.run` on contiguous shards of the samples as Ray
tasks, and joins their traces in order: the result is the single-process run's,
bit for bit (every sample is independent on the chip).

Joining a cluster has a time limit (:data:`CONNECT_TIMEOUT_S`): the address's form
is checked, then a TCP connection and Ray's own handshake are tried in a
watched thread before ``ray.init`` runs, so that an address with no cluster
behind it (which ``ray.init`` would retry for minutes) ends in one
``--ray ADDRESS: ...`` error. A ``ray://`` address needs Ray Client
(``pip install 'ray[client]'``).

Ray puts the driver's working directory first on its workers' import path;
``ray.init`` runs with the working directory set to the folder that holds the
``st2chip`` package the driver imported, so that workers import that one and
never a ``st2chip/`` folder that happens to lie where st2chip was started.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import threading
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

import st2chip
from st2chip.chip.chipgraph import ChipGraph
from st2chip.text import message
from st2chip.errors import BackendError, InputError
from st2chip.traces import Traces

from .engine import batch_steps, run as run_engine

CONNECT_TIMEOUT_S = 15.0  # how long each step of joining the cluster at --ray ADDRESS may take
GCS_CONNECT_TIMEOUT_S = 3600  # Ray's own limit on reaching a GCS, set above ours (see run)
CLIENT_PORT = 10001  # Ray Client's port when a ray:// address names none


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
    # our time limits govern (Ray reads its config when first imported): Ray's own 5 s limit on reaching a GCS
    # would print a warning of its own, late, from a native thread, after st2chip's one-line error
    os.environ.setdefault("RAY_gcs_rpc_server_connect_timeout_s", str(GCS_CONNECT_TIMEOUT_S))
    import ray

    if not ray.is_initialized():
        _connect(address, num_cpus)
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


def _connect(address: str | None, num_cpus: int | None) -> None:
    """Start a local Ray instance (``address`` None) or join the cluster at ``address``, in bounded time."""
    import ray

    if address is not None:
        _check_reachable(address)
    with _cwd(Path(st2chip.__file__).resolve().parent.parent), warnings.catch_warnings():
        # Ray Client warns, then raises: the error below says it once
        warnings.filterwarnings("ignore", message="Ray Client connection timed out")
        try:
            ray.init(address=address, num_cpus=num_cpus if address is None else None, include_dashboard=False,
                     log_to_driver=False, logging_level="ERROR")
        except (ConnectionError, TimeoutError, ValueError, RuntimeError) as err:
            if address is None:
                raise BackendError(f"--ray: a local Ray instance did not start ({message(err)})") from None
            raise InputError(f"--ray {address}: {message(err)}") from None


def _check_reachable(address: str) -> None:
    """Refuse, each step within :data:`CONNECT_TIMEOUT_S`, an address that is malformed, that does not
    accept a TCP connection, or (for a cluster's GCS address) where no Ray head answers."""
    client = address.startswith("ray://")
    if client and importlib.util.find_spec("grpc") is None:
        import ray

        raise InputError(f"--ray {address}: a ray:// address needs Ray Client, which is not installed: "
                         f"pip install 'ray[client]=={ray.__version__}'")
    host, port = _host_port(address, client)
    _within(f"--ray {address}", f"{host}:{port} accepting a connection",
            lambda: socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close())
    if not client:
        from ray._raylet import GcsClient

        _within(f"--ray {address}", f"a Ray cluster answering at {host}:{port}",
                lambda: GcsClient(address=f"{host}:{port}").internal_kv_get(b"session_name", namespace=None,
                                                                         timeout=CONNECT_TIMEOUT_S))


def _host_port(address: str, client: bool) -> tuple[str, int]:
    """``(host, port)`` of ``host:port``, ``ray://host[:port]`` or ``auto`` (the cluster this machine runs)."""
    where = f"--ray {address}"
    if address == "auto":
        from ray._private.services import canonicalize_bootstrap_address

        try:
            found = canonicalize_bootstrap_address("auto")
        except ConnectionError:
            found = None
        if not found:
            raise InputError(f"{where}: found no Ray cluster (none runs on this machine and RAY_ADDRESS is not "
                             f"set): start one with 'ray start --head', or give its address")
        address = found
    rest = address[len("ray://"):] if client else address
    host, colon, port_text = rest.rpartition(":")
    if client and not colon:
        host, port_text = rest, str(CLIENT_PORT)
    host = host.strip("[]")
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise InputError(f"{where}: expected host:port (a cluster's GCS address, e.g. head:6379), "
                         f"ray://host[:port] (Ray Client) or auto; the port must be 1 to 65535")
    return host, int(port_text)


def _within(where: str, what: str, attempt: Callable[[], Any]) -> None:
    """``attempt()`` in a daemon thread, given up after :data:`CONNECT_TIMEOUT_S` (a DNS lookup or Ray's
    handshake has no time limit of its own); its failure or its time-out is an InputError naming ``where``."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            attempt()
        except BaseException as err:  # noqa: BLE001 - reported below, in the caller's thread
            failure.append(err)

    thread = threading.Thread(target=run, name="st2chip-ray-connect", daemon=True)
    thread.start()
    thread.join(CONNECT_TIMEOUT_S)
    if thread.is_alive():
        raise InputError(f"{where}: no answer from {what} within {CONNECT_TIMEOUT_S:g} s")
    if failure:
        err = failure[0]
        if isinstance(err, socket.gaierror):
            raise InputError(f"{where}: cannot resolve the host name ({message(err)})")
        if isinstance(err, ConnectionRefusedError):
            raise InputError(f"{where}: connection refused: nothing listens at {what.split()[0]}")
        raise InputError(f"{where}: {what} failed ({message(err)})")


@contextlib.contextmanager
def _cwd(folder: Path) -> Iterator[None]:
    """The working directory set to ``folder`` for the block (restored through a descriptor, so a folder
    renamed meanwhile does not matter)."""
    previous = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.chdir(folder)
        yield
    finally:
        os.fchdir(previous)
        os.close(previous)

