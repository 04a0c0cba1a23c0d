"""Output fidelity: what aggregate metrics see (final KL, top-1 agreement, held-out loss)."""

import pytest

from qcheck.analyses.fidelity import ANALYSIS

pytestmark = pytest.mark.fidelity


def test_output_fidelity(pair, certify):
    certify(ANALYSIS)
