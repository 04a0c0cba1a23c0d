"""The JSON Schema of results.json (a subset of draft 2020-12) and a small validator for it.

The schema is the documentation of the format: every field has a description. Print it as a file
for other tools with `python -m qcheck.report.schema > results.schema.json`.

`validate` checks the subset used here (type, required, properties, additionalProperties, items,
enum, const, minimum) and returns readable problems ("tests[3].outcome: 'weird' is not one of
..."); the `jsonschema` package would do the same for this schema but is not a dependency.
"""

from __future__ import annotations

import json
from typing import Any

SCHEMA_ID = "qcheck.results"
SCHEMA_VERSION = 1

OUTCOMES = ("passed", "failed", "xfailed", "xpassed", "skipped", "error")
VERDICTS = ("pass", "fail")

_STR, _NUM, _INT, _BOOL = {"type": "string"}, {"type": "number"}, {"type": "integer"}, {"type": "boolean"}


def _opt(schema: dict) -> dict:
    return {**schema, "type": [schema["type"], "null"]}


def _obj(description: str, properties: dict, *, extra: Any = False, required=None) -> dict:
    return {"type": "object", "description": description, "properties": properties,
            "required": list(properties) if required is None else required, "additionalProperties": extra}


_STRINGS = {"type": "array", "items": _STR}

# What the tables read of a quantizer (qcheck/report/results.py quant_labels), in a pair and a test.
QUANT_LABELS = {
    "name": {**_STR, "description": "the quantizer as in test ids: a QuantSpec short form (user:NAME-w4 "
                                    "for a user quantizer), or checkpoint:<folder> for --qcheck-checkpoint"},
    "method": {**_STR, "description": "the quantizer without its bit width, the scaling table's method: "
                                      "gptq-g128-act for gptq-w4-g128-act, user:NAME for user:NAME-w4; a "
                                      "checkpoint's name whole"},
    "bits": {"type": ["integer", "null"],
             "description": "bits per weight (a checkpoint's from its quantization config; null in a "
                            "test of a checkpoint, whose case does not name them)"},
}

PAIR = _obj("One (model, quantizer) case: exactly what was certified.", {
    "id": {**_STR, "description": "the case id used in test ids, MODEL-QUANT"},
    "model": _obj("The FP model.", {
        "name": _STR, "kind": {"enum": ["zoo", "local", "hub"]}, "location": _STR,
        "n_params": {**_INT, "description": "parameters of the FP HF module"},
        "n_layers": _opt(_INT), "n_heads": _opt(_INT), "d_model": _opt(_INT),
        "weight_digest": {**_STR, "description": "sha256 over the FP state_dict (models/digest.py model_digest)"}}),
    "quant": _obj("The quantizer and the quantized weights.", {
        **QUANT_LABELS,
        "spec": {**_STR, "description": "canonical QuantSpec short form, e.g. gptq-w4-g128-act"},
        "fields": {"type": "object", "description": "every QuantSpec field (quantize/spec.py); `name` is "
                                                   "a user quantizer's NAME, null otherwise"},
        "weight_digest": {**_STR, "description": "sha256 over the quantized model's state_dict"},
        "cache_key": {**_STR, "description": "the cache entry's key; a checkpoint's file digest; a user "
                                             "quantizer's weight digest (never cached)"},
        "calibration": _obj("Calibration data; null fields for methods without (RTN).",
                            {"source": _opt(_STR), "digest": _opt(_STR)}),
        "notes": {**_STRINGS, "description": "a checkpoint's caveats: files ignored (a tokenizer the tool "
                                             "synthesised) and how its unquantized tensors were checked; a "
                                             "user quantizer's: what it returned and how that was checked"}}),
    "seeds": {"type": "object", "description": "every seed the pair's numbers depend on",
              "additionalProperties": {"type": ["integer", "null"]}},
    "builds": {"type": "array", "description": "volatile: one entry per process that built the pair",
               "items": _obj("", {"worker": {**_STR, "description": "xdist worker id, or main"},
                                  "from_cache": _BOOL,
                                  "seconds": {**_NUM, "description": "what the quantization took when it "
                                                                     "was computed (a cache hit keeps it)"}})},
})

