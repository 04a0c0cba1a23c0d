"""Round-to-nearest (RTN): every weight to the nearest point of its row's (or group's) grid.

With the default `study` grid and no groups: symmetric, one scale per output row of the raw HF
weight, scale = max|w| / 7 at 4 bits (docs/design.md, "Quantizers"). That is the study's grid
formula, not the study's RTN, which quantized TransformerLens-processed weights along another
axis (docs/study.md). No calibration.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from qcheck.quantize.grid import GridSpec, QuantizedWeight, assemble, compute_dtype, encode, fit, group_index


def rtn(weight: Float[Tensor, "d_out d_in"], grid: GridSpec, *, group_size: int | None = None) -> QuantizedWeight:
    """Quantize `weight` (nn.Linear layout: rows are outputs) to the nearest grid point.

    group_size: one (scale, zero) per `group_size` consecutive input columns of each row
    (None: one per row). The caller's tensor is not modified.
    """
    if weight.ndim != 2:
        raise ValueError(f"rtn: weight must be 2-D (d_out, d_in), got shape {tuple(weight.shape)}")
    w = weight.detach().to(compute_dtype(weight))
    d_in = w.shape[1]
    g_idx = group_index(d_in, group_size)
    step = d_in if group_size is None else group_size
    codes, scales, zeros = torch.empty_like(w), [], []
    for start in range(0, d_in, step):
        scale, zero = fit(w[:, start:start + step], grid)
        codes[:, start:start + step] = encode(w[:, start:start + step], scale, zero, grid.maxq)
        scales.append(scale)
        zeros.append(zero)
    return assemble(codes, torch.stack(scales, dim=1), torch.stack(zeros, dim=1), g_idx, weight.dtype)
