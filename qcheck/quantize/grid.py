"""Quantization grids: per-row affine grids `value = scale · (code − zero)`, code in 0..2^b − 1.

Every grid here is written in that one form, so RTN and GPTQ results can be packed as GPTQ
checkpoints (qweight/qzeros/scales/g_idx) without a second convention:

- `study` (symmetric, the default): scale = max|w| / (2^(b−1) − 1), zero = 2^(b−1). The codes minus
  the zero are the study's levels −2^(b−1) .. 2^(b−1) − 1; at 4 bits scale = max|w| / 7.
- `reference` (symmetric): IST-DASLab/gptq quant.py, scale = 2·max|w| / (2^b − 1), zero = 2^(b−1).
  Its levels are not symmetric about 0: +max|w| is clipped to (2^(b−1) − 1)·scale.
- asymmetric: scale = (max(w, 0) − min(w, 0)) / (2^b − 1), zero = round(−min(w, 0) / scale)
  (quant.py, `sym=False`). The range always contains 0, so 0 is exactly representable.

A row whose range is zero, or so small that its scale underflows float32 to 0 (|w| < ~1e-44),
gets scale 1, so it quantizes to exact zeros instead of NaN (0/0) or garbage codes.
Dimension names: weight is (d_out, d_in), the nn.Linear layout; a grid has one scale per d_out row.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int, Real
from torch import Tensor


@dataclass(frozen=True)
class GridSpec:
    """Bits and shape of a grid: `kind` is "study" or "reference" when `sym`, ignored otherwise."""

    bits: int
    sym: bool = True
    kind: str = "study"

    def __post_init__(self) -> None:
        if not 2 <= self.bits <= 8:
            raise ValueError(f"GridSpec: bits={self.bits} is out of range; use 2..8")
        if self.kind not in ("study", "reference"):
            raise ValueError(f"GridSpec: kind={self.kind!r}; expected 'study' or 'reference'")

    @property
    def maxq(self) -> int:
        """Largest code: codes are integers 0..maxq."""
        return 2 ** self.bits - 1


@dataclass(frozen=True)
class QuantizedWeight:
    """A quantized weight and the grid it lies on, in the packed-checkpoint convention.

    weight == scales[:, g_idx] * (codes - zeros[:, g_idx]) exactly (same float32 ops).
    weight: (d_out, d_in) in the input's dtype; codes: (d_out, d_in) int64 in 0..maxq;
    scales, zeros: (d_out, n_groups) float32, float64 for float64 input (zeros hold integers);
    g_idx: (d_in,) int64, the group of each input column (all 0 for a per-row grid).
    """

    weight: Float[Tensor, "d_out d_in"]
    codes: Int[Tensor, "d_out d_in"]
    scales: Float[Tensor, "d_out n_groups"]
    zeros: Float[Tensor, "d_out n_groups"]
    g_idx: Int[Tensor, "d_in"]


def compute_dtype(t: Tensor) -> torch.dtype:
    """float32 for every input except float64, which stays float64 (reference tests use it)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def fit(w: Float[Tensor, "d_out n"], spec: GridSpec) -> tuple[Float[Tensor, "d_out"], Float[Tensor, "d_out"]]:
    """Per-row (scale, zero) of the grid that covers each row of `w` (one group or a whole row)."""
    w = w.to(compute_dtype(w))
    if spec.sym:
        amax = w.abs().amax(dim=1)
        amax = torch.where(amax == 0, torch.ones_like(amax), amax)
        half = 2 ** (spec.bits - 1)
        scale = _nonzero(amax / (half - 1) if spec.kind == "study" else 2 * amax / spec.maxq)
        return scale, torch.full_like(scale, float(half))
    # quant.py: the range is widened to contain 0; an all-zero row gets [-1, 1].
    low = w.amin(dim=1).clamp(max=0)
    high = w.amax(dim=1).clamp(min=0)
    empty = (low == 0) & (high == 0)
    low, high = torch.where(empty, -1.0, low), torch.where(empty, 1.0, high)
    scale = _nonzero((high - low) / spec.maxq)
    return scale, torch.round(-low / scale)


