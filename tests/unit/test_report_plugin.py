"""The report through the plugin, end to end in pytester, with synthetic pairs and results
(QcheckSession.pair patched; no model is loaded): the terminal summary with and without
--qcheck-report, outcomes and declared expected failures in results.json, and a report
directory that cannot be used stopping the run at configure time."""

import json

import pytest
import report_data as data

import qcheck.report.plots  # noqa: F401  pytester's in-process runs drop modules they import first;
#                             a matplotlib imported half inside, half outside them breaks
from qcheck.thresholds import Thresholds  # the defaults, and where each comes from: docs/thresholds.md
from qcheck.models.registry import zoo_names
from qcheck.report.schema import validate
from qcheck.suite.session import QcheckSession

from helpers import FIXED_HEADER_CONFTEST, plugin_suite

CIRCUITS_TEST = """
import pytest
import report_data

@pytest.mark.circuits
def test_circuits(pair, certify):
    certify(report_data.synthetic_analysis("circuits", 2, report_data.damage_of(pair.case)))
"""
MODEL = zoo_names()[0]
# what the synthetic rtn-w4 result (damage 0.6) fails
FAILS = sorted({f.criterion for f in data.synthetic_result("circuits", 2, 0.6).failures(Thresholds())})


@pytest.fixture
def suite(pytester, monkeypatch):
    monkeypatch.setattr(QcheckSession, "pair", lambda self, case: data.fake_pair(case, n_layers=2))
    # the fake pair has no model to run in float64 (tests/unit/test_noise_floor.py runs a real one)
    monkeypatch.setattr(QcheckSession, "_measure_floor", lambda self, pair, analysis, context: {
        "summary": {"correlation": 1.0}})
    monkeypatch.setattr(data, "damage_of", lambda case: {"rtn-w4": 0.6, "gptq-w4": 0.02}[case.quant_id])
    monkeypatch.delenv("CI", raising=False)
    plugin_suite(pytester, CIRCUITS_TEST, conftest=FIXED_HEADER_CONFTEST)
    return pytester


ARGS = ("-p", "no:cacheprovider", "--qcheck-model", MODEL, "--qcheck-quant", "rtn-w4", "--qcheck-quant", "gptq-w4")


def test_summary_prints_the_scaling_table_and_failed_verdicts_without_a_report(suite):
    result = suite.runpytest(*ARGS)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "*= qcheck =*",
        "Induction heads: survival and FP-vs-quantized score correlation",
        "model * params  bits  rtn survival  gptq survival  rtn corr  gptq corr",
        f"{MODEL} *w4 *0/2 (0%) *2/2 (100%)*",
        "Per (model, quantizer)*",
        "failed threshold verdicts:",
        f"  {MODEL}-rtn-w4 circuits: lost induction heads L1H2 0.45→0.18, L1H3 0.65→0.26 (0/2 survive; *",
    ])
    assert "report:" not in result.stdout.str()


def test_quiet_summary_keeps_the_scaling_table_only(suite):
    result = suite.runpytest(*ARGS, "-q")
    assert "Induction heads: survival" in result.stdout.str()
    assert "Per (model, quantizer)" not in result.stdout.str()


