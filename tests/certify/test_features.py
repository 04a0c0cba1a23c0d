"""Analysis 3: SAE feature survival in the FP model's frozen SAE basis."""

import pytest

from qcheck.analyses.features import compare_feature_captures

pytestmark = pytest.mark.features


def test_features(pair, sae, thresholds, record, baseline):
    result = record(compare_feature_captures(sae, *pair.captures("natural")))
    assert not result.failures(thresholds), "; ".join(result.failures(thresholds))
    assert result.as_baseline() == baseline