def _nonzero(scale: Tensor) -> Tensor:
    """Scale 1 where it underflowed to 0 (a denormal-range row): its weights then round to 0."""
    return torch.where(scale == 0, torch.ones_like(scale), scale)


def encode(w: Float[Tensor, "d_out n"], scale: Float[Tensor, "d_out"], zero: Float[Tensor, "d_out"],
           maxq: int) -> Float[Tensor, "d_out n"]:
    """Codes (as floats) of the nearest grid point: clamp(round(w / scale) + zero, 0, maxq).

    torch.round rounds half to even, as the study and quant.py did.
    """
    return torch.clamp(torch.round(w / scale[:, None]) + zero[:, None], 0, maxq)


def decode(codes: Float[Tensor, "d_out n"], scale: Float[Tensor, "d_out"],
           zero: Float[Tensor, "d_out"]) -> Float[Tensor, "d_out n"]:
    """Grid values of `codes`: scale · (code − zero)."""
    return scale[:, None] * (codes - zero[:, None])


def group_index(d_in: int, group_size: int | None) -> Int[Tensor, "d_in"]:
    """g_idx for contiguous groups of `group_size` input columns (the last may be shorter)."""
    if group_size is None:
        return torch.zeros(d_in, dtype=torch.long)
    if group_size < 1:
        raise ValueError(f"group_size={group_size} must be >= 1 or None (per row)")
    return torch.arange(d_in) // group_size


def assemble(codes: Real[Tensor, "d_out d_in"], scales: Float[Tensor, "d_out n_groups"],
             zeros: Float[Tensor, "d_out n_groups"], g_idx: Int[Tensor, "d_in"],
             dtype: torch.dtype) -> QuantizedWeight:
    """Build a QuantizedWeight; the weight is recomputed from the codes so the two agree exactly."""
    if scales.shape[1] == 1:  # per row: broadcasting gives the same values without a gather
        weight = (scales * (codes - zeros)).to(dtype)
    else:
        weight = (scales[:, g_idx] * (codes - zeros[:, g_idx])).to(dtype)
    return QuantizedWeight(weight=weight, codes=codes.long(), scales=scales, zeros=zeros, g_idx=g_idx)


def on_float32_grid(q: QuantizedWeight, scale_dtype: torch.dtype = torch.float32) -> QuantizedWeight:
    """`q` with its scales rounded to `scale_dtype` (float32, or float16 as GPTQ checkpoints store
    them) and the weight rebuilt in float32 from the same codes, so a checkpoint of it is it
    exactly; `q` itself if its scales are float32 and that is what was asked.

    A group whose scale is below the dtype's range (it rounds to 0) gets what `_nonzero` gives:
    scale 1, codes at the zero point, weight 0. A scale beyond float16's range is refused. Other
    fields of a QuantizedWeight subclass (GPTQResult's damp, ...) are kept.
    """
    if q.scales.dtype == scale_dtype == torch.float32:
        return q
    scales, zeros, codes = q.scales.to(scale_dtype), q.zeros.float(), q.codes
    if not torch.isfinite(scales).all():
        raise ValueError(f"a scale of {float(q.scales.abs().max()):.6g} does not fit {scale_dtype}")
    underflow = scales == 0
    if underflow.any():
        scales = torch.where(underflow, torch.ones_like(scales), scales)
        codes = torch.where(underflow[:, q.g_idx], zeros[:, q.g_idx].long(), codes)
    rebuilt = assemble(codes, scales.float(), zeros, q.g_idx, torch.float32)
    return dataclasses.replace(q, weight=rebuilt.weight, codes=rebuilt.codes, scales=rebuilt.scales,
                               zeros=rebuilt.zeros)
