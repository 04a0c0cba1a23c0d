"""`--qcheck-quantizer` and the entry-point group qcheck.quantizers end to end: a user quantizer
joins the matrix as `user:NAME-...`, a bad one is one usage error at collection, a refused return
value is one line per test of its pair, and (slow) the README's example runs through every
analysis with qcheck's rtn-w4 numbers and appears in the report under its name."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from qcheck.models.registry import zoo_names
from qcheck.pair import Case
from qcheck.quantize.spec import parse_quant_spec
from qcheck.suite.matrix import DEFAULT_QUANTS, build_cases, default_user_quants, is_selected

from helpers import plugin_suite, smallest_zoo_model

ROOT = Path(__file__).resolve().parents[2]
ZOO = ["zoo-a", "zoo-b"]
MINE_W4, MINE_W3 = parse_quant_spec("user:mine-w4"), parse_quant_spec("user:mine-w3-g32")
ANALYSES = 6  # tests/certify: one certification test per analysis


def readme_example() -> str:
    """The python block of the README's "Your own quantizer" section."""
    section = (ROOT / "README.md").read_text().split("## Your own quantizer", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


# --- the matrix --------------------------------------------------------------------------

def test_a_quantizer_no_quant_names_runs_at_4_bits_beside_the_selection():
    assert default_user_quants(["mine", "other"], [MINE_W3]) == [parse_quant_spec("user:other-w4")]
    assert default_user_quants(["mine"], [parse_quant_spec("rtn-w4")]) == [MINE_W4]
    cases = build_cases(ZOO, [], [], [MINE_W4])
    assert set(build_cases(ZOO, [], [])) < set(cases) and {Case(m, MINE_W4) for m in ZOO} <= set(cases)
    assert is_selected(Case("zoo-a", MINE_W4), [], [], [MINE_W4])
    assert all(is_selected(Case("zoo-a", q), [], [], [MINE_W4]) for q in DEFAULT_QUANTS)
    assert not is_selected(Case("zoo-a", MINE_W4), ["zoo-b"], [], [MINE_W4])
    assert not is_selected(Case("zoo-a", MINE_W4), [], [MINE_W3], [])


# --- the plugin (pytester, in process) ---------------------------------------------------

PAIR_TEST = """
import pytest
@pytest.mark.activations
def test_certify(pair):
    assert pair.quant.spec == pair.case.quant and pair.quant.notes[0].startswith("user quantizer ")
"""


@pytest.fixture(scope="module")
def loaded_once():
    """A zoo model loaded outside pytester first: an in-process pytester run drops the modules first
    imported inside it, and loading a model imports torch.distributed modules that cannot be
    imported twice in one process (tests/conftest.py imports TransformerLens early for the same reason)."""
    from qcheck.models.load import load_model

    load_model(smallest_zoo_model())


@pytest.fixture
def suite(loaded_once, pytester, monkeypatch, tmp_path):
    monkeypatch.setenv("QCHECK_CACHE_DIR", str(tmp_path / "cache"))
    suite = plugin_suite(pytester, PAIR_TEST)
    # a module name of its own per test: pytester runs in this process, which keeps sys.modules
    module = f"scratch_{abs(hash(str(pytester.path))) % 10**8}"
    pytester.makepyfile(**{module: readme_example() + "\n\ndef nothing(model, calibration, options):\n    pass\n"})
    pytester.syspathinsert()
    suite.module = module
    return suite


def collected(result) -> list[str]:
    return [line.split("[", 1)[1].rstrip("]") for line in result.outlines if "::test_certify[" in line]


def test_a_user_quantizer_joins_the_matrix_under_its_name(suite):
    model, target = smallest_zoo_model(), f"{suite.module}:my_rtn"
    alone = suite.runpytest("--collect-only", "-q", "--qcheck-model", model, "--qcheck-quantizer", target)
    assert collected(alone) == [f"{model}-{q}" for q in DEFAULT_QUANTS] + [f"{model}-user:my_rtn-w4"]
    named = suite.runpytest("--collect-only", "-q", "--qcheck-model", model, f"--qcheck-quantizer=fast={target}",
                            "--qcheck-quant", "user:fast-w3-g32", "--qcheck-quant", "rtn-w4")
    assert collected(named) == [f"{model}-rtn-w4", f"{model}-user:fast-w3-g32"]
    total = len(zoo_names()) * len(DEFAULT_QUANTS) + 1  # the whole matrix is generated, the rest deselected
    named.stdout.fnmatch_lines([f"2/{total} tests collected ({total - 2} deselected)*"])


@pytest.mark.parametrize("args, message", [
    (["--qcheck-quantizer", "nowhere_at_all:fn"],
     "--qcheck-quantizer nowhere_at_all:fn: module nowhere_at_all does not import (ModuleNotFoundError: "
     "No module named 'nowhere_at_all'); put it on sys.path (PYTHONPATH, or install it) or fix its imports"),
    (["--qcheck-quantizer", "{module}:missing"], "--qcheck-quantizer {module}:missing: {module} has no attribute 'missing'"),
    (["--qcheck-quantizer", "rtn={module}:my_rtn"], "*'rtn' is qcheck's built-in method rtn; give yours another name*"),
    (["--qcheck-quant", "user:ghost-w4"], "--qcheck-quant user:ghost-...: no user quantizer ghost; name one with "
                                          "--qcheck-quantizer ghost=module:callable*"),
])
def test_a_bad_user_quantizer_is_one_usage_error(suite, args, message):
    args = [arg.format(module=suite.module) for arg in args]
    result = suite.runpytest("--collect-only", "--qcheck-model", smallest_zoo_model(), *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message.format(module=suite.module)}*"])


def test_the_pair_is_built_from_what_it_returns_and_a_refusal_is_one_line(suite):
    model = smallest_zoo_model()
    result = suite.runpytest("-q", "-p", "no:cacheprovider", "--qcheck-model", model,
                             "--qcheck-quantizer", f"{suite.module}:my_rtn", "--qcheck-quantizer",
                             f"{suite.module}:nothing", "--qcheck-quant", "user:my_rtn-w4-n8-len16",
                             "--qcheck-quant", "user:nothing-w4-n8-len16")  # a short calibration: seconds
    outcomes = result.parseoutcomes()
    assert (outcomes.get("passed"), outcomes.get("errors")) == (1, 1), result.outlines[-20:]
    result.stdout.fnmatch_lines([f"user quantizer user:nothing-w4-n8-len16 ({suite.module}:nothing) on {model}: returned "
                                 f"NoneType (a function that quantizes in place must still return the model)*"])
    assert not any("Traceback" in line or "During handling" in line for line in result.outlines)


# --- an installed entry point (a real distribution on a subprocess's path) ----------------

def _run(args: list[str], tmp_path: Path, *paths: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "QCHECK_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([*map(str, paths), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "pytest", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_an_installed_entry_point_is_found_and_loaded_when_named(tmp_path):
    site = tmp_path / "site"
    (site / "qcheck_demo_kernels-1.0.dist-info").mkdir(parents=True)
    (site / "qcheck_demo_kernels-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: qcheck-demo-kernels\nVersion: 1.0\n")
    (site / "qcheck_demo_kernels-1.0.dist-info" / "entry_points.txt").write_text(
        "[qcheck.quantizers]\ndemo_rtn = qcheck_demo_kernels:my_rtn\nbroken = qcheck_demo_missing:fn\n")
    (site / "qcheck_demo_kernels.py").write_text(readme_example())
    model = smallest_zoo_model()
    common = ["tests/certify", "--collect-only", "-q", "-p", "no:cacheprovider", "--qcheck-model", model]
    named = _run([*common, "--qcheck-quant", "user:demo_rtn-w4"], tmp_path, site)
    ids = sorted({line.split("[", 1)[1] for line in named.stdout.splitlines() if "[" in line})
    assert named.returncode == 0 and ids == [f"{model}-user:demo_rtn-w4]"], named.stdout[-2000:] + named.stderr[-2000:]
    assert named.stdout.count(f"[{model}-user:demo_rtn-w4]") == ANALYSES
    unnamed = _run(common, tmp_path, site)  # installed, not named: not in the matrix, not imported
    assert unnamed.returncode == 0 and "user:" not in unnamed.stdout, unnamed.stderr[-2000:]
    broken = _run([*common, "--qcheck-quant", "user:broken-w4"], tmp_path, site)
    assert broken.returncode == pytest.ExitCode.USAGE_ERROR and (
        "entry point broken = qcheck_demo_missing:fn (qcheck-demo-kernels 1.0, group qcheck.quantizers): module "
        "qcheck_demo_missing does not import") in broken.stderr


# --- the README's example through the whole matrix ----------------------------------------

@pytest.mark.slow
def test_the_readme_quantizer_certifies_like_rtn_w4_and_is_reported_under_its_name(tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "my_quantizers.py").write_text(readme_example())
    model, report = smallest_zoo_model(), tmp_path / "report"
    done = _run(["tests/certify", "-q", "-p", "no:cacheprovider", "-p", "my_quantizers", "--qcheck-quantizer",
                 "my_quantizers:my_rtn", "--qcheck-model", model, "--qcheck-quant", "user:my_rtn-w4",
                 "--qcheck-quant", "rtn-w4", f"--qcheck-report={report}"], tmp_path, scratch, timeout=1800)
    results = json.loads((report / "results.json").read_text())
    tests = {(t["quant"]["name"], t["analysis"]): t for t in results["tests"]}
    mine = {analysis: t for (quant, analysis), t in tests.items() if quant == "user:my_rtn-w4"}
    ours = {analysis: t for (quant, analysis), t in tests.items() if quant == "rtn-w4"}
    assert len(mine) == ANALYSES and mine.keys() == ours.keys(), done.stdout[-3000:]
    for analysis, test in mine.items():  # the same grid as rtn-w4, so the same numbers
        assert (test["verdict"], test["failures"], test["metrics"]) == \
            (ours[analysis]["verdict"], ours[analysis]["failures"], ours[analysis]["metrics"]), analysis
        # nothing declares user:my_rtn-w4 an expected failure: it passes or fails as its verdict says
        assert test["outcome"] == {"pass": "passed", "fail": "failed"}[test["verdict"]], (analysis, test["outcome"])
    failing = sum(test["verdict"] == "fail" for test in mine.values())
    assert done.returncode == (1 if failing else 0), done.stdout[-3000:] + done.stderr[-3000:]
    pairs = {pair["quant"]["name"]: pair for pair in results["pairs"]}
    quant = pairs["user:my_rtn-w4"]["quant"]
    assert (quant["method"], quant["bits"], quant["fields"]["name"]) == ("user:my_rtn", 4, "my_rtn")
    assert quant["weight_digest"] == pairs["rtn-w4"]["quant"]["weight_digest"]  # bit for bit
    assert quant["notes"][0].startswith("user quantizer my_rtn = my_quantizers:my_rtn returned the model")
    assert f"{model}-user:my_rtn-w4" in (report / "index.html").read_text()
