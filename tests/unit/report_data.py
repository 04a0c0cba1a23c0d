"""Synthetic analysis results and results documents for the report tests: the real result
dataclasses, filled with made-up numbers, so every renderer sees the real as_baseline() format.
No model, no capture; builds in milliseconds."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import torch

from qcheck.analyses import ANALYSES
from qcheck.analyses.activations import HOOKS, METRICS, ActivationResult
from qcheck.analyses.attention import AttentionResult
from qcheck.analyses.circuits import InductionResult, apply_rule
from qcheck.analyses.features import FeatureResult
from qcheck.analyses.fidelity import FidelityResult
from qcheck.analyses.logit_lens import LogitLensResult
from qcheck.metrics import Interval
from qcheck.pair import Case
from qcheck.models.digest import model_digest
from qcheck.quantize.spec import parse_quant_spec
from qcheck.report.merge import merge
from qcheck.report.results import entry_for_pair, entry_for_test, environment
from qcheck.thresholds import Thresholds  # the defaults, and where each comes from: docs/thresholds.md

ANALYSIS_NAMES = tuple(ANALYSES)
MODELS = {"zoo-small": 2, "zoo-large": 3}   # name -> n_layers
QUANTS = (parse_quant_spec("rtn-w4"), parse_quant_spec("gptq-w4"))
N_HEADS = 4


def synthetic_result(analysis: str, n_layers: int, damage: float):
    """A result of `analysis` whose numbers get worse with `damage` in [0, 1]."""
    layers = range(n_layers)
    if analysis == "activations":
        values = {h: {m: tuple((1 - damage * (l + 1) / n_layers * (0.5 if m != "l2" else -3))
                               if m in ("cosine", "pearson", "l2") else damage * (l + 1) / 10
                               for l in layers) for m in METRICS} for h in HOOKS}
        return ActivationResult(values=values, n_tokens=100)
    if analysis == "attention":
        jsd = tuple(tuple(damage * 0.1 * (l + h + 1) / (n_layers + N_HEADS) for h in range(N_HEADS))
                    for l in layers)
        prev = tuple(tuple(0.9 if (l, h) == (0, 1) else 0.1 for h in range(N_HEADS)) for l in layers)
        prev_q = tuple(tuple(v * (1 - damage) for v in row) for row in prev)
        return AttentionResult(jsd=jsd, prev_token_fp=prev, prev_token_quant=prev_q, n_queries=50)
    if analysis == "features":
        shared = tuple(10 - (i % 4) * round(damage * 3) for i in range(20))
        from qcheck.sae.train import BasisQuality

        return FeatureResult(features=tuple(range(100, 120)), fp_mean=(1.0,) * 20, quant_mean=(0.9,) * 20,
                             n_top=(10,) * 20, n_ids=(10,) * 20, positions=tuple(s / 10 for s in shared),
                             token_overlap=tuple(s / 10 for s in shared),
                             pearson=tuple(1 - damage * 0.5 for _ in range(20)),
                             recall=tuple(1 - damage * 0.3 for _ in range(20)), mean_pearson_alive=0.9,
                             activation_recall=0.9,
                             fp=BasisQuality(l0=12.0, fve=0.95, dead_fraction=0.0, d_sae=400, n_rows=400),
                             quant=BasisQuality(l0=12.0, fve=0.9, dead_fraction=0.0, d_sae=400, n_rows=400),
                             n_alive=60, n_positions=400)
    if analysis == "logit_lens":
        return LogitLensResult(kl=tuple(damage * (l + 1) * 0.1 for l in layers),
                               top1=tuple(1 - damage * 0.3 for _ in layers),
                               top5=tuple(1 - damage * 0.2 for _ in layers), n_prompts=8)
    if analysis == "circuits":
        fp = torch.tensor([[0.05 + 0.2 * h * (l == n_layers - 1) for h in range(N_HEADS)] for l in layers],
                          dtype=torch.float64)  # the last layer's heads 2 and 3 are induction heads
        quant = fp * (1 - damage)
        return InductionResult(
            scores_fp=tuple(map(tuple, fp.tolist())), scores_quant=tuple(map(tuple, quant.tolist())),
            rule="fixed", fixed=apply_rule("fixed", fp, quant), relative=apply_rule("relative", fp, quant),
            correlation=float(torch.corrcoef(torch.stack([fp.flatten(), quant.flatten()]))[0, 1]),
            icl_loss_fp=0.3, icl_loss_quant=0.3 + damage, n_sequences=50, half=25)
    if analysis == "fidelity":
        return FidelityResult(kl=damage * 0.1, top1=1 - damage * 0.2, loss_fp=2.0, loss_quant=2.0 + damage * 0.1,
                              loss_increase_ci=Interval(damage * 0.1, damage * 0.05, damage * 0.15, 0.95),
                              n_positions=500, n_targets=480)
    raise ValueError(analysis)


def fake_pair(case: Case, n_layers: int, worker_seed: int = 0, spec=None):
    """What entry_for_pair reads from a Pair, with a tiny module standing in for the weights;
    `spec`: the QuantSpec applied, when it is not the case's own (a checkpoint's)."""
    spec = case.quant if spec is None else spec
    module = torch.nn.Linear(3, 2)
    with torch.no_grad():
        module.weight.fill_(len(case.id))
        module.bias.zero_()
    calibrated = spec.needs_calibration
    return SimpleNamespace(
        case=case, captures=lambda prompt_set: (None, None),  # synthetic analyses read no capture
        fp_bridge=SimpleNamespace(cfg=SimpleNamespace(n_layers=n_layers, n_heads=N_HEADS, d_model=8)),
        fp=SimpleNamespace(spec=SimpleNamespace(name=case.model, kind="zoo", location=f"/zoo/{case.model}"),
                              n_params=10_000 * n_layers ** 3),
        quant=SimpleNamespace(spec=spec, weight_digest=f"fp-{case.model}",
                                  model=module, quantized_digest=model_digest(module), key=f"key-{case.id}",
                                  from_cache=bool(worker_seed),
                                  calibration_source="sampled n=128" if calibrated else None,
                                  calibration_digest="c0ffee" if calibrated else None,
                                  report=SimpleNamespace(seconds=1.5 + worker_seed)))


def synthetic_analysis(analysis: str, n_layers: int, damage: float):
    """The registered analysis, computing `synthetic_result` instead of reading captures."""
    return dataclasses.replace(ANALYSES[analysis],
                               compare=lambda fp, quant, context: synthetic_result(analysis, n_layers, damage))


def cases() -> list[tuple[Case, int]]:
    return [(Case(m, q), n) for m, n in MODELS.items() for q in QUANTS]


def damage_of(case: Case) -> float:
    return {"rtn-w4": 0.6, "gptq-w4": 0.02}[case.quant_id] / (1 if case.model == "zoo-small" else 3)


def partial(worker: str, selected: list[tuple[Case, int]], analyses=ANALYSIS_NAMES, worker_seed: int = 0) -> dict:
    """A process's partial for the given cases: every analysis, outcomes from the verdicts."""
    tests = []
    for case, n_layers in selected:
        for analysis in analyses:
            result = synthetic_result(analysis, n_layers, damage_of(case))
            failed = bool(result.failures(Thresholds()))
            tests.append(entry_for_test(nodeid=f"tests/certify/test_{analysis}.py::test_{analysis}[{case.id}]",
                                        case=case, analysis=analysis,
                                        outcome="failed" if failed else "passed", result=result,
                                        thresholds=Thresholds(), device="cpu", duration=0.5))
    pairs = [entry_for_pair(fake_pair(case, n, worker_seed), worker) for case, n in selected]
    return {"worker": worker, "pairs": pairs, "tests": tests, "notes": []}


RUN = {"started": "2026-01-01T00:00:00+00:00", "finished": "2026-01-01T00:01:00+00:00",
       "args": ["tests/certify"], "notes": [], "files": []}


def results_document(analyses=ANALYSIS_NAMES) -> dict:
    """The serial run's document: every case, every analysis."""
    return merge([partial("main", cases(), analyses)], run=dict(RUN), environment=environment("cpu"))

