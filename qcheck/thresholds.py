"""Thresholds: the values of the claims every registered analysis judges (one object per run and
model). Each threshold is declared, with its unit, default and claim, by its analysis
(qcheck/analyses/<name>.py THRESHOLDS); docs/thresholds.md says where each default comes from.
Parsed once at the edge (pyproject.toml, the command line) and passed down explicitly."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from qcheck.analyses import ANALYSES
from qcheck.analyses.base import Threshold


def declared() -> dict[str, Threshold]:
    """Every threshold of every registered analysis, by key (a key is declared once)."""
    out: dict[str, Threshold] = {}
    for analysis in ANALYSES.values():
        for threshold in analysis.thresholds:
            if threshold.key in out:
                raise ValueError(f"threshold {threshold.key!r} is declared by two analyses")
            out[threshold.key] = threshold
    return out


DECLARED = declared()


class Thresholds(Mapping[str, Any]):
    """Immutable {key: value} of every declared threshold; values read as attributes too
    (`thresholds.min_resid_cosine`). Missing keys take their declared default."""

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, Any] | None = None) -> None:
        given = dict(values or {})
        unknown = set(given) - set(DECLARED)
        if unknown:
            raise ValueError(f"unknown threshold {sorted(unknown)[0]!r}; known: {', '.join(sorted(DECLARED))}")
        merged = {key: given.get(key, t.default) for key, t in DECLARED.items()}
        for key, value in merged.items():
            choices = DECLARED[key].choices
            if choices and value not in choices:
                raise ValueError(f"{key}={value!r}: expected one of {', '.join(choices)}")
        object.__setattr__(self, "_values", merged)

    def __getattr__(self, key: str) -> Any:
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(f"no threshold {key!r}; known: {', '.join(sorted(DECLARED))}") from None

    def __setattr__(self, key, value):
        raise AttributeError("Thresholds are immutable: use .updated()")

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __hash__(self) -> int:
        return hash(tuple(self._values.items()))

    def __eq__(self, other) -> bool:
        return isinstance(other, Thresholds) and self._values == other._values

    def __repr__(self) -> str:
        return f"Thresholds({self._values!r})"

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)

    def updated(self, overrides: Mapping[str, Any], *, source: str = "overrides") -> "Thresholds":
        """A copy with `overrides` applied; unknown keys and bad values name `source`."""
        values = dict(self._values)
        for key, value in overrides.items():
            if key not in DECLARED:
                raise ValueError(f"{source}: unknown threshold {key!r}; known: {', '.join(sorted(DECLARED))}")
            want = type(DECLARED[key].default)
            try:
                values[key] = want(value)
            except (TypeError, ValueError):
                raise ValueError(f"{source}: threshold {key}={value!r} is not a {want.__name__}") from None
        try:
            return Thresholds(values)
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None
