"""A corrupt or hand-edited baseline JSON: the test fails naming the file and the fix (or the
edited element, old → new), never passes by skipping the comparison, and never touches the file;
`pytest --snapshot-update` replaces it. Driven end to end by a fake certification suite (pytester)
with the real `baseline` fixture and a fixed header."""

from __future__ import annotations

import json

import pytest

FILE = "baselines/cpu/certify/test_fake/test_fake.json"
FIX = "fix it, or delete it and record it again with `pytest --snapshot-update`"
RESULT = {"hook_resid_post": {"L0": {"cosine": 0.998123, "l2": 0.52}}, "n_tokens": 120}

CONFTEST = """
import pytest
from qcheck.drift import Header

pytest_plugins = ["qcheck.suite.baselines"]

@pytest.fixture
def baseline_header():
    return Header(model="zoo-m", weight_digest="a" * 64, quant="rtn-w4", calibration_digest=None,
                  inputs_digest="i" * 64, analysis="activations", analysis_version=1, dtype="float32",
                  device="cpu", environment={"torch": "2.13.0"})
"""

TEST = f"""
import pytest

@pytest.mark.activations
def test_fake(baseline):
    assert {RESULT!r} == baseline
"""


def _edit(document: dict, path: str, value) -> str:
    *parents, leaf = path.split(".")
    target = document
    for key in parents:
        target = target[key]
    if value is _DELETE:
        del target[leaf]
    else:
        target[leaf] = value
    return json.dumps(document, indent=2)


_DELETE = object()

EDITS = {  # name: (new text from the recorded text, what the failure says)
    "truncated": (lambda text: text[: len(text) // 2],
                  f"BaselineFileError: {FILE} is not valid JSON ("),
    "not a baseline": (lambda text: "[1, 2]", f"BaselineFileError: {FILE} is not a qcheck baseline (expected a "
                                              f"JSON object with 'header' and 'results'): {FIX}"),
    "header emptied": (lambda text: _edit(json.loads(text), "header", {}),
                       f"BaselineFileError: {FILE} is not a qcheck baseline as qcheck writes it (its header lacks "
                       f"model, weight_digest, quant, calibration_digest, inputs_digest, analysis, analysis_version, "
                       f"dtype, device, environment; "
                       f"edited by hand?): {FIX}"),
    "device deleted": (lambda text: _edit(json.loads(text), "header.device", _DELETE),
                       f"{FILE} is not a qcheck baseline as qcheck writes it (its header lacks device; edited by "
                       f"hand?)"),
    "device not text": (lambda text: _edit(json.loads(text), "header.device", 0),
                        f"{FILE} is not a qcheck baseline as qcheck writes it (its header's device is not text;"),
    "value edited": (lambda text: _edit(json.loads(text), "results.hook_resid_post.L0.cosine", 0.9),
                     f"1 of 3 values in {FILE} moved beyond tolerance (1 better):"),
    "value made text": (lambda text: _edit(json.loads(text), "results.hook_resid_post.L0.cosine", "0.998123"),
                        'hook_resid_post.L0.cosine  "0.998123" → 0.998123  changed'),
    "element deleted": (lambda text: _edit(json.loads(text), "results.hook_resid_post.L0.l2", _DELETE),
                        "hook_resid_post.L0.l2  null → 0.52  added"),
    "quantizer edited": (lambda text: _edit(json.loads(text), "header.quant", "rtn-w3"),
                         f"{FILE} was recorded for other inputs: the quantizer spec changed (rtn-w3 → rtn-w4)."),
}


@pytest.fixture
def suite(pytester):
    pytester.makeini("[pytest]\nmarkers =\n    activations: a\n")
    pytester.makeconftest(CONFTEST)
    pytester.mkdir("tests")
    pytester.mkdir("tests/certify")
    pytester.path.joinpath("tests/certify/test_fake.py").write_text(TEST)
    pytester.runpytest("--snapshot-update").assert_outcomes(passed=1)
    return pytester


@pytest.mark.parametrize("edit", EDITS)
def test_corrupt_or_hand_edited_baseline_fails_naming_the_file(suite, edit):
    stored = suite.path / FILE
    change, message = EDITS[edit]
    stored.write_text(change(stored.read_text()))
    before = stored.read_bytes()
    outcome = suite.runpytest("-vv", "-p", "no:cacheprovider")
    outcome.assert_outcomes(failed=1)  # never a pass, never "not comparable" with a warning
    assert message in outcome.stdout.str()
    assert stored.read_bytes() == before
    suite.runpytest("--snapshot-update").assert_outcomes(passed=1)
    suite.runpytest().assert_outcomes(passed=1)
    assert json.loads(stored.read_text())["results"] == RESULT
