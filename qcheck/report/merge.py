"""Merge the partial results of xdist workers (and of the controller itself) into one document.

A partial is what one process saw: {"worker": id, "pairs": [...], "tests": [...], "notes": [...]},
entries as in results.py. Workers hand theirs to the controller through xdist's `workeroutput`
(the channel pytest-cov uses), so no partial file ever lands in the report directory and a
crashed worker leaves nothing half-written; the controller merges once, at the end of the session.

Merging is order-free: pairs are deduplicated by id (a pair built by two workers under
`--dist load` keeps one entry with both builds), and everything is sorted, so the merged document
equals the serial run's up to the volatile fields (schema.comparable).
"""

from __future__ import annotations

from qcheck.report.results import results_document


def _identity(pair: dict) -> dict:
    return {k: v for k, v in pair.items() if k != "builds"}


def merge(partials: list[dict], *, run: dict, environment: dict) -> dict:
    """One results document from the partials of every process (see module docstring)."""
    partials = sorted(partials, key=lambda p: p["worker"])
    pairs: dict[str, dict] = {}
    tests, notes, seen = [], [], {}
    for part in partials:
        notes += part.get("notes", [])
        for pair in part["pairs"]:
            known = pairs.get(pair["id"])
            if known is None:
                pairs[pair["id"]] = {**pair, "builds": list(pair["builds"])}
                continue
            if _identity(known) != _identity(pair):
                notes.append(f"pair {pair['id']}: worker {part['worker']} built it differently from "
                             f"{known['builds'][0]['worker']} (digests or settings differ); "
                             f"the first is reported")
            known["builds"] = sorted(known["builds"] + pair["builds"], key=lambda b: b["worker"])
        for test in part["tests"]:
            if test["nodeid"] in seen and seen[test["nodeid"]] != part["worker"]:
                notes.append(f"{test['nodeid']} ran on both {seen[test['nodeid']]} and {part['worker']}")
            seen[test["nodeid"]] = part["worker"]
            tests.append(test)
    workers = [p["worker"] for p in partials if p["worker"] != "main"]
    run = {**run, "workers": workers, "notes": [*run.get("notes", []), *notes]}
    return results_document(run=run, environment=environment, pairs=list(pairs.values()), tests=tests)
