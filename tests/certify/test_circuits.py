"""Analysis 5: induction heads on [BOS, A, A] survive, and still do their job (in-context loss)."""

import pytest

from qcheck.analyses.circuits import ANALYSIS

pytestmark = pytest.mark.circuits


def test_induction_heads(pair, certify):
    certify(ANALYSIS)
