"""results.json: the one file every other part of a report is rendered from.

Format (schema "qcheck.results", version 1; the full JSON Schema with a description per field is
qcheck/report/schema.py, `python -m qcheck.report.schema` prints it):

    {"schema": "qcheck.results", "schema_version": 1,
     "run":         {started, finished, args, workers, notes, files}          # volatile
     "environment": {device, python, platform, versions: {torch, transformer_lens, ...}},
     "pairs": [{id, model: {name, kind, location, n_params, n_layers, n_heads, d_model, weight_digest},
                quant: {name, method, bits, spec, fields (every QuantSpec field),
                        weight_digest (quantized weights), cache_key, calibration: {source, digest}},
                seeds: {induction, induction_sets, calibration, sae, bootstrap},
                builds: [{worker, from_cache, seconds}]}],                    # builds: volatile
     "tests": [{nodeid, pair, model, quant: {name, method, bits}, analysis, analysis_version, outcome,
                verdict, failures, notes, expected_failure, thresholds, device,
                metrics (the result's as_baseline()), duration}]}

`method` and `bits` are what the tables group by (qcheck/report/table.py): the quantizer without
its bit width, and the bit width. A test names its case's model and quantizer too, so a pair that
was never built (no entry in `pairs`) still has a row.

`verdict` is the threshold claim (`failures` empty or not); `outcome` is what pytest reported, so
baseline drift, declared expected failures (xfailed) and errors show there. Floats that JSON
cannot hold (NaN, inf) are written as null. Pairs are sorted by id, tests by node id, so equal
computations give equal files whatever the order of execution (`schema.comparable` drops the
volatile fields).

Bump SCHEMA_VERSION (schema.py) when a field changes meaning or goes away; adding one is fine.
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from qcheck.analyses import ANALYSES
from qcheck.noise_floor import SOURCE as NOISE_SOURCE
from qcheck.report.schema import OUTCOMES, SCHEMA_ID, SCHEMA_VERSION
from qcheck.verdict import is_borderline

PACKAGES = ("qcheck", "torch", "transformers", "transformer_lens", "numpy", "safetensors",
            "matplotlib", "pytest", "pytest-xdist", "syrupy")


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """The installed version of each package (None: not installed)."""
    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def environment(device: str) -> dict:
    return {"device": device, "python": platform.python_version(), "platform": platform.platform(),
            "versions": package_versions()}


def jsonable(value: Any) -> Any:
    """Plain JSON data: tuples become lists, NaN and inf become None, keys become strings."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    if hasattr(value, "item"):  # a 0-d tensor or numpy scalar
        return jsonable(value.item())
    raise TypeError(f"{type(value).__name__} is not JSON data: {value!r}")


def seeds(spec, n_induction_sets: int = 1) -> dict[str, int | None]:
    """Every seed a pair's numbers depend on, read from where each is defined."""
    from qcheck.metrics import BOOTSTRAP_SEED
    from qcheck.sae.basis import SAE_SEED
    from qcheck.data.induction import INDUCTION_SEED

    return {"induction": INDUCTION_SEED, "induction_sets": n_induction_sets, "sae": SAE_SEED,
            "calibration": spec.seed if spec.needs_calibration else None,
            "bootstrap": BOOTSTRAP_SEED}


def quant_labels(quant, applied=None) -> dict:
    """What the tables read of a case's quantizer (a QuantSpec or a CheckpointRef,
    qcheck/quantize/spec.py): its name as in test ids, its method (`without_bits`: gptq-g128-act
    for gptq-w4-g128-act, a checkpoint's id whole) and its bits: those of `applied`, the QuantSpec
    of the built pair (a checkpoint's, from its quantization config), else as the case names them
    (None for a checkpoint)."""
    return {"name": str(quant), "method": quant.without_bits,
            "bits": (applied if applied is not None else quant).bits}


