"""GPTQ (Frantar et al. 2022, Alg. 1): quantize input columns left to right and push each column's
rounding error onto the columns not yet quantized, through the upper Cholesky factor of H⁻¹.

Why the Cholesky factor: row i of the upper factor U of H⁻¹ is row 0 of the inverse Hessian of
the columns ≥ i divided by the square root of its diagonal (paper 3.2, step 3). Updating with U's
rows is therefore the exact OBQ update that re-inverts H after every column, with one
factorisation and no inverse going stale. Lazy batching (3.2, step 2), on two levels: a column's
error updates its 16-column sub-block at once, the rest of its block once per sub-block (a
matmul) and the rest of the matrix once per block (a matmul). The reference is IST-DASLab/gptq
gptq.py (`fasterquant`, one level); where ours differs, the comment there says why.

The study's own update (full H⁻¹ reused, not the Cholesky factor) is `gptq_study.py`.
Dimension names: weight (d_out, d_in) in the nn.Linear layout; hessian (d_in, d_in).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from qcheck.quantize.grid import GridSpec, QuantizedWeight, assemble, compute_dtype, fit

# Damping is multiplied by this after a failed factorisation, up to MAX_DAMP (a fraction of
# mean diag(H); at 10 the damping term dominates and GPTQ approaches RTN).
DAMP_GROWTH = 10.0
MAX_DAMP = 10.0


@dataclass(frozen=True)
class GPTQResult(QuantizedWeight):
    """A QuantizedWeight plus how it was obtained.

    damp: the damping fraction of mean diag(H) finally used (> the requested one after retries).
    damp_retries: factorisations that failed before it (0 normally).
    dead: input columns never active in calibration (H_ii == 0, or denormal); their weights are set to 0.
    order: (d_in,) the input columns in processing order (act-order), or None (natural order).
    """

    damp: float = 0.0
    damp_retries: int = 0
    dead: int = 0
    order: Int[Tensor, "d_in"] | None = None


@dataclass
class Prepared:
    """GPTQ's set-up shared with the study variant, all in processing order (act-order applied).

    W: (d_in, d_out), the weight transposed so that one input column is one contiguous row.
    H: (d_in, d_in) with dead columns fixed, not yet damped.
    row_grid: (scale, zero) per output row fitted up front (per-row grid), or None.
    static: (scales, zeros) each (d_out, n_groups) fitted up front on the original columns, or None.
    keeps_groups: the order moves whole groups (group_aware_order), so each fitted grid belongs to
    one original group and g_idx can stay in natural order.
    """

    W: Tensor
    H: Tensor
    order: Tensor | None
    dead: int
    row_grid: tuple[Tensor, Tensor] | None
    static: tuple[Tensor, Tensor] | None
    keeps_groups: bool = False


def gptq(weight: Float[Tensor, "d_out d_in"], hessian: Float[Tensor, "d_in d_in"], grid: GridSpec, *,
         group_size: int | None = None, block_size: int = 128, damp: float = 0.01,
         act_order: bool = False, group_aware: bool = False, static_groups: bool = False,
         block_start_grids: bool = False) -> GPTQResult:
    """Quantize `weight` to `grid` minimising ‖(W − Q) X‖² for H = 2/n X Xᵀ (hessian.py).

    group_size: a fresh (scale, zero) every `group_size` columns, fitted on the current (already
    error-updated) weights at the group's first column; `static_groups` fits them all up front on
    the original weights instead. act_order: process columns by decreasing diag(H); group_aware:
    in `group_aware_order`; either way the result is returned in the original column order.
    block_start_grids: fit a group's grid on the weights as of its block's start, as the
    reference does (`_block_sizes`). The caller's tensors are not modified.
    """
    prep = prepare(weight, hessian, grid, group_size=group_size, act_order=act_order,
                   group_aware=group_aware, static_groups=static_groups)
    U, damp_used, retries = inverse_cholesky(prep.H, damp)  # (d_in, d_in) upper
    W = prep.W                                               # (d_in, d_out), updated in place
    d_in, d_out = W.shape
    block, sub = _block_sizes(block_size, group_size)
    inverse_diagonal = (1 / U.diagonal()).tolist()
    codes = torch.empty_like(W)
    grids = GroupGrids(prep, grid, group_size)
    for i1 in range(0, d_in, block):
        i2 = min(i1 + block, d_in)
        err1 = W.new_empty((i2 - i1, d_out))                 # (block, d_out): scaled errors
        fit_on = W[i1:i2].clone() if block_start_grids else None  # the block before its own updates
        for j1 in range(i1, i2, sub):
            j2 = min(j1 + sub, i2)
            for column in range(j1, j2):
                upcoming = W[column:i2] if fit_on is None else fit_on[column - i1:]
                scale, zero = grids.at(column, upcoming.T)
                err = err1[column - i1]
                _round_column(W[column], scale, zero, grid.maxq, codes[column], err)
                err.mul_(inverse_diagonal[column])               # (w − q) / [U]_ii
                W[column + 1:j2].addr_(U[column, column + 1:j2], err, alpha=-1)
            W[j2:i2].addmm_(U[j1:j2, j2:i2].T, err1[j1 - i1:j2 - i1], alpha=-1)  # rest of the block
        W[i2:].addmm_(U[i1:i2, i2:].T, err1, alpha=-1)          # all later columns, once per block
    return finish(weight, codes, grids, prep, damp=damp_used, damp_retries=retries)


SUB_BLOCK = 16  # columns per inner lazy block: rank-1 updates stay inside it, the rest are matmuls


def _block_sizes(block_size: int, group_size: int | None) -> tuple[int, int]:
    """(block, sub-block) for two-level lazy batching (paper 3.2 step 2, applied twice).

    Every update of a column is applied before the column is quantized, so the sizes change
    rounding order only, not the result. Groups must start where every later column of the block
    is up to date, because their grid is fitted then: the block is a multiple of the group size
    and the sub-block divides it. (The reference fits a group starting mid-block on columns whose
    in-block updates are still pending, so its result depends on blocksize; `block_start_grids`
    does the same, to reproduce it and the tools that follow it, GPTQModel among them.)
    """
    if block_size < 1:
        raise ValueError(f"gptq: block_size={block_size} must be >= 1")
    if group_size is not None:
        block_size = max(group_size, block_size // group_size * group_size)
    sub = math.gcd(SUB_BLOCK, block_size, group_size or block_size)
    return block_size, sub


def _round_column(w: Float[Tensor, "d_out"], scale: Float[Tensor, "d_out"], zero: Float[Tensor, "d_out"],
                  maxq: int, code_out: Tensor, err_out: Tensor) -> None:
    """grid.encode / grid.decode for one column, in place (the loop's hot path): writes the codes
    and w − q. Same operations in the same order, so q is bit-identical to assemble()'s weight."""
    torch.div(w, scale, out=code_out)
    code_out.round_().add_(zero).clamp_(0, maxq)
    torch.sub(code_out, zero, out=err_out)
    err_out.mul_(scale).neg_().add_(w)


class GroupGrids:
    """The (scale, zero) in force at each column, in processing order, and the g_idx they imply."""

    def __init__(self, prep: Prepared, grid: GridSpec, group_size: int | None):
        self.prep, self.grid, self.group_size = prep, grid, group_size
        self.fitted: list[tuple[Tensor, Tensor]] = []
        self.current: tuple[Tensor, Tensor] | None = prep.row_grid

    def at(self, column: int, upcoming: Float[Tensor, "d_out n"]) -> tuple[Tensor, Tensor]:
        """Grid for processing position `column`; `upcoming` are the current weights from there on."""
        g = self.group_size
        if g is None:
            return self.current
        if self.prep.static is not None:
            original = column if self.prep.order is None else int(self.prep.order[column])
            scales, zeros = self.prep.static
            return scales[:, original // g], zeros[:, original // g]
        if column % g == 0:
            self.current = fit(upcoming[:, :g], self.grid)
            self.fitted.append(self.current)
        return self.current

    def tables(self, d_in: int) -> tuple[Tensor, Tensor, Tensor]:
        """(scales, zeros) (d_out, n_groups) and g_idx (d_in,) in the original column order."""
        g, order = self.group_size, self.prep.order
        if g is None:
            scale, zero = self.prep.row_grid
            return scale[:, None], zero[:, None], torch.zeros(d_in, dtype=torch.long)
        if self.prep.static is not None:
            return *self.prep.static, torch.arange(d_in) // g
        scales = torch.stack([s for s, _ in self.fitted], dim=1)
        zeros = torch.stack([z for _, z in self.fitted], dim=1)
        if self.prep.keeps_groups:  # fitted group k holds the columns of original group order[k·g] // g
            original = torch.argsort(order[::g] // g)
            return scales[:, original], zeros[:, original], torch.arange(d_in) // g
        position = torch.arange(d_in) if order is None else torch.argsort(order)  # column -> position
        return scales, zeros, position // g


def prepare(weight: Tensor, hessian: Tensor, grid: GridSpec, *, group_size: int | None,
            act_order: bool, static_groups: bool, group_aware: bool = False) -> Prepared:
    """Validate, copy, fix dead columns, fit up-front grids and apply act-order."""
    if weight.ndim != 2 or hessian.shape != (weight.shape[1], weight.shape[1]):
        raise ValueError(f"gptq: weight (d_out, d_in) = {tuple(weight.shape)} needs a (d_in, d_in) "
                         f"hessian, got {tuple(hessian.shape)}")
    if not torch.isfinite(hessian).all():
        raise ValueError("gptq: the hessian has NaN/inf entries; check the calibration inputs")
    if static_groups and group_size is None:
        raise ValueError("gptq: static_groups needs a group_size")
    if group_aware and (group_size is None or act_order or static_groups):
        raise ValueError("gptq: group_aware needs a group_size and excludes act_order and static_groups")
    dtype = compute_dtype(weight)
    W = weight.detach().to(dtype).clone()                # (d_out, d_in)
    H = hessian.detach().to(dtype=dtype, device=W.device).clone()
    d_in = W.shape[1]
    # Up-front grids are fitted on the original weights, before dead columns are zeroed, so a
    # per-row result lies on exactly RTN's grid (the reference fits per-row grids there too).
    row_grid = fit(W, grid) if group_size is None else None
    static = None
    if static_groups:
        pairs = [fit(W[:, s:s + group_size], grid) for s in range(0, d_in, group_size)]
        static = torch.stack([s for s, _ in pairs], dim=1), torch.stack([z for _, z in pairs], dim=1)
    # Inputs never active in calibration (H_ii == 0), or active only below the dtype's normal
    # range (a denormal H_ii): 1 / H_ii would overflow and no damping rescues the factorisation.
    dead = H.diagonal() < torch.finfo(H.dtype).tiny
    H.diagonal()[dead] = 1
    W[:, dead] = 0
    order = None
    if act_order:
        # stable: equal diagonals keep their natural order, so the result is deterministic.
        order = torch.argsort(H.diagonal(), descending=True, stable=True)
    elif group_aware:
        order = group_aware_order(H.diagonal(), group_size)
    if order is not None:
        W, H = W[:, order], H[order][:, order]
    return Prepared(W=W.T.contiguous(), H=H, order=order, dead=int(dead.sum()), row_grid=row_grid, static=static,
                    keeps_groups=group_aware)


def group_aware_order(diagonal: Float[Tensor, "d_in"], group_size: int) -> Int[Tensor, "d_in"]:
    """Group-aware reordering (GAR; Gafni et al., "Dual Precision Quantization", CVPRW 2025), as
    GPTQModel 7.6 applies it by default (act_group_aware): within each group, its columns by
    decreasing diag(H); the groups by their largest diag(H), decreasing. A trailing partial group
    keeps its place and order. Unlike act-order every group keeps its own columns, so its grid is
    fitted on them and a checkpoint needs no g_idx permutation. Ties keep natural order (stable)."""
    d_in = diagonal.numel()
    n_full = d_in // group_size
    groups = diagonal[:n_full * group_size].reshape(n_full, group_size)  # (n_full, group_size)
    within = torch.argsort(groups, dim=1, descending=True, stable=True)
    by_max = torch.argsort(groups.max(dim=1).values, descending=True, stable=True)
    order = (within + torch.arange(n_full)[:, None] * group_size)[by_max].reshape(-1)
    return torch.cat([order, torch.arange(n_full * group_size, d_in)])


def inverse_cholesky(H: Float[Tensor, "d_in d_in"], damp: float) -> tuple[Tensor, float, int]:
    """Upper Cholesky factor U of (H + λI)⁻¹, λ = damp · mean diag(H) (paper 3.2, step 3).

    Returns (U, damp fraction used, retries). A failed factorisation (H not numerically positive
    definite) is retried with DAMP_GROWTH times more damping, up to MAX_DAMP; beyond, ValueError.
    """
    mean_diag = H.diagonal().mean()
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    fraction, retries = damp, 0
    while fraction <= MAX_DAMP:
        L, info = torch.linalg.cholesky_ex(H + fraction * mean_diag * eye)
        if info == 0:
            U, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
            if info == 0 and torch.isfinite(U).all():
                return U, fraction, retries
        fraction, retries = fraction * DAMP_GROWTH, retries + 1
    raise ValueError(f"gptq: the hessian is not positive definite even with damp={fraction / DAMP_GROWTH:g}; "
                     "check the calibration inputs for degenerate (constant or repeated) activations")


def finish(weight: Tensor, codes: Tensor, grids: GroupGrids, prep: Prepared, *, damp: float,
           damp_retries: int) -> GPTQResult:
    """Undo act-order and build the result from codes (processing order, (d_in, d_out))."""
    d_in = codes.shape[0]
    codes = codes.T                                       # (d_out, d_in) in processing order
    if prep.order is not None:
        codes = codes[:, torch.argsort(prep.order)]
    scales, zeros, g_idx = grids.tables(d_in)
    q = assemble(codes, scales, zeros, g_idx, weight.dtype)
    return GPTQResult(weight=q.weight, codes=q.codes, scales=q.scales, zeros=q.zeros, g_idx=q.g_idx,
                      damp=float(damp), damp_retries=damp_retries, dead=prep.dead, order=prep.order)
