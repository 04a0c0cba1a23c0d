"""The study's GPTQ update, kept to measure what it costs: never the default (`gptq-study-wB`).

The study inverted the damped H once and, for every column i, pushed the rounding error onto the
later columns with row i of that full inverse, err = (w_i − q_i) / [H⁻¹]_ii,
W[:, j>i] −= err · [H⁻¹]_ij (docs/study.md, "Where the study's code differs from its text"). That is the OBS update for
column 0 only: after a column is fixed, the inverse Hessian of the remaining columns is no longer
the corresponding block of H⁻¹, so every later update uses a stale inverse. The exact version is
`gptq.gptq` (the Cholesky rows are the re-inverted ones). Everything else (grid, groups, dead
columns, damping, act-order) is shared with gptq.py so that only the update differs.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from qcheck.quantize.gptq import GPTQResult, GroupGrids, finish, prepare
from qcheck.quantize.grid import GridSpec, decode, encode


def gptq_study(weight: Float[Tensor, "d_out d_in"], hessian: Float[Tensor, "d_in d_in"], grid: GridSpec, *,
               group_size: int | None = None, damp: float = 0.01, act_order: bool = False,
               group_aware: bool = False, static_groups: bool = False) -> GPTQResult:
    """The study's stale-inverse GPTQ: same arguments as `gptq.gptq` (no block size: no lazy batching)."""
    prep = prepare(weight, hessian, grid, group_size=group_size, act_order=act_order, group_aware=group_aware,
                   static_groups=static_groups)
    H = prep.H
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    Hinv = torch.linalg.inv(H + damp * H.diagonal().mean() * eye)  # (d_in, d_in), never updated
    W = prep.W                                                      # (d_in, d_out)
    codes = torch.empty_like(W)
    grids = GroupGrids(prep, grid, group_size)
    for column in range(W.shape[0]):
        scale, zero = grids.at(column, W[column:].T)
        w = W[column]
        c = encode(w[:, None], scale, zero, grid.maxq)[:, 0]
        codes[column] = c
        err = (w - decode(c[:, None], scale, zero)[:, 0]) / Hinv[column, column]
        W[column + 1:].addr_(Hinv[column, column + 1:], err, alpha=-1)
    return finish(weight, codes, grids, prep, damp=damp, damp_retries=0)
