"""Reports from synthetic results (report_data.py; no model): results.json conforms to its schema,
merging xdist partials equals the serial document, index.html refers only to files that exist,
plots are real PNGs, a second report replaces the first, and the tables say what the study's did."""

import json
import re
import struct
from types import SimpleNamespace

import pytest
import report_data as data

from qcheck.quantize.spec import CheckpointRef, QuantSpec
from qcheck.report import certificate, table
from qcheck.report.merge import merge
from qcheck.suite.progress import Progress, terminal_progress
from qcheck.report.results import dumps, outcome_of
from qcheck.report.schema import SCHEMA, comparable, validate
from qcheck.report.write import RESULTS, ReportDirError, check_directory, render, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def results():
    return data.results_document()


def test_results_conform_to_the_schema_after_a_json_round_trip(results):
    assert validate(json.loads(dumps(results))) == []


@pytest.mark.parametrize("edit, problem", [
    (lambda r: r.pop("environment"), "(top): missing 'environment'"),
    (lambda r: r["tests"][0].update(outcome="weird"), "tests[0].outcome: 'weird' is not one of"),
    (lambda r: r["pairs"][1]["model"].update(n_params="big"), "pairs[1].model.n_params: expected integer"),
    (lambda r: r.update(schema_version=99), "schema_version: 99 is not 1"),
    (lambda r: r["run"].update(extra=1), "run: unexpected key 'extra'"),
])
def test_the_validator_names_what_is_wrong(results, edit, problem):
    broken = json.loads(dumps(results))
    edit(broken)
    assert any(p.startswith(problem) for p in validate(broken)), validate(broken)


def test_nan_is_written_as_null():
    result = data.synthetic_result("circuits", 2, 0.5)
    entry = data.entry_for_test(nodeid="t", case=data.cases()[0][0], analysis="circuits", outcome="passed",
                                result=type(result)(**{**result.__dict__, "correlation": float("nan")}),
                                thresholds=data.Thresholds())
    assert entry["metrics"]["summary"]["correlation"] is None
    dumps(entry)  # strict JSON: would raise on NaN


def test_the_schema_documents_every_field():
    def undocumented(schema, where):
        for key, sub in schema.get("properties", {}).items():
            yield from undocumented(sub, f"{where}.{key}")
        if "items" in schema:
            yield from undocumented(schema["items"], f"{where}[]")

    assert SCHEMA["description"] and list(undocumented(SCHEMA, "")) == []


def phase(outcome: str, xfail: bool = False) -> SimpleNamespace:
    report = SimpleNamespace(passed=outcome == "passed", failed=outcome == "failed", skipped=outcome == "skipped")
    if xfail:
        report.wasxfail = "declared"
    return report


@pytest.mark.parametrize("phases, expected", [
    ({"setup": phase("passed"), "call": phase("passed"), "teardown": phase("passed")}, "passed"),
    ({"setup": phase("passed"), "call": phase("failed"), "teardown": phase("passed")}, "failed"),
    ({"setup": phase("failed"), "teardown": phase("passed")}, "error"),
    ({"setup": phase("skipped"), "teardown": phase("passed")}, "skipped"),
    ({"setup": phase("passed"), "call": phase("skipped", xfail=True)}, "xfailed"),
    ({"setup": phase("passed"), "call": phase("passed", xfail=True)}, "xpassed"),
    ({"setup": phase("passed"), "call": phase("passed"), "teardown": phase("failed")}, "error"),
    ({}, "error"),
])
def test_outcome_of_a_tests_phases(phases, expected):
    assert outcome_of(phases) == expected


# --- merging xdist partials --------------------------------------------------------------------
def test_merged_partials_equal_the_serial_document(results):
    everything = data.cases()
    # Under --dist load a pair's tests are spread over workers: both build it (one from the cache).
    gw0 = data.partial("gw0", everything, data.ANALYSIS_NAMES[:3])
    gw1 = data.partial("gw1", everything, data.ANALYSIS_NAMES[3:], worker_seed=1)
    merged = merge([gw1, gw0], run=dict(data.RUN), environment=results["environment"])
    assert comparable(merged) == comparable(results)
    assert merged["run"]["workers"] == ["gw0", "gw1"] and merged["run"]["notes"] == []
    assert [b["worker"] for b in merged["pairs"][0]["builds"]] == ["gw0", "gw1"]
    assert validate(merged) == []


