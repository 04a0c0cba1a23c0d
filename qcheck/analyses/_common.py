"""Shared by the analyses: element names, number formatting, NaN-safe threshold checks and the
"worst first, then 'and N more'" listing every failure message uses."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TypeVar

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


def fails_min(value: float | None, minimum: float) -> bool:
    """True if `value` is below `minimum`; NaN fails (an undefined score certifies nothing)."""
    return value is not None and not value >= minimum


def fails_max(value: float | None, maximum: float) -> bool:
    """True if `value` is above `maximum`; NaN fails."""
    return value is not None and not value <= maximum


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
