"""st2chip.limits: one memory budget, parsed sizes, positive integers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from st2chip import limits
from st2chip.errors import InputError


@pytest.fixture(autouse=True)
def _no_override():
    limits.set_memory_budget(None)
    yield
    limits.set_memory_budget(None)


@pytest.mark.parametrize("text, expected", [
    ("1000000", 1_000_000), ("8G", 8 * 1024 ** 3), ("8g", 8 * 1024 ** 3), ("512M", 512 * 1024 ** 2),
    ("1.5GiB", int(1.5 * 1024 ** 3)), ("200k", 200 * 1024), ("2TB", 2 * 1024 ** 4), (" 64 M ", 64 * 1024 ** 2),
    (4096, 4096),
])
def test_parse_size(text, expected):
    assert limits.parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "lots", "8X", "-1G", "0", "nan", "inf", True, "1e999"])
def test_parse_size_refuses(text):
    with pytest.raises(InputError, match=limits.ENV_VAR):
        limits.parse_size(text)


def test_budget_default_env_and_override(monkeypatch):
    monkeypatch.delenv(limits.ENV_VAR, raising=False)
    total = limits.physical_memory()
    assert limits.memory_budget() == (int(total * limits.DEFAULT_FRACTION) if total else limits.FALLBACK_BUDGET)
    monkeypatch.setenv(limits.ENV_VAR, "3G")
    assert limits.memory_budget() == 3 * 1024 ** 3
    limits.set_memory_budget("1M")
    assert limits.memory_budget() == 1024 ** 2
    limits.set_memory_budget(None)
    assert limits.memory_budget() == 3 * 1024 ** 3
    monkeypatch.setenv(limits.ENV_VAR, "three gigs")
    with pytest.raises(InputError, match="ST2CHIP_MEMORY_BUDGET"):
        limits.memory_budget()


def test_check_alloc_message_names_what_size_and_budget(monkeypatch):
    monkeypatch.setenv(limits.ENV_VAR, "1G")
    limits.check_alloc("small", 1000, 8, "f.nir")
    with pytest.raises(InputError) as err:
        limits.check_alloc("the weight of node 'fc1'", 20000 * 20000, 8, "f.nir")
    msg = str(err.value)
    assert msg.startswith("f.nir: the weight of node 'fc1'") and "2.98 GiB" not in msg
    assert "3.0 GiB" in msg and "1.0 GiB" in msg and limits.ENV_VAR in msg and "\n" not in msg


def test_count_does_not_overflow():
    dims = np.array([10 ** 6, 10 ** 6, 10 ** 6, 10 ** 6], dtype=np.int64)
    assert limits.count(dims) == 10 ** 24 and limits.count(()) == 1
    with pytest.raises(InputError):
        limits.check_alloc("x", limits.count(dims), 8)


@pytest.mark.parametrize("value, expected", [(1, 1), (16, 16), (np.int64(7), 7), (16.0, 16), (np.float64(3.0), 3)])
def test_positive_int_accepts(value, expected):
    assert limits.positive_int(value, "steps") == expected


@pytest.mark.parametrize("value", ["16", "abc", math.nan, math.inf, 1.5, 0, -3, True, False, np.bool_(True),
                                   None, [4], b"4"])
def test_positive_int_refuses(value):
    with pytest.raises(InputError, match="steps must be a positive integer"):
        limits.positive_int(value, "steps", "g.nir")


def test_cli_memory_budget_option(tmp_path, capsys):
    from st2chip.cli.main import main
    from st2chip import limits
    try:
        assert main(["--memory-budget", "lots", "map", str(tmp_path / "x.nir")]) == 2
        assert "--memory-budget" in capsys.readouterr().err
        np_path = tmp_path / "big.npy"
        import numpy as np
        np.save(np_path, np.zeros((4, 10, 1), np.uint8))
        nir_path = tmp_path / "one.nir"
        import nir
        nir.write(nir_path, nir.NIRGraph(nodes={
            "in": nir.Input(input_type={"input": np.array([1])}),
            "w": nir.Affine(weight=np.ones((1, 1)), bias=np.zeros(1)),
            "lif": nir.LIF(tau=np.ones(1), r=np.ones(1), v_leak=np.zeros(1), v_threshold=np.ones(1),
                           v_reset=np.zeros(1)),
            "out": nir.Output(output_type={"output": np.array([1])})},
            edges=[("in", "w"), ("w", "lif"), ("lif", "out")], metadata={"dt": 1e-3}))
        code = main(["--memory-budget", "100", "simulate", str(nir_path), "--inputs", str(np_path),
                     "--backend", "float"])
        assert code == 2 and "budget" in capsys.readouterr().err
    finally:
        limits.set_memory_budget(None)
