"""Analysis 2: attention-pattern JSD per head, and previous-token heads FP vs quantized."""

import pytest

from qcheck.analyses.attention import compare_attention

pytestmark = pytest.mark.attention


def test_attention(pair, thresholds, record, baseline):
    result = record(compare_attention(*pair.captures("natural")))
    assert not result.failures(thresholds), "; ".join(result.failures(thresholds))
    assert result.as_baseline() == baseline
