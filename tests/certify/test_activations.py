"""Analysis 1: FP vs quantized activations per layer (resid_post, attn_out, mlp_out)."""

import pytest

from qcheck.analyses.activations import ANALYSIS

pytestmark = pytest.mark.activations


def test_activations(pair, certify):
    certify(ANALYSIS)
