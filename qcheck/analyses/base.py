"""What an analysis is: one `Analysis` object per module of qcheck/analyses/, found by the registry
(qcheck/analyses/__init__.py), read by everything else (markers, baselines, drift, the report).

An analysis module ends with `ANALYSIS = Analysis(...)`. It declares:
- its name (the test marker, the baseline header's `analysis`, the report's key) and a version
  to bump when its numbers change meaning;
- the prompt set it reads (qcheck/pair.py builds the captures) and whether it needs the SAE;
- `compare(fp, quant, context)`: a pure function of the two captures;
- its thresholds (the claims its verdict judges, with units and defaults);
- how its baseline values are judged on drift (`metrics`: direction and tolerance per key);
- optionally the summary value the report's per-pair table shows (`headline`).
No pytest here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, get_args, Literal, Protocol

if TYPE_CHECKING:
    from qcheck.capture import Capture
    from qcheck.thresholds import Thresholds
    from qcheck.verdict import Failure

PromptSet = Literal["natural", "lens", "induction"]
PROMPT_SETS: tuple[str, ...] = get_args(PromptSet)


class Result(Protocol):
    """What `compare` returns: a verdict, caveats and the values a baseline records."""

    def failures(self, thresholds: "Thresholds") -> list["Failure"]: ...

    def notes(self) -> list[str]: ...

    def as_baseline(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Context:
    """What an analysis may need besides the two captures."""

    thresholds: "Thresholds"
    sae: Any = None   # the FP model's frozen SAE basis, for analyses with needs_sae


@dataclass(frozen=True)
class Threshold:
    """One claim of a verdict: its key (a criterion of qcheck/verdict.py), default, unit, and the
    claim in words. A text setting (e.g. the induction rule) has `choices`.

    A default of None means *not gated*: no source grounds a value (docs/thresholds.md), so the
    metric is reported and judges nothing until the user sets the threshold."""

    key: str
    default: float | str | None
    unit: str
    claim: str
    choices: tuple[str, ...] = ()
    # the value docs/thresholds.md reads against the study's cases for an ungated threshold: the
    # first session's guess, which set the zoo's declared failures before the gates came off
    suggested: float | None = None

    @property
    def is_setting(self) -> bool:
        return bool(self.choices)


@dataclass(frozen=True)
class Tolerance:
    """|new − old| <= abs + rel·|old|."""

    rel: float
    abs: float

    def allows(self, old: float, new: float) -> bool:
        return abs(new - old) <= self.abs + self.rel * abs(old)


# Where the tolerances come from: the measured float32 noise floor (`python bench/noise_floor.py`,
# 30 s). Every analysis ran on the zoo's 6 models x rtn-w4, gptq-w4, rtn-w2 with both models in
# float32 and again in float64; the difference is the float32 rounding a metric carries, an upper
# bound for what another CPU (BLAS, SIMD width, thread split) changes. On one machine the thread
# count moves nothing that matters: the default suite under OMP_NUM_THREADS=1 vs 2 gave the same
# verdicts and values, but for one last-bit difference (features fve_quant, 1e-16 relative).
# Largest relative float32-vs-float64 movement measured (2026-12-01):
# - values of one side or a similarity (cosine, Pearson, scores, losses, perplexity, FVE): 5.9e-6
#   (circuits icl_loss_fp); CLOSENESS = 1e-4 is 17x that;
# - differences between FP and quantized (L2, KL, JSD, loss increases): 3.9e-5 (fidelity
#   loss_increase), and 2.4e-4 for a bootstrap bound near zero (fidelity loss_increase_ci.low,
#   a percentile picks another resample when values move); DIFFERENCE = 1e-3 is 4x the worst and
#   26x the rest. A real change (bits, group size, a GPTQ option) moves these by 1e-2 or more.
# abs: near zero (a KL of 1e-7 at 8 bits) relative noise means nothing.
CLOSENESS = Tolerance(rel=1e-4, abs=1e-6)
DIFFERENCE = Tolerance(rel=1e-3, abs=1e-6)


@dataclass(frozen=True)
class Metric:
    """How a baseline value is judged on drift: which way is better, how close is equal."""

    higher_is_better: bool | None  # None: neither (FP-side values, what FP has, thresholds)
    tolerance: Tolerance = CLOSENESS


UP, DOWN, DOWN_DIFF = Metric(True), Metric(False), Metric(False, DIFFERENCE)
NEUTRAL = Metric(None)


@dataclass(frozen=True)
class Headline:
    """The summary value the report's per-pair table shows: as_baseline()["summary"][key]."""

    key: str
    column: str
    digits: int = 3
    scientific: bool = False


@dataclass(frozen=True)
class Analysis:
    name: str
    title: str                      # one line: the marker's help text
    version: int                    # bump when a change alters what the numbers mean
    prompt_set: PromptSet
    compare: Callable[["Capture", "Capture", Context], Result]
    thresholds: tuple[Threshold, ...]
    # keyed by the last key of a value's path ("cosine" in "hook_resid_post.L3.cosine"); anything
    # not listed has no direction and CLOSENESS; ints, bools, strings and lists of names always
    # compare exactly (counts, survival, detected heads)
    metrics: Mapping[str, Metric] = field(default_factory=dict)
    headline: Headline | None = None
    needs_sae: bool = False
    # as_baseline() values that are not measurements but sample sizes, settings or ranks, and so
    # carry no interval: a last key ("n_tokens") or a dotted path ("fixed.detect_threshold").
    # Every other numeric value has [low, high] in intervals() (qcheck/report/coverage.py checks).
    unmeasured: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.prompt_set not in PROMPT_SETS:
            raise ValueError(f"analysis {self.name}: prompt set {self.prompt_set!r} is not one of {PROMPT_SETS}")

    def metric(self, key: str) -> Metric:
        return self.metrics.get(key, NEUTRAL)
