"""The plugin end to end (pytester): bad command-line values stop the run at collection with one
message naming the value and the fix; narrowing deselects and never shrinks the matrix."""

import pytest

from helpers import plugin_suite


@pytest.fixture
def suite(pytester):
    return plugin_suite(pytester)


# Bad models, quantizers and devices on the command line: tests/robustness/ (the catalogue).
@pytest.mark.parametrize("args, message", [
    (["--qcheck-threshold", "nope=1"], "unknown threshold 'nope'"),
])
def test_bad_option_is_one_usage_error(suite, args, message):
    result = suite.runpytest(*args, "--collect-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message}*"])


def test_narrowing_deselects_and_keeps_the_whole_matrix(suite):
    from qcheck.suite.matrix import DEFAULT_QUANTS
    from qcheck.models.registry import zoo_names

    everything = len(zoo_names()) * len(DEFAULT_QUANTS)
    result = suite.runpytest("--collect-only", "-q", "--qcheck-model", zoo_names()[0],
                             "--qcheck-quant", "rtn-w4")
    result.assert_outcomes()
    result.stdout.fnmatch_lines([f"1/{everything} tests collected ({everything - 1} deselected)*"])


def test_named_quantizer_is_added_to_the_matrix(suite):
    from qcheck.models.registry import zoo_names

    result = suite.runpytest("--collect-only", "-q", "--qcheck-quant", "gptq-w4-g16-act")
    result.stdout.fnmatch_lines([f"*test_certify*{zoo_names()[0]}-gptq-w4-g16-act*"])
