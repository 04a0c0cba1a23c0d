"""The helpers every analysis shares (qcheck.analyses._common): listings and the same-inputs check."""

from dataclasses import replace

import pytest

from qcheck.analyses import activations
from qcheck.analyses._common import listing

from .captures import make_capture


def test_listing_caps_with_and_n_more():
    assert listing(["a", "b"]) == "a, b"
    assert listing([str(i) for i in range(8)]) == "0, 1, 2, 3, 4 and 3 more"


def test_mismatched_inputs_are_refused():
    fp = make_capture()
    other = replace(fp, tokens=fp.tokens.roll(1, dims=1))
    with pytest.raises(ValueError, match="different tokens"):
        activations.compare_activations(fp, other)
