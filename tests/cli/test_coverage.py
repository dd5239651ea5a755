"""The README's NIR coverage table is generated from the code and must not go stale."""

from pathlib import Path

import nir

from st2chip.cli import coverage

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_coverage_table_is_fresh():
    assert coverage.main(["--check", str(README)]) == 0, \
        "run: python -m st2chip.cli.coverage --write README.md"


def test_every_primitive_is_probed_through_the_real_stages():
    kinds = coverage.primitives()
    assert {"LIF", "CubaLIF", "Conv2d", "Delay", "NIRGraph"} <= set(kinds)
    assert len(kinds) == len({k for k in dir(nir) if isinstance(getattr(nir, k), type)
                              and issubclass(getattr(nir, k), nir.NIRNode) and k != "NIRNode"})
    assert {kind: coverage.status(kind)[0] for kind in kinds} == {kind: "lowered to the chip" for kind in kinds}


def test_a_refusal_gives_the_stage_and_its_own_reason(monkeypatch):
    monkeypatch.setattr(coverage, "probe_graph", lambda kind: nir.NIRGraph(
        nodes={"input": nir.Input(input_type={"input": [2]}), "output": nir.Output(output_type={"output": [2]})},
        edges=[("output", "input")], metadata={"dt": 1e-3}, type_check=False))
    what, why = coverage.status("LIF")
    assert what == "refused" and "Input node has an incoming edge" in why


def test_check_fails_on_a_stale_table(tmp_path):
    stale = tmp_path / "README.md"
    stale.write_text(f"intro\n{coverage.BEGIN}\nold table\n{coverage.END}\n")
    assert coverage.main(["--check", str(stale)]) == 1
    assert coverage.main(["--write", str(stale)]) == 0
    assert coverage.main(["--check", str(stale)]) == 0
    assert stale.read_text().startswith("intro\n") and "`LIF` | lowered to the chip" in stale.read_text()
