"""Analysis 5, circuits: do FP's induction heads survive quantization, and does the circuit still
do its job? (The study's `circuit_analysis.py`, on [BOS, A, A] sequences from data/induction.py.)

Two detection/survival rules, both always computed (docs/analyses.md, "circuits"):
- fixed (the study's text): an induction head has FP score > 0.4; it survives if quantized > 0.4.
- relative (the study's code): t = mean + 2·std of all FP head scores (population std, as numpy's
  default); detected if FP > t, survives if quantized > t / 2.
Head scores are blind to what the circuit computes: in a 3-bit trial on a zoo model every head
kept its score while the loss on the repeated half rose from 0.25 to 2.02 nats (docs/notes/zoo.md). So the
verdict also bounds that in-context loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Sequence
from typing import TYPE_CHECKING, get_args, Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from qcheck import metrics
from qcheck.analyses._common import (fails_max, fails_min, fmt, head_key, layer_names, listing,
                                     nan_to_none, worst_first)
from qcheck.analyses.heads import induction_scores
from qcheck.capture import Capture
from qcheck.data.induction import INDUCTION_HALF
from qcheck.analyses.base import Analysis, Context, DOWN, DOWN_DIFF, Threshold, UP
from qcheck.verdict import Failure

if TYPE_CHECKING:
    from qcheck.thresholds import Thresholds

FIXED_THRESHOLD = 0.4
Rule = Literal["fixed", "relative"]
RULES: tuple[str, ...] = get_args(Rule)

Head = tuple[int, int]  # (layer, head)
PerHead = tuple[tuple[float, ...], ...]  # [layer][head]


@dataclass(frozen=True)
class RuleOutcome:
    """Which heads one rule detects in FP and which of them survive quantization."""

    rule: Rule
    detect_threshold: float
    survive_threshold: float
    detected: tuple[Head, ...]
    survived: tuple[Head, ...]

    @property
    def survival(self) -> float | None:
        """Fraction of detected heads that survive, in [0, 1]; None if none was detected."""
        return len(self.survived) / len(self.detected) if self.detected else None

    @property
    def lost(self) -> tuple[Head, ...]:
        return tuple(h for h in self.detected if h not in self.survived)

    def describe(self) -> str:
        return (f"{self.rule} rule: detected > {fmt(self.detect_threshold)}, "
                f"survives > {fmt(self.survive_threshold)}")

    def as_baseline(self) -> dict:
        return {"detect_threshold": self.detect_threshold, "survive_threshold": self.survive_threshold,
                "detected": [head_key(*h) for h in self.detected],
                "survived": [head_key(*h) for h in self.survived],
                "n_detected": len(self.detected), "n_survived": len(self.survived),
                "survival": self.survival}


def apply_rule(rule: Rule, fp: Float[Tensor, "layer head_index"],
               quant: Float[Tensor, "layer head_index"]) -> RuleOutcome:
    """Detect induction heads in FP scores and check survival in quantized scores under `rule`."""
    if rule == "fixed":
        detect = survive = FIXED_THRESHOLD
    elif rule == "relative":
        detect = float(fp.double().mean() + 2 * fp.double().std(correction=0))
        survive = detect / 2
    else:
        raise ValueError(f"induction rule {rule!r}: expected one of {RULES}")
    detected = [tuple(h) for h in (fp > detect).nonzero().tolist()]
    survived = [h for h in detected if quant[h] > survive]
    return RuleOutcome(rule, detect, survive, tuple(detected), tuple(survived))


def repeated_half_loss(logits: Float[Tensor, "batch logit_pos d_vocab"], tokens: Int[Tensor, "batch pos"],
                       half: int, start: int = 0) -> Float[Tensor, "batch"]:
    """Mean next-token cross-entropy in nats/token per sequence over the inducible tokens.

    In [BOS, A, A] (positions 0, 1..half, half+1..2·half) the second copy's first token (position
    half+1) cannot be predicted: what came before it (A's last token) was never followed by it.
    Every later one can be copied: the token at p ∈ [half+2, 2·half] is predicted by the logits
    at p − 1 ∈ [half+1, 2·half−1], whose token occurred before at p − 1 − half, followed by it.
    `logits` hold positions start, start + 1, ... (a capture keeps only that window).
    """
    if start > half + 1 or start + logits.shape[1] < 2 * half:
        raise ValueError(f"logits of positions {start}..{start + logits.shape[1] - 1} do not cover "
                         f"{half + 1}..{2 * half - 1}, the positions that predict the repeated half")
    if tokens.shape[1] < 2 * half + 1:
        raise ValueError(f"sequences of length {tokens.shape[1]} are shorter than "
                         f"1 + 2·half = {2 * half + 1}")
    pred = logits[:, half + 1 - start: 2 * half - start].float()    # (batch, half - 1, d_vocab)
    target = tokens[:, half + 2: 2 * half + 1]      # (batch, half - 1)
    ce = F.cross_entropy(pred.transpose(1, 2), target, reduction="none")  # (batch, half - 1)
    return ce.double().mean(dim=1)


@dataclass(frozen=True)
class InductionResult:
    """Per-head induction scores [layer][head] (mean attention to the token after the previous
    occurrence, in [0, 1]) for FP and quantized, both rules' outcomes, the verdict's rule,
    Pearson correlation of FP vs quantized scores over all heads, and the loss on the repeated
    half for each model (nats/token)."""

    scores_fp: PerHead
    scores_quant: PerHead
    rule: Rule
    fixed: RuleOutcome
    relative: RuleOutcome
    correlation: float
    icl_loss_fp: float
    icl_loss_quant: float
    n_sequences: int
    half: int

    @property
    def outcome(self) -> RuleOutcome:
        """The outcome under the verdict's rule."""
        return self.fixed if self.rule == "fixed" else self.relative

    @property
    def survival(self) -> float | None:
        return self.outcome.survival

    @property
    def icl_loss_increase(self) -> float:
        return self.icl_loss_quant - self.icl_loss_fp

    def failures(self, thresholds: Thresholds) -> list[Failure]:
        if thresholds.induction_rule != self.rule:
            raise ValueError(f"result computed with rule={self.rule!r}, thresholds ask for "
                             f"{thresholds.induction_rule!r}: pass rule=thresholds.induction_rule")
        out, o = [], self.outcome
        if not o.detected:
            best = max(((l, h) for l, row in enumerate(self.scores_fp) for h in range(len(row))),
                       key=lambda lh: self.scores_fp[lh[0]][lh[1]])
            out.append(Failure("induction_heads_detected",
                               f"FP model has no induction heads under the {o.rule} rule (score > "
                               f"{fmt(o.detect_threshold)}; best {head_key(*best)} "
                               f"{fmt(self.scores_fp[best[0]][best[1]])}); nothing to certify"))
        elif fails_min(o.survival, thresholds.min_induction_survival):
            ranked = worst_first(o.lost, lambda lh: self.scores_quant[lh[0]][lh[1]], high_is_bad=False)
            out.append(Failure("min_induction_survival", "lost induction heads "
                       + listing(f"{head_key(l, h)} {fmt(self.scores_fp[l][h])}→"
                                 f"{fmt(self.scores_quant[l][h])}" for l, h in ranked)
                       + f" ({len(o.survived)}/{len(o.detected)} survive; {o.describe()})", o.survival))
        if fails_max(self.icl_loss_increase, thresholds.max_icl_loss_increase):
            out.append(Failure("max_icl_loss_increase",
                               f"in-context loss on the repeated half rose {fmt(self.icl_loss_fp)}→"
                               f"{fmt(self.icl_loss_quant)} nats/token (+{fmt(self.icl_loss_increase)} > "
                               f"{fmt(thresholds.max_icl_loss_increase)})", self.icl_loss_increase))
        return out

    def notes(self) -> list[str]:
        return []

    def as_baseline(self) -> dict:
        heads = {head_key(l, h): {"fp": self.scores_fp[l][h], "quant": self.scores_quant[l][h]}
                 for l, row in enumerate(self.scores_fp) for h in range(len(row))}
        return {"n_sequences": self.n_sequences, "half": self.half, "heads": heads,
                "fixed": self.fixed.as_baseline(), "relative": self.relative.as_baseline(),
                "summary": {"rule": self.rule, "survival": self.survival,
                            "correlation": nan_to_none(self.correlation),
                            "icl_loss_fp": self.icl_loss_fp, "icl_loss_quant": self.icl_loss_quant,
                            "icl_loss_increase": self.icl_loss_increase}}


@torch.no_grad()
def compare_induction(fp_patterns: Sequence[Float[Tensor, "batch head_index query_pos key_pos"]],
                      quant_patterns: Sequence[Float[Tensor, "batch head_index query_pos key_pos"]],
                      fp_icl_losses: Float[Tensor, "batch"], quant_icl_losses: Float[Tensor, "batch"],
                      tokens: Int[Tensor, "batch pos"], half: int, rule: str = "fixed") -> InductionResult:
    """Induction heads and in-context loss of FP vs quantized on [BOS, A, A] sequences (no padding).

    `fp_patterns[l]` is `blocks.{l}.attn.hook_pattern`; `rule` ("fixed" or "relative") selects
    which outcome `failures` judges (pass Thresholds.induction_rule); both are always computed.
    `*_icl_losses` are repeated_half_loss per sequence.
    """
    if rule not in RULES:
        raise ValueError(f"induction rule {rule!r}: expected one of {RULES}")
    if len(fp_patterns) != len(quant_patterns) or not fp_patterns:
        raise ValueError(f"{len(fp_patterns)} FP and {len(quant_patterns)} quantized pattern layers")
    fp = torch.stack([induction_scores(p, half) for p in fp_patterns]).double()       # (layer, head_index)
    quant = torch.stack([induction_scores(p, half) for p in quant_patterns]).double()
    return InductionResult(
        scores_fp=tuple(tuple(row) for row in fp.tolist()),
        scores_quant=tuple(tuple(row) for row in quant.tolist()),
        rule=rule, fixed=apply_rule("fixed", fp, quant), relative=apply_rule("relative", fp, quant),
        correlation=float(metrics.pearson(fp.flatten(), quant.flatten())),
        icl_loss_fp=float(fp_icl_losses.mean()), icl_loss_quant=float(quant_icl_losses.mean()),
        n_sequences=len(tokens), half=half)


def compare_induction_captures(fp: Capture, quant: Capture, half: int,
                               rule: str = "fixed") -> InductionResult:
    """compare_induction on two captures of the induction set (patterns from `acts`)."""
    if not torch.equal(fp.tokens, quant.tokens):
        raise ValueError("FP and quantized captures were run on different tokens")
    if not fp.mask.all():
        raise ValueError("the induction set must not be padded")
    names = layer_names(fp, "attn.hook_pattern")
    return compare_induction([fp.acts[n] for n in names], [quant.acts[n] for n in names],
                             icl_losses(fp, half), icl_losses(quant, half), fp.tokens, half, rule)


def icl_losses(capture: Capture, half: int) -> Float[Tensor, "batch"]:
    """repeated_half_loss of every sequence, from the capture's logits chunk by chunk."""
    return torch.cat([repeated_half_loss(logits, capture.tokens[rows], half, half + 1)
                      for rows, logits in capture.logit_chunks(half + 1, 2 * half)])


# --- the analysis ---------------------------------------------------------------------------
THRESHOLDS = (
    Threshold("min_induction_survival", 1.0, "fraction, in [0, 1]",
              "fraction of FP induction heads that survive (1.0 = every head)"),
    Threshold("max_icl_loss_increase", 0.25, "nats/token",
              "max rise of the loss on the repeated half of [BOS, A, A]"),
    Threshold("induction_rule", "fixed", "rule",
              f"which detection/survival rule: fixed (> {FIXED_THRESHOLD} before and after) or relative "
              f"(mean + 2 sigma of FP scores, survival above half of it)", choices=RULES),
)


def _compare(fp: Capture, quant: Capture, context: Context) -> InductionResult:
    return compare_induction_captures(fp, quant, half=INDUCTION_HALF, rule=context.thresholds.induction_rule)


ANALYSIS = Analysis(
    name="circuits", version=1, prompt_set="induction", compare=_compare, thresholds=THRESHOLDS,
    title="analysis 5, induction-head survival and in-context loss",
    metrics={"correlation": UP, "icl_loss_quant": DOWN, "icl_loss_increase": DOWN_DIFF,
             "survived": UP, "survival": UP, "n_survived": UP})
