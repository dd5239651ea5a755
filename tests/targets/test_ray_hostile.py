"""``--ray``: an address that does not answer ends in one line within a time limit; Ray's workers never import
code from the working directory.

Each bad address exits 2 with one ``st2chip: error: --ray ADDRESS: ...`` line (``bogus:1`` used to hang,
``ray://bogus:1`` to end in a traceback). Ray puts the driver's working directory first on its workers'
import path: run from a folder holding a ``st2chip/`` package, a worker would import it.
"""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from st2chip.cli.main import main
from st2chip.converters.mlp import mlp_to_nir
from st2chip.graph.nirfile import write_nir

pytest.importorskip("ray")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A small digits MLP as a .nir file."""
    import torch

    from st2chip.learn.mlp import MLPConfig, SpikingMLP

    torch.manual_seed(0)
    mlp = SpikingMLP(MLPConfig(sizes=[64, 12, 10], steps=4))
    return write_nir(mlp_to_nir(mlp), tmp_path_factory.mktemp("ray_hostile") / "m.nir")


def _verify(model, address: str) -> list[str]:
    return ["verify", str(model), "--samples", "8", "--backends", "float,reference", "--ray", address]


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _client_installed() -> bool:
    return importlib.util.find_spec("grpc") is not None


@pytest.mark.parametrize("address,words", [
    ("bogus:1", ["bogus"]),
    ("127.0.0.1:1", ["127.0.0.1:1", "refused"]),
    ("no-port", ["host:port"]),
    ("bogus:99999", ["port"]),
    ("ray://127.0.0.1:1", ["127.0.0.1:1", "refused"] if _client_installed() else ["ray[client]", "pip install"]),
])
def test_an_address_without_a_cluster_is_one_line(model, capsys, address, words):
    t0 = time.monotonic()
    code = main(_verify(model, address))
    err = capsys.readouterr().err
    assert code == 2, err
    assert time.monotonic() - t0 < 20
    line = _one_error_line(err)
    assert line.startswith(f"st2chip: error: --ray {address}: ") and all(w in line for w in words), line


def test_a_listener_that_is_not_ray_is_given_up_on_in_time(model):
    """Something accepts the connection but never speaks Ray's protocol: ray.init alone would wait for minutes."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    script = textwrap.dedent(f"""
        import sys
        from st2chip.targets import ray_shards
        ray_shards.CONNECT_TIMEOUT_S = 3
        import time
        from st2chip.cli.main import main
        code = main({_verify(model, f"127.0.0.1:{port}")!r})
        time.sleep(3)  # a slow exit: Ray's own 5 s connect limit must not print a late warning of its own
        sys.exit(code)
    """)
    try:
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    finally:
        server.close()
    assert proc.returncode == 2, proc.stderr
    assert time.monotonic() - t0 < 40
    line = _one_error_line(proc.stderr)
    assert line.startswith(f"st2chip: error: --ray 127.0.0.1:{port}: ") and "within 3 s" in line, line


HOSTILE = """\
import sys
with open({marker!r}, "a") as fh:
    fh.write(repr(sys.argv) + "\\n")
"""


def test_ray_workers_do_not_import_st2chip_from_the_working_directory(model, tmp_path):
    """A local Ray run (``--ray``) from a folder holding a hostile ``st2chip/`` package: nothing imports it."""
    marker = tmp_path / "marker"
    cwd = tmp_path / "project"
    (cwd / "st2chip").mkdir(parents=True)
    (cwd / "st2chip" / "__init__.py").write_text(HOSTILE.format(marker=str(marker)))
    args = _verify(model, "x")[:-1]  # --ray without an address: a local instance
    proc = subprocess.run([sys.executable, "-I", "-m", "st2chip.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    assert "8 samples" in proc.stdout
    assert not marker.exists(), f"the hostile package ran in: {marker.read_text()}"
