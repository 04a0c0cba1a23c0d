"""The baselines machinery end to end (pytester): a fake certification suite, no model.

The fake suite has one test file, tests/certify/test_fake.py, with two test ids that assert a
threshold and then their baseline; each reads its result from results/<case>.json, so a test here
plants drift (or a crash, or an interruption) by rewriting that file. Its conftest supplies the
header the real `baseline_header` fixture builds from a (model, quantizer) pair, and the device
class and --qcheck-require-baselines the plugin would set (from QCHECK_FAKE_* variables).
Baselines land in <pytester dir>/baselines/<device class>/. Every test that updates checks the
files on disk before and after.
"""

import json

import pytest

CASES = ("m1-rtn-w4", "m2-rtn-w4")
FILE = "baselines/cpu/certify/test_fake/test_fake[{}].json"

FAKE_TEST = f"""
import json, pathlib, pytest

pytestmark = pytest.mark.activations
RESULTS = pathlib.Path(__file__).parents[2] / "results"

@pytest.fixture
def result(case):
    value = json.loads((RESULTS / f"{{case}}.json").read_text())
    if value.get("crash") == "setup":
        raise RuntimeError("a bug in a fixture")
    return value

@pytest.mark.parametrize("case", {list(CASES)!r})
def test_fake(case, result, baseline):
    if result.get("crash") == "interrupt":
        raise KeyboardInterrupt
    assert result["summary"]["min_resid_cosine"] >= 0.9, "threshold"
    assert result == baseline
"""

CONFTEST = """
import os
import pytest
from qcheck.suite import baselines
from qcheck.drift import Header

pytest_plugins = ["qcheck.suite.baselines"]

@pytest.hookimpl(trylast=True)  # after qcheck's plugin, which sets them from its own options
def pytest_configure(config):
    config.stash[baselines.DEVICE_CLASS] = os.environ.get("QCHECK_FAKE_DEVICE_CLASS", "cpu")
    config.stash[baselines.REQUIRE] = lambda case: bool(os.environ.get("QCHECK_FAKE_REQUIRE"))

@pytest.fixture
def baseline_header(request):
    return Header(model=request.node.callspec.params["case"], weight_digest={weight_digest!r},
                  quant="rtn-w4", calibration_digest=None, inputs_digest="i" * 64,
                  analysis="activations", analysis_version=1, dtype="float32", device={device!r},
                  environment={{"torch": {torch!r}}})
"""


def result(cosine_l1: float = 0.991234567, noise: float = 0.0) -> dict:
    """A synthetic as_baseline() dict; `noise` scales every float by (1 + noise)."""
    r = {"n_tokens": 120,
         "hook_resid_post": {"L0": {"cosine": 0.998123456, "l2": 0.52},
                             "L1": {"cosine": cosine_l1, "l2": 1.3}},
         "survived": ["L0H1", "L1H2"],
         "summary": {"min_resid_cosine": min(0.998123456, cosine_l1), "rule": "fixed"}}

    def scale(value):
        if isinstance(value, dict):
            return {k: scale(v) for k, v in value.items()}
        return value * (1 + noise) if isinstance(value, float) else value
    return scale(r)


@pytest.fixture
def suite(pytester, monkeypatch):
    # When this file itself runs under xdist, syrupy in the inner run would read the outer
    # worker's PYTEST_XDIST_WORKER and skip its unused-snapshot report.
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID",
                 "QCHECK_FAKE_DEVICE_CLASS", "QCHECK_FAKE_REQUIRE"):
        monkeypatch.delenv(name, raising=False)
    pytester.makeini("[pytest]\nmarkers =\n    activations: a\n")
    pytester.mkdir("tests")
    pytester.mkdir("tests/certify")
    pytester.path.joinpath("tests/certify/test_fake.py").write_text(FAKE_TEST)
    pytester.mkdir("results")
    header(pytester)
    for case in CASES:
        plant(pytester, case, result())
    return pytester


def header(pytester, *, device: str = "cpu", weight_digest: str = "a" * 64, torch: str = "2.13.0") -> None:
    pytester.makeconftest(CONFTEST.format(device=device, weight_digest=weight_digest, torch=torch))


def plant(pytester, case: str, value: dict) -> None:
    pytester.path.joinpath("results", f"{case}.json").write_text(json.dumps(value))


def stored(pytester, case: str) -> bytes:
    return pytester.path.joinpath(FILE.format(case)).read_bytes()


def shows(outcome, *fragments: str) -> None:
    """Each fragment appears in the run's output (plain substrings: test ids have brackets)."""
    text = outcome.stdout.str()
    missing = [f for f in fragments if f not in text]
    assert not missing, f"not in the output: {missing}\n{text}"


