"""Repeated random tokens for finding induction heads (Olsson et al. 2022; the study's setup).

Each sequence is [BOS, A, A] with A = `half` tokens drawn uniformly from [low, high). The study
drew 50 sequences of 25 tokens from [100, d_vocab - 100) with seed 42; the byte-level zoo models
only know bytes 1..255, so the range is a property of the model.
"""

from __future__ import annotations

import torch
from torch import Tensor

INDUCTION_HALF = 25   # the study's [BOS, 25 random tokens, the same 25]
INDUCTION_SEED = 42   # the study's seed
N_SEQUENCES = 50      # the study's count


def repeated_random_tokens(*, n_sequences: int = N_SEQUENCES, half: int = INDUCTION_HALF, low: int,
                           high: int, bos: int, seed: int = INDUCTION_SEED) -> Tensor:
    """Integer tokens of shape (n_sequences, 1 + 2 * half): BOS, then A, then A again."""
    if not 0 <= low < high:
        raise ValueError(f"token range [{low}, {high}) is empty")
    generator = torch.Generator().manual_seed(seed)
    first = torch.randint(low, high, (n_sequences, half), generator=generator)
    bos_column = torch.full((n_sequences, 1), bos, dtype=torch.long)
    return torch.cat([bos_column, first, first], dim=1)


def induction_sets(n_sets: int, *, half: int = INDUCTION_HALF, low: int, high: int, bos: int,
                   seed: int = INDUCTION_SEED) -> Tensor:
    """`n_sets` independent sets of N_SEQUENCES sequences (seeds seed, seed + 1, ...), stacked:
    shape (n_sets * N_SEQUENCES, 1 + 2 * half). Set 0 is `repeated_random_tokens(seed=seed)`, so
    one set is the default induction set exactly (--qcheck-seeds, qcheck/suite/plugin.py)."""
    if n_sets < 1:
        raise ValueError(f"--qcheck-seeds {n_sets}: the number of induction sets must be >= 1")
    return torch.cat([repeated_random_tokens(half=half, low=low, high=high, bos=bos, seed=seed + k)
                      for k in range(n_sets)])
