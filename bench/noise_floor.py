"""The numerical noise floor of every analysis: how far each metric moves when only float rounding
changes, measured on the zoo (issue: calibrated verdicts; docs/thresholds.md, "Noise floor").

For each zoo model and quantizer, every analysis is run twice on the same weights: with both
models in float32 (what qcheck runs) and with both in float64 (the same numbers with ~1e-16
rounding instead of ~1e-7). The difference is the float32 rounding a metric carries; a run on
another CPU (another BLAS, SIMD width or thread split) moves a metric by rounding of this order,
so a baseline tolerance below it would flag noise, and far above it would hide real changes.

    python bench/noise_floor.py [--model NAME ...] [--quant SPEC ...]

Prints, per analysis and metric kind (the last key of a value's path), the largest relative
difference |m32 − m64| / max(|m64|, 1e-6) over every element of every case, the tolerance kind
the analysis gives it (drift: CLOSENESS or DIFFERENCE, qcheck/analyses/base.py), and that
tolerance's rel. Runs in ~2 minutes on 2 cores (quantized weights from the qcheck cache).
"""

from __future__ import annotations

import argparse
import copy
import math
from collections import defaultdict

import torch

from qcheck.analyses import ANALYSES
from qcheck.analyses.base import Context
from qcheck.models.bridge import wrap
from qcheck.models.load import load_model
from qcheck.models.registry import zoo_names
from qcheck.pair import capture_prompt_set
from qcheck.quantize.cache import load_or_quantize
from qcheck.quantize.spec import parse_quant_spec
from qcheck.sae.basis import SAE_DIR
from qcheck.sae.saelens import load_saelens
from qcheck.thresholds import Thresholds

ABS_FLOOR = 1e-6  # below this a value is "zero": relative differences of it mean nothing


def leaves(tree, path=()):
    """(path, float) of every numeric leaf of an as_baseline() tree."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from leaves(value, (*path, str(key)))
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool) and tree is not None:
        yield path, float(tree)


def results(fp_model, q_model, model, dtype, sae):
    fp_bridge, q_bridge = (wrap(copy.deepcopy(m).to(dtype)) for m in (fp_model, q_model))
    captures = {}
    out = {}
    for name, analysis in ANALYSES.items():
        if analysis.needs_sae and sae is None:
            continue
        s = analysis.prompt_set
        if s not in captures:
            captures[s] = (capture_prompt_set(fp_bridge, model, s), capture_prompt_set(q_bridge, model, s))
        out[name] = analysis.compare(*captures[s], Context(Thresholds(), sae)).as_baseline()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", default=None)
    parser.add_argument("--quant", action="append", default=None)
    args = parser.parse_args()
    worst: dict[tuple[str, str], tuple[float, str]] = defaultdict(lambda: (0.0, ""))
    for name in args.model or zoo_names():
        model = load_model(name)
        sae, _ = load_saelens(f"{model.spec.location}/{SAE_DIR}")
        for text in args.quant or ["rtn-w4", "gptq-w4", "rtn-w2"]:
            q = load_or_quantize(model.hf, parse_quant_spec(text), tokenizer=model.tokenizer)
            r32 = results(model.hf, q.model, model, torch.float32, sae)
            r64 = results(model.hf, q.model, model, torch.float64, sae)
            for analysis in r32:
                a, b = dict(leaves(r32[analysis])), dict(leaves(r64[analysis]))
                for path, v32 in a.items():
                    v64 = b.get(path)
                    if v64 is None or math.isnan(v32) or math.isnan(v64):
                        continue
                    rel = abs(v32 - v64) / max(abs(v64), ABS_FLOOR)
                    key = (analysis, path[-1])
                    if rel > worst[key][0]:
                        worst[key] = (rel, f"{name} {text} {'.'.join(path)}")
            print(f"  {name} {text} done", flush=True)
    print(f"\n{'analysis':12s} {'metric':22s} {'float32 vs float64':>18s}  {'tolerance (rel)':>16s}  where")
    for (analysis, metric), (rel, where) in sorted(worst.items()):
        tol = ANALYSES[analysis].metric(metric).tolerance
        print(f"{analysis:12s} {metric:22s} {rel:18.2e}  {tol.rel:16.0e}  {where}")


if __name__ == "__main__":
    main()
