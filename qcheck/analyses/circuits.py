"""Analysis 5, circuits: do FP's induction heads survive quantization, and does the circuit still
do its job? (The study's `circuit_analysis.py`, on [BOS, A, A] sequences from data/induction.py.)

Two detection/survival rules, both always computed (docs/analyses.md, "circuits"):
- fixed (the study's text): an induction head has FP score > 0.4; it survives if quantized > 0.4.
- relative (the study's code): t = mean + 2·std of all FP head scores (population std, as numpy's
  default); detected if FP > t, survives if quantized > t / 2.
Head scores are blind to what the circuit computes: in a 3-bit trial on a zoo model every head
kept its score while the loss on the repeated half rose from 0.25 to 2.02 nats (docs/notes/zoo.md). So the
verdict also bounds that in-context loss.

Every score and loss has a 95 % bootstrap interval over the sequences (qcheck/metrics.py), FP and
quantized resampled together. The verdict is three-way (qcheck/verdict.py): a head is detected,
lost or survives only when its interval is on one side of the rule's cut; one whose interval
straddles a cut is borderline. Survival fails when it fails even with every borderline head
counted as surviving, and is borderline when it fails only with them counted as lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Sequence
from typing import TYPE_CHECKING, get_args, Literal

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from qcheck import metrics
from qcheck.analyses._common import (fails_max, fails_min, fmt, head_key, layer_names, listing,
                                     nan_to_none, worst_first)
from qcheck.analyses.heads import HeadCalls, call_heads, induction_scores, induction_scores_per_sequence
from qcheck.capture import Capture
from qcheck.data.induction import INDUCTION_HALF
from qcheck.analyses.base import Analysis, Context, DOWN, DOWN_DIFF, Threshold, UP
from qcheck.verdict import Failure

if TYPE_CHECKING:
    from qcheck.thresholds import Thresholds

FIXED_THRESHOLD = 0.4
# mean + 2σ (population σ) of n scores can single out k equal high scores only if n > 5k: with the
# other n − k scores equal and low, those k sit at z = sqrt((n − k) / k), which exceeds 2 only
# then, and any spread among the others lowers it. 40 heads leave room for up to 7 induction
# heads; the zoo's 8-16 heads hold 3-4 and the rule detects none of them (docs/analyses.md).
RELATIVE_MIN_HEADS = 40
Rule = Literal["fixed", "relative"]
RULES: tuple[str, ...] = get_args(Rule)

Head = tuple[int, int]  # (layer, head)
PerHead = tuple[tuple[float, ...], ...]  # [layer][head]
PerHeadBounds = tuple[tuple[tuple[float, float], ...], ...]  # [layer][head] -> (low, high)


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
    # 95 % bootstrap intervals over the sequences (None: built without per-sequence values)
    bounds_fp: PerHeadBounds | None = None
    bounds_quant: PerHeadBounds | None = None
    icl_fp_ci: metrics.Interval | None = None
    icl_quant_ci: metrics.Interval | None = None
    icl_increase_ci: metrics.Interval | None = None
    correlation_ci: metrics.Interval | None = None
    relative_threshold_ci: metrics.Interval | None = None   # the relative rule's detection cut

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

    def _bounds(self, side: str, head: Head) -> tuple[float, float]:
        bounds = self.bounds_fp if side == "fp" else self.bounds_quant
        if bounds is None:  # no intervals: the point value is both bounds (a two-way verdict)
            value = (self.scores_fp if side == "fp" else self.scores_quant)[head[0]][head[1]]
            return value, value
        return bounds[head[0]][head[1]]

    def _show(self, head: Head, *, fp_only: bool = False) -> str:
        """'L1H1 0.448 [0.431, 0.466]→0.412 [0.396, 0.43]' (or the points when there are no intervals)."""
        l, h = head
        parts = []
        for side, scores in (("fp", self.scores_fp), ("quant", self.scores_quant))[:1 if fp_only else 2]:
            low, high = self._bounds(side, head)
            parts.append(fmt(scores[l][h]) + ("" if self.bounds_fp is None else f" [{fmt(low)}, {fmt(high)}]"))
        return f"{head_key(l, h)} {'→'.join(parts)}"

    def calls(self, rule: Rule | None = None) -> HeadCalls:
        """The three-way reading of a rule (default: the verdict's) on the intervals (heads.py HeadCalls)."""
        o = self.outcome if rule is None else self.fixed if rule == "fixed" else self.relative
        heads = [(l, h) for l, row in enumerate(self.scores_fp) for h in range(len(row))]
        return call_heads(heads, lambda hd: self._bounds("fp", hd), lambda hd: self._bounds("quant", hd),
                          o.detect_threshold, o.survive_threshold)

    def failures(self, thresholds: Thresholds) -> list[Failure]:
        if thresholds.induction_rule != self.rule:
            raise ValueError(f"result computed with rule={self.rule!r}, thresholds ask for "
                             f"{thresholds.induction_rule!r}: pass rule=thresholds.induction_rule")
        out, o, calls = [], self.outcome, self.calls()
        n_heads = sum(len(row) for row in self.scores_fp)
        if self.rule == "relative" and n_heads < RELATIVE_MIN_HEADS:
            out.append(Failure("relative_rule_sample_size",
                               f"the relative rule (mean + 2σ of FP scores) needs at least {RELATIVE_MIN_HEADS} "
                               f"heads, this model has {n_heads}: n scores can single out k heads only if n > 5k, "
                               f"so it cannot detect this model's induction heads; use the fixed rule "
                               f"(--qcheck-induction-rule fixed)"))
        elif not calls.candidates:
            best = max(((l, h) for l, row in enumerate(self.scores_fp) for h in range(len(row))),
                       key=lambda lh: self.scores_fp[lh[0]][lh[1]])
            out.append(Failure("induction_heads_detected",
                               f"FP model has no induction heads under the {o.rule} rule (score > "
                               f"{fmt(o.detect_threshold)}; best {self._show(best, fp_only=True)}); nothing to certify"))
        else:
            worst, best = calls.survival_bounds
            need = thresholds.min_induction_survival
            if fails_min(best, need) or fails_min(worst, need):
                undecided = not fails_min(best, need)
                by_score = lambda heads: worst_first(heads, lambda lh: self.scores_quant[lh[0]][lh[1]],
                                                     high_is_bad=False)
                parts = [] if undecided else [f"lost induction heads {listing(map(self._show, by_score(calls.lost)))}"]
                if calls.borderline:
                    parts.append(f"borderline induction heads {listing(map(self._show, by_score(calls.borderline)))}")
                counts = f"{len(calls.survived)}/{len(calls.candidates)} survive" + (
                    f", {len(calls.borderline)} borderline" if calls.borderline else "")
                out.append(Failure("min_induction_survival", "; ".join(parts)
                                   + f" ({counts}; need {fmt(need)}; {o.describe()})", worst, borderline=undecided))
        side = ("pass" if thresholds.max_icl_loss_increase is None
                else self.icl_increase_ci.side(thresholds.max_icl_loss_increase, minimum=False)
                if self.icl_increase_ci is not None
                else "fail" if fails_max(self.icl_loss_increase, thresholds.max_icl_loss_increase) else "pass")
        if side != "pass":
            ci = "" if self.icl_increase_ci is None else (f" [{fmt(self.icl_increase_ci.low)}, "
                                                          f"{fmt(self.icl_increase_ci.high)}]")
            out.append(Failure("max_icl_loss_increase",
                               f"{'borderline: ' if side == 'borderline' else ''}in-context loss on the repeated "
                               f"half rose {fmt(self.icl_loss_fp)}→{fmt(self.icl_loss_quant)} nats/token "
                               f"(+{fmt(self.icl_loss_increase)}{ci} vs max {fmt(thresholds.max_icl_loss_increase)})",
                               self.icl_loss_increase, borderline=side == "borderline"))
        return out

    def intervals(self) -> dict:
        """[low, high] per head (fp, quant) and for the summary; the three-way head calls."""
        if self.bounds_fp is None:
            return {}
        heads = {head_key(l, h): {"fp": list(self.bounds_fp[l][h]), "quant": list(self.bounds_quant[l][h])}
                 for l, row in enumerate(self.scores_fp) for h in range(len(row))}
        calls = self.calls()
        return {"confidence": metrics.CONFIDENCE, "seed": metrics.BOOTSTRAP_SEED, "unit": "sequence",
                "heads": heads,
                "calls": {"rule": self.rule, "candidates": [head_key(*hd) for hd in calls.candidates],
                          "survived": [head_key(*hd) for hd in calls.survived],
                          "lost": [head_key(*hd) for hd in calls.lost],
                          "borderline": [head_key(*hd) for hd in calls.borderline],
                          "text": calls.describe()},
                **{rule: self._rule_intervals(rule) for rule in RULES},
                "summary": {"survival": list(calls.survival_bounds) if calls.candidates else None,
                            "correlation": self.correlation_ci.bounds(),
                            "icl_loss_fp": self.icl_fp_ci.bounds(), "icl_loss_quant": self.icl_quant_ci.bounds(),
                            "icl_loss_increase": self.icl_increase_ci.bounds()}}

    def _rule_intervals(self, rule: Rule) -> dict:
        """One rule's counts and survival as its heads' intervals allow them: (surely, possibly)
        detected and surviving heads, keyed like RuleOutcome.as_baseline; for the relative rule
        also the bootstrap interval of its cut (mean + 2σ of the resampled FP scores)."""
        calls, cut = self.calls(rule), (self.fixed if rule == "fixed" else self.relative).detect_threshold
        fp_bounds = [self._bounds("fp", (l, h)) for l, row in enumerate(self.scores_fp) for h in range(len(row))]
        out = {"n_detected": [sum(low > cut for low, _ in fp_bounds), sum(high > cut for _, high in fp_bounds)],
               "n_survived": [len(calls.survived), len(calls.survived) + len(calls.borderline)],
               "survival": list(calls.survival_bounds) if calls.candidates else None}
        if rule == "relative" and self.relative_threshold_ci is not None:
            out["detect_threshold"] = self.relative_threshold_ci.bounds()
            out["survive_threshold"] = [None if b is None else b / 2 for b in self.relative_threshold_ci.bounds()]
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
    # Intervals: sequences are the sampled units; FP and quantized resampled with the same draws.
    seed = metrics.BOOTSTRAP_SEED
    per_seq_fp = torch.stack([induction_scores_per_sequence(p, half) for p in fp_patterns], dim=1)  # (batch, layer, head)
    per_seq_quant = torch.stack([induction_scores_per_sequence(p, half) for p in quant_patterns], dim=1)
    boot_fp = metrics.bootstrap_means(per_seq_fp, seed=seed)          # (R, layer, head)
    boot_quant = metrics.bootstrap_means(per_seq_quant, seed=seed)
    correlation = float(metrics.pearson(fp.flatten(), quant.flatten()))
    boot_icl = metrics.bootstrap_means(torch.stack([fp_icl_losses, quant_icl_losses - fp_icl_losses], dim=1),
                                       seed=seed)                      # (R, 2): FP loss, increase
    icl_fp, icl_quant = float(fp_icl_losses.mean()), float(quant_icl_losses.mean())
    return InductionResult(
        scores_fp=tuple(tuple(row) for row in fp.tolist()),
        scores_quant=tuple(tuple(row) for row in quant.tolist()),
        rule=rule, fixed=apply_rule("fixed", fp, quant), relative=apply_rule("relative", fp, quant),
        correlation=correlation, icl_loss_fp=icl_fp, icl_loss_quant=icl_quant,
        n_sequences=len(tokens), half=half,
        bounds_fp=_head_bounds(boot_fp), bounds_quant=_head_bounds(boot_quant),
        icl_fp_ci=metrics.percentile_interval(boot_icl[:, 0], icl_fp),
        icl_quant_ci=metrics.percentile_interval(boot_icl.sum(axis=1), icl_quant),
        icl_increase_ci=metrics.percentile_interval(boot_icl[:, 1], icl_quant - icl_fp),
        correlation_ci=metrics.percentile_interval(_pearson_rows(boot_fp, boot_quant), correlation),
        relative_threshold_ci=metrics.percentile_interval(_relative_cut(boot_fp), apply_rule("relative", fp, quant).detect_threshold))


def _relative_cut(boot: "np.ndarray") -> "np.ndarray":
    """The relative rule's cut, mean + 2σ (population σ) over all heads, per resample: (R,)."""
    flat = boot.reshape(len(boot), -1)
    return flat.mean(axis=1) + 2 * flat.std(axis=1)


def _head_bounds(boot: "np.ndarray") -> PerHeadBounds:
    """(low, high) of each head from its (R, layer, head) bootstrap means."""
    tail = (1 - metrics.CONFIDENCE) / 2 * 100
    low, high = np.percentile(boot, [tail, 100 - tail], axis=0)
    return tuple(tuple((float(a), float(b)) for a, b in zip(lo, hi)) for lo, hi in zip(low, high))


def _pearson_rows(a: "np.ndarray", b: "np.ndarray") -> "np.ndarray":
    """Pearson correlation over all heads, one per resample: (R, layer, head) x 2 -> (R,)."""
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    a, b = a - a.mean(axis=1, keepdims=True), b - b.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(axis=1) / np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))


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
    Threshold("max_icl_loss_increase", None, "nats/token",
              "max rise of the loss on the repeated half of [BOS, A, A]", suggested=0.25),
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
             "survived": UP, "survival": UP, "n_survived": UP},
    # the fixed rule's cuts are the setting 0.4; the relative rule's are measured (mean + 2σ)
    unmeasured=frozenset({"n_sequences", "half", "fixed.detect_threshold", "fixed.survive_threshold"}))
