"""The analyses: pure functions of captured FP and quantized activations, one module each.

Every module of this package that defines `ANALYSIS` (qcheck/analyses/base.py) is an analysis of
the suite; ANALYSES holds them by name, in the order below, then any other module's by name.
Adding an analysis means adding its module (and its certification test file): markers, baseline
headers, drift directions, thresholds, the expected-failures loader and the report read this.
"""

from __future__ import annotations

import importlib
import pkgutil

from qcheck.analyses.base import Analysis

# The study's order (its analyses 1-5), then qcheck's output-level check.
_ORDER = ("activations", "attention", "features", "logit_lens", "circuits", "fidelity")


def _discover() -> dict[str, Analysis]:
    found: dict[str, Analysis] = {}
    for module in pkgutil.iter_modules(__path__):
        if module.name.startswith("_") or module.name == "base":
            continue
        analysis = getattr(importlib.import_module(f"{__name__}.{module.name}"), "ANALYSIS", None)
        if analysis is None:
            continue
        if analysis.name in found:
            raise ValueError(f"two analyses are named {analysis.name!r}")
        found[analysis.name] = analysis
    rank = {name: i for i, name in enumerate(_ORDER)}
    return dict(sorted(found.items(), key=lambda item: (rank.get(item[0], len(rank)), item[0])))


ANALYSES: dict[str, Analysis] = _discover()
