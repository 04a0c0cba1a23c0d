"""The numerical noise floor of each analysis, measured on the model being certified: the values an
analysis gives between the FP model in float32 (what qcheck runs) and the same FP model in
float64, two forwards of one set of weights that differ only by float rounding. A quantized
result close to its floor is a change qcheck cannot tell from noise (the metric could not move
further with these inputs); the report puts the floor beside every result.

What it costs: a float64 copy of the FP model (2× its float32 weights) and one more capture per
prompt set, once per model (dropped once every analysis's floor of that model is measured; a
run narrowed with -m keeps them to the end). `--qcheck-noise-floor auto` (the default) measures it for models up
to AUTO_MAX_PARAMS and skips it above, where that copy would dominate the run's memory; `on`
and `off` force it. (bench/noise_floor.py measures the float32-vs-float64 movement of every
metric across the zoo, which sets the baseline drift tolerances; this module puts the same
comparison beside each result.)
"""

from __future__ import annotations

import copy

import torch

from qcheck.analyses.base import Analysis, Context
from qcheck.capture import Capture

MODES = ("auto", "on", "off")
AUTO_MAX_PARAMS = 100_000_000
SOURCE = "FP float32 vs FP float64, same weights and inputs"


def wanted(mode: str, n_params: int) -> bool:
    if mode not in MODES:
        raise ValueError(f"--qcheck-noise-floor {mode!r}: expected one of {', '.join(MODES)}")
    return mode == "on" or (mode == "auto" and n_params <= AUTO_MAX_PARAMS)


def float64_twin(hf_model: torch.nn.Module) -> torch.nn.Module:
    """A float64 copy of the FP model (its own tensors: the FP model is not touched)."""
    return copy.deepcopy(hf_model).to(torch.float64).eval()


def floor_of(analysis: Analysis, fp32: Capture, fp64: Capture, context: Context) -> dict:
    """The analysis's as_baseline() with the float64 forward in the quantized model's place."""
    return analysis.compare(fp32, fp64, context).as_baseline()
