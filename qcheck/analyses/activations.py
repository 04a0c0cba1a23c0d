"""Analysis 1, activation similarity: per layer, how close the quantized model's residual stream,
attention output and MLP output stay to FP's (the study's `activation_comparison.py`: cosine, L2
and Pearson per layer for resid_post, attn_out and mlp_out).

Each metric is computed per real token over d_model, then averaged over the real tokens of the
prompt set (padding excluded). The verdict is on the residual stream's cosine, the study's
headline (GPTQ-4 kept > 0.99 at every layer of GPT-2; RTN-4 fell to ~0.85).

Intervals: a 95 % bootstrap over the prompts (qcheck/metrics.py), each resample the token-weighted
mean of its prompts, so the point value is the plain mean over real tokens as before. A layer
fails when its whole interval is below the threshold and is borderline when it straddles it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from dataclasses import dataclass

import numpy as np
import torch

from qcheck import metrics
from qcheck.analyses._common import (Bounds, check_same_inputs, judge_elements, layer_key,
                                     percentile_bounds, unit_sums)
from qcheck.capture import Capture
from qcheck.analyses.base import Analysis, Context, DOWN_DIFF, Headline, Threshold, UP
from qcheck.verdict import Failure

if TYPE_CHECKING:
    from qcheck.thresholds import Thresholds

HOOKS = ("hook_resid_post", "hook_attn_out", "hook_mlp_out")
METRICS = ("cosine", "l2", "relative_l2", "pearson")


@dataclass(frozen=True)
class ActivationResult:
    """Per hook, per layer means over real tokens.

    values[hook][metric][layer]: cosine (in [-1, 1], 1 = same direction), l2 (‖fp − quant‖, in
    activation units), relative_l2 (‖fp − quant‖ / ‖fp‖, 0 = identical) and pearson (in [-1, 1]).
    Hooks are the TransformerLens names without the `blocks.{l}.` prefix.
    """

    values: dict[str, dict[str, tuple[float, ...]]]
    n_tokens: int
    # bounds[hook][metric][layer] = (low, high); summary_bounds[key]; None: no per-prompt values
    bounds: dict[str, dict[str, tuple[Bounds, ...]]] | None = None
    summary_bounds: dict[str, Bounds] | None = None

    @property
    def resid_cosine(self) -> tuple[float, ...]:
        return self.values["hook_resid_post"]["cosine"]

    @property
    def min_resid_cosine(self) -> float:
        """The verdict's number: the lowest per-layer mean resid_post cosine."""
        return min(self.resid_cosine)

    def failures(self, thresholds: Thresholds) -> list[Failure]:
        bounds = self.bounds["hook_resid_post"]["cosine"] if self.bounds else [None] * len(self.resid_cosine)
        return judge_elements("min_resid_cosine", "resid_post cosine", thresholds.min_resid_cosine,
                              [(layer_key(l), c, bounds[l]) for l, c in enumerate(self.resid_cosine)],
                              minimum=True)

    def intervals(self) -> dict:
        """[low, high] per hook, layer and metric, and for the summary (keyed like as_baseline)."""
        if self.bounds is None:
            return {}
        out: dict = {"confidence": 0.95, "unit": "prompt"}
        for hook, per_metric in self.bounds.items():
            n_layers = len(next(iter(per_metric.values())))
            out[hook] = {layer_key(l): {m: list(per_metric[m][l]) for m in METRICS} for l in range(n_layers)}
        out["summary"] = {key: list(b) for key, b in self.summary_bounds.items()}
        return out

    def notes(self) -> list[str]:
        return []

    def as_baseline(self) -> dict:
        out: dict = {"n_tokens": self.n_tokens}
        for hook, per_metric in self.values.items():
            n_layers = len(next(iter(per_metric.values())))
            out[hook] = {layer_key(l): {m: per_metric[m][l] for m in METRICS} for l in range(n_layers)}
        out["summary"] = {"min_resid_cosine": self.min_resid_cosine,
                          "mean_resid_cosine": sum(self.resid_cosine) / len(self.resid_cosine)}
        return out


def compare_activations(fp: Capture, quant: Capture) -> ActivationResult:
    """Compare FP and quantized activations at every layer, over real tokens only.

    resid_post is required; attn_out and mlp_out are compared when both captures have them.
    """
    check_same_inputs(fp, quant)
    n_layers = fp.n_layers
    if n_layers == 0:
        raise ValueError("capture has no blocks.{l}.hook_resid_post activations")
    values: dict[str, dict[str, tuple[float, ...]]] = {}
    sums: dict[tuple[str, str], list] = {}        # (hook, metric) -> per layer (n_prompts,) sums
    prompt = fp.mask.nonzero()[:, 0]               # the prompt of each real token
    n_prompts = fp.mask.shape[0]
    for hook in HOOKS:
        names = [f"blocks.{layer}.{hook}" for layer in range(n_layers)]
        if not all(name in fp.acts and name in quant.acts for name in names):
            if hook == "hook_resid_post":
                raise ValueError(f"capture lacks some of {names}")
            continue
        per_metric: dict[str, list[float]] = {m: [] for m in METRICS}
        for name in names:
            a, b = fp.acts[name][fp.mask], quant.acts[name][fp.mask]  # (n_real, d_model)
            for m in METRICS:
                per_token = getattr(metrics, m)(a, b)                     # (n_real,)
                per_metric[m].append(float(per_token.mean()))
                sums.setdefault((hook, m), []).append(unit_sums(per_token, prompt, n_prompts))
        values[hook] = {m: tuple(v) for m, v in per_metric.items()}
    keys = list(sums)
    stacked = torch.stack([torch.stack(sums[k], dim=1) for k in keys], dim=1)  # (n_prompts, key, layer)
    boot = metrics.bootstrap_means(stacked, fp.mask.sum(dim=1), seed=metrics.BOOTSTRAP_SEED)  # (R, key, layer)
    low, high = percentile_bounds(boot)
    bounds: dict[str, dict[str, tuple[Bounds, ...]]] = {}
    for i, (hook, m) in enumerate(keys):
        bounds.setdefault(hook, {})[m] = tuple((float(a), float(b)) for a, b in zip(low[i], high[i]))
    resid = boot[:, keys.index(("hook_resid_post", "cosine"))]               # (R, layer)
    summary_low, summary_high = percentile_bounds(np.stack([resid.min(axis=1), resid.mean(axis=1)], axis=1))
    summary_bounds = {"min_resid_cosine": (float(summary_low[0]), float(summary_high[0])),
                      "mean_resid_cosine": (float(summary_low[1]), float(summary_high[1]))}
    return ActivationResult(values=values, n_tokens=int(fp.mask.sum()), bounds=bounds,
                            summary_bounds=summary_bounds)


# --- the analysis ---------------------------------------------------------------------------
THRESHOLDS = (
    Threshold("min_resid_cosine", 0.95, "cosine (1 = identical)",
              "min over layers of the mean per-token cosine of resid_post, FP vs quantized"),
)


def _compare(fp: Capture, quant: Capture, context: Context) -> ActivationResult:
    return compare_activations(fp, quant)


ANALYSIS = Analysis(
    name="activations", version=1, prompt_set="natural", compare=_compare, thresholds=THRESHOLDS,
    title="analysis 1, activation similarity per layer (resid_post, attn_out, mlp_out)",
    metrics={"cosine": UP, "pearson": UP, "min_resid_cosine": UP, "mean_resid_cosine": UP,
             "l2": DOWN_DIFF, "relative_l2": DOWN_DIFF},
    unmeasured=frozenset({"n_tokens"}),
    headline=Headline("min_resid_cosine", "min resid cos"))
