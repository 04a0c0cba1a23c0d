"""Determinism on CPU: the same certification twice, from scratch (fresh caches: calibration
sampled, GPTQ run, captures, analyses), gives bit-identical results; every seed is explicit; and
serial and `-n 2` runs give identical metrics. On the smallest zoo model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qcheck.analyses.activations import compare_activations
from qcheck.analyses.attention import compare_attention
from qcheck.analyses.circuits import compare_induction_captures
from qcheck.analyses.fidelity import compare_outputs
from qcheck.analyses.logit_lens import compare_logit_lens
from qcheck.thresholds import Thresholds  # the defaults, and where each comes from: docs/thresholds.md
from qcheck.pair import Case
from qcheck.suite.options import ThresholdOverrides
from qcheck.pair import INDUCTION_HALF
from qcheck.quantize.spec import parse_quant_spec
from qcheck.report.results import seeds
from qcheck.suite.session import QcheckSession

from helpers import smallest_zoo_model

ROOT = Path(__file__).resolve().parents[2]
QUANT = "gptq-w4-n16-len64"  # GPTQ: sampled calibration, Hessians, Cholesky; small enough to be quick


def certify(cache_dir: Path) -> dict:
    """Every analysis but features (its basis is a frozen file) on one pair, through the session."""
    session = QcheckSession(models=[smallest_zoo_model()], quants=[parse_quant_spec(QUANT)], device="cpu",
                            base_thresholds=Thresholds(), pyproject_per_model={}, overrides=ThresholdOverrides(),
                            cache_dir=cache_dir, expected_failures=[])
    pair = session.pair(Case(smallest_zoo_model(), parse_quant_spec(QUANT)))
    return {
        "from_cache": pair.quant.from_cache,
        "quantized_weights": pair.quant.quantized_digest,
        "calibration": pair.quant.calibration_digest,
        "activations": compare_activations(*pair.captures("natural")).as_baseline(),
        "attention": compare_attention(*pair.captures("natural")).as_baseline(),
        "logit_lens": compare_logit_lens(*pair.captures("lens")).as_baseline(),
        "circuits": compare_induction_captures(*pair.captures("induction"), half=INDUCTION_HALF,
                                               rule=Thresholds().induction_rule).as_baseline(),
        "fidelity": compare_outputs(*pair.captures("natural")).as_baseline(),
    }


def test_same_run_twice_is_bit_identical(tmp_path):
    first, second = certify(tmp_path / "a"), certify(tmp_path / "b")
    assert not first["from_cache"] and not second["from_cache"]  # both computed from scratch
    # json.dumps writes floats with repr: equal text means equal bits
    assert json.dumps(second, sort_keys=True) == json.dumps(first, sort_keys=True)
    third = certify(tmp_path / "a")  # and loading the cached weights changes nothing either
    assert third.pop("from_cache") and first.pop("from_cache") is False
    assert json.dumps(third, sort_keys=True) == json.dumps(first, sort_keys=True)


def test_every_seed_is_explicit():
    spec = parse_quant_spec(QUANT + "-seed7")
    assert seeds(spec) == {"induction": 42, "induction_sets": 1, "sae": 0, "calibration": 7, "bootstrap": 0}
    assert seeds(parse_quant_spec("rtn-w4"))["calibration"] is None  # nothing sampled, nothing to seed


def run_certify(out: Path, cache: Path, *extra: str) -> dict:
    args = [sys.executable, "-m", "pytest", "tests/certify", "-q", "-p", "no:cacheprovider",
            "--qcheck-model", smallest_zoo_model(), "--qcheck-quant", QUANT,
            "-m", "activations or attention or logit_lens", "--qcheck-report", str(out), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "QCHECK_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode in (0, 1), done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((out / "results.json").read_text())


@pytest.mark.slow
def test_serial_runs_and_xdist_give_identical_results_json(tmp_path):
    """Three real pytest runs, each with a fresh cache: serial twice, then `-n 2` (whose two workers
    also race for the one cache entry). results.json is identical up to its volatile fields (times,
    which worker built what). This is also the report's merge test: the controller's merged
    results.json under -n 2 equals the serial one."""
    from qcheck.report.schema import comparable, validate

    serial = [run_certify(tmp_path / f"serial{i}", tmp_path / f"cache{i}") for i in (1, 2)]
    parallel = run_certify(tmp_path / "xdist", tmp_path / "cache3", "-n", "2", "--dist", "load")
    assert len(serial[0]["tests"]) == 3 and parallel["run"]["workers"] == ["gw0", "gw1"]
    assert comparable(serial[1]) == comparable(serial[0])
    assert comparable(parallel) == comparable(serial[0])
    assert validate(serial[0]) == [] and validate(parallel) == []
    assert serial[0]["pairs"][0]["seeds"] == seeds(parse_quant_spec(QUANT))
