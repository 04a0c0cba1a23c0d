"""Threshold verdicts: which criterion failed, and whether that is exactly what was declared.

An analysis result's `failures(thresholds)` returns one `Failure` per broken criterion. A
criterion is the threshold key it breaks (declared by its analysis, e.g. `min_resid_cosine`) or,
for a result that cannot be judged at all, one of PRECONDITIONS.

A declared expected failure (tests/certify/expected_failures.toml, see qcheck/suite/expected.py) names
the criteria that must fail. `judge` holds a result to that declaration exactly: the declared
criteria fail and nothing else does, or the test fails for real. Exceptions are never judged
here: a crash in an analysis or in a fixture is an error of the test, whatever was declared.
No pytest here; the plugin turns a Judgement into pass, fail or xfail.

Three-way verdicts: a criterion judged on a bootstrap interval (qcheck/metrics.py `Interval.side`)
fails when the whole interval is on the failing side of its threshold, and is *borderline* when
the interval straddles it: the data cannot tell which side the model is on. A borderline
criterion is a `Failure` with `borderline=True`. By default it does not fail the test: the test
passes and the borderline criterion is reported (`--qcheck-borderline=fail` makes it fail). A
declared expected failure whose criterion is borderline still counts as declared (the data
cannot say it stopped failing), and the message says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Iterable
from typing import Literal

# Criteria that are not thresholds: the result cannot be judged (nothing to certify).
PRECONDITIONS = {
    "induction_heads_detected": "the FP model has induction heads under the rule in force",
    "relative_rule_sample_size": "the relative induction rule has enough heads to single any out",
    "sae_basis_quality": "the SAE basis meets its sparsity, reconstruction and dead-feature targets",
}


BORDERLINE_POLICIES = ("pass", "fail")


class Failure(str):
    """One failed (or, with `borderline`, undecided) criterion: its message (a str, as reports and
    assertions print it), the criterion's key, and the measured value judged (the worst element
    or the summary; None for a precondition)."""

    criterion: str
    value: float | None
    borderline: bool

    def __new__(cls, criterion: str, message: str, value: float | None = None,
                borderline: bool = False) -> "Failure":
        failure = super().__new__(cls, message)
        failure.criterion, failure.value, failure.borderline = criterion, value, borderline
        return failure

    def __reduce__(self):  # pickled by xdist/multiprocessing like the str it is, with its fields
        return (Failure, (self.criterion, str(self), self.value, self.borderline))


def is_borderline(failure: str) -> bool:
    return bool(getattr(failure, "borderline", False))


@dataclass(frozen=True)
class Judgement:
    """The verdict of one result: "pass", "fail" (the test fails with `message`) or "expected"
    (it failed exactly the declared criteria; the test is an expected failure with `message`)."""

    outcome: Literal["pass", "fail", "expected"]
    message: str = ""
    borderline: tuple[str, ...] = ()  # the borderline criteria's messages (not failing the test)


def judge(failures: Iterable[Failure], declared: Iterable[str] | None, *, where: str = "",
          borderline: str = "pass") -> Judgement:
    """Judge `failures` against the declared criteria (None: nothing declared, every failure fails).

    `where` names the declaration in messages (the file and entry). `borderline`: "pass" (a
    borderline criterion is reported, not failed) or "fail" (it fails like any other).
    """
    if borderline not in BORDERLINE_POLICIES:
        raise ValueError(f"borderline={borderline!r}: expected one of {BORDERLINE_POLICIES}")
    everything = list(failures)
    undecided = [f for f in everything if borderline == "pass" and is_borderline(f)]
    failures = [f for f in everything if not (borderline == "pass" and is_borderline(f))]
    failed = {f.criterion for f in failures}
    soft = {f.criterion for f in undecided} - failed
    kept = tuple(str(f) for f in undecided if f.criterion in soft)
    shown = "; ".join(failures)
    if declared is None:
        return Judgement("fail", shown, kept) if failures else Judgement("pass", "; ".join(kept), kept)
    declared = set(declared)
    if failed == declared or (failed < declared and declared - failed <= soft):
        unsure = declared - failed
        parts = [shown] if shown else []
        if unsure:
            parts.append(f"{', '.join(sorted(unsure))} borderline, counted as declared: {'; '.join(kept)}")
        return Judgement("expected", f"declared{where}: fails {', '.join(sorted(declared))}: {'; '.join(parts)}", kept)
    if not failed:
        return Judgement("fail", f"declared to fail {', '.join(sorted(declared))}{where}, but it passes "
                                 f"every threshold: re-measure and remove or edit the declaration")
    parts = []
    if failed - declared:
        parts.append(f"also fails {', '.join(sorted(failed - declared))}")
    if declared - failed:
        parts.append(f"no longer fails {', '.join(sorted(declared - failed))}")
    return Judgement("fail", f"declared to fail {', '.join(sorted(declared))}{where}, but it "
                             f"{' and '.join(parts)}: {shown}")