TEST = _obj("One certification test (one analysis of one pair).", {
    "nodeid": _STR, "pair": {**_STR, "description": "pairs[].id"},
    "model": {**_STR, "description": "the case's FP model name (also for a pair that was never built)"},
    "quant": _obj("The case's quantizer as collected (also for a pair that was never built).", QUANT_LABELS),
    "analysis": {**_STR, "description": "the test's analysis marker (activations, attention, ...)"},
    "analysis_version": {"type": ["integer", "null"],
                         "description": "the analysis's version (qcheck/analyses/<name>.py ANALYSIS): bumped when its numbers change meaning"},
    "outcome": {"enum": list(OUTCOMES), "description": "pytest's outcome, baseline drift included"},
    "verdict": {"enum": [*VERDICTS, None],
                "description": "the threshold claim: fail if `failures` is not empty; null if no result"},
    "failures": {**_STRINGS, "description": "why the threshold verdict failed, worst element first"},
    "borderline": {**_STRINGS, "description": "criteria whose 95% interval straddles the threshold "
                                              "(qcheck/verdict.py); they fail the verdict only under "
                                              "--qcheck-borderline=fail, then they are in `failures`"},
    "criteria": {"type": "array", "description": "the failed and borderline criteria (qcheck/verdict.py)",
                 "items": _obj("One failed or borderline criterion.", {
                     "criterion": {**_STR, "description": "a Thresholds key, or a precondition"},
                     "value": {"type": ["number", "null"], "description": "the measured value judged"},
                     "borderline": {"type": "boolean", "description": "its interval straddles the threshold"},
                     "message": _STR})},
    "notes": {**_STRINGS, "description": "caveats that do not fail the verdict"},
    "expected_failure": {"type": ["string", "null"],
                         "description": "reason from tests/certify/expected_failures.toml, if declared"},
    "thresholds": {"type": ["object", "null"], "description": "qcheck.thresholds.Thresholds as used"},
    "device": _opt(_STR),
    "metrics": {"type": ["object", "null"],
                "description": "the result's as_baseline(): per element (L3, L3H1, F12) and 'summary'"},
    "intervals": {"type": ["object", "null"],
                  "description": "the result's intervals(): [low, high] 95% bootstrap bounds over the "
                                 "sampled units, keyed like `metrics` (qcheck/metrics.py)"},
    "basis": {"type": ["object", "null"],
              "description": "features: the SAE basis measured in (digest, origin, hook, architecture, "
                             "d_in, d_sae, k); null for the other analyses"},
    "noise_floor": {"type": ["object", "null"],
                    "description": "the analysis between the FP model in float32 and in float64 "
                                   "(qcheck/noise_floor.py): {source, metrics keyed like `metrics`}; null "
                                   "when not measured (--qcheck-noise-floor)"},
    "duration": {**_NUM, "minimum": 0, "description": "volatile: seconds, setup + call + teardown"},
})

TEST["required"].remove("criteria")  # added in qcheck 0.1: older results.json files lack it
for _key in ("borderline", "intervals", "basis", "noise_floor"):  # added with the three-way verdicts,
    # the SAE basis and the noise floor
    TEST["required"].remove(_key)
TEST["properties"]["criteria"]["items"]["required"].remove("borderline")
# added later (what the tables read, qcheck/report/table.py): older results.json files lack them too
TEST["required"] = [key for key in TEST["required"] if key not in ("model", "quant")]
PAIR["properties"]["quant"]["required"] = [key for key in PAIR["properties"]["quant"]["required"]
                                           if key not in ("method", "bits", "notes")]

SCHEMA = _obj("qcheck results: every metric of every (model, quantizer, analysis) of one run.", {
    "schema": {"const": SCHEMA_ID},
    "schema_version": {"const": SCHEMA_VERSION},
    "run": _obj("volatile: when and how the run happened", {
        "started": {**_STR, "description": "ISO 8601, UTC"}, "finished": _STR,
        "args": {**_STRINGS, "description": "pytest's command-line arguments"},
        "workers": {**_STRINGS, "description": "xdist worker ids that sent results; [] when serial"},
        "notes": {**_STRINGS, "description": "problems of the run itself (a worker that went down)"},
        "files": {**_STRINGS, "description": "every file of the report, relative to its directory"}}),
    "environment": _obj("where the numbers were computed", {
        "device": {**_STR, "description": "--qcheck-device as given"},
        "python": _STR, "platform": _STR,
        "versions": {"type": "object", "additionalProperties": _opt(_STR),
                     "description": "package versions (importlib.metadata); null if not installed"}}),
    "pairs": {"type": "array", "items": PAIR},
    "tests": {"type": "array", "items": TEST},
})

# Dropped by `comparable`: what differs between two runs that computed the same numbers.
VOLATILE = {"run": None, "pairs": ("builds",), "tests": ("duration",)}

_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _is(value: Any, kind: str) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _TYPES[kind])


def validate(value: Any, schema: dict = SCHEMA, where: str = "") -> list[str]:
    """Problems of `value` against `schema`, each prefixed by its path; [] if it conforms."""
    at = where or "(top)"
    if "const" in schema and value != schema["const"]:
        return [f"{at}: {value!r} is not {schema['const']!r}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{at}: {value!r} is not one of {schema['enum']}"]
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if not any(_is(value, k) for k in kinds):
            return [f"{at}: expected {' or '.join(kinds)}, got {type(value).__name__}"]
    if "minimum" in schema and _is(value, "number") and value < schema["minimum"]:
        return [f"{at}: {value} < {schema['minimum']}"]
    problems: list[str] = []
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        problems += [f"{at}: missing {key!r}" for key in schema.get("required", []) if key not in value]
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in properties:
                problems += validate(item, properties[key], f"{where}.{key}" if where else key)
            elif extra is False:
                problems.append(f"{at}: unexpected key {key!r}")
            elif isinstance(extra, dict):
                problems += validate(item, extra, f"{where}.{key}" if where else key)
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            problems += validate(item, schema["items"], f"{where}[{index}]")
    return problems


def comparable(results: dict) -> dict:
    """`results` without its volatile fields (VOLATILE): equal for equal computations."""
    out = {k: v for k, v in results.items() if k != "run"}
    for section, keys in VOLATILE.items():
        if keys and section in out:
            out[section] = [{k: v for k, v in item.items() if k not in keys} for item in out[section]]
    return out


if __name__ == "__main__":
    print(json.dumps({"$schema": "https://json-schema.org/draft/2020-12/schema",
                      "$id": f"{SCHEMA_ID}/v{SCHEMA_VERSION}", **SCHEMA}, indent=2))
