"""Analysis 3, learned features: do the FP model's sparse SAE features still fire in the same places
after quantization? (The study's `feature_analysis.py`; how qcheck differs: docs/analyses.md.)

The basis (qcheck/sae/) is a frozen sparse autoencoder on the FP model's activations at one hook:
qcheck's own TopK SAE at resid_post of layer n_layers // 2, or an SAELens SAE the user passes
(`--qcheck-sae`), at its own hook. FP and quantized activations at the same real token positions
are encoded with it, and the top-20 features by FP mean activation are followed.

Two survival rules, both always computed; `feature_survival_rule` picks the one the verdict
uses. For each top feature, its top positions are the (up to) 10 positions where its FP
activation is largest among those where it is active; the quantized top positions are as many
of the largest active quantized ones.
- `positions` (qcheck's): the feature survives if ≥ 80 % of its FP top positions are among its
  quantized top positions.
- `study` (the study's code, `feature_survival_rate`): the *token ids* at those positions;
  survives if |set(FP ids) ∩ set(quantized ids)| / |set(FP ids)| ≥ 0.8.
Beside them, per feature: the Pearson correlation of its activation over positions, and its
activation-set recall (the fraction of positions active under FP still active quantized).

Positions are counted once per distinct FP activation: every prompt's BOS (and every shared
prefix) has a bit-identical residual, and quantization is deterministic, so those copies stay
identical. Kept as copies they fill a BOS-loving feature's top 10 with one context tied 40 times,
and the rule then measures a sort's tie-breaking, not the feature.

A result on a basis that misses the L0 or FVE target (qcheck/sae/train.py), measured here on the
FP positions, fails its verdict with the precondition `sae_basis_quality`: feature survival in
such a basis says little about features. (A dead fraction above target is only a note: on other
text than its training text, a feature the text never calls for is inactive, not dead.)
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from qcheck import metrics
from qcheck.analyses import feature_intervals as fi
from qcheck.analyses._common import check_same_inputs, fmt, listing, show, worst_first
from qcheck.analyses.base import Analysis, Context, Headline, Threshold, UP
from qcheck.capture import Capture
from qcheck.sae.hooks import capture_key
from qcheck.sae.model import QUALITY_CHUNK, SAE
from qcheck.sae.train import MAX_DEAD_FRACTION, BasisQuality, basis_quality
from qcheck.verdict import Failure

if TYPE_CHECKING:
    from qcheck.thresholds import Thresholds

TOP_FEATURES = 20
TOP_POSITIONS = 10
MIN_OVERLAP = 0.8
RULES = ("positions", "study")
# The positions rule keeps a top position the quantized model still ranks within RANK_SLACK ×
# TOP_POSITIONS: a feature's top activations are often a plateau (a token-like feature fires
# about equally at every occurrence of its token), and within it any perturbation reorders
# ranks 8-15 (measured on the zoo: features at r ≥ 0.99 moved from ranks ≤ 10 to ranks ≤ 20).
RANK_SLACK = 2
# Features active on more than this fraction of the FP positions are dense, not sparse features
# (a TopK SAE grows a few): their "top positions" are the flat top of a direction nearly always
# on, so they are left out of the ranking and counted apart (n_dense).
DENSE_FRACTION = 0.5


def feature_acts(capture: Capture, hook_name: str) -> Float[Tensor, "n_tokens d_model"]:
    """The SAE hook's activation on the real tokens, row-major over (batch, pos)."""
    return capture.acts[capture_key(hook_name, capture.n_layers)][capture.mask]


def feature_key(feature: int) -> str:
    return f"F{feature}"


def distinct_rows(acts: Float[Tensor, "n_tokens d_model"]) -> Tensor:
    """Indices of the first occurrence of each distinct row, in their original order."""
    _, inverse = torch.unique(acts, dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), len(acts), dtype=torch.long)
    first = first.scatter_reduce(0, inverse, torch.arange(len(acts)), reduce="amin")
    return first.sort().values