def entry_for_pair(pair, worker: str) -> dict:
    """What identifies a pair: model, quantizer, digests, calibration, seeds (and this build)."""
    quantized, model, cfg = pair.quant, pair.fp, getattr(pair.fp_bridge, "cfg", None)
    return jsonable({
        "id": pair.case.id,
        "model": {"name": model.spec.name, "kind": model.spec.kind, "location": model.spec.location,
                  "n_params": model.n_params, "n_layers": getattr(cfg, "n_layers", None),
                  "n_heads": getattr(cfg, "n_heads", None), "d_model": getattr(cfg, "d_model", None),
                  "weight_digest": quantized.weight_digest},
        "quant": {**quant_labels(pair.case.quant, quantized.spec), "spec": str(quantized.spec),
                  "fields": dataclasses.asdict(quantized.spec),
                  "weight_digest": quantized.quantized_digest, "cache_key": quantized.key,
                  "calibration": {"source": quantized.calibration_source,
                                  "digest": quantized.calibration_digest},
                  "notes": list(getattr(quantized, "notes", ()))},
        "seeds": seeds(quantized.spec, getattr(pair, "n_induction_sets", 1)),
        "builds": [{"worker": worker, "from_cache": quantized.from_cache,
                    "seconds": quantized.report.seconds}],
    })


def entry_for_test(*, nodeid: str, case, analysis: str, outcome: str, result=None,
                thresholds=None, expected_failure: str | None = None, device: str | None = None,
                duration: float = 0.0, borderline: str = "pass", noise_floor: dict | None = None) -> dict:
    """One test of a case (qcheck/pair.py Case): its outcome, and if it recorded a result, the
    verdict, every metric and its interval. A borderline criterion (qcheck/verdict.py) is listed
    under `borderline`, and fails the verdict only when `borderline` is "fail"
    (--qcheck-borderline)."""
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome {outcome!r}: expected one of {OUTCOMES}")
    failures, criteria, notes, verdict, metrics, intervals, undecided = [], [], [], None, None, None, []
    basis = None
    if result is not None:
        try:
            judged = list(result.failures(thresholds))
        except ValueError as error:  # e.g. a result computed under another induction rule
            judged = [f"verdict not computed: {error}"]
        undecided = [f for f in judged if is_borderline(f) and borderline == "pass"]
        failures = [f for f in judged if f not in undecided]
        criteria = [{"criterion": getattr(f, "criterion", None) or "unknown",
                     "value": getattr(f, "value", None), "borderline": is_borderline(f), "message": str(f)}
                    for f in judged]
        notes, metrics = list(result.notes()), result.as_baseline()
        intervals = result.intervals() if hasattr(result, "intervals") else None
        basis = getattr(result, "basis", None)
        verdict = "fail" if failures else "pass"
    return jsonable({
        "nodeid": nodeid, "pair": case.id, "model": case.model, "quant": quant_labels(case.quant),
        "analysis": analysis,
        "analysis_version": (ANALYSES[analysis].version if analysis in ANALYSES else None), "outcome": outcome,
        "verdict": verdict, "failures": [str(f) for f in failures], "borderline": [str(f) for f in undecided],
        "criteria": criteria, "notes": notes,
        "expected_failure": expected_failure,
        "thresholds": thresholds.as_dict() if thresholds is not None else None,
        "device": device, "metrics": metrics, "intervals": intervals, "basis": basis,
        "noise_floor": None if noise_floor is None else {"source": NOISE_SOURCE, "metrics": noise_floor},
        "duration": duration})


def outcome_of(phases: dict[str, Any]) -> str:
    """One outcome from pytest's reports of a test's phases ({"setup": report, "call": ...}).

    A report is duck-typed: `.passed`, `.failed`, `.skipped` and, for xfail, `.wasxfail`.
    """
    setup, call, teardown = (phases.get(p) for p in ("setup", "call", "teardown"))
    if setup is not None and setup.failed:
        return "error"
    main = call if call is not None else setup
    if main is None:
        return "error"
    if hasattr(main, "wasxfail"):
        outcome = "xfailed" if main.skipped else "xpassed"
    else:
        outcome = "skipped" if main.skipped else "failed" if main.failed else "passed"
    if teardown is not None and teardown.failed and outcome in ("passed", "xpassed", "skipped"):
        return "error"
    return outcome


def results_document(*, run: dict, environment: dict, pairs: list[dict], tests: list[dict]) -> dict:
    return {"schema": SCHEMA_ID, "schema_version": SCHEMA_VERSION, "run": run,
            "environment": environment, "pairs": sorted(pairs, key=lambda p: p["id"]),
            "tests": sorted(tests, key=lambda t: (t["nodeid"], t["pair"]))}


def dumps(data: Any) -> str:
    """Stable JSON text (strict: no NaN), two-space indent, newline at the end."""
    return json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n"


def read_results(path: Path) -> dict:
    return json.loads(Path(path).read_text())