def test_merge_notes_a_pair_built_differently_by_two_workers(results):
    gw0 = data.partial("gw0", data.cases()[:1], ("activations",))
    gw1 = data.partial("gw1", data.cases()[:1], ("attention",))
    gw1["pairs"][0]["quant"]["weight_digest"] = "something else"
    merged = merge([gw0, gw1], run=dict(data.RUN), environment=results["environment"])
    assert len(merged["pairs"]) == 1
    assert "built it differently" in merged["run"]["notes"][0]


# --- the report directory ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def report(tmp_path_factory, results):
    directory = tmp_path_factory.mktemp("report")
    files = write_report(json.loads(dumps(results)), directory)
    return directory, files


def test_every_file_the_report_lists_exists_and_index_links_only_to_them(report):
    from qcheck.report.html import links

    directory, files = report
    assert sorted(str(p.relative_to(directory)) for p in directory.rglob("*")
                  if p.is_file() and not p.name.startswith(".")) == files
    page = (directory / "index.html").read_text()
    assert links(page) and set(links(page)) <= set(files)
    assert all(f"{pair}/{analysis}.png" in links(page) for pair, _ in
               [(c.id, n) for c, n in data.cases()] for analysis in data.ANALYSIS_NAMES)


def png_size(blob: bytes) -> tuple[int, int]:
    assert blob[:8] == PNG_SIGNATURE and blob[12:16] == b"IHDR"
    return struct.unpack(">II", blob[16:24])


def test_plots_are_png_images_with_something_drawn(report):
    from matplotlib.image import imread

    directory, files = report
    pngs = [f for f in files if f.endswith(".png")]
    assert len(pngs) == len(data.cases()) * len(data.ANALYSIS_NAMES) + 1  # + scaling.png
    for name in pngs:
        width, height = png_size((directory / name).read_bytes())
        pixels = imread(directory / name)
        assert width > 200 and height > 200 and pixels.std() > 0.05, name


def test_results_json_and_certificates_conform(report):
    directory, files = report
    assert validate(json.loads((directory / RESULTS).read_text())) == []
    cert = json.loads((directory / "zoo-small-gptq-w4" / "certificate.json").read_text())
    assert cert["verdict"] == "certified" and cert["quant"]["calibration"]["digest"] == "c0ffee"
    assert cert["model"]["weight_digest"] == "fp-zoo-small" and len(cert["quant"]["weight_digest"]) == 64
    assert list(cert["analyses"]) == list(certificate.ANALYSES)


def test_certificate_verdicts(results):
    certs = certificate.certificates(results)
    assert certs["zoo-small-rtn-w4"]["verdict"] == "not certified"
    tests = [t for t in results["tests"] if t["pair"] == "zoo-large-gptq-w4"]
    tests[0] = {**tests[0], "verdict": None, "outcome": "error", "metrics": None}
    cert = certificate.certificate("zoo-large-gptq-w4", None, tests[:2], results)
    assert cert["verdict"] == "incomplete" and "fidelity" in cert["not_run"]


def test_a_second_report_replaces_the_first_and_leaves_other_files(tmp_path):
    first = data.results_document(analyses=("fidelity",))  # few plots: this is about files
    write_report(first, tmp_path)
    (tmp_path / "my-notes.txt").write_text("mine")
    assert "replaced the report" in check_directory(tmp_path)
    second = data.results_document(analyses=("fidelity",))
    second["tests"] = [t for t in second["tests"] if t["pair"] == "zoo-small-gptq-w4"]
    second["pairs"] = [p for p in second["pairs"] if p["id"] == "zoo-small-gptq-w4"]
    files = write_report(second, tmp_path)
    assert not (tmp_path / "zoo-small-rtn-w4").exists()
    assert (tmp_path / "my-notes.txt").read_text() == "mine"
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png")] == ["zoo-small-gptq-w4/fidelity.png"]
    assert json.loads((tmp_path / RESULTS).read_text())["run"]["files"] == files


def test_check_directory_creates_a_new_one(tmp_path):
    assert check_directory(tmp_path / "a" / "b") is None and (tmp_path / "a" / "b").is_dir()


