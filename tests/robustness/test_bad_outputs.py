"""Where results go and what they are measured against: a report directory that cannot be
written, and a --qcheck-checkpoint made from another model. Both are command-line values: one
usage error at collection, before any model is loaded, and nothing on disk is touched."""

from __future__ import annotations

import pytest
import torch

from qcheck.models.registry import ZOO_DIR, zoo_names


@pytest.mark.parametrize("where, message", [
    ("under-a-file/report", "--qcheck-report {path}: is not writable (Not a directory)"),
    ("a-file", "--qcheck-report {path}: is a file, not a directory"),
])
def test_unwritable_report_directory_is_one_usage_error(cli, tree, where, message):
    (cli.pytester.path / "under-a-file").write_text("mine")
    (cli.pytester.path / "a-file").write_text("mine")
    before = tree(cli.pytester.path)
    path = cli.pytester.path / where
    assert cli.usage_error(f"--qcheck-report={path}") == message.format(path=path)
    assert tree(cli.pytester.path) == before  # nothing created, nothing removed
    # (a directory holding other files: tests/unit/test_report_plugin.py::
    #  test_a_report_directory_with_other_files_is_a_usage_error)


@pytest.fixture(scope="module")
def other_vocab_checkpoint(tmp_path_factory):
    """rtn-w4 of a model with the smallest zoo model's architecture but a 300-token vocabulary."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from qcheck.quantize.checkpoint import export_checkpoint
    from qcheck.quantize.spec import parse_quant_spec

    model = min(zoo_names(), key=lambda name: (ZOO_DIR / name / "model.safetensors").stat().st_size)
    config = AutoConfig.from_pretrained(ZOO_DIR / model, trust_remote_code=False)
    config.vocab_size = 300
    torch.manual_seed(0)
    other = AutoModelForCausalLM.from_config(config).eval()
    out = tmp_path_factory.mktemp("ckpt") / "other-vocab"
    return model, export_checkpoint(other, parse_quant_spec("rtn-w4"), out, dtype=torch.float32)


def test_checkpoint_whose_vocab_differs_is_one_usage_error(cli, tree, other_vocab_checkpoint):
    """Unit-level refusals (tokenizer files that differ, other shapes, another model's weights):
    tests/unit/test_checkpoint.py."""
    model, checkpoint = other_vocab_checkpoint
    before = tree(checkpoint)
    assert cli.usage_error("--qcheck-model", model, f"--qcheck-checkpoint={checkpoint}") == (
        f"--qcheck-checkpoint {checkpoint}: checkpoint {checkpoint}: config.json describes another vocabulary "
        f"than the FP model {model} (checkpoint vs FP: vocab_size 300 vs 256); pass the FP model the "
        f"checkpoint was quantized from with --qcheck-model")
    assert tree(checkpoint) == before
