"""Analysis 4: logit lens, per-layer KL(FP || quant) and top-k agreement at the last position."""

import pytest

from qcheck.analyses.logit_lens import ANALYSIS

pytestmark = pytest.mark.logit_lens


def test_logit_lens(pair, certify):
    certify(ANALYSIS)