@dataclass(frozen=True)
class FeatureResult:
    """Per top feature (by FP mean activation, best first): features (SAE ids); fp_mean /
    quant_mean (mean activation, SAE units); n_top (its FP top positions, ≤ 10); n_ids (the distinct
    token ids at them); positions (the
    share of them among its quantized top positions, qcheck's rule); token_overlap (the study's
    |FP ids ∩ quant ids| / |FP ids|); pearson (FP vs quantized activation over positions; 0 if the quantized
    one became constant); recall (fraction of its FP-active positions still active).
    Summaries: mean_pearson_alive over the features active somewhere under FP; activation_recall
    over every FP-active (feature, position) pair; fp / quant: the basis's quality on the FP and
    the quantized activations; n_positions: distinct positions compared; rule: the verdict's."""

    features: tuple[int, ...]
    fp_mean: tuple[float, ...]
    quant_mean: tuple[float, ...]
    n_top: tuple[int, ...]
    n_ids: tuple[int, ...]
    positions: tuple[float, ...]
    token_overlap: tuple[float, ...]
    pearson: tuple[float, ...]
    recall: tuple[float, ...]
    mean_pearson_alive: float
    activation_recall: float
    fp: BasisQuality
    quant: BasisQuality
    n_alive: int
    n_positions: int
    n_dense: int = 0
    rule: str = "positions"
    # the basis measured in (results.json tests[].basis): digest, origin, hook and shape
    basis: dict | None = field(default=None, compare=False)
    # 95 % bootstrap bounds over the prompts of the smooth values (qcheck/analyses/feature_intervals.py),
    # keyed like as_baseline: {"features": {F<id>: {metric: (low, high)}}, "summary": {metric: (low,
    # high)}}; None without prompt ids. The top-k shares and survival have Wilson intervals
    # (`shares_ci_by`, `survival_ci_by`), computed from the counts.
    bounds: dict | None = field(default=None, compare=False)

    def shares_by(self, rule: str) -> tuple[float, ...]:
        """Per feature, the share `rule` judges: positions kept, or token ids kept (study)."""
        if rule == "positions":
            return self.positions
        if rule == "study":
            return self.token_overlap
        raise ValueError(f"feature survival rule {rule!r} is not one of {RULES}")

    def survived_by(self, rule: str) -> tuple[bool, ...]:
        return tuple(share >= MIN_OVERLAP for share in self.shares_by(rule))

    def survival_by(self, rule: str) -> float:
        """Fraction of the top features that survive under `rule`, in [0, 1]."""
        return sum(self.survived_by(rule)) / len(self.features)

    def survival_ci_by(self, rule: str) -> metrics.Interval:
        """The 95 % Wilson interval of survival_by(rule), the top features as the units."""
        return metrics.wilson_interval(sum(self.survived_by(rule)), len(self.features))

    def shares_ci_by(self, rule: str) -> list[metrics.Interval]:
        """Per feature, the 95 % Wilson interval of its share under `rule`: over its n_top top
        positions (positions), or over its n_ids distinct token ids there (study)."""
        trials = self.n_top if rule == "positions" else self.n_ids
        return [metrics.wilson_interval(round(share * n), n) for share, n in zip(self.shares_by(rule), trials)]

    @property
    def survived(self) -> tuple[bool, ...]:
        return self.survived_by(self.rule)

    @property
    def survival(self) -> float:
        return self.survival_by(self.rule)

    def _lost(self, i: int) -> str:
        how = (f"{round(self.positions[i] * self.n_top[i])}/{self.n_top[i]} top positions kept" if self.rule == "positions"
               else f"token overlap {fmt(self.token_overlap[i])}")
        return f"{feature_key(self.features[i])} ({how}, r={fmt(self.pearson[i])}, recall {fmt(self.recall[i])})"

    def failures(self, thresholds: Thresholds) -> list[Failure]:
        if thresholds.feature_survival_rule != self.rule:
            raise ValueError(f"this result was judged by rule {self.rule!r}, the thresholds say "
                             f"{thresholds.feature_survival_rule!r}: pass rule=thresholds.feature_survival_rule")
        misses = self.fp.misses(dead=False)
        if misses:
            return [Failure("sae_basis_quality", "the SAE basis misses its quality targets on the FP "
                            "activations (" + "; ".join(misses) + "): feature survival in it says little "
                            "about features; retrain it or pass a better one with --qcheck-sae")]
        ci = self.survival_ci_by(self.rule)
        side = "pass" if thresholds.min_feature_survival is None else ci.side(thresholds.min_feature_survival,
                                                                               minimum=True)
        if side == "pass":
            return []
        lost = [i for i, ok in enumerate(self.survived) if not ok]
        ranked = worst_first(lost, lambda i: self.shares_by(self.rule)[i], high_is_bad=False)
        rule_text = (f"keep >= 80% of their top-10 positions within the top {RANK_SLACK * TOP_POSITIONS}" if self.rule == "positions"
                     else "keep >= 80% of the token ids at their top-10 positions, the study's rule")
        borderline = side == "borderline"
        relation = "straddles" if borderline else "<"
        lost_text = ("; lost " + listing(self._lost(i) for i in ranked)) if lost else ""
        return [Failure("min_feature_survival", f"{'borderline: ' if borderline else ''}SAE feature survival "
                        f"{show(ci.estimate, (ci.low, ci.high))} {relation} {fmt(thresholds.min_feature_survival)} "
                        f"({sum(self.survived)}/{len(self.features)} {rule_text}; Wilson interval over the "
                        f"{len(self.features)} features){lost_text}", self.survival, borderline=borderline)]

    def intervals(self) -> dict:
        """[low, high] per top feature and for the summary, keyed like as_baseline: the smooth values
        and the basis counts by a bootstrap over the prompts (when built with prompt ids), the top-k
        shares and survival by Wilson intervals over their units (feature_intervals.py says why)."""
        wilson = {rule: self.shares_ci_by(rule) for rule in RULES}
        per_feature = {feature_key(f): {"positions": wilson["positions"][i].bounds(),
                                        "token_overlap": wilson["study"][i].bounds()}
                       for i, f in enumerate(self.features)}
        n = len(self.features)
        survival = {rule: self.survival_ci_by(rule) for rule in RULES}
        dead = metrics.wilson_interval(round(self.fp.dead_fraction * self.fp.d_sae), self.fp.d_sae)
        summary = {"survival": survival[self.rule].bounds(), "survival_positions": survival["positions"].bounds(),
                   "survival_study": survival["study"].bounds(),
                   "n_survived": [b * n for b in survival[self.rule].bounds()],
                   "dead_fraction_fp": dead.bounds(),
                   "n_alive": [(1 - b) * self.fp.d_sae for b in reversed(dead.bounds())]}
        out = {"confidence": metrics.CONFIDENCE, "unit": "prompt",
               "wilson": {"metrics": ["positions", "token_overlap", *summary],
                          "units": "positions: the feature's top positions; token_overlap: its distinct token "
                                   "ids there; survival, n_survived: the top features; dead_fraction_fp, "
                                   "n_alive: the basis's features"},
               "features": per_feature, "summary": summary}
        if self.bounds is None:
            return out
        out["seed"] = metrics.BOOTSTRAP_SEED
        for key, bounds in self.bounds["features"].items():
            per_feature[key].update({m: list(b) for m, b in bounds.items()})
        summary.update({m: list(b) for m, b in self.bounds["summary"].items()})
        return out

    def notes(self) -> list[str]:
        if self.fp.dead_fraction > MAX_DEAD_FRACTION:
            return [f"{self.fp.dead_fraction:.0%} of the SAE's features are inactive on these FP prompts "
                    f"(its card gives the dead fraction on its training activations)"]
        return []

    def as_baseline(self) -> dict:
        positions, study = self.survived_by("positions"), self.survived_by("study")
        per_feature = {
            feature_key(f): {"rank": rank, "fp_mean": self.fp_mean[rank], "quant_mean": self.quant_mean[rank],
                             "n_top": self.n_top[rank], "positions": self.positions[rank],
                             "token_overlap": self.token_overlap[rank], "survived_positions": positions[rank],
                             "survived_study": study[rank], "pearson": self.pearson[rank],
                             "recall": self.recall[rank]}
            for rank, f in enumerate(self.features)}
        return {"n_positions": self.n_positions, "features": per_feature,
                "summary": {"survival": self.survival, "n_survived": sum(self.survived),
                            "survival_positions": self.survival_by("positions"),
                            "survival_study": self.survival_by("study"),
                            "n_features": len(self.features),
                            "mean_pearson_top": sum(self.pearson) / len(self.pearson),
                            "mean_pearson_alive": self.mean_pearson_alive, "n_alive": self.n_alive,
                            "n_dense": self.n_dense, "activation_recall": self.activation_recall,
                            "fve_fp": self.fp.fve, "fve_quant": self.quant.fve, "l0_fp": self.fp.l0,
                            "l0_quant": self.quant.l0, "dead_fraction_fp": self.fp.dead_fraction}}


