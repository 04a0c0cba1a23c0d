"""Command-line values are validated once, with messages that name the value and the fix."""

import pytest

from qcheck.config import Thresholds
from qcheck.options import (parse_device, parse_threshold_overrides, thresholds_from_pyproject,
                            worker_device)


def test_cpu_and_auto_devices():
    assert parse_device("cpu") == "cpu"
    assert parse_device("auto") in ("cpu", "cuda")


@pytest.mark.parametrize("text", ["gpu", "cuda:x", "tpu", ""])
def test_unknown_device_is_refused(text):
    with pytest.raises(ValueError, match="expected auto, cpu, cuda or cuda:N"):
        parse_device(text)


def test_cuda_without_cuda_is_refused(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available.*--qcheck-device cpu"):
        parse_device("cuda:0")


@pytest.mark.parametrize("worker, n_gpus, expected", [("gw0", 2, "cuda:0"), ("gw3", 2, "cuda:1"),
                                                       ("master", 2, "cuda"), ("gw1", 0, "cuda")])
def test_each_xdist_worker_takes_its_own_gpu(worker, n_gpus, expected):
    assert worker_device("cuda", worker, n_gpus) == expected


def test_explicit_cuda_index_is_kept_under_xdist():
    assert worker_device("cuda:1", "gw0", 4) == "cuda:1"


def test_threshold_overrides_global_and_per_model():
    overrides = parse_threshold_overrides(["min_resid_cosine=0.9", "zoo-a:max_head_jsd=0.2"], Thresholds())
    assert overrides.for_model(Thresholds(), "zoo-a").max_head_jsd == 0.2
    assert overrides.for_model(Thresholds(), "zoo-b").max_head_jsd == Thresholds().max_head_jsd
    assert overrides.for_model(Thresholds(), "zoo-b").min_resid_cosine == 0.9


@pytest.mark.parametrize("item, message", [("min_resid_cosine", "expected KEY=VALUE"),
                                           ("nope=1", "unknown threshold 'nope'"),
                                           ("min_resid_cosine=high", "is not a float"),
                                           ("induction_rule=sometimes", "expected 'fixed' or 'relative'")])
def test_bad_threshold_override_names_the_value(item, message):
    with pytest.raises(ValueError, match=message):
        parse_threshold_overrides([item], Thresholds())


def test_pyproject_thresholds():
    base, per_model = thresholds_from_pyproject({"min_resid_cosine": 0.9, "zoo-a": {"max_head_jsd": 0.2}})
    assert base.min_resid_cosine == 0.9 and per_model == {"zoo-a": {"max_head_jsd": 0.2}}
    with pytest.raises(ValueError, match="pyproject.toml.*unknown threshold 'typo'"):
        thresholds_from_pyproject({"typo": 1})
