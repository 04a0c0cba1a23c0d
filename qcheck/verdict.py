"""Threshold verdicts: which criterion failed, and whether that is exactly what was declared.

An analysis result's `failures(thresholds)` returns one `Failure` per broken criterion. A
criterion is the threshold key it breaks (declared by its analysis, e.g. `min_resid_cosine`) or,
for a result that cannot be judged at all, one of PRECONDITIONS.

A declared expected failure (tests/certify/expected_failures.toml, see qcheck/suite/expected.py) names
the criteria that must fail. `judge` holds a result to that declaration exactly: the declared
criteria fail and nothing else does, or the test fails for real. Exceptions are never judged
here: a crash in an analysis or in a fixture is an error of the test, whatever was declared.
No pytest here; the plugin turns a Judgement into pass, fail or xfail.
"""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Iterable
from typing import Literal

# Criteria that are not thresholds: the result cannot be judged (nothing to certify).
PRECONDITIONS = {
    "induction_heads_detected": "the FP model has induction heads under the rule in force",
}


class Failure(str):
    """One failed criterion: its message (a str, as reports and assertions print it), the
    criterion's key, and the measured value judged (the worst element or the summary; None for a
    precondition)."""

    criterion: str
    value: float | None

    def __new__(cls, criterion: str, message: str, value: float | None = None) -> "Failure":
        failure = super().__new__(cls, message)
        failure.criterion, failure.value = criterion, value
        return failure

    def __reduce__(self):  # pickled by xdist/multiprocessing like the str it is, with its fields
        return (Failure, (self.criterion, str(self), self.value))


@dataclass(frozen=True)
class Judgement:
    """The verdict of one result: "pass", "fail" (the test fails with `message`) or "expected"
    (it failed exactly the declared criteria; the test is an expected failure with `message`)."""

    outcome: Literal["pass", "fail", "expected"]
    message: str = ""


def judge(failures: Iterable[Failure], declared: Iterable[str] | None, *, where: str = "") -> Judgement:
    """Judge `failures` against the declared criteria (None: nothing declared, every failure fails).

    `where` names the declaration in messages (the file and entry).
    """
    failures = list(failures)
    failed = {f.criterion for f in failures}
    shown = "; ".join(failures)
    if declared is None:
        return Judgement("fail", shown) if failures else Judgement("pass")
    declared = set(declared)
    if failed == declared:
        return Judgement("expected", f"declared{where}: fails {', '.join(sorted(declared))}: {shown}")
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
