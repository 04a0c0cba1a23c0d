"""qcheck.drift on its own: the file's rounding, the tolerances per metric, exact counts, better or
worse per metric direction, header changes, and the failure message's order and length."""

import json
import math

import pytest

from qcheck import drift
from qcheck.drift import Header, compare, not_comparable, parse, rounded, to_text

HEADER = Header(model="zoo-m", weight_digest="a" * 64, quant="gptq-w4", calibration_digest="c" * 64,
                inputs_digest="i" * 64, analysis="activations", analysis_version=1, dtype="float32",
                device="cpu", environment={"torch": "2.13.0"}).as_dict()


def doc(results: dict, **header) -> dict:
    return {"header": {**HEADER, **header}, "results": results}


def changes(old: dict, new: dict, analysis: str = "activations") -> dict[str, tuple]:
    """Moved values of results judged by `analysis`'s drift rules (its `metrics`)."""
    return {c.path: (c.old, c.new, c.verdict)
            for c in compare(doc(old, analysis=analysis), doc(new, analysis=analysis)).changes}


def test_file_rounds_floats_to_six_significant_digits_and_keeps_key_order():
    text = to_text(doc({"L2": {"kl": 1.234567890123e-7}, "L10": {"kl": 123456.789}, "ok": True}))
    assert json.loads(text)["results"] == {"L2": {"kl": 1.23457e-7}, "L10": {"kl": 123457.0}, "ok": True}
    assert text.index('"L2"') < text.index('"L10"')  # the result's order, not sorted as text
    assert text.endswith("}\n")


def test_undefined_values_are_null_and_non_plain_values_are_refused():
    assert rounded({"r": math.nan, "x": [math.inf, 1.0]}) == {"r": None, "x": [None, 1.0]}
    with pytest.raises(TypeError, match="as_baseline\\(\\) must return plain floats"):
        rounded({"n": object()})


@pytest.mark.parametrize("key, relative, moved", [
    ("cosine", 5e-5, False), ("cosine", 5e-4, True),   # CLOSENESS: 1e-4
    ("l2", 5e-4, False), ("l2", 5e-3, True),           # DIFFERENCE: 1e-3
])
def test_tolerance_is_per_metric(key, relative, moved):
    old = {"L0": {key: 0.8}}
    new = {"L0": {key: 0.8 * (1 + relative)}}
    assert bool(changes(old, new)) is moved


def test_values_near_zero_use_the_absolute_tolerance():
    assert not changes({"kl": 1e-8}, {"kl": 5e-7})
    assert changes({"kl": 1e-8}, {"kl": 5e-6})


@pytest.mark.parametrize("analysis, old, new, verdict", [
    ("activations", {"cosine": 0.99}, {"cosine": 0.9}, "worse"),
    ("activations", {"cosine": 0.9}, {"cosine": 0.99}, "better"),
    ("logit_lens", {"kl": 0.1}, {"kl": 0.2}, "worse"),
    ("features", {"survived_study": True}, {"survived_study": False}, "worse"),
    ("circuits", {"n_survived": 3}, {"n_survived": 4}, "better"),
    ("circuits", {"survived": ["L0H1", "L1H2"]}, {"survived": ["L1H2"]}, "worse"),
    ("circuits", {"detected": ["L0H1"]}, {"detected": ["L0H1", "L1H0"]}, "changed"),  # FP side: no direction
    ("circuits", {"icl_loss_fp": 1.0}, {"icl_loss_fp": 2.0}, "changed"),
    ("circuits", {"rule": "fixed"}, {"rule": "relative"}, "changed"),
    ("circuits", {"correlation": 0.9}, {"correlation": None}, "changed"),
    ("activations", {"kl": 0.1}, {"kl": 0.2}, "changed"),  # another analysis's key: no direction here
])
def test_direction_comes_from_the_analysis_metric(analysis, old, new, verdict):
    [(_, _, found)] = changes(old, new, analysis).values()
    assert found == verdict


