"""Analysis 4: logit lens, per-layer KL(FP || quant) and top-k agreement at the last position."""

import pytest

from qcheck.analyses.logit_lens import compare_logit_lens

pytestmark = pytest.mark.logit_lens


def test_logit_lens(pair, certify):
    certify(compare_logit_lens(*pair.captures("lens")))
