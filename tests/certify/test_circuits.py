"""Analysis 5: induction heads on [BOS, A, A] survive, and still do their job (in-context loss)."""

import pytest

from qcheck.analyses.circuits import compare_induction_captures
from qcheck.pair import INDUCTION_HALF

pytestmark = pytest.mark.circuits


def test_induction_heads(pair, thresholds, certify):
    certify(compare_induction_captures(*pair.captures("induction"), half=INDUCTION_HALF,
                                       rule=thresholds.induction_rule))