def record(pytester) -> None:
    pytester.runpytest("--snapshot-update").assert_outcomes(passed=len(CASES))


def test_update_writes_one_rounded_file_per_test_id_with_its_header(suite):
    record(suite)
    document = json.loads(stored(suite, "m1-rtn-w4"))
    assert document["header"] == {"model": "m1-rtn-w4", "weight_digest": "a" * 64, "quant": "rtn-w4",
                                  "calibration_digest": None, "inputs_digest": "i" * 64,
                                  "analysis": "activations", "analysis_version": 1, "dtype": "float32",
                                  "device": "cpu", "environment": {"torch": "2.13.0"},
                                  "basis_digest": None}
    assert document["results"]["hook_resid_post"]["L1"]["cosine"] == 0.991235  # 6 significant digits
    assert stored(suite, "m2-rtn-w4")


def test_planted_drift_fails_naming_the_element_old_new_and_direction(suite):
    record(suite)
    before = stored(suite, "m1-rtn-w4")
    plant(suite, "m1-rtn-w4", result(cosine_l1=0.95))
    outcome = suite.runpytest("-vv")
    outcome.assert_outcomes(passed=1, failed=1)
    shows(outcome,
          f"2 of 8 values in {FILE.format('m1-rtn-w4')} moved beyond tolerance (2 worse):",
          "summary.min_resid_cosine   0.991235 → 0.95 (-4.16%)  worse",
          "hook_resid_post.L1.cosine  0.991235 → 0.95 (-4.16%)  worse",
          "If the change is intended: `pytest --snapshot-update`, review `git diff baselines/`, commit.")
    assert "hook_resid_post.L0" not in outcome.stdout.str()  # only what moved is named
    assert stored(suite, "m1-rtn-w4") == before


def test_improvement_and_a_lost_head_are_told_apart(suite):
    record(suite)
    better = result(cosine_l1=0.996)
    better["survived"] = ["L0H1"]
    plant(suite, "m1-rtn-w4", better)
    outcome = suite.runpytest("-vv")
    outcome.assert_outcomes(passed=1, failed=1)
    shows(outcome, "hook_resid_post.L1.cosine  0.991235 → 0.996 (+0.48%)  better",
          'survived                   ["L0H1", "L1H2"] → ["L0H1"]  changed')  # no direction in activations


@pytest.mark.parametrize("update", [[], ["--snapshot-update"]], ids=["check", "update"])
def test_noise_within_tolerance_passes_and_leaves_the_files_byte_identical(suite, update):
    record(suite)
    before = {case: stored(suite, case) for case in CASES}
    for case in CASES:
        plant(suite, case, result(noise=3e-6))  # cross-machine float noise is ~1e-6 relative
    outcome = suite.runpytest(*update)
    outcome.assert_outcomes(passed=len(CASES))
    assert {case: stored(suite, case) for case in CASES} == before
    assert "updated" not in outcome.stdout.str()


def test_update_rewrites_only_the_values_that_moved(suite):
    record(suite)
    before = json.loads(stored(suite, "m1-rtn-w4"))["results"]
    plant(suite, "m1-rtn-w4", result(cosine_l1=0.95, noise=3e-6))  # one value moves, all get noise
    suite.runpytest("--snapshot-update").assert_outcomes(passed=len(CASES))
    after = json.loads(stored(suite, "m1-rtn-w4"))["results"]
    assert after["hook_resid_post"]["L1"]["cosine"] == after["summary"]["min_resid_cosine"] == 0.950003
    for values in (before, after):
        values["hook_resid_post"]["L1"]["cosine"] = values["summary"]["min_resid_cosine"] = "moved"
    assert after == before  # the noise did not reach the file: unmoved values kept their digits


# --deselect goes through pytest_deselected, as -m and qcheck's --qcheck-model narrowing do
@pytest.mark.parametrize("select", [["-k", "m1"], ["--deselect", "tests/certify/test_fake.py::test_fake[m2-rtn-w4]"]],
                         ids=["-k", "--deselect"])
def test_update_of_a_selection_leaves_the_other_baselines_byte_identical(suite, select):
    record(suite)
    before = stored(suite, "m2-rtn-w4")
    for case in CASES:
        plant(suite, case, result(cosine_l1=0.95))
    suite.runpytest("--snapshot-update", *select).assert_outcomes(passed=1, deselected=1)
    assert json.loads(stored(suite, "m1-rtn-w4"))["results"]["hook_resid_post"]["L1"]["cosine"] == 0.95
    assert stored(suite, "m2-rtn-w4") == before


