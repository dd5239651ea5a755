"""Without Lava the Lava backend says how to install it, in one line, instead of a traceback."""

import subprocess
import sys
from pathlib import Path

import torch

from st2chip.converters.mlp import mlp_to_nir
from st2chip.graph.nirfile import write_nir
from st2chip.learn.mlp import MLPConfig, SpikingMLP
from st2chip.targets.lava_compat import missing_lava

ROOT = Path(__file__).resolve().parents[2]
# `import lava...` fails as it does where Lava is not installed (None in sys.modules halts the import)
WITHOUT_LAVA = "import sys; sys.modules['lava'] = None; from st2chip.cli.main import main; sys.exit(main(sys.argv[1:]))"


def test_cli_without_lava_says_how_to_install_it(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = write_nir(mlp_to_nir(SpikingMLP(MLPConfig(sizes=[64, 8, 10], steps=4))), tmp_path / "m.nir")
    done = subprocess.run([sys.executable, "-c", WITHOUT_LAVA, "simulate", str(model), "--samples", "2",
                           "--backend", "lava"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("st2chip: error:")]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "not installed" in lines[0] and "pip install 'st2chip[lava]'" in lines[0]
    assert "--no-deps --ignore-requires-python lava-nc==0.10.0 lava-dl==0.6.0" in lines[0]
    assert "--backend reference" in lines[0]


def test_a_missing_dependency_of_lava_is_named() -> None:
    err = missing_lava(ModuleNotFoundError("No module named 'networkx'", name="networkx"))
    assert "cannot import module 'networkx'" in str(err) and "st2chip[lava]" in str(err)
    assert "not installed" in str(missing_lava(ModuleNotFoundError("halted", name="lava")))