@torch.no_grad()
def compare_features(sae: SAE, fp_acts: Float[Tensor, "n_tokens d_in"], quant_acts: Float[Tensor, "n_tokens d_in"],
                     token_ids: Int[Tensor, "n_tokens"], *, rule: str = "positions",
                     prompt_ids: Int[Tensor, "n_tokens"] | None = None) -> FeatureResult:
    """Encode FP and quantized activations at the same positions and apply both survival rules.

    Positions whose FP activation repeats an earlier one exactly are dropped (module docstring);
    every number in the result is over the distinct positions left. Only features active
    somewhere under FP are ranked; if fewer than 20 are alive, all alive ones are used.
    prompt_ids (which prompt each position belongs to), if given, adds the 95 % bootstrap bounds
    over the prompts (qcheck/analyses/feature_intervals.py).
    """
    if fp_acts.shape != quant_acts.shape or fp_acts.ndim != 2:
        raise ValueError(f"expected two (n_tokens, d_in) tensors of one shape, got "
                         f"{tuple(fp_acts.shape)} and {tuple(quant_acts.shape)}")
    if token_ids.shape != fp_acts.shape[:1] or (prompt_ids is not None and prompt_ids.shape != fp_acts.shape[:1]):
        raise ValueError(f"token_ids and prompt_ids must be ({len(fp_acts)},), got {tuple(token_ids.shape)}"
                         + ("" if prompt_ids is None else f" and {tuple(prompt_ids.shape)}"))
    if fp_acts.shape[1] != sae.cfg.d_in:
        raise ValueError(f"the SAE reads d_in {sae.cfg.d_in}, the activations have {fp_acts.shape[1]}")
    if rule not in RULES:
        raise ValueError(f"feature survival rule {rule!r} is not one of {RULES}")
    keep = distinct_rows(fp_acts)
    fp_acts, quant_acts, token_ids = fp_acts[keep].float(), quant_acts[keep].float(), token_ids[keep]
    if len(fp_acts) < TOP_POSITIONS:
        raise ValueError(f"{len(fp_acts)} distinct positions: the survival rules need at least {TOP_POSITIONS}")
    h_fp, h_quant = sae.encode(fp_acts), sae.encode(quant_acts)              # (n_tokens, d_sae)
    active_fp, active_quant = h_fp > 0, h_quant > 0
    alive = active_fp.any(dim=0)
    if not alive.any():
        raise ValueError("no SAE feature is active on the FP activations")
    fp_mean, quant_mean = h_fp.double().mean(dim=0), h_quant.double().mean(dim=0)

    # a quantized activation that became constant carries no information about FP's variation:
    # count it as 0, not as undefined
    r = metrics.pearson(h_fp.T, h_quant.T)
    r = torch.where(r.isnan() & alive, torch.zeros_like(r), r)
    kept = (active_fp & active_quant).sum(dim=0).double()
    recall = kept / active_fp.sum(dim=0).clamp(min=1)

    dense = active_fp.double().mean(dim=0) > DENSE_FRACTION
    ranked = alive & ~dense
    if not ranked.any():
        raise ValueError(f"every SAE feature active under FP is dense (active on > {DENSE_FRACTION:.0%} of the "
                         f"positions): the basis has no sparse feature to follow")
    ranking = torch.sort(torch.where(ranked, fp_mean, -torch.inf), descending=True, stable=True).indices
    top = ranking[: min(TOP_FEATURES, int(ranked.sum()))].tolist()
    positions, overlap, n_top, n_ids = fi.top_shares(h_fp[:, top], h_quant[:, top], token_ids,
                                                     k=TOP_POSITIONS, slack=RANK_SLACK)

    result = FeatureResult(
        features=tuple(top), fp_mean=tuple(fp_mean[top].tolist()), quant_mean=tuple(quant_mean[top].tolist()),
        n_top=tuple(n_top.tolist()), n_ids=tuple(n_ids.tolist()), positions=tuple(positions.tolist()),
        token_overlap=tuple(overlap.tolist()),
        pearson=tuple(r[top].tolist()), recall=tuple(recall[top].tolist()), mean_pearson_alive=float(r[alive].mean()),
        activation_recall=float(kept[alive].sum() / active_fp.sum()),
        fp=basis_quality(sae, fp_acts), quant=basis_quality(sae, quant_acts), n_alive=int(alive.sum()),
        n_positions=len(fp_acts), n_dense=int((alive & dense).sum()), rule=rule)
    if prompt_ids is None:
        return result
    bounds = _bootstrap_bounds(sae, result, fp_acts, quant_acts, h_fp, h_quant, prompt_ids[keep], alive)
    return replace(result, bounds=bounds)