def test_counts_and_booleans_are_exact_and_types_matter():
    assert changes({"n_tokens": 120}, {"n_tokens": 121}) == {"n_tokens": (120, 121, "changed")}
    assert changes({"ok": 1}, {"ok": True})  # 1 == True in Python, not in a baseline
    assert not changes({"survival": 1}, {"survival": 1.0})  # int vs float: a number, compared as one


def test_added_and_removed_elements_are_named():
    found = changes({"L0": {"cosine": 1.0}, "L1": {"cosine": 1.0}},
                    {"L0": {"cosine": 1.0}, "L2": {"cosine": 1.0}})
    assert found == {"L1": ({"cosine": 1.0}, None, "removed"), "L2": (None, {"cosine": 1.0}, "added")}


def test_lists_of_numbers_are_compared_element_by_element():
    assert changes({"top5": [0.5, 0.6]}, {"top5": [0.5, 0.4]}, "logit_lens") == {"top5[1]": (0.6, 0.4, "worse")}


def test_platform_differences_are_not_comparable_and_identity_differences_are_changes():
    assert not_comparable(HEADER, {**HEADER, "device": "cuda"}) == "recorded with device cpu, this run cuda"
    assert not_comparable(HEADER, {**HEADER, "weight_digest": "b" * 64}) is None
    drift_ = compare(doc({}), doc({}, analysis_version=2, calibration_digest="d" * 64))
    assert drift_.header == ("the calibration data changed (cccccccccccc… → dddddddddddd…)",
                             "the analysis version changed (1 → 2)")
    assert not drift_.ok


def test_a_header_without_a_newer_optional_field_still_matches():
    old = doc({"x": 1})
    del old["header"]["basis_digest"]
    assert compare(old, doc({"x": 1}, basis_digest=None)).ok


def test_message_lists_the_summary_first_and_caps_the_listing():
    old = {"layers": {f"L{i}": {"kl": 1.0} for i in range(40)}, "summary": {"max_kl": 1.0}}
    new = {"layers": {f"L{i}": {"kl": 2.0} for i in range(40)}, "summary": {"max_kl": 2.0}}
    lines = compare(doc(old, analysis="logit_lens"), doc(new, analysis="logit_lens")).describe("baselines/x.json")
    assert lines[0] == "41 of 41 values in baselines/x.json moved beyond tolerance (41 worse):"
    assert lines[1].split() == ["summary.max_kl", "1", "→", "2", "(+100.00%)", "worse"]
    assert lines[2].split()[0] == "layers.L0.kl"
    assert lines[drift.MAX_LISTED + 1] == f"  ... and {41 - drift.MAX_LISTED} more (all of them: " \
                                          "`pytest --snapshot-update`, then `git diff baselines/`)"


@pytest.mark.parametrize("text, problem", [
    ("{", "is not valid JSON (Expecting property name enclosed in double quotes at line 1 column 2)"),
    ("[1, 2]", "is not a qcheck baseline (expected a JSON object with 'header' and 'results')"),
    ('{"header": {}}', "is not a qcheck baseline"),
])
def test_unreadable_file_names_itself_and_the_fix(text, problem):
    with pytest.raises(drift.BaselineFileError) as error:
        parse(text, "baselines/x.json")
    assert str(error.value).startswith(f"baselines/x.json {problem}")
    assert str(error.value).endswith("fix it, or delete it and record it again with "
                                     "`pytest --snapshot-update`")


def test_settle_keeps_the_recorded_digits_of_values_within_tolerance():
    old = {"L0": {"cosine": 0.9, "l2": 1.0}, "n": 5, "heads": ["L0H1"], "top5": [0.5, 0.6]}
    new = {"L0": {"cosine": 0.9000001, "l2": 1.5}, "n": 6, "heads": ["L0H1"], "top5": [0.5000001, 0.4],
           "new": 1.0}
    assert drift.settle(old, new, drift.metrics_of({"analysis": "activations"})) == {"L0": {"cosine": 0.9, "l2": 1.5}, "n": 6, "heads": ["L0H1"],
                                      "top5": [0.5, 0.4], "new": 1.0}
