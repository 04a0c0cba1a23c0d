"""Analysis 2, attention patterns: per-head Jensen-Shannon divergence between FP and quantized
attention, and whether FP's previous-token heads survive (the study's `attention_patterns.py`).

Which positions count: every real query position except 0. Query 0 can only attend to itself
(causal mask), so its row is one-hot in both models and its JSD is 0 by construction; keeping it
would pull every head's mean towards 0 by 1/length. Padded queries are excluded; keys need no
mask, because with right padding a real query's causal row covers real keys only.
Previous-token scores are heads.previous_token_scores restricted to real queries (the natural
prompt set is padded; the unmasked version would average the attention of padding tokens).
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from qcheck import metrics
from qcheck.analyses._common import (Bounds, check_same_inputs, fails_min, fmt, head_key, judge_elements,
                                     layer_names, listing, percentile_bounds, worst_first)
from qcheck.analyses._common import show as show_bounds
from qcheck.analyses.heads import HeadCalls, call_heads
from qcheck.capture import Capture
from qcheck.analyses.base import Analysis, Context, DOWN_DIFF, Headline, Threshold, UP
from qcheck.verdict import Failure

if TYPE_CHECKING:
    from qcheck.thresholds import Thresholds

# qcheck's rule for "is a previous-token head", before and after quantization (the study only
# plotted the top previous-token heads; it had no rule or survival test for them).
PREV_TOKEN_THRESHOLD = 0.4

PerHead = tuple[tuple[float, ...], ...]  # [layer][head]


def head_jsd(fp_pattern: Float[Tensor, "batch head_index query_pos key_pos"],
             quant_pattern: Float[Tensor, "batch head_index query_pos key_pos"],
             mask: Bool[Tensor, "batch pos"]) -> Float[Tensor, "head_index"]:
    """Mean JSD in bits, per head, over real query positions >= 1."""
    return mean_over_queries(metrics.jsd(fp_pattern, quant_pattern), mask)


def mean_over_queries(per_query: Float[Tensor, "batch head_index query_pos"],
                      mask: Bool[Tensor, "batch pos"]) -> Float[Tensor, "head_index"]:
    """The mean of per-query values over real query positions >= 1, per head."""
    queries = mask.clone()
    queries[:, 0] = False
    return per_query.permute(0, 2, 1)[queries].mean(dim=0)


def masked_previous_token_scores(pattern: Float[Tensor, "batch head_index query_pos key_pos"],
                                 mask: Bool[Tensor, "batch pos"]) -> Float[Tensor, "head_index"]:
    """Mean attention from each real position p >= 1 to p - 1, per head, in [0, 1].

    Equals heads.previous_token_scores when nothing is padded.
    """
    query = torch.arange(1, pattern.shape[-1])
    to_previous = pattern[:, :, query, query - 1].double()  # (batch, head_index, query_pos - 1)
    weight = mask[:, 1:].unsqueeze(1).double()                # (batch, 1, query_pos - 1)
    return (to_previous * weight).sum(dim=(0, 2)) / weight.sum()


@dataclass(frozen=True)
class AttentionResult:
    """Per-head values, indexed [layer][head].

    jsd: mean JSD between FP and quantized patterns, bits, in [0, 1] (0 = same attention).
    prev_token_fp / prev_token_quant: previous-token scores, mean attention to p - 1, in [0, 1].
    """

    jsd: PerHead
    prev_token_fp: PerHead
    prev_token_quant: PerHead
    n_queries: int
    # (low, high) [layer][head] of each, 95 % bootstrap over the prompts; None: no per-prompt values
    bounds: dict[str, tuple[tuple[Bounds, ...], ...]] | None = None
    summary_bounds: dict[str, Bounds] | None = None

    def _bounds(self, key: str, head: tuple[int, int]) -> Bounds:
        if self.bounds is None:
            value = getattr(self, key)[head[0]][head[1]]
            return value, value
        return self.bounds[key][head[0]][head[1]]

    def _show(self, head: tuple[int, int]) -> str:
        """'L0H3 0.5036 [0.49, 0.5213]→0.4055 [0.3917, 0.423]' (points alone without intervals)."""
        l, h = head
        sides = [show_bounds(getattr(self, key)[l][h], self.bounds and self._bounds(key, head))
                 for key in ("prev_token_fp", "prev_token_quant")]
        return f"{head_key(l, h)} {sides[0]}→{sides[1]}"

    def calls(self) -> HeadCalls:
        """Previous-token heads read three-way on their intervals (heads.py call_heads)."""
        return call_heads(self._heads(), lambda hd: self._bounds("prev_token_fp", hd),
                          lambda hd: self._bounds("prev_token_quant", hd), PREV_TOKEN_THRESHOLD, PREV_TOKEN_THRESHOLD)

    def _heads(self) -> list[tuple[int, int]]:
        return [(l, h) for l, row in enumerate(self.jsd) for h in range(len(row))]

    @property
    def max_jsd(self) -> float:
        return max(v for row in self.jsd for v in row)

    @property
    def mean_jsd(self) -> float:
        flat = [v for row in self.jsd for v in row]
        return sum(flat) / len(flat)

    @property
    def prev_token_heads(self) -> list[tuple[int, int]]:
        """FP heads with a previous-token score above 0.4, as (layer, head)."""
        return [(l, h) for l, h in self._heads() if self.prev_token_fp[l][h] > PREV_TOKEN_THRESHOLD]

    @property
    def prev_token_survivors(self) -> list[tuple[int, int]]:
        return [(l, h) for l, h in self.prev_token_heads
                if self.prev_token_quant[l][h] > PREV_TOKEN_THRESHOLD]

    @property
    def prev_token_survival(self) -> float | None:
        """Fraction of FP previous-token heads still above 0.4; None if FP has none."""
        found = self.prev_token_heads
        return len(self.prev_token_survivors) / len(found) if found else None

    def failures(self, thresholds: Thresholds) -> list[Failure]:
        out = judge_elements("max_head_jsd", "attention JSD", thresholds.max_head_jsd,
                             [(head_key(l, h), self.jsd[l][h], self.bounds and self._bounds("jsd", (l, h)))
                              for l, h in self._heads()], minimum=False, unit=" bits")
        calls = self.calls()
        if calls.candidates:
            worst, best = calls.survival_bounds
            need = thresholds.min_prev_token_survival
            if fails_min(worst, need):
                undecided = not fails_min(best, need)
                rank = lambda heads: worst_first(heads, lambda lh: self.prev_token_quant[lh[0]][lh[1]],  # noqa: E731
                                                 high_is_bad=False)
                parts = [] if undecided else ["lost previous-token heads " + listing(map(self._show, rank(calls.lost)))]
                if calls.borderline:
                    parts.append("borderline previous-token heads " + listing(map(self._show, rank(calls.borderline))))
                counts = f"{len(calls.survived)}/{len(calls.candidates)} above {PREV_TOKEN_THRESHOLD} after" + (
                    f", {len(calls.borderline)} borderline" if calls.borderline else "")
                out.append(Failure("min_prev_token_survival", "; ".join(parts) + f" ({counts}; need {fmt(need)})",
                                   worst, borderline=undecided))
        return out

    def intervals(self) -> dict:
        """[low, high] per head (jsd, prev_token_fp, prev_token_quant) and for the summary."""
        if self.bounds is None:
            return {}
        heads = {head_key(l, h): {key: list(self.bounds[key][l][h]) for key in self.bounds} for l, h in self._heads()}
        calls = self.calls()
        return {"confidence": 0.95, "unit": "prompt", "heads": heads,
                "prev_token_calls": {"survived": [head_key(*hd) for hd in calls.survived],
                                     "lost": [head_key(*hd) for hd in calls.lost],
                                     "borderline": [head_key(*hd) for hd in calls.borderline],
                                     "text": calls.describe()},
                "summary": {**{key: list(b) for key, b in self.summary_bounds.items()},
                            # the counts the heads' intervals allow: (surely, possibly)
                            "n_prev_token_heads": [sum(self._bounds("prev_token_fp", hd)[i] > PREV_TOKEN_THRESHOLD
                                                       for hd in self._heads()) for i in (0, 1)],
                            "n_prev_token_survived": [len(calls.survived), len(calls.survived) + len(calls.borderline)],
                            "prev_token_survival": list(calls.survival_bounds) if calls.candidates else None}}

    def notes(self) -> list[str]:
        if self.prev_token_heads:
            return []
        l, h = max(self._heads(), key=lambda lh: self.prev_token_fp[lh[0]][lh[1]])
        return [f"FP model has no previous-token heads (score > {PREV_TOKEN_THRESHOLD}; best "
                f"{head_key(l, h)} {fmt(self.prev_token_fp[l][h])}): survival not checked"]

    def as_baseline(self) -> dict:
        heads = {head_key(l, h): {"jsd": self.jsd[l][h], "prev_token_fp": self.prev_token_fp[l][h],
                                  "prev_token_quant": self.prev_token_quant[l][h]}
                 for l, h in self._heads()}
        return {"n_queries": self.n_queries, "heads": heads,
                "summary": {"max_jsd": self.max_jsd, "mean_jsd": self.mean_jsd,
                            "n_prev_token_heads": len(self.prev_token_heads),
                            "n_prev_token_survived": len(self.prev_token_survivors),
                            "prev_token_survival": self.prev_token_survival}}


def compare_attention(fp: Capture, quant: Capture) -> AttentionResult:
    """Compare `blocks.{l}.attn.hook_pattern` of FP and quantized captures, head by head."""
    check_same_inputs(fp, quant)
    names = layer_names(fp, "attn.hook_pattern")
    if not names or names != layer_names(quant, "attn.hook_pattern"):
        raise ValueError("FP and quantized captures need blocks.{l}.attn.hook_pattern for the same layers")
    jsd, prev_fp, prev_quant, sums = [], [], [], []
    queries = fp.mask[:, 1:].double()                                  # (batch, query_pos - 1): p >= 1, real
    for name in names:
        a, b = fp.acts[name], quant.acts[name]
        per_query_jsd = metrics.jsd(a, b)                              # (batch, head_index, query_pos)
        jsd.append(tuple(mean_over_queries(per_query_jsd, fp.mask).tolist()))
        prev_fp.append(tuple(masked_previous_token_scores(a, fp.mask).tolist()))
        prev_quant.append(tuple(masked_previous_token_scores(b, fp.mask).tolist()))
        # per prompt sums over its queries, (batch, head_index) each: the bootstrap's units
        query = torch.arange(1, a.shape[-1])
        sums.append(torch.stack([(per_query_jsd[:, :, 1:].double() * queries[:, None]).sum(dim=2),
                                 (a[:, :, query, query - 1].double() * queries[:, None]).sum(dim=2),
                                 (b[:, :, query, query - 1].double() * queries[:, None]).sum(dim=2)], dim=1))
    n_queries = int(fp.mask[:, 1:].sum())
    boot = metrics.bootstrap_means(torch.stack(sums, dim=2), queries.sum(dim=1),   # (R, 3, layer, head)
                                   seed=metrics.BOOTSTRAP_SEED)
    low, high = percentile_bounds(boot)
    keys = ("jsd", "prev_token_fp", "prev_token_quant")
    bounds = {key: tuple(tuple((float(x), float(y)) for x, y in zip(lo, hi)) for lo, hi in zip(low[i], high[i]))
              for i, key in enumerate(keys)}
    flat = boot[:, 0].reshape(len(boot), -1)
    summary = percentile_bounds(np.stack([flat.max(axis=1), flat.mean(axis=1)], axis=1))
    return AttentionResult(jsd=tuple(jsd), prev_token_fp=tuple(prev_fp),
                           prev_token_quant=tuple(prev_quant), n_queries=n_queries, bounds=bounds,
                           summary_bounds={"max_jsd": (float(summary[0, 0]), float(summary[1, 0])),
                                           "mean_jsd": (float(summary[0, 1]), float(summary[1, 1]))})


# --- the analysis ---------------------------------------------------------------------------
THRESHOLDS = (
    Threshold("max_head_jsd", None, "bits, in [0, 1]",
              "max over heads of the mean per-query JSD between FP and quantized patterns", suggested=0.05),
    Threshold("min_prev_token_survival", None, "fraction, in [0, 1]",
              f"fraction of FP previous-token heads (score > {PREV_TOKEN_THRESHOLD}) still above it after",
              suggested=1.0),
)


def _compare(fp: Capture, quant: Capture, context: Context) -> AttentionResult:
    return compare_attention(fp, quant)


ANALYSIS = Analysis(
    name="attention", version=1, prompt_set="natural", compare=_compare, thresholds=THRESHOLDS,
    title="analysis 2, attention-pattern JSD per head and previous-token heads",
    metrics={"jsd": DOWN_DIFF, "max_jsd": DOWN_DIFF, "mean_jsd": DOWN_DIFF,
             "n_prev_token_survived": UP, "prev_token_survival": UP},
    unmeasured=frozenset({"n_queries"}),
    headline=Headline("mean_jsd", "mean JSD", scientific=True))
