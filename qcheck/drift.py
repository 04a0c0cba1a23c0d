"""Baseline drift: what a committed baseline file holds, and how a new result is compared with it.

A baseline is one JSON document per certification test id (qcheck/suite/baselines.py stores it):

    {"header": {what makes the numbers comparable}, "results": {the result's as_baseline()}}

Floats are rounded to DIGITS significant digits for the file, so a review diff shows numbers a
person can read, and compared with a tolerance, never as text. A change reads like the rest of
qcheck's messages: the element, old → new, and whether it got better or worse (each analysis's
`metrics`, qcheck/analyses/base.py, which also holds the tolerances and where they come from: the
float32 noise floor measured by bench/noise_floor.py).
No pytest here.
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, fields
from collections.abc import Iterator
from typing import Any

from qcheck.analyses import ANALYSES
from qcheck.analyses.base import NEUTRAL, Metric

# 6 significant digits: rounding moves a value by at most 5e-7 relative, far inside the
# tolerances below, and 0.998123 stays readable in `git diff baselines/`.
DIGITS = 6

# How many moved elements a failure lists before "and N more" (the file diff has them all).
MAX_LISTED = 30


@dataclass(frozen=True)
class Header:
    """What a baseline's numbers depend on besides the code under test.

    A different model, weight digest, quantizer spec, calibration digest, prompt tokens, analysis
    version or measurement basis (the frozen SAE of the features analysis) is a real change in
    what is measured. A different dtype or device only changes floating-point rounding: numbers
    from there are not comparable, which is not a regression. Package versions (ENVIRONMENT)
    are recorded: a result from other versions is still compared, and drift names the change.
    """

    model: str
    weight_digest: str
    quant: str                      # canonical QuantSpec string, e.g. "gptq-w4-g128-act"
    calibration_digest: str | None  # None for methods without calibration (RTN)
    inputs_digest: str              # sha256 of the prompt set's token ids and mask, for this model
    analysis: str                   # test marker name, e.g. "activations"
    analysis_version: int           # qcheck.analyses.ANALYSIS_VERSIONS
    dtype: str                      # "float32"
    device: str                     # device type: "cpu" or "cuda"
    environment: dict               # {"torch": "2.13.0", ...}: recorded, named on drift, not identity
    basis_digest: str | None = None  # the SAE's digest for "features"; None elsewhere

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# Fields that make two runs' numbers not comparable at all (rounding differs), rather than changed.
PLATFORM = ("dtype", "device")
# Recorded for the reader and named when values drift; not part of what makes numbers comparable.
ENVIRONMENT = "environment"
# Fields every recorded header has (later optional fields, like basis_digest, have defaults).
REQUIRED = tuple(f.name for f in fields(Header) if f.default is MISSING)

# What a change of each identity field means, for the failure message.
_MEANING = {
    "model": "the model changed",
    "weight_digest": "the FP model's weights changed",
    "quant": "the quantizer spec changed",
    "calibration_digest": "the calibration data changed",
    "inputs_digest": "the prompt tokens changed",
    "analysis": "the analysis changed",
    "analysis_version": "the analysis version changed",
    "basis_digest": "the SAE measurement basis changed",
}


class BaselineFileError(Exception):
    """A baseline file that cannot be read as a qcheck baseline."""


# --- the file ---------------------------------------------------------------------------------
def rounded(value: Any) -> Any:
    """`value` with every float rounded to DIGITS significant digits, ready for JSON."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        # JSON has no NaN or infinity; null reads as "undefined" (as in the analyses' nan_to_none).
        return float(f"{value:.{DIGITS}g}") if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(key): rounded(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v) for v in value]
    raise TypeError(f"baseline value {value!r} of type {type(value).__name__}: as_baseline() must "
                    f"return plain floats, ints, bools, strings, None, lists and dicts")


