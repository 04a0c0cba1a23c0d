"""One certificate per (model, quantizer): what was certified, exactly, and the verdicts.

    {"schema": "qcheck.certificate", "schema_version": 1, "pair": "zoo-gpt2-3l96-gptq-w4",
     "verdict": "certified" | "not certified" | "incomplete",
     "model": {name, n_params, weight_digest, ...}, "quant": {spec, weight_digest, calibration, ...},
     "seeds": {...}, "environment": {device, versions}, "issued": ISO time,
     "analyses": {"circuits": {"verdict": "pass" | "fail" | null, "outcome": pytest's,
                               "reasons": [...], "notes": [...], "expected_failure": reason | null,
                               "thresholds": {...}, "gated": [keys], "not_gated": [keys],
                               "test": node id}, ...},
     "not_run": [analyses of the suite that did not run for this pair]}

"certified" means every analysis that ran met its gated thresholds; it certifies those analyses
and criteria only (`not_run` lists the other analyses; `not_gated` the thresholds that judged
nothing, reported numbers with no grounded default: docs/thresholds.md). "incomplete" means an analysis ran but produced no result (an
error before its verdict). A declared expected failure is still "not certified": the claim
failed, as expected.
"""

from __future__ import annotations

from qcheck.analyses import ANALYSES
CERTIFICATE_SCHEMA = "qcheck.certificate"
CERTIFICATE_VERSION = 1


def certificates(results: dict) -> dict[str, dict]:
    """The certificate of every pair in `results`, by pair id."""
    pairs = {p["id"]: p for p in results["pairs"]}
    by_pair: dict[str, list[dict]] = {}
    for test in results["tests"]:
        by_pair.setdefault(test["pair"], []).append(test)
    return {pair_id: certificate(pair_id, pairs.get(pair_id), tests, results)
            for pair_id, tests in sorted(by_pair.items())}


def certificate(pair_id: str, pair: dict | None, tests: list[dict], results: dict) -> dict:
    analyses = {t["analysis"]: {"verdict": t["verdict"], "outcome": t["outcome"], "reasons": t["failures"],
                                "borderline": t.get("borderline", []),
                                "summary_intervals": (t.get("intervals") or {}).get("summary", {}),
                                "noise_floor": ((t.get("noise_floor") or {}).get("metrics") or {}).get("summary"),
                                "notes": t["notes"], "expected_failure": t["expected_failure"],
                                "thresholds": t["thresholds"], **gates(t), "test": t["nodeid"]}
                for t in sorted(tests, key=_suite_order)}
    verdicts = [a["verdict"] for a in analyses.values()]
    verdict = ("incomplete" if None in verdicts else "not certified" if "fail" in verdicts
               else "certified")
    environment = results["environment"]
    return {"schema": CERTIFICATE_SCHEMA, "schema_version": CERTIFICATE_VERSION, "pair": pair_id,
            "verdict": verdict,
            "model": pair["model"] if pair else None, "quant": pair["quant"] if pair else None,
            "seeds": pair["seeds"] if pair else None,
            "environment": {"device": environment["device"], "versions": environment["versions"]},
            "issued": results["run"]["finished"], "analyses": analyses,
            "not_run": [a for a in ANALYSES if a not in analyses]}


def gates(test: dict) -> dict[str, list[str]]:
    """Which of the analysis's thresholds judged the verdict (`gated`) and which are reported only
    (`not_gated`: None, no grounded default and none set; qcheck/thresholds.py)."""
    analysis, values = ANALYSES.get(test["analysis"]), test.get("thresholds") or {}
    keys = [t.key for t in analysis.thresholds if not t.is_setting] if analysis else []
    return {"gated": [k for k in keys if values.get(k) is not None],
            "not_gated": [k for k in keys if k in values and values[k] is None]}


def _suite_order(test: dict) -> tuple:
    known = test["analysis"] in ANALYSES
    return (not known, list(ANALYSES).index(test["analysis"]) if known else 0, test["analysis"], test["nodeid"])


def borderline_lines(results: dict) -> list[str]:
    """One line per test with a borderline criterion (qcheck/verdict.py), in the tables' order."""
    from qcheck.report.table import Index

    order = {pair_id: i for i, pair_id in enumerate(Index(results).pair_ids)}
    return [f"{t['pair']} {t['analysis']}: {'; '.join(t['borderline'])}"
            for t in sorted(results["tests"], key=lambda t: (order[t["pair"]], _suite_order(t)))
            if t.get("borderline")]


def failed_lines(results: dict, *, expected: bool | None = None) -> list[str]:
    """One line per failed threshold verdict or test without a result, in the tables' order.

    expected: None for all, True for declared expected failures (xfailed) only, False for the rest."""
    from qcheck.report.table import Index

    order = {pair_id: i for i, pair_id in enumerate(Index(results).pair_ids)}
    out = []
    for test in sorted(results["tests"], key=lambda t: (order[t["pair"]], _suite_order(t))):
        xfailed = test["outcome"] == "xfailed"
        if expected is not None and xfailed != expected:
            continue
        head = f"{test['pair']} {test['analysis']}" + (" [expected failure]" if xfailed else "")
        if test["verdict"] == "fail":
            out.append(f"{head}: {'; '.join(test['failures'])}")
        elif test["verdict"] is None and test["outcome"] in ("error", "failed"):
            out.append(f"{head}: no result ({test['outcome']} before the verdict)")
    return out
