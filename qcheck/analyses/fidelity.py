"""Output fidelity: what aggregate metrics see (final-layer KL, top-1 agreement, loss and
perplexity), reported next to the mechanistic analyses so a broken circuit with an intact
perplexity is visible as such (the study's point: perplexity alone is insufficient).

Distributions are compared at every real position (each predicts a next token, the last one
included). The loss needs a target, so it covers real positions whose next position is real
too: with right padding, the last real token of each row predicts nothing.

Intervals: a 95 % bootstrap over the prompts (qcheck/metrics.py), each resample the token-
weighted mean of its prompts; the loss increase is paired (the same prompts for FP and
quantized). Each criterion is three-way: fail when its whole interval is on the failing side of
the threshold, borderline when it straddles it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from qcheck import metrics
from qcheck.analyses._common import check_same_inputs, fmt, show, side_of, unit_sums
from qcheck.capture import Capture
from qcheck.analyses.base import Analysis, Context, DOWN, DOWN_DIFF, Headline, Threshold, UP
from qcheck.verdict import Failure

if TYPE_CHECKING:
    from qcheck.thresholds import Thresholds


def next_token_losses(logits: Float[Tensor, "batch pos d_vocab"], tokens: Int[Tensor, "batch pos"],
                      mask: Bool[Tensor, "batch pos"]) -> Float[Tensor, "n_targets"]:
    """Cross-entropy in nats of each real next token: logits at p predict tokens at p + 1."""
    targets = mask[:, 1:] & mask[:, :-1]  # (batch, pos - 1)
    # Select before the softmax, in float32: a GPT-2 vocabulary in float64 over a padded batch
    # would take gigabytes; float32 log_softmax is accurate to ~1e-6 nats here.
    ce = F.cross_entropy(logits[:, :-1][targets].float(), tokens[:, 1:][targets], reduction="none")
    return ce.double()


# Seeds the bootstrap intervals; the report records it.
BOOTSTRAP_SEED = metrics.BOOTSTRAP_SEED

@dataclass(frozen=True)
class FidelityResult:
    """kl: mean KL(FP ‖ quant) of the next-token distribution over real positions, nats;
    top1: fraction of real positions where the argmax agrees; loss_fp / loss_quant: mean
    next-token cross-entropy, nats/token (perplexity = exp(loss)); loss_increase_ci: its seeded
    bootstrap interval over the prompts; kl_ci, top1_ci, loss_fp_ci, loss_quant_ci likewise (None:
    no per-prompt values); a perplexity's interval is exp of its loss's (exp is monotone)."""

    kl: float
    top1: float
    loss_fp: float
    loss_quant: float
    loss_increase_ci: metrics.Interval
    n_positions: int
    n_targets: int
    kl_ci: metrics.Interval | None = None
    top1_ci: metrics.Interval | None = None
    loss_fp_ci: metrics.Interval | None = None
    loss_quant_ci: metrics.Interval | None = None

    @property
    def loss_increase(self) -> float:
        return self.loss_quant - self.loss_fp

    @property
    def perplexity_fp(self) -> float:
        return math.exp(self.loss_fp)

    @property
    def perplexity_quant(self) -> float:
        return math.exp(self.loss_quant)

    def failures(self, thresholds: Thresholds) -> list[Failure]:
        def bounds(ci):
            return None if ci is None else (ci.low, ci.high)
        out = []
        for criterion, what, point, ci, cut, minimum, unit in (
                ("max_final_kl", "final next-token KL(FP‖quant)", self.kl, self.kl_ci, thresholds.max_final_kl,
                 False, " nats"),
                ("min_top1_agreement", "top-1 agreement", self.top1, self.top1_ci, thresholds.min_top1_agreement,
                 True, "")):
            side = side_of(point, bounds(ci), cut, minimum=minimum)
            if side != "pass":
                out.append(Failure(criterion, f"{'borderline: ' if side == 'borderline' else ''}{what} "
                                   f"{show(point, bounds(ci))}{unit} {'<' if minimum else '>'} {fmt(cut)}",
                                   point, borderline=side == "borderline"))
        side = side_of(self.loss_increase, bounds(self.loss_increase_ci), thresholds.max_loss_increase, minimum=False)
        if side != "pass":
            ci = self.loss_increase_ci
            out.append(Failure("max_loss_increase",
                               f"{'borderline: ' if side == 'borderline' else ''}next-token loss rose "
                               f"{fmt(self.loss_fp)}→{fmt(self.loss_quant)} nats/token "
                               f"(+{show(self.loss_increase, bounds(ci))} vs max {fmt(thresholds.max_loss_increase)}; "
                               f"perplexity {fmt(self.perplexity_fp)}→{fmt(self.perplexity_quant)})",
                               self.loss_increase, borderline=side == "borderline"))
        return out

    def intervals(self) -> dict:
        """[low, high] of the summary values (the loss increase paired over the prompts)."""
        if self.kl_ci is None:
            return {}
        summary = {"kl": self.kl_ci.bounds(), "top1": self.top1_ci.bounds(),
                   "loss_increase": self.loss_increase_ci.bounds()}
        for side, ci in (("fp", self.loss_fp_ci), ("quant", self.loss_quant_ci)):
            if ci is not None:
                summary[f"loss_{side}"] = ci.bounds()
                summary[f"perplexity_{side}"] = [math.exp(b) for b in (ci.low, ci.high)]
        return {"confidence": self.loss_increase_ci.confidence, "unit": "prompt", "summary": summary}

    def notes(self) -> list[str]:
        return []

    def as_baseline(self) -> dict:
        ci = self.loss_increase_ci
        return {"n_positions": self.n_positions, "n_targets": self.n_targets,
                "summary": {"kl": self.kl, "top1": self.top1, "loss_fp": self.loss_fp,
                            "loss_quant": self.loss_quant, "loss_increase": self.loss_increase,
                            "loss_increase_ci": {"low": ci.low, "high": ci.high, "confidence": ci.confidence},
                            "perplexity_fp": self.perplexity_fp, "perplexity_quant": self.perplexity_quant}}


@torch.no_grad()
def compare_outputs(fp: Capture, quant: Capture, *, seed: int = BOOTSTRAP_SEED) -> FidelityResult:
    """Compare the final logits of FP and quantized captures over real positions.

    `seed` seeds the bootstrap intervals over the prompts (1000 resamples, 95%).
    """
    check_same_inputs(fp, quant)
    width = fp.tokens.shape[1]
    # Per position, chunk by chunk of prompts (a capture of a large vocabulary keeps no logits and
    # recomputes them: qcheck/capture.py); the per-position values are concatenated in order, so
    # the means are the same as over one (n_real, d_vocab) matrix.
    kl, top1, loss_fp, loss_quant = [], [], [], []
    n_prompts = fp.mask.shape[0]
    sums = torch.zeros(n_prompts, 5, dtype=torch.float64)   # per prompt Σ kl, Σ top1, Σ loss increase, Σ losses
    for (rows, fp_logits), (_, quant_logits) in zip(fp.logit_chunks(0, width), quant.logit_chunks(0, width)):
        mask, tokens = fp.mask[rows], fp.tokens[rows]
        a, b = fp_logits[mask], quant_logits[mask]  # (n_real, d_vocab)
        kl.append(metrics.kl_from_logits(a, b))
        top1.append(metrics.topk_agreement(a, b, 1))
        loss_fp.append(next_token_losses(fp_logits, tokens, mask))
        loss_quant.append(next_token_losses(quant_logits, tokens, mask))
        prompt = torch.arange(n_prompts)[rows][:, None].expand_as(mask)
        target_prompt = prompt[:, :-1][mask[:, 1:] & mask[:, :-1]]       # next_token_losses' order
        sums[:, 0] += unit_sums(kl[-1], prompt[mask], n_prompts)
        sums[:, 1] += unit_sums(top1[-1], prompt[mask], n_prompts)
        sums[:, 2] += unit_sums(loss_quant[-1] - loss_fp[-1], target_prompt, n_prompts)
        sums[:, 3] += unit_sums(loss_fp[-1], target_prompt, n_prompts)
        sums[:, 4] += unit_sums(loss_quant[-1], target_prompt, n_prompts)
    kl, top1, loss_fp, loss_quant = map(torch.cat, (kl, top1, loss_fp, loss_quant))
    if len(loss_fp) == 0:
        raise ValueError("no prompt has two real tokens: nothing to predict")
    positions = fp.mask.sum(dim=1).double()
    targets = (fp.mask[:, 1:] & fp.mask[:, :-1]).sum(dim=1).double()
    boot_positions = metrics.bootstrap_means(sums[:, :2], positions, seed=seed)    # (R, 2)
    boot_targets = metrics.bootstrap_means(sums[:, 2:], targets, seed=seed)       # (R, 3): same draws
    point_kl, point_top1 = float(kl.mean()), float(top1.mean())
    increase = float(loss_quant.mean()) - float(loss_fp.mean())
    return FidelityResult(kl=point_kl, top1=point_top1,
                          loss_fp=float(loss_fp.mean()), loss_quant=float(loss_quant.mean()),
                          loss_increase_ci=metrics.percentile_interval(boot_targets[:, 0], increase),
                          n_positions=len(kl), n_targets=len(loss_fp),
                          kl_ci=metrics.percentile_interval(boot_positions[:, 0], point_kl),
                          top1_ci=metrics.percentile_interval(boot_positions[:, 1], point_top1),
                          loss_fp_ci=metrics.percentile_interval(boot_targets[:, 1], float(loss_fp.mean())),
                          loss_quant_ci=metrics.percentile_interval(boot_targets[:, 2], float(loss_quant.mean())))


# --- the analysis ---------------------------------------------------------------------------
THRESHOLDS = (
    Threshold("max_final_kl", None, "nats", "mean KL(FP || quant) of the final next-token distribution",
              suggested=0.05),
    Threshold("min_top1_agreement", None, "fraction, in [0, 1]", "top-1 agreement of the final predictions",
              suggested=0.9),
    Threshold("max_loss_increase", None, "nats/token", "rise of the held-out next-token loss", suggested=0.05),
)


def _compare(fp: Capture, quant: Capture, context: Context) -> FidelityResult:
    return compare_outputs(fp, quant, seed=BOOTSTRAP_SEED)


ANALYSIS = Analysis(
    name="fidelity", version=2, prompt_set="natural", compare=_compare, thresholds=THRESHOLDS,
    title="output fidelity (final KL, top-1 agreement, held-out loss)",
    # low / high: the bounds of loss_increase_ci
    metrics={"kl": DOWN_DIFF, "top1": UP, "loss_quant": DOWN, "perplexity_quant": DOWN,
             "loss_increase": DOWN_DIFF, "low": DOWN_DIFF, "high": DOWN_DIFF},
    unmeasured=frozenset({"n_positions", "n_targets"}),
    headline=Headline("kl", "final KL", scientific=True))
