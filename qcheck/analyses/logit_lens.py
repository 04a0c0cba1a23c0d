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

from qcheck import metrics
from qcheck.analyses._common import (check_same_inputs, fails_max, fails_min, fmt, layer_key, listing,
                                     worst_first)
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

    @property
    def max_kl(self) -> float:
        return max(self.kl)

    @property
    def min_top5(self) -> float:
        return min(self.top5)

    def failures(self, thresholds: Thresholds) -> list[Failure]:
        out = []
        high = [l for l, v in enumerate(self.kl) if fails_max(v, thresholds.max_lens_kl)]
        if high:
            ranked = worst_first(high, lambda l: self.kl[l], high_is_bad=True)
            out.append(Failure("max_lens_kl", f"logit-lens KL(FP‖quant) above {fmt(thresholds.max_lens_kl)} "
                               f"nats at " + listing(f"{layer_key(l)} ({fmt(self.kl[l])})" for l in ranked),
                               self.kl[ranked[0]]))
        low = [l for l, v in enumerate(self.top5) if fails_min(v, thresholds.min_lens_top5)]
        if low:
            ranked = worst_first(low, lambda l: self.top5[l], high_is_bad=False)
            out.append(Failure("min_lens_top5", f"logit-lens top-5 agreement below "
                               f"{fmt(thresholds.min_lens_top5)} at "
                               + listing(f"{layer_key(l)} ({fmt(self.top5[l])})" for l in ranked),
                               self.top5[ranked[0]]))
        return out

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
    return LogitLensResult(kl=tuple(metrics.kl_from_logits(a, b).mean(dim=1).tolist()),
                           top1=tuple(metrics.topk_agreement(a, b, 1).mean(dim=1).tolist()),
                           top5=tuple(metrics.topk_agreement(a, b, k).mean(dim=1).tolist()),
                           n_prompts=a.shape[1])


# --- the analysis ---------------------------------------------------------------------------
THRESHOLDS = (
    Threshold("max_lens_kl", 0.1, "nats", "max over layers of mean KL(FP || quant) of the lens predictions"),
    Threshold("min_lens_top5", 0.8, "fraction, in [0, 1]",
              "min over layers of the top-5 agreement of the lens predictions"),
)


def _compare(fp: Capture, quant: Capture, context: Context) -> LogitLensResult:
    return compare_logit_lens(fp, quant)


ANALYSIS = Analysis(
    name="logit_lens", version=1, prompt_set="lens", compare=_compare, thresholds=THRESHOLDS,
    title="analysis 4, per-layer logit-lens KL and top-k agreement",
    metrics={"kl": DOWN_DIFF, "max_kl": DOWN_DIFF, "final_kl": DOWN_DIFF,
             "top1": UP, "top5": UP, "min_top1": UP, "min_top5": UP})
