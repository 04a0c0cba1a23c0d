"""Analysis 3: SAE feature survival in the FP model's frozen SAE basis."""

import pytest

from qcheck.analyses.features import ANALYSIS

pytestmark = pytest.mark.features


def test_features(pair, certify):
    certify(ANALYSIS)
