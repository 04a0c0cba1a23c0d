"""Declared expected failures: which (model, quantizer, analysis) must fail which criteria.

One reviewed file, tests/certify/expected_failures.toml, one [[xfail]] table per case:

    [[xfail]]
    model = "zoo-gpt2-2l48"          # exact names, no patterns: every entry is one measured case
    quant = "gptq-w3"
    analysis = "activations"         # a certification marker
    fails = ["min_resid_cosine"]     # the criteria that fail (qcheck/verdict.py); all of them
    measured = { min_resid_cosine = 0.8527 }   # what the run that declared it measured
    reason = "resid_post cosine below 0.95 at L1 (0.8527)"   # that run's message

The test fails for real unless exactly `fails` fail (qcheck/verdict.py judge); it then still
compares its baseline, so the numbers of a known-bad case are protected like a passing one's.
The criteria were measured under the default thresholds (and the default induction rule): where
a case runs under other values for them, the declaration does not apply and the verdict is plain.

`python -m qcheck.suite.expected out/results.json` writes the declarations a report's run measured
(every failing verdict), the way this file was made; review the diff before committing it.
No pytest here.
"""

from __future__ import annotations

import json
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from qcheck.analyses import ANALYSES
from qcheck.thresholds import DECLARED, Thresholds
from qcheck.verdict import PRECONDITIONS

def known_criteria() -> tuple[str, ...]:
    """Every criterion a declaration may name: the declared bounds (not settings) and PRECONDITIONS."""
    return (*(key for key, t in DECLARED.items() if not t.choices), *PRECONDITIONS)


_KEYS = {"model", "quant", "analysis", "fails", "measured", "reason"}


@dataclass(frozen=True)
class ExpectedFailure:
    model: str
    quant: str
    analysis: str
    fails: tuple[str, ...]
    measured: dict[str, float] = field(default_factory=dict, compare=False)
    message: str = ""

    @property
    def reason(self) -> str:
        """One line for reports: the criteria, what was measured, the declaring run's message."""
        values = ", ".join(f"{k}={v:.4g}" for k, v in self.measured.items())
        text = f"fails {', '.join(self.fails)}" + (f" (measured {values})" if values else "")
        return f"{text}: {self.message}" if self.message else text

    def applies(self, thresholds: Thresholds) -> bool:
        """True if `thresholds` are the defaults for every declared criterion and for every
        setting of the analysis (e.g. the induction rule): what the declaration was measured under."""
        settings = [t.key for t in ANALYSES[self.analysis].thresholds if t.choices]
        default = Thresholds()
        return all(thresholds[key] == default[key] for key in (*self.fails, *settings) if key in default)


def load_expected_failures(path: Path, analyses: tuple[str, ...] = tuple(ANALYSES)
                           ) -> dict[tuple[str, str, str], ExpectedFailure]:
    """{(model, quant, analysis): entry}; ValueError naming the file, the entry and the fix."""
    if not path.is_file():
        return {}
    try:
        entries = tomllib.loads(path.read_text(encoding="utf-8")).get("xfail", [])
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{path}: not valid TOML ({error})") from None
    declared: dict[tuple[str, str, str], ExpectedFailure] = {}
    for index, entry in enumerate(entries):
        where = f"{path}: [[xfail]] entry {index + 1}"
        missing = {"model", "quant", "analysis", "fails"} - set(entry)
        unknown = set(entry) - _KEYS
        if missing or unknown:
            problem = (f"lacks {', '.join(sorted(missing))}" if missing
                       else f"has unknown keys {', '.join(sorted(unknown))}")
            raise ValueError(f"{where} {problem}; an entry has {', '.join(sorted(_KEYS))} "
                             f"(measured and reason optional)")
        fails = entry["fails"]
        if isinstance(fails, str):
            fails = [fails]
        bad = [c for c in fails if c not in known_criteria()]
        if not fails or bad:
            raise ValueError(f"{where}: fails = {entry['fails']!r} must name one or more criteria of "
                             f"{', '.join(known_criteria())}")
        if entry["analysis"] not in analyses:
            raise ValueError(f"{where}: analysis {entry['analysis']!r} is not one of {', '.join(analyses)}")
        measured = entry.get("measured", {})
        if not isinstance(measured, dict) or set(measured) - set(fails):
            raise ValueError(f"{where}: measured must be a table of values of the declared criteria")
        key = (str(entry["model"]), str(entry["quant"]), str(entry["analysis"]))
        if key in declared:
            raise ValueError(f"{where} declares {'/'.join(key)} again: one entry per case")
        declared[key] = ExpectedFailure(*key, fails=tuple(sorted(fails)),
                                        measured={k: float(v) for k, v in measured.items()},
                                        message=str(entry.get("reason", "")))
    return declared


def declarations_from_results(results: dict) -> str:
    """TOML [[xfail]] tables for every failing verdict in a results.json document."""
    blocks = []
    for test in sorted(results["tests"], key=lambda t: (t["pair"], t["analysis"])):
        criteria = test.get("criteria") or []
        if test.get("verdict") != "fail" or not criteria:
            continue
        pair = next(p for p in results["pairs"] if p["id"] == test["pair"])
        measured = {c["criterion"]: c["value"] for c in criteria if c["value"] is not None}
        fails = sorted({c["criterion"] for c in criteria})
        blocks.append("\n".join([
            "[[xfail]]",
            f"model = {json.dumps(pair['model']['name'])}",
            f"quant = {json.dumps(pair['quant']['name'])}",
            f"analysis = {json.dumps(test['analysis'])}",
            f"fails = [{', '.join(json.dumps(c) for c in fails)}]",
            "measured = { " + ", ".join(f"{k} = {v:.4g}" for k, v in sorted(measured.items())) + " }"
            if measured else "measured = {}",
            f"reason = {json.dumps('; '.join(c['message'] for c in criteria), ensure_ascii=False)}",
        ]))
    return "\n\n".join(blocks) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m qcheck.suite.expected RESULTS_JSON  (a --qcheck-report directory's "
              "results.json); prints [[xfail]] tables for every failing verdict", file=sys.stderr)
        return 2
    sys.stdout.write(declarations_from_results(json.loads(Path(argv[0]).read_text(encoding="utf-8"))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
