"""The jaxtyping shape annotations are enforced under pytest (pytest.ini --jaxtyping-packages):
a wrong shape passed to an analysis function fails with jaxtyping's message, in every tier."""

import pytest
import torch
from jaxtyping import TypeCheckError

from qcheck.analyses.circuits import repeated_half_loss
from qcheck.metrics import cosine


def test_a_tensor_of_the_wrong_rank_fails_naming_the_parameter():
    tokens = torch.zeros(2, 51, dtype=torch.long)
    with pytest.raises(TypeCheckError, match="parameter 'logits'"):
        repeated_half_loss(torch.zeros(2, 51), tokens, half=25)  # (batch, pos): no d_vocab axis


def test_dimensions_that_disagree_between_parameters_fail():
    with pytest.raises(TypeCheckError, match="batch"):
        repeated_half_loss(torch.zeros(3, 51, 8), torch.zeros(2, 51, dtype=torch.long), half=25)


def test_the_right_shapes_pass():
    loss = repeated_half_loss(torch.zeros(2, 51, 8), torch.zeros(2, 51, dtype=torch.long), half=25)
    assert loss.shape == (2,)
    assert cosine(torch.ones(3, 4), torch.ones(3, 4)).shape == (3,)
