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


# What a user writes to take the gate off a threshold (TOML has no null): it is then reported only.
OFF = ("off", "none")


class Thresholds(Mapping[str, Any]):
    """Immutable {key: value} of every declared threshold; values read as attributes too
    (`thresholds.min_resid_cosine`). Missing keys take their declared default. A value of None is
    a threshold that is not gated (the default of every threshold no source grounds): the metric
    is reported and judges nothing."""

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, Any] | None = None) -> None:
        given = dict(values or {})
        unknown = set(given) - set(DECLARED)
        if unknown:
            raise ValueError(f"unknown threshold {sorted(unknown)[0]!r}; known: {', '.join(sorted(DECLARED))}")
        merged = {key: given.get(key, t.default) for key, t in DECLARED.items()}
        merged = {key: float(v) if isinstance(v, int) and not isinstance(v, bool) else v for key, v in merged.items()}
        for key, value in merged.items():
            choices = DECLARED[key].choices
            if choices and value not in choices:
                raise ValueError(f"{key}={value!r}: expected one of {', '.join(choices)}")
            if not choices and value is not None and not isinstance(value, float):
                raise ValueError(f"{key}={value!r}: expected a number or None (not gated)")
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

    @classmethod
    def suggested(cls, values: Mapping[str, Any] | None = None) -> "Thresholds":
        """Every ungated default at its `suggested` value (the first session's guesses that
        docs/thresholds.md reads against the study's cases), then `values`: for tests of the gates
        themselves, and for whoever wants those guesses as gates."""
        return cls({**{k: t.suggested for k, t in DECLARED.items() if t.suggested is not None}, **(values or {})})

    def ungated(self) -> list[str]:
        """The threshold keys that judge nothing in this run (None), in declaration order."""
        return [key for key, value in self._values.items() if value is None]

    def updated(self, overrides: Mapping[str, Any], *, source: str = "overrides") -> "Thresholds":
        """A copy with `overrides` applied; unknown keys and bad values name `source`."""
        values = dict(self._values)
        for key, value in overrides.items():
            if key not in DECLARED:
                raise ValueError(f"{source}: unknown threshold {key!r}; known: {', '.join(sorted(DECLARED))}")
            if DECLARED[key].is_setting:
                values[key] = str(value)
                continue
            if value is None or (isinstance(value, str) and value.strip().lower() in OFF):
                values[key] = None
                continue
            try:
                values[key] = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"{source}: threshold {key}={value!r} is not a number "
                                 f"(or {OFF[0]!r}: reported, not gated)") from None
            if isinstance(value, bool) or values[key] != values[key]:
                raise ValueError(f"{source}: threshold {key}={value!r} is not a number "
                                 f"(or {OFF[0]!r}: reported, not gated)")
        try:
            return Thresholds(values)
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None