@pytest.mark.parametrize("setup, message", [
    (lambda d: (d.mkdir(), (d / "x.txt").write_text("x")), "holds other files (x.txt) and no qcheck report"),
    (lambda d: d.write_text("a file"), "is a file, not a directory"),
    (lambda d: (d.parent / "file").write_text("x"), "not writable"),
], ids=["foreign-files", "a-file", "under-a-file"])
def test_check_directory_refuses_with_the_directorys_name(tmp_path, setup, message):
    directory = tmp_path / "out"
    setup(directory)
    target = directory if "not writable" not in message else tmp_path / "file" / "out"
    with pytest.raises(ReportDirError, match=re.escape(f"--qcheck-report {target}: ") + ".*" + re.escape(message)):
        check_directory(target)


def test_a_plot_that_fails_is_a_note_not_a_lost_report():
    broken = data.results_document(analyses=("circuits",))
    broken["tests"][0]["metrics"] = {"summary": {}}
    files = render(broken)
    assert "index.html" in files and f"{broken['tests'][0]['pair']}/circuits.png" not in files
    assert any(n.startswith(f"plot {broken['tests'][0]['pair']}/circuits.png not drawn: KeyError")
               for n in broken["run"]["notes"])


# --- tables ------------------------------------------------------------------------------------
def test_scaling_table_is_the_studys_headline(results):
    t = table.scaling_table(results)
    assert t.headers == ("model", "params", "bits", "rtn survival", "gptq survival", "rtn corr", "gptq corr")
    assert [row[:5] for row in t.rows] == [("zoo-small", "80k", "w4", "0/2 (0%)", "2/2 (100%)"),
                                          ("zoo-large", "270k", "w4", "1/2 (50%)", "2/2 (100%)")]
    text = table.to_text(t)
    assert len({len(line) for line in text[1:3]}) == 1  # header and rule line up
    markdown = table.to_markdown(t)
    assert "|---|---:|---:|---:|---:|---:|---:|" in markdown and "| zoo-small | 80k | w4 |" in markdown


def test_scaling_table_without_circuits_is_none_and_pair_table_stays():
    results = data.results_document(analyses=("activations",))
    assert table.scaling_table(results) is None
    rows = table.pair_table(results).rows
    assert [r[5] for r in rows] == ["0.700", "0.990", "0.900", "0.997"] and rows[0][3] == table.MISSING


@pytest.mark.parametrize("n, text", [(124_000_000, "124M"), (1_414_000_000, "1.4B"), (132_864, "133k"),
                                     (2_775_000_000, "2.8B"), (405_000_000, "405M"), (None, "–")])
def test_params_are_written_as_the_study_does(n, text):
    assert table.fmt_params(n) == text


# --- progress ----------------------------------------------------------------------------------
def test_progress_completes_its_line_with_the_time_and_outcome():
    written = []
    progress = Progress(begin=written.append, end=written.append)
    with progress.step("zoo-x-rtn-w4: quantize") as step:
        step.outcome = "from cache"
    with pytest.raises(KeyError), progress.step("broken"):
        raise KeyError
    assert written[0] == "qcheck: zoo-x-rtn-w4: quantize ..." and written[1].endswith(" s (from cache)")
    assert written[3].startswith(" failed after")


def test_a_long_step_says_what_it_is_doing_on_its_line():
    """GPTQ names each block as it starts it, after the calibration (qcheck/quantize/cache.py)."""
    import tempfile

    from qcheck.quantize.cache import load_or_quantize
    from qcheck.quantize.spec import parse_quant_spec
    from tests.helpers import build_tiny

    written = []
    progress = Progress(begin=written.append, end=written.append, more=written.append)
    with tempfile.TemporaryDirectory() as cache, progress.step("tiny-gptq-w4: quantize") as step:
        load_or_quantize(build_tiny("gpt2").eval(), parse_quant_spec("gptq-w4-n8-len16"), cache_dir=cache,
                         progress=step.say)
    assert written[:4] == ["qcheck: tiny-gptq-w4: quantize ...", " calibration", " block 1/2", " block 2/2"]
    assert written[4].endswith(" s") and len(written) == 5
    with Progress().step("silent") as step:
        step.say("nothing is written")


