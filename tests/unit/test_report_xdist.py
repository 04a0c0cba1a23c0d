"""End to end on a real zoo model: the report of a run under `-n 2` equals the serial run's, up to
the volatile fields (times, which worker built what). Two real pytest runs: slow."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qcheck.models.registry import ZOO_DIR, zoo_names
from qcheck.report.schema import comparable, validate

ROOT = Path(__file__).resolve().parents[2]


def smallest_zoo_model() -> str:
    return min(zoo_names(), key=lambda name: (ZOO_DIR / name / "model.safetensors").stat().st_size)


def run_certify(out: Path, cache: Path, *extra: str) -> dict:
    # Two cheap analyses that share one capture, so `--dist load` can hand one test to each worker.
    args = [sys.executable, "-m", "pytest", "tests/certify", "-q", "-p", "no:cacheprovider",
            "--qcheck-model", smallest_zoo_model(), "--qcheck-quant", "rtn-w4",
            "-m", "activations or attention", "--qcheck-report", str(out), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "QCHECK_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode in (0, 1), done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((out / "results.json").read_text())


@pytest.mark.slow
def test_report_under_xdist_equals_the_serial_report(tmp_path):
    serial = run_certify(tmp_path / "serial", tmp_path / "cache")
    parallel = run_certify(tmp_path / "xdist", tmp_path / "cache", "-n", "2", "--dist", "load")
    assert validate(serial) == [] and validate(parallel) == []
    assert len(serial["tests"]) == 2 and serial["run"]["workers"] == []
    assert parallel["run"]["workers"] == ["gw0", "gw1"] and parallel["run"]["notes"] == []
    assert comparable(parallel) == comparable(serial)
