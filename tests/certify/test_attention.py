"""Analysis 2: attention-pattern JSD per head, and previous-token heads FP vs quantized."""

import pytest

from qcheck.analyses.attention import ANALYSIS

pytestmark = pytest.mark.attention


def test_attention(pair, certify):
    certify(ANALYSIS)
