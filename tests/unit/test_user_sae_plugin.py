"""`--qcheck-sae [MODEL=]DIR` end to end: a SAELens directory (made by SAELens itself,
tests/fixtures/saelens/) becomes the features basis of the run, results.json records its digest
and origin, a basis whose d_in does not fit the model is refused in one line naming both, and a
bad value is one usage error at collection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import plugin_suite

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "saelens"
FEATURES_TEST = """
import pytest
from qcheck.analyses.features import ANALYSIS

@pytest.mark.features
def test_features(pair, certify):
    certify(ANALYSIS)
"""


@pytest.fixture(scope="module")
def loaded_once():
    """Models loaded outside pytester first (see tests/unit/test_user_quantizer_plugin.py)."""
    from qcheck.models.load import load_model

    load_model("zoo-pythia-2l64")


@pytest.fixture
def suite(loaded_once, pytester, monkeypatch, tmp_path):
    monkeypatch.setenv("QCHECK_CACHE_DIR", str(tmp_path / "cache"))
    return plugin_suite(pytester, FEATURES_TEST)


def test_a_saelens_sae_is_the_basis_and_the_result_names_it(suite, tmp_path):
    from qcheck.sae.saelens import load_saelens

    directory = FIXTURES / "topk-k20"
    report = tmp_path / "report"
    result = suite.runpytest("-q", "-p", "no:cacheprovider", "--qcheck-model", "zoo-pythia-2l64",
                             "--qcheck-quant", "rtn-w4", f"--qcheck-sae=zoo-pythia-2l64={directory}",
                             f"--qcheck-report={report}")
    (test,) = json.loads((report / "results.json").read_text())["tests"]
    sae, _ = load_saelens(directory)
    assert test["basis"]["digest"] == sae.digest()
    assert test["basis"]["origin"] == f"--qcheck-sae {directory}"
    assert (test["basis"]["hook_name"], test["basis"]["architecture"], test["basis"]["k"]) == (
        "blocks.1.hook_resid_post", "topk", 20)
    # this SAE has random weights: it explains little of the model, and the verdict says so
    assert [c["criterion"] for c in test["criteria"]] == ["sae_basis_quality"]
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_without_the_option_the_shipped_basis_is_used(suite, tmp_path):
    report = tmp_path / "report"
    suite.runpytest("-q", "-p", "no:cacheprovider", "--qcheck-model", "zoo-pythia-2l64", "--qcheck-quant", "rtn-w4",
                    f"--qcheck-report={report}")
    (test,) = json.loads((report / "results.json").read_text())["tests"]
    assert test["basis"]["origin"] == "shipped with zoo-pythia-2l64" and test["basis"]["k"] == 20


def test_a_basis_of_another_width_is_refused_naming_both(suite):
    result = suite.runpytest("-q", "-p", "no:cacheprovider", "--qcheck-model", "zoo-gpt2-2l48",
                             "--qcheck-quant", "rtn-w4", f"--qcheck-sae={FIXTURES / 'topk-k20'}")
    assert result.parseoutcomes().get("errors") == 1
    result.stdout.fnmatch_lines(["*the SAE reads d_in 64, this model's d_model is 48: pass an SAE trained on this model*"])


@pytest.mark.parametrize("value, message", [
    ("{fixtures}/nowhere", "--qcheck-sae {fixtures}/nowhere: {fixtures}/nowhere: no cfg.json*"),
    ("zoo-nope={fixtures}/topk-k20", "*zoo-nope is not a model of this run*"),
])
def test_a_bad_value_is_one_usage_error(suite, value, message):
    result = suite.runpytest("--collect-only", "--qcheck-model", "zoo-pythia-2l64",
                             f"--qcheck-sae={value.format(fixtures=FIXTURES)}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message.format(fixtures=FIXTURES)}*"])
