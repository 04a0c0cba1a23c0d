"""Analysis 3, learned features: do the FP model's SAE features still fire in the same places
after quantization? (The study's `feature_analysis.py`.)

The SAE (qcheck/sae/) is trained on FP residual-stream activations at layer n_layers // 2 and frozen;
FP and quantized activations at the same real token positions are encoded with it. The survival
rule: take the top-20 features by FP mean activation; a feature survives if at least 8 of its 10
highest-activating positions under FP are also among its 10 highest under quantization. The
study's code compares the token ids at those positions instead (set overlap >= 0.8; docs/study.md).
Per-feature Pearson correlation of activations over positions is reported next to it.

Positions are counted once per distinct FP activation: every prompt's BOS (and every shared
prefix, e.g. prompts opening with the same byte) has a bit-identical residual, and quantization is
deterministic, so those copies stay identical. Kept as copies they fill a BOS-loving feature's
top 10 with one context tied 40 times, and the rule then measures a sort's tie-breaking, not the
feature (measured on zoo-pythia-2l64: 2 of the top 6 features had all 10 top positions on BOS).
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from qcheck import metrics
from qcheck.analyses._common import check_same_inputs, fails_min, fmt, listing, worst_first
from qcheck.capture import Capture
from qcheck.analyses.base import Analysis, Context, Headline, Threshold, UP
from qcheck.sae.basis import feature_layer
from qcheck.sae.model import SAE
from qcheck.verdict import Failure

if TYPE_CHECKING:
    from qcheck.thresholds import Thresholds

# The survival rule: qcheck compares positions; the study compares the token ids at them
# (docs/analyses.md, "features").
TOP_FEATURES = 20
TOP_POSITIONS = 10
MIN_SHARED = 8
# Below this fraction of FP variance explained the SAE is a poor basis; the verdict says so.
MIN_USEFUL_FVE = 0.5


def feature_acts(capture: Capture) -> Float[Tensor, "n_tokens d_model"]:
    """resid_post at layer n_layers // 2 on the real tokens, row-major over (batch, pos)."""
    name = f"blocks.{feature_layer(capture.n_layers)}.hook_resid_post"
    return capture.acts[name][capture.mask]


def feature_key(feature: int) -> str:
    return f"F{feature}"


def distinct_rows(acts: Float[Tensor, "n_tokens d_model"]) -> Tensor:
    """Indices of the first occurrence of each distinct row, in their original order."""
    _, inverse = torch.unique(acts, dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), len(acts), dtype=torch.long)
    first = first.scatter_reduce(0, inverse, torch.arange(len(acts)), reduce="amin")
    return first.sort().values


def _top_positions(h: Float[Tensor, "n_tokens n_features"], k: int) -> Tensor:
    """Indices of the k largest activations per feature, (k, n_features); ties go to the earlier
    position (stable sort), so identical activations always give identical sets."""
    return torch.sort(h, dim=0, descending=True, stable=True).indices[:k]


@dataclass(frozen=True)
class FeatureResult:
    """Per feature, for the top features by FP mean activation (best first):

    features: SAE feature ids; fp_mean / quant_mean: mean activation over tokens (SAE units);
    shared: how many of the feature's top-10 FP positions are in its top-10 quantized positions
    (0..10); pearson: correlation of the feature's activation over positions, FP vs quantized
    (0 if the quantized activation became constant).
    Summaries: mean_pearson_alive over every feature active somewhere under FP; fve_fp / fve_quant:
    fraction of variance the SAE explains of FP / quantized activations; l0_fp: mean number of
    active features per FP token; n_positions: distinct positions compared.
    """

    features: tuple[int, ...]
    fp_mean: tuple[float, ...]
    quant_mean: tuple[float, ...]
    shared: tuple[int, ...]
    pearson: tuple[float, ...]
    mean_pearson_alive: float
    fve_fp: float
    fve_quant: float
    l0_fp: float
    n_alive: int
    n_positions: int

    @property
    def survived(self) -> tuple[bool, ...]:
        return tuple(s >= MIN_SHARED for s in self.shared)

    @property
    def survival(self) -> float:
        """Fraction of the top features that survive, in [0, 1]."""
        return sum(self.survived) / len(self.features)

    def failures(self, thresholds: Thresholds) -> list[Failure]:
        if not fails_min(self.survival, thresholds.min_feature_survival):
            return []
        lost = [i for i, ok in enumerate(self.survived) if not ok]
        ranked = worst_first(lost, lambda i: self.shared[i], high_is_bad=False)
        return [Failure("min_feature_survival", f"SAE feature survival {fmt(self.survival)} < "
                f"{fmt(thresholds.min_feature_survival)} "
                f"({sum(self.survived)}/{len(self.features)} keep >= {MIN_SHARED} of their top-"
                f"{TOP_POSITIONS} positions): lost "
                + listing(f"{feature_key(self.features[i])} ({self.shared[i]}/{TOP_POSITIONS} shared, "
                          f"r={fmt(self.pearson[i])})" for i in ranked), self.survival)]

    def notes(self) -> list[str]:
        if self.fve_fp >= MIN_USEFUL_FVE:
            return []
        return [f"the SAE explains only {fmt(self.fve_fp)} of the FP variance at this layer: "
                f"feature survival is measured in a poor basis"]

    def as_baseline(self) -> dict:
        per_feature = {
            feature_key(f): {"rank": rank, "fp_mean": self.fp_mean[rank], "quant_mean": self.quant_mean[rank],
                             "shared_top10": self.shared[rank], "survived": self.survived[rank],
                             "pearson": self.pearson[rank]}
            for rank, f in enumerate(self.features)}
        return {"n_positions": self.n_positions, "features": per_feature,
                "summary": {"survival": self.survival, "n_survived": sum(self.survived),
                            "n_features": len(self.features),
                            "mean_pearson_top": sum(self.pearson) / len(self.pearson),
                            "mean_pearson_alive": self.mean_pearson_alive, "n_alive": self.n_alive,
                            "fve_fp": self.fve_fp, "fve_quant": self.fve_quant, "l0_fp": self.l0_fp}}