def _bootstrap_bounds(sae: SAE, result: FeatureResult, fp_acts, quant_acts, h_fp, h_quant, prompt_ids,
                      alive) -> dict:
    """The 95 % bounds over the prompts of every per-feature and summary value that is a smooth
    function of per-prompt sums (qcheck/analyses/feature_intervals.py says why the top-k shares
    and survival have none)."""
    _, prompt_ids = torch.unique(prompt_ids, return_inverse=True)        # prompts with a position left: 0..n-1
    n_prompts = int(prompt_ids.max()) + 1
    counts = fi.prompt_counts(n_prompts, seed=metrics.BOOTSTRAP_SEED, n_resamples=metrics.N_RESAMPLES)
    top = list(result.features)

    # the smooth values from per-prompt sums
    alive_ids = torch.nonzero(alive).flatten()
    x, y = h_fp[:, alive_ids].double(), h_quant[:, alive_ids].double()
    n = fi.resampled(counts, fi.per_prompt(torch.ones(len(x), 1), prompt_ids, n_prompts))       # (R, 1)
    sums = {name: fi.resampled(counts, fi.per_prompt(v, prompt_ids, n_prompts)) for name, v in {
        "x": x, "y": y, "xx": x * x, "yy": y * y, "xy": x * y, "active_fp": (x > 0).double(),
        "kept": ((x > 0) & (y > 0)).double()}.items()}                                          # (R, n_alive)
    r = fi.pearson_from_sums(n, sums["x"], sums["y"], sums["xx"], sums["yy"], sums["xy"])
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = sums["kept"] / sums["active_fp"]
        activation_recall = sums["kept"].sum(axis=1) / sums["active_fp"].sum(axis=1)
    column = {int(f): i for i, f in enumerate(alive_ids.tolist())}
    in_top = [column[f] for f in top]
    quality = {}
    for side, acts, h in (("fp", fp_acts, h_fp), ("quant", quant_acts, h_quant)):
        errors = torch.cat([(rows.double() - sae(rows).double()).pow(2).sum(dim=1)
                            for rows in acts.split(QUALITY_CHUNK)])                                      # (n_pos,)
        a = acts.double()
        s_x = fi.resampled(counts, fi.per_prompt(a, prompt_ids, n_prompts))
        s_xx = fi.resampled(counts, fi.per_prompt(a.pow(2).sum(dim=1, keepdim=True), prompt_ids, n_prompts))[:, 0]
        s_err = fi.resampled(counts, fi.per_prompt(errors[:, None], prompt_ids, n_prompts))[:, 0]
        s_l0 = fi.resampled(counts, fi.per_prompt((h > 0).sum(dim=1, keepdim=True), prompt_ids, n_prompts))[:, 0]
        quality[f"fve_{side}"] = fi.fve_from_sums(n[:, 0], s_x, s_xx, s_err)
        quality[f"l0_{side}"] = s_l0 / n[:, 0]

    per_feature = {"fp_mean": sums["x"][:, in_top] / n, "quant_mean": sums["y"][:, in_top] / n,
                   "pearson": r[:, in_top], "recall": recall[:, in_top]}
    # a feature is dense in a resample when it is active at more than DENSE_FRACTION of its
    # positions. (Alive and dead counts are not resampled: a resample holds ~63 % of the distinct
    # prompts, so fewer features fire anywhere in it, and its interval would miss the point value.)
    counts_summary = {"n_dense": (sums["active_fp"] / n > DENSE_FRACTION).sum(axis=1)}
    summary = {"mean_pearson_top": np.nanmean(r[:, in_top], axis=1),
               "mean_pearson_alive": np.nanmean(r, axis=1), "activation_recall": activation_recall, **quality,
               **counts_summary}

    def bounds(samples: np.ndarray) -> tuple[float, float]:
        low, high = np.nanpercentile(samples, [2.5, 97.5], axis=0)
        return float(low), float(high)

    return {"features": {feature_key(f): {m: bounds(v[:, i]) for m, v in per_feature.items()} for i, f in enumerate(top)},
            "summary": {m: bounds(v) for m, v in summary.items()}}


