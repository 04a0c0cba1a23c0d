"""Threshold verdicts against declared expected failures (qcheck/verdict.py, qcheck/suite/expected.py)."""

import pytest

from qcheck.analyses import ANALYSES
from qcheck.suite.expected import declarations_from_results, known_criteria, load_expected_failures
from qcheck.thresholds import Thresholds  # the defaults, and where each comes from: docs/thresholds.md
from qcheck.verdict import Failure, judge

COSINE = Failure("min_resid_cosine", "resid_post cosine below 0.95 at L1 (0.85)", 0.85)
JSD = Failure("max_head_jsd", "attention JSD above 0.05 bits at L1H2 (0.1)", 0.1)


def test_a_failure_is_its_message_and_knows_its_criterion():
    assert COSINE == "resid_post cosine below 0.95 at L1 (0.85)" and "L1" in COSINE
    assert (COSINE.criterion, COSINE.value) == ("min_resid_cosine", 0.85)


def test_every_declared_bound_is_a_criterion_and_settings_are_not():
    bounds = {t.key for a in ANALYSES.values() for t in a.thresholds if not t.choices}
    assert set(known_criteria()) == bounds | {"induction_heads_detected", "relative_rule_sample_size", "sae_basis_quality"}
    assert "induction_rule" not in known_criteria()


def test_nothing_declared_passes_or_fails_plainly():
    assert judge([], None).outcome == "pass"
    verdict = judge([COSINE, JSD], None)
    assert verdict.outcome == "fail" and verdict.message == f"{COSINE}; {JSD}"


def test_exactly_the_declared_criteria_is_an_expected_failure():
    verdict = judge([COSINE], ["min_resid_cosine"])
    assert verdict.outcome == "expected" and "min_resid_cosine" in verdict.message and str(COSINE) in verdict.message


@pytest.mark.parametrize("failures, declared, says", [
    ([], ["min_resid_cosine"], "but it passes every threshold"),
    ([COSINE, JSD], ["min_resid_cosine"], "but it also fails max_head_jsd"),
    ([JSD], ["min_resid_cosine"], "but it also fails max_head_jsd and no longer fails min_resid_cosine"),
    ([COSINE], ["min_resid_cosine", "max_head_jsd"], "but it no longer fails max_head_jsd"),
])
def test_any_other_outcome_than_the_declared_one_fails(failures, declared, says):
    verdict = judge(failures, declared, where=" in the file")
    assert verdict.outcome == "fail" and says in verdict.message and "in the file" in verdict.message


ENTRY = '''
[[xfail]]
model = "zoo-a"
quant = "rtn-w2"
analysis = "activations"
fails = ["min_resid_cosine"]
measured = { min_resid_cosine = 0.27 }
reason = "resid_post cosine below 0.95 at L1 (0.27)"
'''


def test_a_declaration_names_its_case_criteria_and_measurement(tmp_path):
    path = tmp_path / "expected.toml"
    path.write_text(ENTRY)
    (entry,) = load_expected_failures(path).values()
    assert (entry.model, entry.quant, entry.analysis, entry.fails) == ("zoo-a", "rtn-w2", "activations",
                                                                       ("min_resid_cosine",))
    assert entry.reason == "fails min_resid_cosine (measured min_resid_cosine=0.27): resid_post cosine below 0.95 at L1 (0.27)"


def test_a_declaration_applies_only_under_the_default_thresholds_it_was_measured_with(tmp_path):
    path = tmp_path / "expected.toml"
    path.write_text(ENTRY + ENTRY.replace('"activations"', '"circuits"').replace(
        '"min_resid_cosine"]', '"min_induction_survival"]').replace("measured = { min_resid_cosine = 0.27 }", ""))
    declared = load_expected_failures(path)
    cosine, heads = declared["zoo-a", "rtn-w2", "activations"], declared["zoo-a", "rtn-w2", "circuits"]
    assert cosine.applies(Thresholds()) and heads.applies(Thresholds())
    assert not cosine.applies(Thresholds().updated({'min_resid_cosine': 0.5}))
    assert cosine.applies(Thresholds().updated({'max_head_jsd': 0.5}))  # another criterion: still applies
    assert not heads.applies(Thresholds().updated({'induction_rule': 'relative'}))