def test_missing_baseline_keeps_the_threshold_verdict_with_a_note(suite):
    outcome = suite.runpytest()
    outcome.assert_outcomes(passed=len(CASES), warnings=len(CASES))
    shows(outcome,
          f"BaselineNotCompared: no baseline at {FILE.format('m1-rtn-w4')}: nothing was compared",
          "baselines (cpu): 0 results compared, 2 not compared (2 without a baseline)")
    assert not suite.path.joinpath("baselines").exists()


def test_threshold_failure_still_fails_without_a_baseline(suite):
    plant(suite, "m1-rtn-w4", result(cosine_l1=0.5))
    suite.runpytest().assert_outcomes(passed=1, failed=1, warnings=1)


def test_baseline_from_another_device_is_not_comparable_and_not_a_failure(suite):
    record(suite)
    header(suite, device="cuda")
    plant(suite, "m1-rtn-w4", result(cosine_l1=0.95))  # would be drift on the same device
    outcome = suite.runpytest()
    outcome.assert_outcomes(passed=len(CASES), warnings=len(CASES))
    shows(outcome,
          f"{FILE.format('m1-rtn-w4')} was recorded with device cpu, this run cuda: not comparable",
          "baselines (cpu): 0 results compared, 2 not compared (2 not comparable: another dtype or device, or --qcheck-seeds)")
    assert "snapshot unused" not in outcome.stdout.str()
    suite.runpytest("--snapshot-update").assert_outcomes(passed=len(CASES))
    assert json.loads(stored(suite, "m1-rtn-w4"))["header"]["device"] == "cuda"  # replaced on request


def test_changed_weight_digest_fails_as_a_real_change(suite):
    record(suite)
    header(suite, weight_digest="b" * 64)
    outcome = suite.runpytest("-vv")
    outcome.assert_outcomes(failed=len(CASES))
    shows(outcome,
          f"{FILE.format('m1-rtn-w4')} was recorded for other inputs: the FP model's weights "
          f"changed (aaaaaaaaaaaa… → bbbbbbbbbbbb…).",
          "That is a real change in what is measured, not noise: review it, then record it with "
          "`pytest --snapshot-update`.")


def test_a_test_that_stops_at_its_threshold_keeps_its_baseline(suite):
    record(suite)
    before = stored(suite, "m1-rtn-w4")
    plant(suite, "m1-rtn-w4", result(cosine_l1=0.5))
    outcome = suite.runpytest()
    outcome.assert_outcomes(passed=1, failed=1)
    assert "snapshot unused" not in outcome.stdout.str()
    suite.runpytest("--snapshot-update").assert_outcomes(passed=1, failed=1)
    assert stored(suite, "m1-rtn-w4") == before


def files(pytester) -> dict[str, bytes]:
    root = pytester.path / "baselines"
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def orphan_of(pytester):
    """A baseline file whose test id no longer exists (a copy of m1's)."""
    orphan = pytester.path.joinpath(FILE.format("m9-rtn-w4"))
    orphan.write_bytes(stored(pytester, "m1-rtn-w4"))
    return orphan


@pytest.mark.parametrize("stop", [["-x"], ["--maxfail=1"]])
def test_an_update_that_stops_early_deletes_and_changes_nothing(suite, stop):
    record(suite)
    orphan_of(suite)
    before = files(suite)
    plant(suite, "m1-rtn-w4", result(cosine_l1=0.5))    # fails its threshold first ...
    plant(suite, "m2-rtn-w4", result(cosine_l1=0.95))   # ... so this drift is never reached
    outcome = suite.runpytest("--snapshot-update", *stop, "-p", "no:randomly")
    outcome.assert_outcomes(failed=1)
    assert files(suite) == before  # m2 (never ran) and the orphan kept; m1 keeps its old content
    shows(outcome, "1 baseline file(s) belong to no collected test (kept: only an update run of the "
                   "whole suite that ends green deletes them):")


def test_an_interrupted_update_deletes_and_changes_nothing(suite):
    record(suite)
    orphan_of(suite)
    before = files(suite)
    plant(suite, "m1-rtn-w4", {**result(), "crash": "interrupt"})
    plant(suite, "m2-rtn-w4", result(cosine_l1=0.95))
    outcome = suite.runpytest_subprocess("--snapshot-update")  # in-process, Ctrl-C would reach us
    assert outcome.ret == pytest.ExitCode.INTERRUPTED
    assert files(suite) == before


def test_a_crash_in_a_fixture_keeps_that_test_s_baseline_and_deletes_nothing(suite):
    record(suite)
    orphan_of(suite)
    before = files(suite)
    plant(suite, "m1-rtn-w4", {**result(), "crash": "setup"})
    outcome = suite.runpytest("--snapshot-update")
    outcome.assert_outcomes(passed=1, errors=1)
    assert files(suite) == before


