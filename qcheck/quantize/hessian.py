"""Collecting GPTQ's Hessian H = 2/n Σ x xᵀ of a linear map's inputs, batch by batch.

H is the Hessian of the layer-wise objective ‖(W − Q) X‖² (Frantar et al. 2022, eq. 1 and 3.1).
Collection is kept apart from the quantizer (gptq.py), as reference gptq.py's add_batch /
fasterquant split does. n counts tokens (every input vector), as the study did; the reference
divides by sequences instead. The scale does not change the result: damping is a fraction of
mean diag(H).
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor


def hessian(x: Float[Tensor, "... d_in"]) -> Float[Tensor, "d_in d_in"]:
    """H = 2/n Σ x xᵀ over all n input vectors in `x` (float32; float64 input stays float64)."""
    acc = HessianAccumulator(x.shape[-1], dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
    acc.add_batch(x)
    return acc.hessian()


class HessianAccumulator:
    """Running Σ x xᵀ and token count; `hessian()` returns 2/n Σ x xᵀ.

    The sum is kept unnormalised and divided once at the end (the reference rescales a running
    mean at every batch; both are float32 and agree to rounding).
    """

    def __init__(self, d_in: int, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        self.d_in = d_in
        self.sum: Float[Tensor, "d_in d_in"] = torch.zeros(d_in, d_in, device=device, dtype=dtype)
        self.n_tokens = 0

    def add_batch(self, x: Float[Tensor, "... d_in"]) -> None:
        """Add every input vector of `x` (any leading shape: (batch, pos, d_in) or (n, d_in))."""
        if x.shape[-1] != self.d_in:
            raise ValueError(f"add_batch: inputs have d_in={x.shape[-1]}, the accumulator {self.d_in}")
        rows = x.detach().reshape(-1, self.d_in).to(self.sum)  # (n, d_in)
        self.sum.addmm_(rows.T, rows)
        self.n_tokens += rows.shape[0]

    def hessian(self) -> Float[Tensor, "d_in d_in"]:
        if self.n_tokens == 0:
            raise ValueError("hessian: no inputs were added; run the calibration batch first")
        return self.sum * (2.0 / self.n_tokens)
