"""Analysis 2: attention-pattern JSD per head, and previous-token heads FP vs quantized."""

import pytest

from qcheck.analyses.attention import compare_attention

pytestmark = pytest.mark.attention


def test_attention(pair, certify):
    certify(compare_attention(*pair.captures("natural")))
