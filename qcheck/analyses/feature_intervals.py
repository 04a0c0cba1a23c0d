"""The features analysis's survival shares for every top feature at once (`top_shares`), and the
bootstrap over the prompts of its smooth values (qcheck/analyses/features.py holds the rules).

The unit resampled is the prompt, as in every other natural-set analysis: its positions are not
independent of each other. A resample keeps the top features of the full data fixed and
recomputes, from per-prompt sums, each top feature's FP and quantized mean, its Pearson r and
recall, and the summary's mean r, activation recall, FVE and L0: one matrix product of prompt
counts with those sums per value. FP and quantized values of a prompt share the draws.

The same resampling gives the basis's dead fraction and the counts of alive and dense features.

The top-k shares (positions, token overlap) and survival are not resampled over the prompts. A
feature's top 10 is defined relative to the sample: with other prompts, or a prompt drawn twice,
it reaches other (weaker, nearer the TopK cut) activations, so a resample measures another
quantity, not the same one with noise. Measured on zoo-gpt2-2l48 gptq-w4 (point survival 0.95):
the prompt bootstrap gave [0.3, 1.0], the low resamples being those where many sparse features'
top 10 was most of their active positions. They get a binomial (Wilson) interval instead
(qcheck/metrics.py `wilson_interval`): a share over the feature's top positions (or its distinct
token ids there), survival over the top features, each unit read as one draw of the rate the
count estimates. It says how much k of n can tell, not how the prompts were sampled.
"""

from __future__ import annotations

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from qcheck import metrics


def top_shares(h_fp: Float[Tensor, "n_pos n_feat"], h_quant: Float[Tensor, "n_pos n_feat"],
               token_ids: Int[Tensor, "n_pos"], *, k: int, slack: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per feature (column): (positions share, token-id overlap, n_top, n_ids), float64, float64,
    long, long; n_ids is the number of distinct token ids at the FP top positions (the overlap's
    denominator).

    A feature's FP top positions are the first min(k, n active) of its stable descending FP order
    (ties to the earlier position); positions share = the fraction of them whose quantized rank is
    below min(slack · n_top, n active quantized); token-id overlap = |set(FP ids) ∩ set(ids at the
    first min(n_top, n active quantized) quantized positions)| / |set(FP ids)|. NaN where a feature
    is active nowhere under FP."""
    n, n_feat = h_fp.shape
    order_fp = torch.sort(h_fp, dim=0, descending=True, stable=True).indices           # (n, F)
    order_q = torch.sort(h_quant, dim=0, descending=True, stable=True).indices
    active_fp, active_q = (h_fp > 0).sum(dim=0), (h_quant > 0).sum(dim=0)               # (F,)
    n_top = active_fp.clamp(max=k)
    depth = min(k, n)
    slot = torch.arange(depth)[:, None]                                                 # (depth, 1)
    fp_top, fp_valid = order_fp[:depth], slot < n_top                                   # (depth, F)
    rank_q = torch.empty_like(order_q).scatter_(0, order_q, torch.arange(n)[:, None].expand(n, n_feat))
    within = (rank_q.gather(0, fp_top) < torch.minimum(slack * n_top, active_q)) & fp_valid
    positions = within.sum(dim=0).double() / n_top.double()

    q_valid = slot < torch.minimum(n_top, active_q)
    ids_fp, ids_q = token_ids[fp_top], token_ids[order_q[:depth]]                       # (depth, F)
    earlier = (torch.arange(depth)[None, :] < torch.arange(depth)[:, None])[..., None]  # (j, j', 1): j' < j
    repeat = ((ids_fp[:, None] == ids_fp[None, :]) & fp_valid[None, :] & earlier).any(dim=1)
    distinct_fp = fp_valid & ~repeat                                                    # first copy of each id
    in_quant = ((ids_fp[:, None] == ids_q[None, :]) & q_valid[None, :]).any(dim=1)
    n_ids = distinct_fp.sum(dim=0)
    overlap = (distinct_fp & in_quant).sum(dim=0).double() / n_ids.double()
    return positions, overlap, n_top, n_ids


def prompt_counts(n_prompts: int, *, seed: int, n_resamples: int) -> np.ndarray:
    """(n_resamples, n_prompts): how often each prompt is drawn in each resample."""
    draws = metrics.resample_units(n_prompts, seed=seed, n_resamples=n_resamples)
    counts = np.zeros((n_resamples, n_prompts), dtype=np.int64)
    np.add.at(counts, (np.arange(n_resamples)[:, None], draws), 1)
    return counts


def per_prompt(values: Tensor, prompt_ids: Int[Tensor, "n_pos"], n_prompts: int) -> np.ndarray:
    """(n_prompts, *rest) float64 sums of `values` (n_pos, *rest) over each prompt's positions."""
    values = values.double()
    out = torch.zeros((n_prompts, *values.shape[1:]), dtype=torch.float64)
    return out.index_add_(0, prompt_ids, values).numpy()


def resampled(counts: np.ndarray, sums: np.ndarray) -> np.ndarray:
    """(R, *rest): each resample's total of per-prompt `sums` (n_prompts, *rest)."""
    return (counts @ sums.reshape(sums.shape[0], -1)).reshape(counts.shape[0], *sums.shape[1:])


def pearson_from_sums(n, sx, sy, sxx, syy, sxy) -> np.ndarray:
    """Pearson r from resampled sums; 0 where only the quantized side is constant (as the point
    value counts it), NaN where the FP side is (the feature is absent from the resample)."""
    cov = n * sxy - sx * sy
    var_x, var_y = n * sxx - sx * sx, n * syy - sy * sy
    with np.errstate(invalid="ignore", divide="ignore"):
        r = cov / np.sqrt(var_x * var_y)
    r = np.where((var_y <= 0) & (var_x > 0), 0.0, r)
    return np.where(var_x > 0, r, np.nan)


def fve_from_sums(n, s_x, s_xx, s_err) -> np.ndarray:
    """1 − Σ‖x − x̂‖² / Σ‖x − mean‖² per resample, from per-resample sums (Σx is (R, d_in))."""
    total = s_xx - (s_x * s_x).sum(axis=-1) / n
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 1 - s_err / total, np.nan)
