"""Shared by the analyses: element names, number formatting, NaN-safe threshold checks and the
"worst first, then 'and N more'" listing every failure message uses."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TypeVar

import numpy as np
import torch

from qcheck.capture import Capture

T = TypeVar("T")

# How many elements a failure message names before "and N more".
MAX_LISTED = 5


def layer_key(layer: int) -> str:
    """Baseline / message name of a layer: "L3"."""
    return f"L{layer}"


def head_key(layer: int, head: int) -> str:
    """Baseline / message name of a head: "L3H1" (TransformerLens's usual notation)."""
    return f"L{layer}H{head}"


def fmt(value: float) -> str:
    """A number for a message: 4 significant digits, so 0.9496 is not printed as 0.95."""
    return f"{value:.4g}"


def fails_min(value: float | None, minimum: float | None) -> bool:
    """True if `value` is below `minimum`; NaN fails (an undefined score certifies nothing). A
    minimum of None is a threshold that is not gated (qcheck/thresholds.py): nothing fails it."""
    return minimum is not None and value is not None and not value >= minimum


def fails_max(value: float | None, maximum: float | None) -> bool:
    """True if `value` is above `maximum`; NaN fails; a maximum of None is not gated."""
    return maximum is not None and value is not None and not value <= maximum


def worst_first(items: Iterable[T], value: Callable[[T], float], *, high_is_bad: bool) -> list[T]:
    """Sort `items` worst first by `value`; NaN counts as worst of all."""
    def key(item: T) -> tuple[bool, float]:
        v = float(value(item))
        return (not math.isnan(v), -v if high_is_bad else v)
    return sorted(items, key=key)


def listing(items: Iterable[str], limit: int = MAX_LISTED) -> str:
    """Join the first `limit` items (already sorted worst first) and count the rest."""
    items = list(items)
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown} and {len(items) - limit} more"


def check_same_inputs(fp: Capture, quant: Capture) -> None:
    """FP and quantized captures must come from the same tokens and padding."""
    if fp.tokens.shape != quant.tokens.shape or not torch.equal(fp.tokens, quant.tokens):
        raise ValueError("FP and quantized captures were run on different tokens")
    if not torch.equal(fp.mask, quant.mask):
        raise ValueError("FP and quantized captures have different padding masks")


def layer_names(capture: Capture, hook: str) -> list[str]:
    """`blocks.{l}.{hook}` for l = 0, 1, ... as long as the capture has them."""
    names = []
    while f"blocks.{len(names)}.{hook}" in capture.acts:
        names.append(f"blocks.{len(names)}.{hook}")
    return names


def nan_to_none(value: float) -> float | None:
    """JSON has no NaN: an undefined value goes into a baseline as null."""
    return None if math.isnan(value) else value


# --- intervals and three-way verdicts (qcheck/metrics.py, qcheck/verdict.py) ----------------------

def unit_sums(values: torch.Tensor, unit: torch.Tensor, n_units: int) -> torch.Tensor:
    """Σ of per-token `values` (n,) by sampled unit (`unit`: (n,) indices in [0, n_units)), float64."""
    return torch.zeros(n_units, dtype=torch.float64).index_add_(0, unit, values.double())


def percentile_bounds(boot: np.ndarray) -> np.ndarray:
    """(2, *element_shape): the 95 % percentile bounds of (R, *element_shape) bootstrap values."""
    from qcheck.metrics import CONFIDENCE

    tail = (1 - CONFIDENCE) / 2 * 100
    return np.percentile(boot, [tail, 100 - tail], axis=0)


Bounds = tuple[float, float]


def side_of(point: float, bounds: Bounds | None, cut: float | None, *, minimum: bool) -> str:
    """pass / fail / borderline of one element (qcheck/metrics.py Interval.side); without bounds,
    the two-way verdict of its point value (NaN fails); "pass" when the cut is None (not gated)."""
    from qcheck.metrics import Interval

    if cut is None:
        return "pass"
    if bounds is None:
        return "fail" if (fails_min(point, cut) if minimum else fails_max(point, cut)) else "pass"
    return Interval(point, bounds[0], bounds[1], 0.95).side(cut, minimum=minimum)


def show(point: float, bounds: Bounds | None) -> str:
    """'0.9496 [0.9481, 0.951]', or the point alone without bounds."""
    return fmt(point) if bounds is None else f"{fmt(point)} [{fmt(bounds[0])}, {fmt(bounds[1])}]"


def judge_elements(criterion: str, what: str, cut: float | None, elements: list[tuple[str, float, Bounds | None]],
                   *, minimum: bool, unit: str = "") -> list:
    """The Failure (or none) of a criterion every element must meet, e.g. each layer's cosine
    >= cut: one naming the elements whose interval is wholly on the failing side, worst first
    (and, after them, the borderline ones); else a borderline one naming the elements whose
    interval straddles the cut; else nothing (always nothing when the cut is None: not gated)."""
    from qcheck.verdict import Failure

    if cut is None:
        return []
    sides = [(name, point, bounds, side_of(point, bounds, cut, minimum=minimum)) for name, point, bounds in elements]
    failing = [e for e in sides if e[3] == "fail"]
    undecided = [e for e in sides if e[3] == "borderline"]
    rank = lambda items: worst_first(items, lambda e: e[1], high_is_bad=not minimum)
    relation = "below" if minimum else "above"
    if failing:
        ranked = rank(failing)
        text = f"{what} {relation} {fmt(cut)}{unit} at " + listing(f"{n} ({show(p, b)})" for n, p, b, _ in ranked)
        if undecided:
            text += "; borderline at " + listing(f"{n} ({show(p, b)})" for n, p, b, _ in rank(undecided))
        return [Failure(criterion, text, ranked[0][1])]
    if undecided:
        ranked = rank(undecided)
        return [Failure(criterion, f"borderline: {what} straddles {fmt(cut)}{unit} at "
                        + listing(f"{n} ({show(p, b)})" for n, p, b, _ in ranked), ranked[0][1], borderline=True)]
    return []
