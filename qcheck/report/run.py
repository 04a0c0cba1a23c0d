"""One pytest process's part of a report, and the controller's whole.

Every process (serial run, xdist worker) observes its tests' outcomes and, at session end, turns
the results its QcheckSession recorded into a partial (merge.py). A worker hands its partial to
the controller (xdist's `workeroutput`); the controller merges its own and the workers' once,
writes the report directory if asked (write.py) and prints the summary. The plugin's hooks only
call the methods here; nothing imports pytest.
"""

from __future__ import annotations

import json
import textwrap
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from collections.abc import Sequence

from qcheck.report.certificate import borderline_lines, failed_lines
from qcheck.report.merge import merge
from qcheck.report.results import dumps, entry_for_test, environment, outcome_of
from qcheck.report.table import pair_table, scaling_table, to_text
from qcheck.report.write import check_directory, write_report

WORKEROUTPUT_KEY = "qcheck_report"   # config.workeroutput[...] = a partial, as JSON text
MIN_WIDTH = 160                      # a failed verdict's line is cut here at the narrowest (CI logs)
MAX_FAILED = 30                      # failed verdicts listed in the terminal; all are in the report


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class ReportRun:
    """The report's state in one pytest process; the plugin keeps one in config.stash."""

    def __init__(self, *, directory: Path | None, worker: str | None, args: Sequence[str], device: str) -> None:
        """worker: the xdist worker id in a worker, None in the controller (or a serial run)."""
        self.directory, self.worker, self.args, self.device = directory, worker, list(args), device
        self.started = _now()
        self.notes: list[str] = []
        self._observed: dict[str, dict] = {}   # nodeid -> {case, analysis, phases}
        self._partials: list[dict] = []
        self.results: dict | None = None

    @classmethod
    def from_options(cls, *, directory: str | None, worker: str | None, args, device: str) -> "ReportRun":
        """Checks the report directory in the controller (ValueError naming it); see write.py."""
        run = cls(directory=Path(directory).expanduser() if directory else None, worker=worker,
                  args=args, device=device)
        if run.directory is not None and worker is None:
            note = check_directory(run.directory)
            if note:
                run.notes.append(note)
        return run

    # --- every process ---------------------------------------------------------------------
    def observe(self, nodeid: str, case, analysis: str, report) -> None:
        """Keep one phase's outcome (`report` is pytest's TestReport, duck-typed)."""
        entry = self._observed.setdefault(nodeid, {"case": case, "analysis": analysis, "phases": {}})
        kept = SimpleNamespace(passed=report.passed, failed=report.failed, skipped=report.skipped,
                               duration=getattr(report, "duration", 0.0))
        if hasattr(report, "wasxfail"):
            kept.wasxfail = report.wasxfail
        entry["phases"][report.when] = kept

    def partial(self, session) -> dict:
        """This process's pairs and tests from `session.results` (QcheckSession) and what it observed."""
        worker = self.worker or "main"
        pairs: dict[str, dict] = {}
        tests, recorded = [], set()
        for case, analysis, nodeid, result in session.results:
            if case.id not in pairs:
                pairs[case.id] = session.pair_entry(case, worker)
            tests.append(self._test(session, nodeid, case, analysis, result))
            recorded.add(nodeid)
        for nodeid, seen in self._observed.items():
            if nodeid not in recorded and "setup" in seen["phases"]:
                if seen["phases"]["setup"].skipped and not hasattr(seen["phases"]["setup"], "wasxfail"):
                    continue  # skipped before running: not a certification result
                tests.append(self._test(session, nodeid, seen["case"], seen["analysis"], None))
        # the controller's own notes go into the run once (finish), not again through its partial
        notes = list(self.notes) if self.worker else []
        return {"worker": worker, "pairs": list(pairs.values()), "tests": tests, "notes": notes}

    def _test(self, session, nodeid: str, case, analysis: str, result) -> dict:
        seen = self._observed.get(nodeid, {"phases": {}})
        expected = session.expected_failure(case, analysis)
        return entry_for_test(
            nodeid=nodeid, case=case, analysis=analysis,
            # no phase seen for a recorded result: its report went missing; do not guess "passed"
            outcome=outcome_of(seen["phases"]) if seen["phases"] else "error",
            result=result, thresholds=session.thresholds_for(case.model),
            expected_failure=expected.reason if expected else None, device=session.device,
            duration=sum(p.duration for p in seen["phases"].values()), borderline=session.borderline,
            noise_floor=session.noise_floors.get((case.model, analysis)))

    def worker_output(self, session) -> str:
        return dumps(self.partial(session))

    # --- the controller --------------------------------------------------------------------
    def add_worker(self, worker: str, output: dict | None, error) -> None:
        """A worker went down: keep its partial, or note that its results are missing."""
        text = (output or {}).get(WORKEROUTPUT_KEY)
        if text:
            self._partials.append(json.loads(text))
        elif error is not None or output is not None:
            self.notes.append(f"xdist worker {worker} sent no qcheck results"
                              + (f" (it went down: {str(error).strip().splitlines()[-1]})" if error else ""))

    def finish(self, session) -> dict | None:
        """Merge, write the report directory if asked; the merged results (None if no
        certification test ran: then nothing is written)."""
        partials = [*self._partials, self.partial(session)]
        run = {"started": self.started, "finished": _now(), "args": self.args, "notes": list(self.notes),
               "files": []}
        results = merge(partials, run=run, environment=environment(self.device))
        if not results["tests"]:
            return None  # nothing certified (e.g. --collect-only): an earlier report in DIR stays
        if self.directory is not None:
            try:
                write_report(results, self.directory)
            except OSError as error:  # e.g. the disk filled up during the run: keep the summary
                results["run"]["notes"].append(f"report not written to {self.directory}: {error}")
        self.results = results
        return results

    def summary_lines(self, *, verbosity: int, width: int = 120) -> list[str]:
        """The terminal summary: the scaling table, the per-pair table (unless -q) and the
        failed verdicts, one line each, cut at the terminal's width (at least MIN_WIDTH)."""
        if not self.results:
            return [f"no certification test ran: {self.directory} left as it was"] if self.directory else []
        lines: list[str] = []
        tables = [scaling_table(self.results)] + ([pair_table(self.results)] if verbosity >= 0 else [])
        for t in tables:
            if t is not None:
                lines += [*to_text(t), ""]
        failed = failed_lines(self.results, expected=False)
        if failed:
            shown = [_cut(f"  {line}", max(width, MIN_WIDTH)) for line in failed[:MAX_FAILED]]
            more = [f"  ... and {len(failed) - MAX_FAILED} more"] if len(failed) > MAX_FAILED else []
            lines += ["failed threshold verdicts:", *shown, *more, ""]
        undecided = borderline_lines(self.results)
        if undecided:
            shown = [_cut(f"  {line}", max(width, MIN_WIDTH)) for line in undecided[:MAX_FAILED]]
            more = [f"  ... and {len(undecided) - MAX_FAILED} more"] if len(undecided) > MAX_FAILED else []
            lines += ["borderline verdicts (the 95% interval straddles the threshold; "
                      "--qcheck-borderline=fail fails them):", *shown, *more, ""]
        ungated = ungated_keys(self.results)
        if ungated:
            lines += ["reported, not gated (no grounded default: docs/thresholds.md; gate one with "
                      "--qcheck-threshold KEY=VALUE):",
                      *textwrap.wrap(", ".join(ungated), max(width, MIN_WIDTH), initial_indent="  ",
                                     subsequent_indent="  "), ""]
        expected = failed_lines(self.results, expected=True)
        if expected:
            lines += [f"{len(expected)} declared expected failures failed as expected "
                      f"(tests/certify/expected_failures.toml)", ""]
        notes = quantizer_notes(self.results)
        if notes:  # what was ignored or only checked in a quantized model (e.g. a tool's tokenizer)
            lines += ["quantizer notes:", *[_cut(f"  {note}", max(width, MIN_WIDTH)) for note in notes], ""]
        lines += self.results["run"]["notes"]
        if self.directory is not None:
            lines.append(f"report: {self.directory / 'index.html'}")
        return lines


def ungated_keys(results: dict) -> list[str]:
    """The thresholds that judged nothing in some test of the run (None), in declaration order."""
    from qcheck.thresholds import DECLARED

    seen = {key for t in results["tests"] for key, value in (t.get("thresholds") or {}).items() if value is None}
    return [key for key in DECLARED if key in seen]


def quantizer_notes(results: dict) -> list[str]:
    """Each pair's quantizer notes (results.json `pairs[].quant.notes`), once each, in pair order."""
    notes = [note for pair in results["pairs"] for note in pair["quant"].get("notes") or []]
    return list(dict.fromkeys(notes))


def _cut(line: str, width: int) -> str:
    return line if len(line) <= width else line[: width - 1] + "…"