def to_text(document: dict[str, Any]) -> str:
    """The file's text: pretty JSON in the result's own key order (L0, L1, ..., L10, not sorted)."""
    return json.dumps(rounded(document), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def parse(text: str, where: str) -> dict[str, Any]:
    """A baseline document from `text`; BaselineFileError naming `where` and the fix otherwise."""
    fix = "fix it, or delete it and record it again with `pytest --snapshot-update`"
    try:
        document = json.loads(text)
    except ValueError as error:
        detail = f"{error.msg} at line {error.lineno} column {error.colno}" if isinstance(
            error, json.JSONDecodeError) else str(error)
        raise BaselineFileError(f"{where} is not valid JSON ({detail}): {fix}") from None
    if not (isinstance(document, dict) and isinstance(document.get("header"), dict)
            and "results" in document):
        raise BaselineFileError(f"{where} is not a qcheck baseline (expected a JSON object with "
                                f"'header' and 'results'): {fix}")
    # A header stripped by a hand edit must not read as "recorded elsewhere, not comparable"
    # (a pass with a warning): every field a run writes is required, the platform ones as text.
    header = document["header"]
    missing = [key for key in REQUIRED if key not in header]
    odd = [key for key in PLATFORM if key in header and not isinstance(header[key], str)]
    if missing or odd or not isinstance(document["results"], dict):
        problem = (f"its header lacks {', '.join(missing)}" if missing else
                   f"its header's {', '.join(odd)} is not text" if odd else "its results are not a JSON object")
        raise BaselineFileError(f"{where} is not a qcheck baseline as qcheck writes it ({problem}; edited "
                                f"by hand?): {fix}")
    return document


# --- the comparison ---------------------------------------------------------------------------
def not_comparable(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """Why numbers recorded under header `old` cannot be compared with a run under `new`, or None."""
    differ = [f"{key} {old.get(key)}, this run {new.get(key)}" for key in PLATFORM
              if old.get(key) != new.get(key)]
    return f"recorded with {'; '.join(differ)}" if differ else None


@dataclass(frozen=True)
class Change:
    path: str       # "hook_resid_post.L3.cosine", "summary.survival", "fixed.survived"
    old: Any
    new: Any
    verdict: str    # "worse", "better", "changed", "added" or "removed"

    def describe(self, width: int = 0) -> str:
        """One line: the path padded to `width`, old → new (relative change), the verdict."""
        moved = f"{_show(self.old)} → {_show(self.new)}{_relative(self.old, self.new)}"
        return f"{self.path:<{width}}  {moved}  {self.verdict}"


@dataclass(frozen=True)
class Drift:
    """How a new document differs from the stored one: changed header fields, moved values."""

    header: tuple[str, ...]     # one sentence per changed header field
    changes: tuple[Change, ...]
    n_values: int               # values in the new results
    versions: tuple[str, ...] = ()  # "torch 2.12.0 → 2.13.0": package versions that differ

    @property
    def ok(self) -> bool:
        return not self.header and not self.changes

    def describe(self, where: str) -> list[str]:
        """The failure message, most telling first: header changes, the summary, then elements."""
        lines = []
        if self.header:
            lines.append(f"{where} was recorded for other inputs: {'; '.join(self.header)}.")
            lines.append("That is a real change in what is measured, not noise: review it, then "
                         "record it with `pytest --snapshot-update`.")
        if self.changes:
            counts = {v: sum(c.verdict == v for c in self.changes) for v in
                      ("worse", "better", "changed", "added", "removed")}
            tally = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
            lines.append(f"{len(self.changes)} of {self.n_values} values in {where} moved beyond "
                         f"tolerance ({tally}):")
            if self.versions:
                lines.append(f"  (recorded under other package versions: {'; '.join(self.versions)})")
            listed = self.changes[:MAX_LISTED]
            width = max(len(c.path) for c in listed)
            lines += ["  " + change.describe(width) for change in listed]
            if len(self.changes) > MAX_LISTED:
                lines.append(f"  ... and {len(self.changes) - MAX_LISTED} more (all of them: "
                             f"`pytest --snapshot-update`, then `git diff baselines/`)")
        if not self.header:
            lines.append("If the change is intended: `pytest --snapshot-update`, review "
                         "`git diff baselines/`, commit.")
        return lines


def compare(old: dict[str, Any], new: dict[str, Any]) -> Drift:
    """Compare two parsed baseline documents (header and results)."""
    old_header, new_header = old["header"], new["header"]
    header = []
    old_versions, new_versions = old_header.get(ENVIRONMENT) or {}, new_header.get(ENVIRONMENT) or {}
    versions = tuple(f"{name} {old_versions.get(name)} → {new_versions.get(name)}"
                     for name in dict.fromkeys([*old_versions, *new_versions])
                     if old_versions.get(name) != new_versions.get(name))
    for key in dict.fromkeys([*old_header, *new_header]):
        if key == ENVIRONMENT:
            continue
        before, after = old_header.get(key), new_header.get(key)
        if before != after:
            meaning = _MEANING.get(key, f"header field {key!r} changed") if key not in PLATFORM \
                else f"the {key} changed"
            header.append(f"{meaning} ({_short(before)} → {_short(after)})")
    metrics = metrics_of(new_header)
    changes = sorted(_walk(old["results"], new["results"], "", metrics),
                     key=lambda c: c.path.split(".")[0] != "summary")  # stable: file order otherwise
    return Drift(header=tuple(header), changes=tuple(changes), n_values=_count(new["results"]),
                 versions=versions)


def metrics_of(header: dict[str, Any]) -> dict[str, Metric]:
    """The drift rules of the analysis a header names (none for an unknown analysis)."""
    analysis = ANALYSES.get(header.get("analysis"))
    return dict(analysis.metrics) if analysis else {}


def settle(old: Any, new: Any, metrics: dict[str, Metric], path: str = "") -> Any:
    """`new` with every value still within tolerance of `old` replaced by `old`.

    What --snapshot-update writes: `git diff baselines/` then shows only the values that moved,
    and a value that creeps run after run stays anchored to what was reviewed.
    """
    if isinstance(old, dict) and isinstance(new, dict):
        return {key: settle(old[key], value, metrics, f"{path}.{key}" if path else key) if key in old
                else value for key, value in new.items()}
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [settle(a, b, metrics, path) for a, b in zip(old, new)]
    tolerance = metrics.get(_leaf(path), NEUTRAL).tolerance
    if _is_number(old) and isinstance(new, float) and tolerance.allows(old, new):
        return old
    return new


def _walk(old: Any, new: Any, path: str, metrics: dict[str, Metric]) -> Iterator[Change]:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in dict.fromkeys([*old, *new]):
            where = f"{path}.{key}" if path else key
            if key not in new:
                yield Change(where, old[key], None, "removed")
            elif key not in old:
                yield Change(where, None, new[key], "added")
            else:
                yield from _walk(old[key], new[key], where, metrics)
        return
    metric = metrics.get(_leaf(path), NEUTRAL)
    if isinstance(old, list) and isinstance(new, list):
        if len(old) == len(new) and not all(isinstance(x, str) for x in old + new):
            for i, (a, b) in enumerate(zip(old, new)):
                yield from _walk(a, b, f"{path}[{i}]", metrics)
        elif old != new:  # a list of names (detected heads): fewer is worse when more is better
            yield Change(path, old, new, _direction(metric, len(new) - len(old)))
        return
    if _is_number(old) and _is_number(new) and (isinstance(old, float) or isinstance(new, float)):
        if not metric.tolerance.allows(old, new):
            yield Change(path, old, new, _direction(metric, new - old))
        return
    if type(old) is not type(new) or old != new:  # ints, bools, strings, None: exactly
        comparable = isinstance(old, bool) and isinstance(new, bool) or _is_number(old) and _is_number(new)
        yield Change(path, old, new, _direction(metric, int(new) - int(old)) if comparable else "changed")


def _direction(metric: Metric, delta: float) -> str:
    if metric.higher_is_better is None or delta == 0:
        return "changed"
    return "better" if (delta > 0) == metric.higher_is_better else "worse"


def _leaf(path: str) -> str:
    return path.rsplit(".", 1)[-1].split("[", 1)[0]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _count(value: Any) -> int:
    if isinstance(value, dict):
        return sum(_count(v) for v in value.values())
    if isinstance(value, list) and not all(isinstance(x, str) for x in value):
        return sum(_count(v) for v in value)
    return 1


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.{DIGITS}g}"
    if isinstance(value, list):
        return "[" + ", ".join(map(_show, value)) + "]"
    return json.dumps(value)


def _relative(old: Any, new: Any) -> str:
    if _is_number(old) and _is_number(new) and old != 0 and isinstance(new, float):
        return f" ({(new - old) / abs(old):+.2%})"
    return ""


def _short(value: Any) -> str:
    """Digests shortened to 12 hex digits, like git's."""
    text = str(value)
    return text[:12] + "…" if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else text
