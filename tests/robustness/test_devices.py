"""Devices: `--qcheck-device auto|cpu|cuda|cuda:N`. A device this machine lacks is one usage error
at collection; under xdist worker gwK takes GPU K mod n; tests marked `gpu` are skipped with a
reason when there is no CUDA. The CUDA paths run here on CPU with torch.cuda monkeypatched."""

from __future__ import annotations

import copy

import pytest
import torch

from qcheck.suite.options import parse_device, session_device, worker_device


@pytest.fixture
def gpus(monkeypatch):
    """gpus(n): pretend this machine has n CUDA devices."""
    def fake(n: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    return fake


@pytest.mark.parametrize("text", ["tpu", "gpu", "cuda:x", "cuda:-1", "CPU", ""])
def test_unknown_device_is_one_usage_error(cli, text):
    assert cli.usage_error(f"--qcheck-device={text}") == \
        f"--qcheck-device {text!r}: expected auto, cpu, cuda or cuda:N"


@pytest.mark.parametrize("text", ["cuda", "cuda:0"])
def test_cuda_requested_without_cuda_is_one_usage_error(cli, gpus, text):
    gpus(0)
    assert cli.usage_error("--qcheck-device", text) == (
        f"--qcheck-device {text}: CUDA is not available on this machine (torch {torch.__version__}); "
        f"use --qcheck-device cpu or auto")


def test_cuda_index_beyond_the_devices_is_one_usage_error(cli, gpus):
    gpus(2)
    assert cli.usage_error("--qcheck-device", "cuda:2") == (
        "--qcheck-device cuda:2: this machine has 2 CUDA device(s), cuda:0..cuda:1; or use --qcheck-device cuda "
        "(under xdist each worker then takes its own)")
    cli.collects("--qcheck-device", "cuda:1")


@pytest.mark.parametrize("n_gpus, expected", [(0, "cpu"), (1, "cuda"), (4, "cuda")])
def test_auto_takes_cuda_only_when_present(gpus, n_gpus, expected):
    gpus(n_gpus)
    assert parse_device("auto") == expected and parse_device("cpu") == "cpu"


@pytest.mark.parametrize("text, worker, expected", [
    ("cuda", "gw0", "cuda:0"), ("cuda", "gw1", "cuda:1"), ("cuda", "gw2", "cuda:0"), ("cuda", "gw3", "cuda:1"),
    ("auto", "gw3", "cuda:1"),             # auto found CUDA: spread like cuda
    ("cuda", None, "cuda"),                # not under xdist
    ("cuda:1", "gw0", "cuda:1"),           # an explicit index is kept: the user chose it
    ("cpu", "gw1", "cpu"),
])
def test_each_xdist_worker_takes_gpu_k_mod_n(gpus, text, worker, expected):
    gpus(2)
    assert session_device(text, worker) == expected


def test_worker_mapping_without_gpus_leaves_the_device_alone():
    assert worker_device("cuda", "gw1", 0) == "cuda" and worker_device("cuda", "master", 2) == "cuda"


XDIST_CONFTEST = """
import torch
torch.cuda.is_available = lambda: True      # two pretend GPUs, in every worker process
torch.cuda.device_count = lambda: 2
# qcheck's plugin comes from its pytest11 entry point
"""

XDIST_TEST = """
import pathlib, pytest

@pytest.mark.parametrize("k", range(6))
def test_device(qcheck_session, worker_id, k):
    pathlib.Path("devices", f"{worker_id}-{k}").write_text(qcheck_session.device)
"""


@pytest.mark.slow
def test_xdist_workers_take_their_own_gpu_end_to_end(pytester):
    """Two real xdist workers with `--qcheck-device cuda`: the session of gw0 uses cuda:0, gw1 cuda:1."""
    pytester.makeconftest(XDIST_CONFTEST)
    pytester.makeini("[pytest]\nmarkers =\n    xdist_group(name): g\n")
    pytester.makepyfile(test_devices=XDIST_TEST)
    pytester.mkdir("devices")
    result = pytester.runpytest_subprocess("-n", "2", "--qcheck-device", "cuda", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=6)
    seen = {p.name.split("-")[0]: p.read_text() for p in (pytester.path / "devices").iterdir()}
    assert seen == {"gw0": "cuda:0", "gw1": "cuda:1"}


GPU_SUITE = """
import pytest

@pytest.mark.gpu
def test_needs_cuda():
    pass

def test_anywhere():
    pass
"""


@pytest.mark.parametrize("n_gpus", [0, 1])
def test_gpu_marked_tests_are_skipped_with_a_reason_without_cuda(pytester, gpus, n_gpus):
    gpus(n_gpus)
    pytester.makeconftest("from helpers import skip_gpu_tests_without_cuda as pytest_collection_modifyitems"
                          "  # the body of tests/conftest.py's hook, under test")
    pytester.makeini("[pytest]\nmarkers =\n    gpu: needs CUDA\n")
    pytester.makepyfile(test_gpu=GPU_SUITE)
    result = pytester.runpytest("-rs", "-p", "no:cacheprovider")
    if n_gpus:
        result.assert_outcomes(passed=2)
    else:
        result.assert_outcomes(passed=1, skipped=1)
        result.stdout.fnmatch_lines([f"SKIPPED [[]1[]] test_gpu.py:3: needs CUDA: torch {torch.__version__} "
                                     f"sees no CUDA device here (torch.cuda.is_available() is False)"])


@pytest.mark.gpu
def test_quantization_on_cuda_matches_cpu(tiny_gpt2_lm, calibration_tokens):
    """Runs where CUDA is (GPU CI); skipped here by the hook above."""
    from qcheck.quantize.apply import quantize_model
    from qcheck.quantize.spec import parse_quant_spec

    for quant, atol in (("rtn-w4", 0.0), ("gptq-w4", 1e-4)):
        spec = parse_quant_spec(quant)
        on_cpu, _ = quantize_model(tiny_gpt2_lm, spec, calibration_tokens)
        on_gpu, _ = quantize_model(copy.deepcopy(tiny_gpt2_lm).to("cuda"), spec, calibration_tokens)
        for name, value in on_cpu.state_dict().items():
            assert torch.allclose(on_gpu.state_dict()[name].cpu(), value, rtol=0, atol=atol), (quant, name)