def test_progress_shows_under_q_and_is_silent_under_qq_in_ci_and_in_workers(monkeypatch):
    with Progress().step("nothing") as step:
        step.outcome = "quiet"

    def config(verbosity=0, **extra):
        return SimpleNamespace(get_verbosity=lambda: verbosity, pluginmanager=None, **extra)

    monkeypatch.delenv("CI", raising=False)
    assert not terminal_progress(config(-1)).silent  # -q: a silent minute is what -q users hit
    assert terminal_progress(config(-2)).silent
    assert terminal_progress(config(0, workerinput={"workerid": "gw0"})).silent
    monkeypatch.setenv("CI", "true")
    assert terminal_progress(config(0)).silent
    monkeypatch.delenv("CI")
    assert not terminal_progress(config(0)).silent


def test_terminal_summary_lists_failed_verdicts_up_to_a_limit(results, monkeypatch):
    from qcheck.report import run as run_module

    monkeypatch.setattr(run_module, "MAX_FAILED", 3)
    run = run_module.ReportRun(directory=None, worker=None, args=[], device="cpu")
    run.results = results
    lines = run.summary_lines(verbosity=0, width=80)
    start = lines.index("failed threshold verdicts:")
    assert lines[start + 1].startswith("  zoo-small-rtn-w4 activations: resid_post cosine below 0.95")
    assert lines[start + 4] == f"  ... and {len(certificate.failed_lines(results)) - 3} more"
    assert "Per (model, quantizer)" not in run.summary_lines(verbosity=-1)


def test_terminal_summary_prints_each_quantizers_notes_once(results):
    from qcheck.report import run as run_module

    doc = json.loads(dumps(results))
    note = "checkpoint mine: tokenizer.json: a tokenizer with no vocabulary but its 2 special token(s); ignored"
    for pair in doc["pairs"][:2]:  # one checkpoint's note, seen by two pairs, is printed once
        pair["quant"]["notes"] = [note]
    run = run_module.ReportRun(directory=None, worker=None, args=[], device="cpu")
    run.results = doc
    lines = run.summary_lines(verbosity=0, width=200)
    start = lines.index("quantizer notes:")
    assert lines[start + 1] == f"  {note}" and lines[start + 2] == ""
    for pair in doc["pairs"]:
        pair["quant"].pop("notes", None)
    assert "quantizer notes:" not in run.summary_lines(verbosity=0, width=200)


def test_a_checkpoint_gets_its_own_column_at_its_specs_bit_width(results):
    doc = json.loads(dumps(results))
    pair = next(p for p in doc["pairs"] if p["id"] == "zoo-small-gptq-w4")
    doc["pairs"].append({**pair, "id": "zoo-small-checkpoint:mine",
                         "quant": {**pair["quant"], "name": "checkpoint:mine", "method": "checkpoint:mine"}})
    doc["tests"] += [{**t, "pair": "zoo-small-checkpoint:mine"} for t in doc["tests"] if t["pair"] == pair["id"]]
    t = table.scaling_table(doc)
    assert "checkpoint:mine survival" in t.headers
    assert t.rows[0][t.headers.index("checkpoint:mine survival")] == "2/2 (100%)"
    files = render(doc)
    assert "zoo-small-checkpoint_mine/circuits.png" in files


def test_a_checkpoint_named_like_a_spec_keeps_its_whole_name_as_its_method(results):
    case = data.Case("zoo-small", CheckpointRef("gptqmodel-gptq-w4g32"))
    pair = data.fake_pair(case, n_layers=2, spec=QuantSpec("checkpoint", bits=4, group_size=32))  # its config's
    doc = json.loads(dumps(results))
    doc["pairs"].append(data.entry_for_pair(pair, worker="main"))
    doc["tests"].append(data.entry_for_test(
        nodeid=f"tests/certify/test_circuits.py::test_induction_heads[{case.id}]", case=case,
        analysis="circuits", outcome="passed", result=data.synthetic_result("circuits", 2, 0.02),
        thresholds=data.Thresholds()))
    assert validate(json.loads(dumps(doc))) == []
    t = table.scaling_table(doc)
    column = t.headers.index("checkpoint:gptqmodel-gptq-w4g32 survival")
    assert [row[2] for row in t.rows if row[column] != table.MISSING] == ["w4"]
    assert not any("gptqg32" in header for header in t.headers)
    assert ("zoo-small", "checkpoint:gptqmodel-gptq-w4g32") in {row[:2] for row in table.pair_table(doc).rows}


