"""Analysis 4, logit lens: does each layer's residual stream, read through ln_final and the
unembedding, predict what FP's predicts? (The study's `logit_lens.py`.)

As in the study, the lens is read at each prompt's last real position (Capture.lens_logits), and
compared per layer by KL(FP ‖ quant) and top-5 agreement. The study clamped probabilities at
1e-10 before the log; here KL comes from log_softmax (exact; the two differ only where a
probability is below 1e-10). Top-5 agreement is the fraction of FP's five most likely tokens
that are among the quantized model's five (|top5_FP ∩ top5_quant| / 5), averaged over prompts;
top-1 agreement is whether the argmax is the same.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from dataclasses import dataclass

import numpy as np
import torch

from qcheck import metrics
from qcheck.analyses._common import Bounds, check_same_inputs, judge_elements, layer_key, percentile_bounds
from qcheck.capture import Capture
from qcheck.analyses.base import Analysis, Context, DOWN_DIFF, Threshold, UP
from qcheck.verdict import Failure

if TYPE_CHECKING:
    from qcheck.thresholds import Thresholds


@dataclass(frozen=True)
class LogitLensResult:
    """Per layer, means over prompts: kl in nats (0 = same prediction), top1 / top5 in [0, 1]."""

    kl: tuple[float, ...]
    top1: tuple[float, ...]
    top5: tuple[float, ...]
    n_prompts: int
    # bounds[metric][layer] = (low, high), 95 % bootstrap over the prompts; None: no per-prompt values
    bounds: dict[str, tuple[Bounds, ...]] | None = None
    summary_bounds: dict[str, Bounds] | None = None

    @property
    def max_kl(self) -> float:
        return max(self.kl)

    @property
    def min_top5(self) -> float:
        return min(self.top5)

    def failures(self, thresholds: Thresholds) -> list[Failure]:
        def elements(metric: str) -> list:
            values = getattr(self, metric)
            return [(layer_key(l), v, self.bounds[metric][l] if self.bounds else None) for l, v in enumerate(values)]
        return [*judge_elements("max_lens_kl", "logit-lens KL(FP‖quant)", thresholds.max_lens_kl, elements("kl"),
                                minimum=False, unit=" nats"),
                *judge_elements("min_lens_top5", "logit-lens top-5 agreement", thresholds.min_lens_top5,
                                elements("top5"), minimum=True)]

    def intervals(self) -> dict:
        """[low, high] per layer and metric, and for the summary (keyed like as_baseline)."""
        if self.bounds is None:
            return {}
        layers = {layer_key(l): {m: list(self.bounds[m][l]) for m in self.bounds} for l in range(len(self.kl))}
        return {"confidence": 0.95, "unit": "prompt", "layers": layers,
                "summary": {key: list(b) for key, b in self.summary_bounds.items()}}

    def notes(self) -> list[str]:
        return []

    def as_baseline(self) -> dict:
        layers = {layer_key(l): {"kl": self.kl[l], "top1": self.top1[l], "top5": self.top5[l]}
                  for l in range(len(self.kl))}
        return {"n_prompts": self.n_prompts, "layers": layers,
                "summary": {"max_kl": self.max_kl, "final_kl": self.kl[-1], "min_top5": self.min_top5,
                            "min_top1": min(self.top1)}}


def compare_logit_lens(fp: Capture, quant: Capture) -> LogitLensResult:
    """Compare the lens predictions (n_layers, batch, d_vocab) of FP and quantized captures."""
    check_same_inputs(fp, quant)
    if fp.lens_logits is None or quant.lens_logits is None:
        raise ValueError("capture has no lens_logits: capture with lens=True")
    a, b = fp.lens_logits, quant.lens_logits  # (n_layers, batch, d_vocab), last real position
    k = min(5, a.shape[-1])
    per_prompt = {"kl": metrics.kl_from_logits(a, b), "top1": metrics.topk_agreement(a, b, 1),
                  "top5": metrics.topk_agreement(a, b, k)}              # each (n_layers, batch)
    boot = metrics.bootstrap_means(torch.stack([v.T for v in per_prompt.values()], dim=1),  # (R, 3, layer)
                                   seed=metrics.BOOTSTRAP_SEED)
    low, high = percentile_bounds(boot)
    bounds = {m: tuple((float(x), float(y)) for x, y in zip(low[i], high[i])) for i, m in enumerate(per_prompt)}
    summary = percentile_bounds(np.stack([boot[:, 0].max(axis=1), boot[:, 0, -1], boot[:, 2].min(axis=1),
                                          boot[:, 1].min(axis=1)], axis=1))
    keys = ("max_kl", "final_kl", "min_top5", "min_top1")
    return LogitLensResult(kl=tuple(per_prompt["kl"].mean(dim=1).tolist()),
                           top1=tuple(per_prompt["top1"].mean(dim=1).tolist()),
                           top5=tuple(per_prompt["top5"].mean(dim=1).tolist()),
                           n_prompts=a.shape[1], bounds=bounds,
                           summary_bounds={key: (float(summary[0, i]), float(summary[1, i])) for i, key in enumerate(keys)})


# --- the analysis ---------------------------------------------------------------------------
THRESHOLDS = (
    Threshold("max_lens_kl", None, "nats", "max over layers of mean KL(FP || quant) of the lens predictions",
              suggested=0.1),
    Threshold("min_lens_top5", None, "fraction, in [0, 1]",
              "min over layers of the top-5 agreement of the lens predictions", suggested=0.8),
)


def _compare(fp: Capture, quant: Capture, context: Context) -> LogitLensResult:
    return compare_logit_lens(fp, quant)


ANALYSIS = Analysis(
    name="logit_lens", version=1, prompt_set="lens", compare=_compare, thresholds=THRESHOLDS,
    title="analysis 4, per-layer logit-lens KL and top-k agreement",
    metrics={"kl": DOWN_DIFF, "max_kl": DOWN_DIFF, "final_kl": DOWN_DIFF,
             "top1": UP, "top5": UP, "min_top1": UP, "min_top5": UP},
    unmeasured=frozenset({"n_prompts"}))
