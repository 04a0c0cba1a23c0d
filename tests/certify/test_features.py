"""Analysis 3: SAE feature survival in the FP model's frozen SAE basis."""

import pytest

from qcheck.analyses.features import compare_feature_captures

pytestmark = pytest.mark.features


def test_features(pair, sae, certify):
    certify(compare_feature_captures(sae, *pair.captures("natural")))