def test_report_records_outcomes_and_declared_expected_failures(suite):
    (suite.path / "tests" / "certify").mkdir(parents=True)
    (suite.path / "tests" / "certify" / "expected_failures.toml").write_text(
        f'[[xfail]]\nmodel = "{MODEL}"\nquant = "rtn-w4"\nanalysis = "circuits"\n'
        f'fails = {json.dumps(FAILS)}\nreason = "measured: RTN-4 loses them"\n')
    result = suite.runpytest(*ARGS, "--qcheck-report", "out")
    result.assert_outcomes(passed=1, xfailed=1)
    results = json.loads((suite.path / "out" / "results.json").read_text())
    assert validate(results) == []
    by_quant = {t["pair"].rsplit("-", 2)[-2] + "-w4": t for t in results["tests"]}
    assert by_quant["rtn-w4"]["outcome"] == "xfailed" and by_quant["rtn-w4"]["verdict"] == "fail"
    assert by_quant["rtn-w4"]["expected_failure"] == f"fails {', '.join(FAILS)}: measured: RTN-4 loses them"
    assert sorted(c["criterion"] for c in by_quant["rtn-w4"]["criteria"]) == FAILS
    assert by_quant["gptq-w4"]["outcome"] == "passed" and by_quant["gptq-w4"]["verdict"] == "pass"
    assert (suite.path / "out" / "index.html").is_file()
    result.stdout.fnmatch_lines(["1 declared expected failures failed as expected (tests/certify/expected_failures.toml)",
                                 f"report: out{'/'}index.html"])


def test_a_report_directory_with_other_files_is_a_usage_error(suite):
    (suite.path / "out").mkdir()
    (suite.path / "out" / "thesis.tex").write_text("")
    result = suite.runpytest(*ARGS, "--qcheck-report", "out", "--collect-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--qcheck-report out: the directory holds other files (thesis.tex)*"])


def test_a_run_that_certifies_nothing_leaves_an_earlier_report(suite):
    suite.runpytest(*ARGS, "--qcheck-report", "out")
    before = (suite.path / "out" / "results.json").read_text()
    result = suite.runpytest(*ARGS, "--qcheck-report", "out", "--collect-only")
    assert result.ret == pytest.ExitCode.OK
    assert (suite.path / "out" / "results.json").read_text() == before
    result.stdout.fnmatch_lines(["no certification test ran: out left as it was"])


def test_two_runs_into_one_directory_do_not_mix(suite):
    suite.runpytest(*ARGS, "--qcheck-report", "out")
    result = suite.runpytest("-p", "no:cacheprovider", "--qcheck-model", MODEL, "--qcheck-quant", "gptq-w4",
                             "--qcheck-report", "out")
    result.assert_outcomes(passed=1)
    results = json.loads((suite.path / "out" / "results.json").read_text())
    assert [t["pair"] for t in results["tests"]] == [f"{MODEL}-gptq-w4"]
    assert not (suite.path / "out" / f"{MODEL}-rtn-w4").exists()
    assert len(results["run"]["notes"]) == 1 and results["run"]["notes"][0].startswith("replaced the report")
    result.stdout.fnmatch_lines(["replaced the report of the run finished * in out"])


def test_each_pair_is_released_after_its_tests_and_still_reported(suite, monkeypatch):
    released = []
    original = QcheckSession.release
    monkeypatch.setattr(QcheckSession, "release",
                        lambda self, case: released.append(case.id) or original(self, case))
    suite.runpytest(*ARGS, "--qcheck-report", "out").assert_outcomes(passed=1, failed=1)
    assert sorted(released) == sorted([f"{MODEL}-rtn-w4", f"{MODEL}-gptq-w4"])
    results = json.loads((suite.path / "out" / "results.json").read_text())
    assert sorted(p["id"] for p in results["pairs"]) == sorted(released)


def test_each_result_carries_its_models_noise_floor_unless_turned_off(suite):
    suite.runpytest(*ARGS, "--qcheck-report", "out").assert_outcomes(passed=1, failed=1)
    tests = json.loads((suite.path / "out" / "results.json").read_text())["tests"]
    assert all(t["noise_floor"]["source"].startswith("FP float32 vs FP float64") for t in tests)
    assert tests[0]["noise_floor"] == tests[1]["noise_floor"]          # once per model, not per quantizer
    suite.runpytest(*ARGS, "--qcheck-report", "off", "--qcheck-noise-floor", "off").assert_outcomes(passed=1, failed=1)
    assert all(t["noise_floor"] is None for t in json.loads((suite.path / "off" / "results.json").read_text())["tests"])
