"""Declared expected failures through the plugin, end to end in pytester (synthetic pairs and
results, QcheckSession.pair patched; no model is loaded): exactly the declared criteria is an
expected failure that still compares its baseline; anything else fails for real, a crash included.
"""

import json

import pytest
import report_data as data

from qcheck.thresholds import Thresholds  # the defaults, and where each comes from: docs/thresholds.md
from qcheck.models.registry import zoo_names
from qcheck.suite.session import QcheckSession

from helpers import FIXED_HEADER_CONFTEST, plugin_suite

MODEL = zoo_names()[0]
CIRCUITS_TEST = """
import os, pytest, report_data

@pytest.mark.circuits
def test_circuits(pair, certify):
    if os.environ.get("QCHECK_FAKE_CRASH") == "analysis":
        {}["L1H2"]  # a KeyError inside an analysis
    certify(report_data.synthetic_analysis("circuits", 2, report_data.damage_of(pair.case)))
"""
ARGS = ("-p", "no:cacheprovider", "--qcheck-model", MODEL, "--qcheck-quant", "rtn-w4", "-p", "no:randomly")
DAMAGE = 0.6  # loses both synthetic heads (see report_data)


def failing_criteria(damage: float) -> list[str]:
    result = data.synthetic_result("circuits", 2, damage)
    return sorted({failure.criterion for failure in result.failures(Thresholds())})


@pytest.fixture
def suite(pytester, monkeypatch):
    damage = {"value": DAMAGE}
    monkeypatch.setattr(QcheckSession, "pair", lambda self, case: data.fake_pair(case, n_layers=2))
    monkeypatch.setattr(QcheckSession, "_measure_floor", lambda self, pair, analysis, context: {})  # no model
    monkeypatch.setattr(data, "damage_of", lambda case: damage["value"])
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("QCHECK_FAKE_CRASH", raising=False)
    plugin_suite(pytester, CIRCUITS_TEST, conftest=FIXED_HEADER_CONFTEST)
    pytester.damage = damage
    return pytester


def declare(suite, fails: list[str]) -> None:
    (suite.path / "tests" / "certify").mkdir(parents=True, exist_ok=True)
    (suite.path / "tests" / "certify" / "expected_failures.toml").write_text(
        f'[[xfail]]\nmodel = "{MODEL}"\nquant = "rtn-w4"\nanalysis = "circuits"\n'
        f'fails = {json.dumps(fails)}\nreason = "measured"\n')


def baseline_file(suite):
    return next((suite.path / "baselines" / "cpu").rglob("*.json"))


def test_exactly_the_declared_criteria_is_an_expected_failure_that_records_and_compares_its_baseline(suite):
    declare(suite, failing_criteria(DAMAGE))
    suite.runpytest(*ARGS, "--snapshot-update").assert_outcomes(xfailed=1)
    recorded = baseline_file(suite).read_bytes()
    outcome = suite.runpytest(*ARGS, "-rx")
    outcome.assert_outcomes(xfailed=1)
    outcome.stdout.fnmatch_lines(["*declared in tests/certify/expected_failures.toml: fails *"])
    assert baseline_file(suite).read_bytes() == recorded


def test_drift_of_a_declared_case_fails_with_the_readable_diff(suite):
    declare(suite, failing_criteria(DAMAGE))
    suite.runpytest(*ARGS, "--snapshot-update").assert_outcomes(xfailed=1)
    suite.damage["value"] = DAMAGE + 0.05   # still fails the same criteria, by other numbers
    assert failing_criteria(DAMAGE + 0.05) == failing_criteria(DAMAGE)
    outcome = suite.runpytest(*ARGS)
    outcome.assert_outcomes(failed=1)
    outcome.stdout.fnmatch_lines(["*values in baselines/cpu/*moved beyond tolerance*worse*"])


def test_another_criterion_than_the_declared_one_fails(suite):
    declare(suite, ["min_resid_cosine"])
    outcome = suite.runpytest(*ARGS)
    outcome.assert_outcomes(failed=1)
    outcome.stdout.fnmatch_lines(["*declared to fail min_resid_cosine in tests/certify/expected_failures.toml, "
                                  "but it also fails *min_induction_survival* and no longer fails min_resid_cosine*"])


def test_a_declared_case_that_passes_fails(suite):
    declare(suite, failing_criteria(DAMAGE))
    suite.damage["value"] = 0.0
    outcome = suite.runpytest(*ARGS)
    outcome.assert_outcomes(failed=1)
    outcome.stdout.fnmatch_lines(["*but it passes every threshold: re-measure and remove or edit the declaration*"])


def test_a_crash_in_an_analysis_of_a_declared_case_fails(suite, monkeypatch):
    declare(suite, failing_criteria(DAMAGE))
    monkeypatch.setenv("QCHECK_FAKE_CRASH", "analysis")
    outcome = suite.runpytest(*ARGS)
    outcome.assert_outcomes(failed=1)
    outcome.stdout.fnmatch_lines(["*KeyError: 'L1H2'*"])


def test_a_crash_in_the_pair_fixture_of_a_declared_case_is_an_error(suite, monkeypatch):
    declare(suite, failing_criteria(DAMAGE))

    def broken(self, case):
        raise RuntimeError("bug in qcheck's quantizer")
    monkeypatch.setattr(QcheckSession, "pair", broken)
    outcome = suite.runpytest(*ARGS)
    outcome.assert_outcomes(errors=1)
    outcome.stdout.fnmatch_lines(["*RuntimeError: bug in qcheck's quantizer*"])


def test_a_declaration_measured_under_default_thresholds_does_not_apply_under_others(suite):
    declare(suite, failing_criteria(DAMAGE))
    outcome = suite.runpytest(*ARGS, "--qcheck-threshold", "min_induction_survival=0.0",
                              "--qcheck-threshold", "max_icl_loss_increase=0.25")
    outcome.assert_outcomes(failed=1)  # judged plainly: it fails the in-context loss bound it now gates
    assert "declared" not in outcome.stdout.str().split("short test summary")[0].split("FAILURES")[-1]


def test_a_bad_declaration_stops_the_run_at_collection(suite):
    declare(suite, ["min_cosine"])
    outcome = suite.runpytest(*ARGS, "--collect-only")
    assert outcome.ret == pytest.ExitCode.USAGE_ERROR
    assert "expected_failures.toml: [[xfail]] entry 1: fails = ['min_cosine'] must name" in outcome.stderr.str()
