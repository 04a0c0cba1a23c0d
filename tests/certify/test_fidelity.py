"""Output fidelity: what aggregate metrics see (final KL, top-1 agreement, held-out loss)."""

import pytest

from qcheck.analyses.fidelity import compare_outputs

pytestmark = pytest.mark.fidelity


def test_output_fidelity(pair, thresholds, record, baseline):
    result = record(compare_outputs(*pair.captures("natural")))
    assert not result.failures(thresholds), "; ".join(result.failures(thresholds))
    assert result.as_baseline() == baseline