@pytest.mark.parametrize("edit, says", [
    (lambda t: t.replace('fails = ["min_resid_cosine"]\n', ""), "entry 1 lacks fails"),
    (lambda t: t.replace('fails = ["min_resid_cosine"]', 'fails = ["min_cosine"]'), "must name one or more criteria"),
    (lambda t: t.replace('fails = ["min_resid_cosine"]', "fails = []"), "must name one or more criteria"),
    (lambda t: t.replace('"activations"', '"activation"'), "analysis 'activation' is not one of"),
    (lambda t: t.replace("measured = {", "measured = { max_head_jsd = 0.1,"), "measured must be a table"),
    (lambda t: t + "model2 = 1\n", "has unknown keys model2"),
    (lambda t: t + t, "entry 2 declares zoo-a/rtn-w2/activations again"),
    (lambda t: t.replace("[[xfail]]", "[[xfail]"), "not valid TOML"),
])
def test_a_bad_declaration_names_the_file_the_entry_and_the_fix(tmp_path, edit, says):
    path = tmp_path / "expected.toml"
    path.write_text(edit(ENTRY))
    with pytest.raises(ValueError, match="expected.toml") as error:
        load_expected_failures(path)
    assert says in str(error.value)


def test_declarations_are_written_from_a_run_s_failing_verdicts(tmp_path):
    results = {"pairs": [{"id": "zoo-a-rtn-w2", "model": {"name": "zoo-a"}, "quant": {"name": "rtn-w2"}}],
               "tests": [{"pair": "zoo-a-rtn-w2", "analysis": "activations", "verdict": "fail",
                          "criteria": [{"criterion": "min_resid_cosine", "value": 0.27,
                                        "message": "resid_post cosine below 0.95 at L1 (0.27)"}]},
                         {"pair": "zoo-a-rtn-w2", "analysis": "attention", "verdict": "pass", "criteria": []}]}
    written, by_hand = tmp_path / "written.toml", tmp_path / "by_hand.toml"
    written.write_text(declarations_from_results(results))
    by_hand.write_text(ENTRY)
    (entry,) = load_expected_failures(written).values()
    assert entry == load_expected_failures(by_hand)["zoo-a", "rtn-w2", "activations"]
    assert entry.measured == {"min_resid_cosine": 0.27}


# --- three-way verdicts ----------------------------------------------------------------------

def test_a_borderline_criterion_passes_by_default_and_is_reported():
    soft = Failure("min_resid_cosine", "borderline: resid_post cosine straddles 0.95 at L1", 0.95, borderline=True)
    judgement = judge([soft], None)
    assert judgement.outcome == "pass" and judgement.borderline == (str(soft),)
    assert judge([soft], None, borderline="fail").outcome == "fail"


def test_a_borderline_declared_criterion_still_counts_as_declared():
    hard = Failure("max_lens_kl", "logit-lens KL above 0.1 at L1", 0.3)
    soft = Failure("min_lens_top5", "borderline: top-5 straddles 0.8 at L1", 0.8, borderline=True)
    judgement = judge([hard, soft], ["max_lens_kl", "min_lens_top5"])
    assert judgement.outcome == "expected"
    assert "min_lens_top5 borderline, counted as declared" in judgement.message
    # an undeclared borderline criterion beside the declared failure changes nothing
    assert judge([hard, soft], ["max_lens_kl"]).outcome == "expected"
    # but a declared criterion that passes outright is still a failure of the declaration
    assert judge([hard], ["max_lens_kl", "min_lens_top5"]).outcome == "fail"


def test_borderline_failures_survive_pickling():
    import pickle

    soft = Failure("x", "borderline: y", 1.0, borderline=True)
    again = pickle.loads(pickle.dumps(soft))
    assert again.borderline and again.criterion == "x" and str(again) == str(soft)


def test_an_unknown_borderline_policy_is_refused():
    with pytest.raises(ValueError, match="borderline='maybe'"):
        judge([], None, borderline="maybe")
