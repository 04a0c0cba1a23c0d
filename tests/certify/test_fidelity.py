"""Output fidelity: what aggregate metrics see (final KL, top-1 agreement, held-out loss)."""

import pytest

from qcheck.analyses.fidelity import compare_outputs

pytestmark = pytest.mark.fidelity


def test_output_fidelity(pair, certify):
    certify(compare_outputs(*pair.captures("natural")))
