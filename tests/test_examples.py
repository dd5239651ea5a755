"""Every script in examples/ runs end to end and exits 0 (framework model -> verified Lava run -> energy)."""

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.py"))


def test_there_is_one_example_per_framework():
    assert {p.stem for p in EXAMPLES} >= {"norse_to_lava", "snntorch_to_lava", "spikingjelly_to_lava"}


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs(script: Path, tmp_path: Path):
    result = subprocess.run([sys.executable, str(script), "--out", str(tmp_path)], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert any(tmp_path.glob("*.nir")) and (tmp_path / "energy.json").exists()
