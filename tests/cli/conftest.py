"""Fixtures shared by the command-line tests."""

import pytest


@pytest.fixture(scope="session")
def mnist1d_mlp(tmp_path_factory):
    """``m.pt`` and ``m.nir``: an sLIF MLP 16 -> 24 -> 10 on MNIST-1D (subtract reset), trained one epoch by
    ``st2chip train`` (seed 0, a few seconds), shared by the tests that target Xylo from the command line."""
    from st2chip.cli.main import main
    folder = tmp_path_factory.mktemp("mnist1d_mlp")
    assert main(["train", "--model", "mlp", "--data", "mnist1d", "--reset", "subtract", "--hidden", "24",
                 "--epochs", "1", "--seed", "0", "--out", str(folder / "m.pt")]) == 0
    assert main(["export", str(folder / "m.pt"), "-o", str(folder / "m.nir")]) == 0
    return folder