def test_a_pair_never_built_is_named_by_its_tests(results):
    doc = json.loads(dumps(results))
    doc["pairs"] = [p for p in doc["pairs"] if p["id"] != "zoo-large-gptq-w4"]
    for test in doc["tests"]:
        if test["pair"] == "zoo-large-gptq-w4":
            test.update(metrics=None, verdict=None, outcome="error")
    row = next(r for r in table.pair_table(doc).rows if r[1] == "gptq-w4" and r[0] == "zoo-large")
    assert row[-1].startswith("pass (no result: ")
    t = table.scaling_table(doc)  # in the gptq column at w4, not a column and a row of its own
    assert t.headers == ("model", "params", "bits", "rtn survival", "gptq survival", "rtn corr", "gptq corr")
    assert [(r[2], r[3] != table.MISSING, r[4]) for r in t.rows if r[0] == "zoo-large"] == [("w4", True, table.MISSING)]


def test_results_without_the_quantizer_names_stay_readable(results):
    old = json.loads(dumps(results))  # as written before pairs had method/bits and tests model/quant
    for pair in old["pairs"]:
        del pair["quant"]["method"], pair["quant"]["bits"]
    for test in old["tests"]:
        del test["model"], test["quant"]
    assert validate(old) == []
    rows = table.scaling_table(old).rows  # each quantizer's name whole: its own column
    assert [row[:3] for row in rows] == [("zoo-small", "80k", "w4"), ("zoo-large", "270k", "w4")]


def test_the_certificate_and_the_terminal_say_which_thresholds_gated(results):
    from qcheck.report import run as run_module
    from qcheck.thresholds import Thresholds

    cert = certificate.certificates(results)["zoo-small-rtn-w4"]["analyses"]
    assert cert["activations"]["gated"] == ["min_resid_cosine"] and cert["activations"]["not_gated"] == []
    assert cert["fidelity"]["gated"] == [] and set(cert["fidelity"]["not_gated"]) == {
        "max_final_kl", "min_top1_agreement", "max_loss_increase"}
    run = run_module.ReportRun(directory=None, worker=None, args=[], device="cpu")
    run.results = results
    lines = run.summary_lines(verbosity=0, width=100)
    start = next(i for i, line in enumerate(lines) if line.startswith("reported, not gated"))
    listed = " ".join(lines[start + 1: lines.index("", start)])
    assert [key.strip() for key in listed.split(",")] == Thresholds().ungated()
    doc = json.loads(dumps(results))
    for t in doc["tests"]:
        t["thresholds"] = Thresholds.suggested().as_dict()
    run.results = doc
    assert not any(line.startswith("reported, not gated") for line in run.summary_lines(verbosity=0))


def test_a_models_noise_floor_is_a_row_before_its_pairs(results):
    doc = json.loads(dumps(results))
    for t in doc["tests"]:
        if t["model"] == "zoo-small":
            t["noise_floor"] = {"source": "test", "metrics": {"summary": {
                "min_resid_cosine": 0.9999999, "mean_jsd": 1e-13, "survival": 1.0, "kl": 2e-12,
                "correlation": 1.0}}}
    validate(doc)
    rows = table.pair_table(doc).rows
    floor = [r for r in rows if r[1] == table.FLOOR_LABEL]
    assert len(floor) == 1 and floor[0][0] == "zoo-small"
    assert rows.index(floor[0]) == min(i for i, r in enumerate(rows) if r[0] == "zoo-small")
    assert "1−1e-07" in floor[0] and "1e-13" in floor[0] and "1.000" in floor[0] and floor[0][-1] == table.MISSING
    assert table.FLOOR_LABEL in table.pair_table(doc).note
    assert certificate.certificates(doc)["zoo-small-rtn-w4"]["analyses"]["fidelity"]["noise_floor"]["kl"] == 2e-12
    assert not any(r[1] == table.FLOOR_LABEL for r in table.pair_table(results).rows)   # none measured
