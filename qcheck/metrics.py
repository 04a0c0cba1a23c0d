"""Similarity and divergence metrics between FP and quantized tensors, plus bootstrap intervals.

Every function compares row by row over the last dimension and keeps the leading dimensions, so
callers select real (unpadded) positions first and reduce afterwards. Units are in each docstring.
The study's `utils/metrics.py` clamped probabilities at 1e-10 before taking logs; here logs come
from `log_softmax` (exact, no clamp) and zeros are handled explicitly (0·log 0 = 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

# Below this norm a vector counts as zero: cosine with it is 0 (torch's convention), not NaN.
_EPS = 1e-12
# Elements per float64 chunk in kl_from_logits (8 MiB per temporary; it makes about six).
_CHUNK_ELEMENTS = 1 << 20


def cosine(a: Float[Tensor, "*rows d"], b: Float[Tensor, "*rows d"]) -> Float[Tensor, "*rows"]:
    """Cosine similarity per row, dimensionless, in [-1, 1]; 0 if either row is all zeros."""
    a, b = a.double(), b.double()
    norms = a.norm(dim=-1) * b.norm(dim=-1)
    return ((a * b).sum(dim=-1) / norms.clamp_min(_EPS)).clamp(-1.0, 1.0)


def l2(a: Float[Tensor, "*rows d"], b: Float[Tensor, "*rows d"]) -> Float[Tensor, "*rows"]:
    """Euclidean distance ‖a − b‖ per row, in the units of the activations."""
    return (a.double() - b.double()).norm(dim=-1)


def relative_l2(a: Float[Tensor, "*rows d"], b: Float[Tensor, "*rows d"]) -> Float[Tensor, "*rows"]:
    """‖a − b‖ / ‖a‖ per row, with `a` the reference (FP): scale-free, 0 = identical."""
    return l2(a, b) / a.double().norm(dim=-1).clamp_min(_EPS)


def pearson(a: Float[Tensor, "*rows d"], b: Float[Tensor, "*rows d"]) -> Float[Tensor, "*rows"]:
    """Pearson correlation per row over the last dimension, in [-1, 1].

    NaN where a row is constant (zero variance): the correlation is undefined there, and callers
    must decide (e.g. dead SAE features are skipped) rather than read a made-up 0 or 1.
    """
    a, b = a.double(), b.double()
    a = a - a.mean(dim=-1, keepdim=True)
    b = b - b.mean(dim=-1, keepdim=True)
    norms = a.norm(dim=-1) * b.norm(dim=-1)
    r = (a * b).sum(dim=-1) / norms
    return torch.where(norms > 0, r.clamp(-1.0, 1.0), torch.full_like(r, math.nan))


def kl_from_logits(p_logits: Float[Tensor, "*rows d_vocab"],
                   q_logits: Float[Tensor, "*rows d_vocab"]) -> Float[Tensor, "*rows"]:
    """KL(p ‖ q) in nats per row, p = softmax(p_logits) (the FP reference), q = softmax(q_logits).

    Computed from log_softmax in float64, so tiny probabilities keep their exact logs (the study
    clamped at 1e-10 instead). Terms with p = 0 contribute 0; the result is clamped at 0 to drop
    rounding noise (KL ≥ 0). Rows are processed in chunks: a GPT-2 vocabulary over a few thousand
    positions would otherwise need gigabytes of float64 temporaries.
    """
    shape = p_logits.shape[:-1]
    p_rows = p_logits.reshape(-1, p_logits.shape[-1])
    q_rows = q_logits.reshape(-1, q_logits.shape[-1])
    chunk = max(1, _CHUNK_ELEMENTS // max(1, p_rows.shape[-1]))
    parts = []
    for start in range(0, p_rows.shape[0], chunk):
        log_p = F.log_softmax(p_rows[start:start + chunk].double(), dim=-1)
        log_q = F.log_softmax(q_rows[start:start + chunk].double(), dim=-1)
        p = log_p.exp()
        terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))
        parts.append(terms.sum(dim=-1).clamp_min(0.0))
    return torch.cat(parts).reshape(shape) if parts else torch.zeros(shape, dtype=torch.float64)


def jsd(p: Float[Tensor, "*rows n"], q: Float[Tensor, "*rows n"]) -> Float[Tensor, "*rows"]:
    """Jensen-Shannon divergence in bits per row between distributions p and q, in [0, 1].

    p and q are probabilities (e.g. attention patterns, rows summing to 1). JSD = ½KL(p‖m) +
    ½KL(q‖m), m = (p + q)/2, with log base 2, so two disjoint distributions give exactly 1 bit.
    Where p > 0, m ≥ p/2 > 0, so every log is finite; entries with p = 0 contribute 0.
    """
    p, q = p.double().clamp_min(0.0), q.double().clamp_min(0.0)
    m = (p + q) / 2

    # The clamp only matters for float64 subnormals, where (x + q) / 2 can round to 0.
    m_safe = m.clamp_min(torch.finfo(torch.float64).tiny)

    def kl_to_m(x: Tensor) -> Tensor:
        return torch.where(x > 0, x * torch.log2(x / m_safe), torch.zeros_like(x)).sum(dim=-1)

    return ((kl_to_m(p) + kl_to_m(q)) / 2).clamp(0.0, 1.0)


def topk_agreement(p_logits: Float[Tensor, "*rows d_vocab"], q_logits: Float[Tensor, "*rows d_vocab"],
                   k: int) -> Float[Tensor, "*rows"]:
    """Fraction of the reference's (p's) top-k tokens that are also in q's top-k, in [0, 1].

    With k = 1 this is top-1 agreement (argmax equal). The study's logit-lens "top-5 agreement".
    """
    top_p = p_logits.topk(k, dim=-1).indices  # (*rows, k)
    top_q = q_logits.topk(k, dim=-1).indices
    shared = (top_p.unsqueeze(-1) == top_q.unsqueeze(-2)).any(dim=-1)  # (*rows, k)
    return shared.double().mean(dim=-1)


Side = Literal["pass", "fail", "borderline"]

# Every interval qcheck reports: a 95 % percentile bootstrap over the sampled units with 1000
# resamples, seeded (the report records the seed). 1000 resamples put the 2.5 % tails on 25
# values each: the bounds move by ~10 % of the interval's width between seeds, which is the
# precision a three-way verdict needs, at ~1 ms per element.
CONFIDENCE = 0.95
N_RESAMPLES = 1000
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class Interval:
    """A bootstrap confidence interval: the statistic on the data and its percentile bounds."""

    estimate: float
    low: float
    high: float
    confidence: float

    def side(self, cut: float, *, minimum: bool) -> Side:
        """Where the interval lies against a threshold `cut`: "pass" when all of it is on the
        passing side (>= cut for a minimum, <= cut for a maximum), "fail" when all of it is on the
        failing side, "borderline" when it straddles the cut. NaN anywhere fails."""
        values = (self.estimate, self.low, self.high)
        if any(math.isnan(v) for v in values):
            return "fail"
        if minimum:
            return "pass" if self.low >= cut else "fail" if self.high < cut else "borderline"
        return "pass" if self.high <= cut else "fail" if self.low > cut else "borderline"

    def bounds(self) -> list[float | None]:
        """[low, high] for JSON (NaN as null)."""
        return [None if math.isnan(v) else v for v in (self.low, self.high)]

    def __str__(self) -> str:
        return f"{self.estimate:.4g} [{self.low:.4g}, {self.high:.4g}]"


def resample_units(n_units: int, *, seed: int, n_resamples: int = N_RESAMPLES) -> np.ndarray:
    """(n_resamples, n_units) unit indices drawn with replacement from numpy's PCG64 seeded with
    `seed`: the same draws for every element of a result, so FP and quantized values of one unit
    stay paired and a min or correlation over elements is resampled jointly."""
    if n_units < 1:
        raise ValueError("a bootstrap needs at least one sampled unit")
    return np.random.default_rng(seed).integers(0, n_units, size=(n_resamples, n_units))


def bootstrap_means(sums: Tensor | np.ndarray, counts: Tensor | np.ndarray | None = None, *, seed: int,
                    n_resamples: int = N_RESAMPLES) -> np.ndarray:
    """Resampled means of every element over the sampled units: (n_resamples, *element_shape).

    sums: (n_units, *element_shape), each unit's total of the per-token values (or its own value
    when `counts` is None); counts: (n_units,) tokens per unit. A resample's mean is Σ sums / Σ
    counts over its units (the token-weighted mean the point value is), or the plain mean of the
    units' values. Units are what was sampled independently (prompts, sequences): tokens of one
    prompt are not independent, so they are resampled together."""
    data = np.asarray(sums.detach().cpu().double() if isinstance(sums, Tensor) else sums, dtype=np.float64)
    flat = data.reshape(data.shape[0], -1)                     # (n_units, n_elements)
    weight = None if counts is None else np.asarray(
        counts.detach().cpu().double() if isinstance(counts, Tensor) else counts, dtype=np.float64)
    index = resample_units(flat.shape[0], seed=seed, n_resamples=n_resamples)
    out = np.empty((n_resamples, flat.shape[1]))
    for start in range(0, n_resamples, 100):                   # ~100 × n_units × n_elements floats at a time
        rows = index[start:start + 100]
        totals = flat[rows].sum(axis=1)                        # (block, n_elements)
        out[start:start + 100] = totals / (weight[rows].sum(axis=1)[:, None] if weight is not None
                                            else rows.shape[1])
    return out.reshape(n_resamples, *data.shape[1:])


def percentile_interval(samples: np.ndarray, estimate: float, confidence: float = CONFIDENCE) -> Interval:
    """The percentile interval of a 1-D bootstrap distribution around the point `estimate`."""
    samples = np.asarray(samples, dtype=np.float64)
    tail = (1 - confidence) / 2 * 100
    if np.isnan(samples).any():
        return Interval(float(estimate), math.nan, math.nan, confidence)
    low, high = np.percentile(samples, [tail, 100 - tail])
    return Interval(estimate=float(estimate), low=float(low), high=float(high), confidence=confidence)


def bootstrap_ci(values: Tensor | np.ndarray, *, seed: int, n_resamples: int = 1000,
                 confidence: float = 0.95,
                 statistic: Callable[[np.ndarray], np.ndarray] = lambda x: x.mean(axis=-1)) -> Interval:
    """Percentile bootstrap interval of `statistic` over 1-D `values` (units of the statistic).

    Resamples with replacement `n_resamples` times from numpy's PCG64 seeded with `seed`, so
    the interval is reproducible. `statistic` maps (r, n) resamples to (r,) values; it is called
    on blocks of resamples so that memory stays ~100 × n floats.
    """
    data = np.asarray(values.detach().cpu().double() if isinstance(values, Tensor) else values,
                      dtype=np.float64).ravel()
    if data.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence}: expected a value in (0, 1)")
    rng = np.random.default_rng(seed)
    stats = np.concatenate([
        statistic(data[rng.integers(0, data.size, size=(min(100, n_resamples - start), data.size))])
        for start in range(0, n_resamples, 100)])
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(stats, [tail, 100 - tail])
    return Interval(estimate=float(statistic(data[None, :])[0]), low=float(low), high=float(high),
                    confidence=confidence)


def wilson_interval(successes: int, trials: int, confidence: float = CONFIDENCE) -> Interval:
    """The Wilson score interval of a proportion `successes` / `trials`, in [0, 1].

    For a count of units that pass a per-unit rule (features that survive, top positions kept)
    where the count is a top-k statistic a bootstrap cannot resample (the top k of a resample is
    another set; qcheck/analyses/feature_intervals.py): each unit is read as a Bernoulli draw of
    the rate the count estimates. Wilson, not the normal (Wald) interval: Wald gives [1, 1] for
    20/20, Wilson [0.839, 1]. NaN bounds when trials is 0."""
    if not 0 <= successes <= trials:
        raise ValueError(f"wilson_interval: {successes} successes of {trials} trials")
    if trials == 0:
        return Interval(math.nan, math.nan, math.nan, confidence)
    from statistics import NormalDist

    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    p, n = successes / trials, trials
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # clamp the float rounding at the ends (k = 0 or n gives exactly 0 or 1 analytically)
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return Interval(estimate=p, low=low, high=high, confidence=confidence)
