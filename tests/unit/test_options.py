"""Command-line values are validated once, with messages that name the value and the fix.
Devices (parse_device, the xdist GPU mapping): tests/robustness/test_devices.py."""

import pytest
import torch

from qcheck.thresholds import Thresholds  # the defaults, and where each comes from: docs/thresholds.md
from qcheck.suite.options import parse_threshold_overrides, thresholds_from_pyproject


def test_threshold_overrides_global_and_per_model():
    overrides = parse_threshold_overrides(["min_resid_cosine=0.9", "zoo-a:max_head_jsd=0.2"], Thresholds())
    assert overrides.for_model(Thresholds(), "zoo-a").max_head_jsd == 0.2
    assert overrides.for_model(Thresholds(), "zoo-b").max_head_jsd == Thresholds().max_head_jsd
    assert overrides.for_model(Thresholds(), "zoo-b").min_resid_cosine == 0.9


@pytest.mark.parametrize("item, message", [("min_resid_cosine", "expected KEY=VALUE"),
                                           ("nope=1", "unknown threshold 'nope'"),
                                           ("min_resid_cosine=high", "is not a number"),
                                           ("induction_rule=sometimes", "expected one of fixed, relative")])
def test_bad_threshold_override_names_the_value(item, message):
    with pytest.raises(ValueError, match=message):
        parse_threshold_overrides([item], Thresholds())


def test_a_threshold_is_gated_by_a_value_and_ungated_by_off():
    overrides = parse_threshold_overrides(["max_final_kl=0.05", "min_resid_cosine=off", "zoo-a:max_lens_kl=None"],
                                          Thresholds())
    mine = overrides.for_model(Thresholds(), "zoo-a")
    assert mine.max_final_kl == 0.05 and mine.min_resid_cosine is None and mine.max_lens_kl is None
    assert "min_resid_cosine" in mine.ungated() and "max_final_kl" not in mine.ungated()
    base, _ = thresholds_from_pyproject({"max_final_kl": 0.05, "min_induction_survival": "off"})
    assert base.max_final_kl == 0.05 and base.min_induction_survival is None
    with pytest.raises(ValueError, match="feature_survival_rule='off': expected one of positions, study"):
        parse_threshold_overrides(["feature_survival_rule=off"], Thresholds())


def test_pyproject_thresholds():
    base, per_model = thresholds_from_pyproject({"min_resid_cosine": 0.9, "zoo-a": {"max_head_jsd": 0.2}})
    assert base.min_resid_cosine == 0.9 and per_model == {"zoo-a": {"max_head_jsd": 0.2}}
    with pytest.raises(ValueError, match="pyproject.toml.*unknown threshold 'typo'"):
        thresholds_from_pyproject({"typo": 1})


def test_a_directory_value_written_with_a_space_that_moved_the_rootdir_is_a_usage_error(tmp_path):
    from qcheck.suite.options import check_directory_values_with_a_space

    out, project = tmp_path / "out", tmp_path / "project"
    out.mkdir()
    project.mkdir()
    # pytest took the existing directory for a test path: rootdir moved to it, no config file
    with pytest.raises(ValueError, match=f"--qcheck-report {out}: written with a space.*write --qcheck-report={out}"):
        check_directory_values_with_a_space(["--qcheck-report", str(out)], project, out, None)
    # the rootdir and config file are the project's (a test path was given, or the value is inside)
    check_directory_values_with_a_space(["tests", "--qcheck-report", str(out)], project, project,
                                        project / "pytest.ini")
    check_directory_values_with_a_space([f"--qcheck-report={out}"], project, out, None)  # `=`: never a path
    check_directory_values_with_a_space(["--qcheck-report", str(tmp_path / "new")], project, project, None)


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
@pytest.mark.parametrize("option", ["--qcheck-report", "--qcheck-cache"])
def test_a_directory_value_written_with_a_space_keeps_the_projects_rootdir_and_config(pytester, workers,
                                                                                       option, tmp_path_factory):
    """No test path and an existing directory: pytest first takes it for a test path and chooses
    its rootdir from it (no config file there); qcheck/suite/rootdir.py chooses again, so pytest.ini is read (its
    `testpaths` finds the tests and its addopts deselect one), in xdist workers too."""
    pytester.makeini("[pytest]\ntestpaths = checks\naddopts = -m 'not slow'\n"
                     "markers =\n    slow: deselected by addopts\n")
    pytester.mkdir("checks").joinpath("test_a.py").write_text(
        "import pytest\n\ndef test_a():\n    pass\n\n"
        "@pytest.mark.slow\ndef test_slow():\n    raise AssertionError('addopts were not read')\n")
    out = tmp_path_factory.mktemp("out")  # outside the project: no config file above it
    result = pytester.runpytest_subprocess(*workers, option, str(out))
    result.stdout.fnmatch_lines([f"rootdir: {pytester.path}", "configfile: tox.ini"])
    outcomes = result.parseoutcomes()  # the xdist controller does not count the workers' deselection
    assert result.ret == 0 and outcomes["passed"] == 1 and "failed" not in outcomes


def test_induction_sets_start_with_the_default_set_and_are_independent():
    from qcheck.data.induction import INDUCTION_SEED, induction_sets, repeated_random_tokens

    one = repeated_random_tokens(low=1, high=200, bos=0)
    three = induction_sets(3, low=1, high=200, bos=0)
    assert torch.equal(induction_sets(1, low=1, high=200, bos=0), one)
    assert three.shape == (3 * one.shape[0], one.shape[1]) and torch.equal(three[:len(one)], one)
    assert torch.equal(three[len(one):2 * len(one)], repeated_random_tokens(low=1, high=200, bos=0,
                                                                             seed=INDUCTION_SEED + 1))


@pytest.mark.parametrize("value", ["0", "-1", "two", "2.5", ""])
def test_a_bad_number_of_induction_sets_is_a_usage_error(value):
    from qcheck.suite.session import _induction_sets

    with pytest.raises(ValueError, match=f"--qcheck-seeds {value}: expected a whole number"):
        _induction_sets(value)
