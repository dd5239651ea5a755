"""The Xylo engine checked against xylosim: a difference named by array, sample, step and neuron, the samples
named as ranges in verify's report."""

import numpy as np
import pytest

from st2chip.analysis.verify import VerifyReport
from st2chip.analysis.xylo_verify import OracleCheck, XyloVerifyReport, oracle_check, sample_names
from st2chip.xylo.xylograph import XyloRun


def _numbered_run(batch: int, steps: int) -> XyloRun:
    """Every entry its own chip step, so that a window shows where it was cut."""
    step = lambda n: np.broadcast_to(np.arange(steps)[None, :, None], (batch, steps, n)).copy()  # noqa: E731
    return XyloRun(step(4), step(2), step(4), step(4), 100 + step(2), step(2))


def test_a_difference_is_named_by_array_sample_step_and_neuron():
    engine = _numbered_run(3, 6)
    other = _numbered_run(2, 6)
    other.hidden_i[1, 4, 3] += 1
    other.output_v[0, 5, 1] -= 1
    check = oracle_check(engine, other)
    assert not check.exact
    assert (check.mismatch.array, check.mismatch.sample, check.mismatch.step, check.mismatch.neuron) == (
        "hidden_i", 1, 4, 3)
    assert not check.check().passed and "hidden_i first differs at sample 1, chip step 4, neuron 3" in (
        check.check().detail)


@pytest.mark.parametrize("samples, text", [([0, 1, 2], "0-2"), ([0, 1, 2, 5], "0-2, 5"), ([4], "4"), ([], "none")])
def test_samples_are_named_as_ranges(samples, text):
    assert sample_names(samples) == text


def test_the_report_names_target_and_samples():
    check = OracleCheck(list(range(20)), 42)
    report = XyloVerifyReport("xylo-audio3", VerifyReport(samples=20, accuracy={}, checks=[check.check()]), check)
    text = report.to_text()
    assert text.splitlines()[:2] == ["target: xylo-audio3", "engine vs xylosim: equal on samples 0-19 (20 samples)"]
    assert report.passed and report.to_dict()["xylosim"]["samples"] == list(range(20))
