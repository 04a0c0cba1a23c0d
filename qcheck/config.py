"""Configuration: small frozen dataclasses, parsed once at the edge (command line, pyproject)
and passed down explicitly. The quantizer's (QuantSpec) is qcheck/quantize/spec.py."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class Thresholds:
    """The claims a certification test makes. Units are in each field's comment.

    Defaults are set from the study's own numbers where it gives one (GPTQ-4 on GPT-2 kept resid
    cosine > 0.99 and every induction head; RTN-4 fell to ~0.85 and lost them all): a default
    separates "kept the mechanism" from "broke it", and 4-bit GPTQ on the zoo should pass.
    """

    # activations: min over layers of the mean per-token cosine of resid_post (1 = identical).
    min_resid_cosine: float = 0.95
    # attention: max over heads of the mean per-query JSD between patterns, in bits, in [0, 1].
    max_head_jsd: float = 0.05
    # attention: fraction of FP previous-token heads (score > 0.4) still above 0.4 after.
    min_prev_token_survival: float = 1.0
    # features: fraction of the top-20 SAE features that survive (study's rule: >= 8 of top-10).
    min_feature_survival: float = 0.8
    # logit lens: max over layers of mean KL(FP || quant) of the lens predictions, nats.
    max_lens_kl: float = 0.1
    # logit lens: min over layers of top-5 agreement of the lens predictions, in [0, 1].
    min_lens_top5: float = 0.8
    # circuits: fraction of FP induction heads that survive (1.0 = every head; the design's claim).
    min_induction_survival: float = 1.0
    # circuits: max rise of the loss on the repeated half of [BOS, A, A], nats/token.
    max_icl_loss_increase: float = 0.25
    # circuits: which detection/survival rule ("fixed": > 0.4 before and after; "relative":
    # mean + 2 sigma of FP scores, survival above half of it, as the study's code).
    induction_rule: str = "fixed"
    # fidelity: mean KL(FP || quant) of the final next-token distribution, nats.
    max_final_kl: float = 0.05
    # fidelity: min top-1 agreement of the final predictions, in [0, 1].
    min_top1_agreement: float = 0.9
    # fidelity: max rise of held-out loss, nats/token.
    max_loss_increase: float = 0.05

    def __post_init__(self) -> None:
        if self.induction_rule not in ("fixed", "relative"):
            raise ValueError(f"induction_rule={self.induction_rule!r}: expected 'fixed' or 'relative'")

    def updated(self, overrides: dict[str, Any], *, source: str) -> "Thresholds":
        """A copy with `overrides` applied; unknown keys and bad values name `source`."""
        known = {f.name: f.type for f in fields(self)}
        values = {}
        for key, value in overrides.items():
            if key not in known:
                raise ValueError(f"{source}: unknown threshold {key!r}; known: {', '.join(sorted(known))}")
            want = type(getattr(self, key))
            try:
                values[key] = want(value)
            except (TypeError, ValueError):
                raise ValueError(f"{source}: threshold {key}={value!r} is not a {want.__name__}") from None
        return replace(self, **values)
