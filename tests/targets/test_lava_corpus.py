"""The engine equals Lava exactly on a recorded corpus, without Lava installed.

Each case of ``tests/data/lava_corpus`` (written by its ``record.py`` on real
Lava) is a graph, its lowering options, inputs, and Lava's spikes and voltages
per layer. Here the graph is lowered with those options and run on st2chip's
engine; every spike and voltage must equal Lava's. The live engine-vs-Lava
tests (hypothesis-generated ChipGraphs) run where Lava is installed; this one
runs everywhere, and never imports Lava.
"""

import json
import subprocess
import sys
from functools import cache
from pathlib import Path

import nir
import numpy as np
import pytest

from st2chip.chip.chipgraph import ChipGraph
from st2chip.chip.lower import lower
from st2chip.graph.bundle_graph import bundle_graph
from st2chip.graph.normalize import normalize
from st2chip.targets import engine

CORPUS = Path(__file__).resolve().parents[1] / "data" / "lava_corpus"
CASES = json.loads((CORPUS / "cases.json").read_text())["cases"]
RERECORD = "re-record with tests/data/lava_corpus/record.py where Lava is installed"


def _graph(path: Path) -> nir.NIRGraph:
    return bundle_graph(path) if path.is_dir() else normalize(path)


@cache
def _chip(name: str) -> ChipGraph:
    case = next(c for c in CASES if c["name"] == name)
    return lower(_graph(CORPUS / case["graph"]), **case["options"])


def _recorded(name: str) -> dict[str, dict[str, np.ndarray]]:
    """``{"input": ..., "spikes": ..., "voltages": ...}``, each name -> array, and ``scores``."""
    out: dict = {"input": {}, "spikes": {}, "voltages": {}}
    with np.load(CORPUS / f"{name}.npz", allow_pickle=False) as data:
        for key in data.files:
            kind, _, layer = key.partition("/")
            if layer:
                out[kind][layer] = data[key]
            else:
                out[kind] = data[key]
    return out


@pytest.mark.filterwarnings("ignore::UserWarning")  # lowering's notes (feedback latency, outliers) are expected
@pytest.mark.parametrize("name", [c["name"] for c in CASES])
def test_engine_equals_recorded_lava(name: str) -> None:
    lava = _recorded(name)
    eng = engine.run(_chip(name), lava["input"])
    assert eng.spikes.keys() == lava["spikes"].keys(), f"layers changed since the recording: {RERECORD}"
    for layer in lava["spikes"]:
        np.testing.assert_array_equal(eng.spikes[layer], lava["spikes"][layer], err_msg=f"{name}: spikes of {layer}")
        np.testing.assert_array_equal(eng.voltages[layer], lava["voltages"][layer],
                                      err_msg=f"{name}: voltages of {layer} (if lowering was meant to change, "
                                              f"{RERECORD})")
    np.testing.assert_array_equal(eng.scores, lava["scores"])
    assert any(s.any() for s in lava["spikes"].values()), "a recording where nothing spikes tests little"


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_corpus_covers_every_synapse_kind_and_partition() -> None:
    chips = [_chip(c["name"]) for c in CASES]
    synapses = [s for chip in chips for s in chip.synapses]
    populations = [p for chip in chips for p in chip.populations]
    assert {"dense", "sparse", "lowrank", "factored"} <= {s.form for s in synapses}
    assert any(s.conv is not None for s in synapses), "a convolution kernel (lava-nc's Conv)"
    assert any(s.delay > 0 for s in synapses) and any(s.lag > 0 for s in synapses), "synaptic and graph delays"
    assert any(s.feedback for s in synapses), "recurrence"
    assert any(chip.hosts for chip in chips) and any(i.kind == "analog" for chip in chips for i in chip.inputs)
    assert any(p.graded for p in populations), "a graded relay"
    assert any(p.reset == "subtract" for p in populations)
    assert any(p.du != 4095 and not p.graded for p in populations), "a current decay (CubaLIF)"
    assert any(len(chip.layer_populations(layer)) > 1 for chip in chips for layer in chip.layers()), "decay groups"


def test_corpus_runs_with_lava_unimportable() -> None:
    """The tests above in a fresh interpreter where ``import lava`` fails, as where Lava is not installed."""
    code = ("import sys, pytest; sys.modules['lava'] = None; "
            f"sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', {__file__!r}, '-k', 'not unimportable']))")
    done = subprocess.run([sys.executable, "-c", code], cwd=CORPUS.parents[2], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"{len(CASES) + 1} passed" in done.stdout
