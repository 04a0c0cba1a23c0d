"""`--qcheck-checkpoint DIR` end to end: the checkpoint becomes a quantizer `checkpoint:<name>` of
the named model's matrix, a bad checkpoint is one usage error at collection, and (slow) a zoo
model exported and re-imported certifies with the in-memory quantization's metrics."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qcheck.pair import Case
from qcheck.quantize.spec import CheckpointRef, parse_quant_spec
from qcheck.suite.matrix import DEFAULT_QUANTS, build_cases, is_selected
from qcheck.models.registry import ZOO_DIR

from helpers import build_tiny, plugin_suite, smallest_zoo_model

ROOT = Path(__file__).resolve().parents[2]
ZOO = ["zoo-a", "zoo-b"]
CKPT = CheckpointRef("my-gptq")
RTN_W4, GPTQ_W4 = parse_quant_spec("rtn-w4"), parse_quant_spec("gptq-w4")


def test_a_checkpoint_is_paired_with_the_named_model_only():
    cases = build_cases(ZOO, ["gpt2"], [], [CKPT])
    assert Case("gpt2", CKPT) in cases and Case("zoo-a", CKPT) not in cases
    assert set(build_cases(ZOO, ["gpt2"], [])) < set(cases)  # added, nothing removed


def test_a_checkpoint_adds_to_the_selected_quantizers():
    assert is_selected(Case("gpt2", CKPT), ["gpt2"], [], [CKPT])
    assert all(is_selected(Case("gpt2", q), ["gpt2"], [], [CKPT]) for q in DEFAULT_QUANTS)
    assert is_selected(Case("gpt2", CKPT), ["gpt2"], [GPTQ_W4], [CKPT])
    assert not is_selected(Case("gpt2", RTN_W4), ["gpt2"], [GPTQ_W4], [CKPT])
    assert not is_selected(Case("gpt2", CKPT), ["gpt2"], [], [])


@pytest.fixture(scope="module")
def zoo_checkpoint(tmp_path_factory) -> Path:
    """rtn-w4 of the smallest zoo model, exported with float32 scales (re-imports exactly)."""
    from qcheck.models.load import load_model
    from qcheck.quantize.checkpoint import export_checkpoint
    from qcheck.quantize.spec import parse_quant_spec

    out = tmp_path_factory.mktemp("ckpt") / "zoo-rtn"
    return export_checkpoint(load_model(smallest_zoo_model()).hf, parse_quant_spec("rtn-w4"), out,
                             dtype=torch.float32)


PAIR_TEST = """
import pytest
@pytest.mark.activations
def test_certify(pair):
    assert str(pair.quant.spec) == ("checkpoint-w4" if ":" in pair.case.quant_id else pair.case.quant_id)
"""


@pytest.fixture
def suite(pytester):
    return plugin_suite(pytester, PAIR_TEST)


def test_the_checkpoint_case_is_collected_and_runs(suite, zoo_checkpoint, monkeypatch, tmp_path):
    monkeypatch.setenv("QCHECK_CACHE_DIR", str(tmp_path / "cache"))
    model = smallest_zoo_model()
    # `--opt=DIR`: pytest reads a bare path argument as a test path before the plugin's options exist.
    args = ["--qcheck-model", model, f"--qcheck-checkpoint={zoo_checkpoint}"]
    result = suite.runpytest("--collect-only", "-q", *args)
    result.stdout.fnmatch_lines([f"*test_certify*{model}-checkpoint:zoo-rtn*",
                                 f"{len(DEFAULT_QUANTS) + 1}*tests collected*"])  # the rest deselected
    result = suite.runpytest("-q", "-p", "no:cacheprovider", *args, "-k", "checkpoint")
    assert result.parseoutcomes()["passed"] == 1 and result.ret == pytest.ExitCode.OK


def test_a_bad_checkpoint_is_one_usage_error(suite, zoo_checkpoint, tmp_path):
    model = smallest_zoo_model()
    cases = [
        ([], "--qcheck-checkpoint needs exactly one --qcheck-model, the FP model the checkpoint was quantized from"),
        (["--qcheck-model", model], "checkpoint */nowhere: not a directory"),
    ]
    for args, message in cases:
        result = suite.runpytest("--collect-only", f"--qcheck-checkpoint={tmp_path / 'nowhere'}", *args)
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines([f"*{message}*"])
    from qcheck.quantize.checkpoint import export_checkpoint
    from qcheck.quantize.spec import parse_quant_spec

    fp_type = json.loads((ZOO_DIR / model / "config.json").read_text())["model_type"]
    family, other_type = ("neox", "gpt_neox") if fp_type == "gpt2" else ("gpt2", "gpt2")
    other = export_checkpoint(build_tiny(family), parse_quant_spec("rtn-w4"), tmp_path / "other")
    result = suite.runpytest("--collect-only", "--qcheck-model", model, f"--qcheck-checkpoint={other}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--qcheck-checkpoint {other}: checkpoint {other}: config.json is for "
                                 f"{other_type} but the FP model {model} is {fp_type} (*)*"])


@pytest.mark.slow
def test_exported_zoo_model_certifies_with_the_in_memory_metrics(zoo_checkpoint, tmp_path):
    args = [sys.executable, "-m", "pytest", "tests/certify", "-q", "-p", "no:cacheprovider",
            "--qcheck-model", smallest_zoo_model(), "--qcheck-quant", "rtn-w4",
            f"--qcheck-checkpoint={zoo_checkpoint}", f"--qcheck-report={tmp_path / 'report'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "QCHECK_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode in (0, 1), done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "report" / "results.json").read_text())
    model = smallest_zoo_model()
    by_pair: dict[str, dict] = {}
    for test in results["tests"]:
        by_pair.setdefault(test["pair"], {})[test["analysis"]] = test
    in_memory, imported = by_pair[f"{model}-rtn-w4"], by_pair[f"{model}-checkpoint:zoo-rtn"]
    assert len(imported) == 6 and imported.keys() == in_memory.keys()
    for analysis, test in imported.items():  # outcomes may differ: expected failures name `rtn-w4`
        assert (test["verdict"], test["failures"], test["metrics"]) == \
            (in_memory[analysis]["verdict"], in_memory[analysis]["failures"], in_memory[analysis]["metrics"]), analysis
    weights = {pair["id"]: pair["quant"]["weight_digest"] for pair in results["pairs"]}
    assert weights[f"{model}-checkpoint:zoo-rtn"] == weights[f"{model}-rtn-w4"]