def compare_feature_captures(sae: SAE, fp: Capture, quant: Capture, *, rule: str = "positions") -> FeatureResult:
    """compare_features at the SAE's hook of two captures, real tokens only."""
    check_same_inputs(fp, quant)
    if sae.cfg.hook_name is None:
        raise ValueError("the SAE names no hook (cfg.hook_name): qcheck cannot tell which activation it reads")
    prompt_ids = torch.arange(fp.mask.shape[0])[:, None].expand_as(fp.mask)[fp.mask]   # row-major, as the acts
    result = compare_features(sae, feature_acts(fp, sae.cfg.hook_name), feature_acts(quant, sae.cfg.hook_name),
                              fp.tokens[fp.mask], rule=rule, prompt_ids=prompt_ids)
    return replace(result, basis=basis_record(sae))


def lost_features(baseline: dict) -> list[tuple[str, str, float, float]]:
    """(feature, rule, pearson, share) for every top feature a recorded result (`as_baseline()`)
    counts as lost, under each rule, most correlated first: the losses to look at are those of
    features whose activation barely changed."""
    lost = [(key, rule, f["pearson"], f["positions" if rule == "positions" else "token_overlap"])
            for key, f in baseline["features"].items() for rule in RULES if not f[f"survived_{rule}"]]
    return sorted(lost, key=lambda item: -item[2])