def test_an_update_of_the_last_failures_only_deletes_nothing(suite):
    record(suite)
    orphan_of(suite)
    plant(suite, "m1-rtn-w4", result(cosine_l1=0.5))
    suite.runpytest().assert_outcomes(passed=1, failed=1)  # --lf remembers m1
    plant(suite, "m1-rtn-w4", result(cosine_l1=0.95))
    before = files(suite)
    outcome = suite.runpytest("--snapshot-update", "--lf")
    outcome.assert_outcomes(passed=1)  # --lf collects m1 only
    assert "belong to no collected test" not in outcome.stdout.str()  # m2 is not an orphan
    after = files(suite)
    moved = [name for name in before if before[name] != after.get(name)]
    assert moved == ["cpu/certify/test_fake/test_fake[m1-rtn-w4].json"] and set(after) == set(before)


@pytest.mark.parametrize("narrow", [["-k", "m1"], ["tests/certify/test_fake.py"]], ids=["-k", "path"])
def test_a_narrowed_update_keeps_a_baseline_no_test_claims(suite, narrow):
    record(suite)
    orphan = orphan_of(suite)
    suite.runpytest("--snapshot-update", *narrow)
    assert orphan.exists()


def test_only_a_green_update_of_the_whole_suite_deletes_a_baseline_no_test_claims_and_says_so(suite):
    record(suite)
    orphan = orphan_of(suite)
    outcome = suite.runpytest()
    outcome.assert_outcomes(passed=len(CASES))
    shows(outcome, "1 baseline file(s) belong to no collected test (a green `pytest --snapshot-update` "
                   "of the whole suite deletes them):", "baselines/cpu/certify/test_fake/test_fake[m9-rtn-w4].json")
    assert orphan.exists()
    outcome = suite.runpytest("--snapshot-update")
    outcome.assert_outcomes(passed=len(CASES))
    shows(outcome, "deleted 1 baseline file(s) that no test owns any more:",
          "  baselines/cpu/certify/test_fake/test_fake[m9-rtn-w4].json")
    assert not orphan.exists() and stored(suite, "m1-rtn-w4") and stored(suite, "m2-rtn-w4")


def test_another_device_class_reads_and_writes_its_own_folder(suite, monkeypatch):
    record(suite)
    before = files(suite)
    monkeypatch.setenv("QCHECK_FAKE_DEVICE_CLASS", "cuda")
    header(suite, device="cuda")
    outcome = suite.runpytest()
    outcome.assert_outcomes(passed=len(CASES), warnings=len(CASES))
    lines = outcome.stdout.lines
    first = lines.index(next(line for line in lines if "qcheck baselines" in line)) + 1
    assert lines[first].startswith("no baselines for device class cuda (baselines/cuda/ does not exist)")
    suite.runpytest("--snapshot-update").assert_outcomes(passed=len(CASES))
    after = files(suite)
    assert {k: v for k, v in after.items() if k.startswith("cpu/")} == before  # CPU files untouched
    assert json.loads(after["cuda/certify/test_fake/test_fake[m1-rtn-w4].json"])["header"]["device"] == "cuda"


def test_required_baselines_turn_not_compared_into_a_failure_naming_the_file(suite, monkeypatch):
    record(suite)
    suite.path.joinpath(FILE.format("m2-rtn-w4")).unlink()
    monkeypatch.setenv("QCHECK_FAKE_REQUIRE", "1")
    outcome = suite.runpytest()
    outcome.assert_outcomes(passed=1, failed=1)
    shows(outcome, f"no baseline at {FILE.format('m2-rtn-w4')}: nothing was compared",
          "(--qcheck-require-baselines: every default-matrix result must be compared)",
          "baselines (cpu): 1 results compared, 1 not compared (1 without a baseline)")


def test_other_package_versions_are_compared_and_named_when_values_move(suite):
    record(suite)
    before = files(suite)
    header(suite, torch="2.14.0")
    suite.runpytest().assert_outcomes(passed=len(CASES))  # versions alone: still compared, passes
    suite.runpytest("--snapshot-update").assert_outcomes(passed=len(CASES))
    assert files(suite) == before  # nothing moved: the recorded versions stay those it was measured under
    plant(suite, "m1-rtn-w4", result(cosine_l1=0.95))
    outcome = suite.runpytest("-vv")
    outcome.assert_outcomes(passed=1, failed=1)
    shows(outcome, "(recorded under other package versions: torch 2.13.0 → 2.14.0)")
