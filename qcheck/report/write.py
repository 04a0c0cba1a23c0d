"""Write a report directory from a results document, replacing the previous report in it.

    DIR/results.json            every metric (results.py); written last
    DIR/index.html              tables, failed verdicts and plots (html.py)
    DIR/scaling.md              the tables in Markdown (table.py)
    DIR/scaling.png             survival and correlation vs parameters (if circuits ran)
    DIR/<pair>/certificate.json one per (model, quantizer) (certificate.py)
    DIR/<pair>/<analysis>.png   one per analysis per pair (plots.py)

Two runs never mix: `check_directory` (at configure time) accepts a new or empty directory or one
holding a qcheck report, and refuses anything else; `write_report` (at the end of the session)
writes the new report under a lock and removes the previous report's files that the new one does
not overwrite (`run.files` of the old results.json). Files that are not part of a report are
never touched.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from filelock import FileLock

from qcheck.files import directory_problem, write_atomic
from qcheck.report import certificate as certificates_
from qcheck.report import table
from qcheck.report.html import render_index
from qcheck.report.results import dumps
from qcheck.report.schema import SCHEMA_ID

RESULTS = "results.json"
LOCK = ".qcheck-report.lock"


class ReportDirError(ValueError):
    """The report directory cannot be used; the message names it and says why."""


def previous_report(directory: Path) -> dict | None:
    """The results document of the report already in `directory`, or None."""
    try:
        data = json.loads((directory / RESULTS).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("schema") == SCHEMA_ID else None


def check_directory(directory: Path) -> str | None:
    """Create `directory` if needed and check it can hold a report; returns a note when a previous
    report will be replaced. Raises ReportDirError naming the directory."""
    where = f"--qcheck-report {directory}"
    problem = directory_problem(directory)
    if problem:
        raise ReportDirError(f"{where}: {problem}")
    previous = previous_report(directory)
    if previous is not None:
        return f"replaced the report of the run finished {previous.get('run', {}).get('finished', '?')} in {directory}"
    others = sorted(p.name for p in directory.iterdir() if p.name != LOCK)
    if others:
        shown = ", ".join(others[:3]) + (" ..." if len(others) > 3 else "")
        raise ReportDirError(f"{where}: the directory holds other files ({shown}) and no qcheck report; "
                             f"give a new or empty directory, or one a previous --qcheck-report wrote")
    return None


def slugs(pair_ids: list[str]) -> dict[str, str]:
    """A folder name per pair id, unique (hub ids have "/", file: specs any character)."""
    out: dict[str, str] = {}
    for pair_id in sorted(pair_ids):
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", pair_id).strip("._") or "pair"
        if slug in out.values():
            slug += "-" + hashlib.sha1(pair_id.encode()).hexdigest()[:8]
        out[pair_id] = slug
    return out


def render(results: dict) -> dict[str, bytes | str]:
    """Every file of the report but results.json, by path relative to the report directory.

    A plot that cannot be drawn is left out with a note in results["run"]["notes"]."""
    from qcheck.report import plots  # matplotlib: imported only when a report is written
    files: dict[str, bytes | str] = {}
    certs = certificates_.certificates(results)
    folder = slugs(list(certs))
    pair_plots: dict[str, list[tuple[str, str]]] = {}
    for pair_id, cert in certs.items():
        files[f"{folder[pair_id]}/certificate.json"] = dumps(cert)
    for test in results["tests"]:
        path = f"{folder[test['pair']]}/{test['analysis']}.png"
        try:
            figure = plots.plot_test(test, title=test["pair"])
        except Exception as error:  # a plot must never cost the report
            results["run"]["notes"].append(f"plot {path} not drawn: {type(error).__name__}: {error}")
            continue
        if figure is not None:
            files[path] = plots.png_bytes(figure)
            pair_plots.setdefault(test["pair"], []).append((test["analysis"], path))
    scaling_png = None
    points = scaling_points(results)
    if points:
        scaling_png = "scaling.png"
        names = {p["model"]["n_params"]: p["model"]["name"] for p in results["pairs"]}
        files[scaling_png] = plots.png_bytes(plots.plot_scaling(points, names))
    tables = [t for t in (table.scaling_table(results), table.pair_table(results)) if t is not None]
    files["scaling.md"] = "\n".join(table.to_markdown(t) for t in tables) or "no certification results\n"
    files["index.html"] = render_index(results, tables=tables, failures=certificates_.failed_lines(results),
                                       certificates=certs, slugs=folder, plots=pair_plots,
                                       scaling_png=scaling_png)
    return files


def scaling_points(results: dict) -> dict[tuple[str, str, int | None],
                                          list[tuple[int, float | None, float | None]]]:
    """Per quantizer (name, method, bits): (n_params, induction survival, correlation) of every
    model with circuits."""
    index = table.Index(results)
    params = {p["id"]: p["model"]["n_params"] for p in results["pairs"]}
    points: dict[tuple[str, str, int | None], list] = {}
    for test in results["tests"]:
        if test["analysis"] != "circuits" or not test.get("metrics") or test["pair"] not in params:
            continue
        series = (index.model_and_quant(test["pair"])[1], *index.method_and_bits(test["pair"]))
        summary = test["metrics"].get("summary", {})
        points.setdefault(series, []).append((params[test["pair"]], summary.get("survival"),
                                              summary.get("correlation")))
    return points


def write_report(results: dict, directory: Path) -> list[str]:
    """Render and write the report into `directory`, replacing the previous one; returns its files."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with FileLock(directory / LOCK):
        old = previous_report(directory)
        files = render(results)
        results["run"]["files"] = sorted([*files, RESULTS])
        for path, data in files.items():
            write_atomic(directory / path, data.encode() if isinstance(data, str) else data)
        write_atomic(directory / RESULTS, dumps(results).encode())
        if old is not None:
            _remove_stale(directory, set(old.get("run", {}).get("files", [])) - set(results["run"]["files"]))
    return results["run"]["files"]


def _remove_stale(directory: Path, stale: set[str]) -> None:
    root = directory.resolve()
    for name in sorted(stale):
        path = (directory / name).resolve()
        if root not in path.parents:  # a manifest must not reach outside the report
            continue
        path.unlink(missing_ok=True)
        parent = path.parent
        if parent != root and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