def basis_record(sae: SAE) -> dict:
    cfg = sae.cfg
    return {"digest": sae.digest(), "origin": getattr(sae, "origin", None), "hook_name": cfg.hook_name,
            "architecture": cfg.architecture, "d_in": cfg.d_in, "d_sae": cfg.d_sae, "k": cfg.k}


# --- the analysis ---------------------------------------------------------------------------
THRESHOLDS = (
    Threshold("min_feature_survival", None, "fraction, in [0, 1]",
              f"fraction of the top-{TOP_FEATURES} SAE features that survive under the feature survival rule",
              suggested=0.8),
    Threshold("feature_survival_rule", "positions", "rule",
              f"which survival rule: positions (>= {MIN_OVERLAP:.0%} of a feature's top-{TOP_POSITIONS} positions "
              f"kept) or study (>= {MIN_OVERLAP:.0%} of the token ids at them, the study's code)", choices=RULES),
)


def _compare(fp: Capture, quant: Capture, context: Context) -> FeatureResult:
    return compare_feature_captures(context.sae, fp, quant, rule=context.thresholds.feature_survival_rule)


ANALYSIS = Analysis(
    name="features", version=2, prompt_set="natural", compare=_compare, thresholds=THRESHOLDS,
    title="analysis 3, SAE feature survival", needs_sae=True,
    # "survived_*": a bool per feature
    metrics={"positions": UP, "token_overlap": UP, "survived_positions": UP, "survived_study": UP,
             "survival": UP, "survival_positions": UP, "survival_study": UP, "n_survived": UP, "pearson": UP,
             "recall": UP, "activation_recall": UP, "mean_pearson_top": UP, "mean_pearson_alive": UP,
             "fve_quant": UP},
    unmeasured=frozenset({"n_positions", "rank", "n_top", "n_features"}),
    headline=Headline("survival", "SAE survival", digits=2))
