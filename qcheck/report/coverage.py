"""Which measured values of a result have no interval: every numeric value of as_baseline() must
have [low, high] at the same path of intervals(), unless its analysis declares it unmeasured (a
sample size, a setting, a rank: qcheck/analyses/base.py `Analysis.unmeasured`). A value recorded
as an interval itself (a `*_ci` table of the baseline) counts as covered."""

from __future__ import annotations

from collections.abc import Iterator

from qcheck.analyses.base import Analysis


def numeric_paths(tree, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """The path of every int or float leaf (bools are verdicts, not values)."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from numeric_paths(value, (*path, str(key)))
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield path


def _bounds_at(intervals: dict, path: tuple[str, ...]):
    node = intervals
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def without_interval(analysis: Analysis, metrics: dict, intervals: dict | None) -> list[str]:
    """Dotted paths of the measured values of `metrics` (as_baseline()) that `intervals` leaves
    without [low, high] (bounds of null, an undefined bound, still count as an interval)."""
    missing = []
    for path in numeric_paths(metrics):
        dotted = ".".join(path)
        if path[-1] in analysis.unmeasured or dotted in analysis.unmeasured:
            continue
        if any(key.endswith("_ci") for key in path):
            continue
        bounds = _bounds_at(intervals or {}, path)
        if not (isinstance(bounds, list) and len(bounds) == 2):
            missing.append(dotted)
    return missing