@torch.no_grad()
def compare_features(sae: SAE, fp_acts: Float[Tensor, "n_tokens d_model"],
                     quant_acts: Float[Tensor, "n_tokens d_model"]) -> FeatureResult:
    """Encode FP and quantized activations at the same positions and apply the survival rule.

    Positions whose FP activation repeats an earlier one exactly are dropped (module docstring);
    every number in the result is over the distinct positions left. Only features active
    somewhere under FP are ranked (a dead feature's "top positions" would be an arbitrary tie);
    if fewer than 20 are alive, all alive ones are used.
    """
    if fp_acts.shape != quant_acts.shape or fp_acts.ndim != 2:
        raise ValueError(f"expected two (n_tokens, d_model) tensors of one shape, got "
                         f"{tuple(fp_acts.shape)} and {tuple(quant_acts.shape)}")
    keep = distinct_rows(fp_acts)
    fp_acts, quant_acts = fp_acts[keep], quant_acts[keep]
    if len(fp_acts) < TOP_POSITIONS:
        raise ValueError(f"{len(fp_acts)} distinct positions: the survival rule needs at least "
                         f"{TOP_POSITIONS}")
    h_fp, h_quant = sae.encode(fp_acts.float()), sae.encode(quant_acts.float())  # (n_tokens, d_sae)
    fp_mean, quant_mean = h_fp.double().mean(dim=0), h_quant.double().mean(dim=0)
    alive = (h_fp > 0).any(dim=0)
    if not alive.any():
        raise ValueError("no SAE feature is active on the FP activations")

    # Pearson over positions per feature; a quantized activation that became constant carries no
    # information about FP's variation: count it as 0, not as undefined.
    r = metrics.pearson(h_fp.T, h_quant.T)
    r = torch.where(r.isnan() & alive, torch.zeros_like(r), r)

    ranking = torch.sort(torch.where(alive, fp_mean, -torch.inf), descending=True, stable=True).indices
    top = ranking[: min(TOP_FEATURES, int(alive.sum()))]
    fp_top = _top_positions(h_fp[:, top], TOP_POSITIONS)        # (TOP_POSITIONS, n_top)
    quant_top = _top_positions(h_quant[:, top], TOP_POSITIONS)
    shared = (fp_top.unsqueeze(1) == quant_top.unsqueeze(0)).any(dim=1).sum(dim=0)  # (n_top,)

    return FeatureResult(
        features=tuple(top.tolist()), fp_mean=tuple(fp_mean[top].tolist()),
        quant_mean=tuple(quant_mean[top].tolist()), shared=tuple(shared.tolist()),
        pearson=tuple(r[top].tolist()), mean_pearson_alive=float(r[alive].mean()),
        fve_fp=sae.fraction_of_variance_explained(fp_acts),
        fve_quant=sae.fraction_of_variance_explained(quant_acts),
        l0_fp=float((h_fp > 0).sum(dim=1).double().mean()), n_alive=int(alive.sum()),
        n_positions=len(fp_acts))


def compare_feature_captures(sae: SAE, fp: Capture, quant: Capture) -> FeatureResult:
    """compare_features on resid_post at layer n_layers // 2 of two captures, real tokens only."""
    check_same_inputs(fp, quant)
    return compare_features(sae, feature_acts(fp), feature_acts(quant))


# --- the analysis ---------------------------------------------------------------------------
THRESHOLDS = (
    Threshold("min_feature_survival", 0.8, "fraction, in [0, 1]",
              f"fraction of the top-{TOP_FEATURES} SAE features that keep >= {MIN_SHARED} of their "
              f"top-{TOP_POSITIONS} positions"),
)


def _compare(fp: Capture, quant: Capture, context: Context) -> FeatureResult:
    return compare_feature_captures(context.sae, fp, quant)


ANALYSIS = Analysis(
    name="features", version=1, prompt_set="natural", compare=_compare, thresholds=THRESHOLDS,
    title="analysis 3, SAE feature survival", needs_sae=True,
    # "survived": a bool per feature
    metrics={"shared_top10": UP, "survived": UP, "survival": UP, "n_survived": UP, "pearson": UP,
             "mean_pearson_top": UP, "mean_pearson_alive": UP, "fve_quant": UP},
    headline=Headline("survival", "SAE survival", digits=2))
