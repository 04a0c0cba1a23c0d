"""Per-head scores read off attention patterns: induction and previous-token.

`pattern` is one layer's attention, shape (batch, head_index, query_pos, key_pos), rows summing
to 1 (TransformerLens `blocks.{l}.attn.hook_pattern`, or HF `output_attentions`).
"""

from __future__ import annotations

import torch
from torch import Tensor


def induction_scores(pattern: Tensor, half: int) -> Tensor:
    """Mean attention from each second-half token to the token after its first occurrence.

    For [BOS, A, A] the token at position p >= 1 + half repeats the one at p - half, so an
    induction head attends to p - half + 1. Returns shape (head_index,), values in [0, 1].
    """
    query = torch.arange(1 + half, 1 + 2 * half)
    key = query - half + 1
    return pattern[:, :, query, key].mean(dim=(0, 2))


def previous_token_scores(pattern: Tensor) -> Tensor:
    """Mean attention from every position p >= 1 to p - 1. Shape (head_index,), in [0, 1]."""
    n_pos = pattern.shape[-1]
    query = torch.arange(1, n_pos)
    return pattern[:, :, query, query - 1].mean(dim=(0, 2))
