"""Per-head scores read off attention patterns: induction and previous-token.

`pattern` is one layer's attention, shape (batch, head_index, query_pos, key_pos), rows summing
to 1 (TransformerLens `blocks.{l}.attn.hook_pattern`, or HF `output_attentions`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

Head = tuple[int, int]  # (layer, head)


def induction_scores(pattern: Tensor, half: int) -> Tensor:
    """Mean attention from each second-half token to the token after its first occurrence.

    For [BOS, A, A] the token at position p >= 1 + half repeats the one at p - half, so an
    induction head attends to p - half + 1. Returns shape (head_index,), values in [0, 1].
    """
    query = torch.arange(1 + half, 1 + 2 * half)
    key = query - half + 1
    return pattern[:, :, query, key].mean(dim=(0, 2))


def induction_scores_per_sequence(pattern: Tensor, half: int) -> Tensor:
    """induction_scores of each sequence on its own: shape (batch, head_index), in [0, 1]; their
    mean over the batch is induction_scores (every sequence has the same `half` queries)."""
    query = torch.arange(1 + half, 1 + 2 * half)
    key = query - half + 1
    return pattern[:, :, query, key].mean(dim=2)


def previous_token_scores(pattern: Tensor) -> Tensor:
    """Mean attention from every position p >= 1 to p - 1. Shape (head_index,), in [0, 1]."""
    n_pos = pattern.shape[-1]
    query = torch.arange(1, n_pos)
    return pattern[:, :, query, query - 1].mean(dim=(0, 2))


@dataclass(frozen=True)
class HeadCalls:
    """The three-way reading of a head rule's cuts on the heads' intervals (`call_heads`): the
    heads that count (`candidates`), each surely surviving, surely lost, or borderline. Used for
    induction heads (circuits.py) and previous-token heads (attention.py)."""

    candidates: tuple[Head, ...]
    survived: tuple[Head, ...]
    lost: tuple[Head, ...]
    borderline: tuple[Head, ...]

    @property
    def survival_bounds(self) -> tuple[float, float] | None:
        """(borderline heads lost, borderline heads surviving) survival fractions; None if no candidate."""
        n = len(self.candidates)
        return (len(self.survived) / n, (len(self.survived) + len(self.borderline)) / n) if n else None

    def describe(self) -> str:
        """"3/3 (1 borderline)": surely surviving of the candidates, and how many are undecided."""
        text = f"{len(self.survived)}/{len(self.candidates)}"
        return text + (f" ({len(self.borderline)} borderline)" if self.borderline else "")


def call_heads(heads: list[Head], fp_bounds: Callable[[Head], tuple[float, float]],
               quant_bounds: Callable[[Head], tuple[float, float]], detect: float, survive: float) -> HeadCalls:
    """Classify `heads` by their (low, high) score intervals.

    A head surely detected (FP low > `detect`) survives when quantized low > `survive`, is lost
    when quantized high <= `survive`, and is borderline when its quantized interval straddles the
    cut. A head whose FP interval straddles `detect` may or may not be one: it counts when
    quantized is surely above (it survived) or surely below (it is borderline: maybe lost), and
    not at all when quantized straddles too (nothing says it was a head or that it changed)."""
    candidates, survived, lost, borderline = [], [], [], []
    for hd in heads:
        fp_low, fp_high = fp_bounds(hd)
        if fp_high <= detect:
            continue
        low, high = quant_bounds(hd)
        sure = fp_low > detect
        if low > survive:
            survived.append(hd)
        elif high <= survive:
            (lost if sure else borderline).append(hd)
        elif sure:
            borderline.append(hd)
        else:
            continue
        candidates.append(hd)
    return HeadCalls(tuple(candidates), tuple(survived), tuple(lost), tuple(borderline))
