"""Fixtures and hooks shared by every test tier; what they do lives in tests/helpers.py.

- Tests marked `gpu` need CUDA: without it they are skipped with the reason (torch's build, no
  device), so `pytest -m gpu` on a CPU machine reports skips, never errors.
- Tiny random-init HF models for the quantizer tests (`build_tiny`), session-scoped and
  read-only: anything that mutates works on a deep copy.
"""

from __future__ import annotations

import pytest
import torch
# Imported before any pytester in-process run: such a run drops the modules first imported inside
# it, and importing TransformerLens (with datasets/pyarrow) a second time in one process fails
# ("A type extension ... already defined").
import transformer_lens  # noqa: F401

from helpers import TINY_FAMILIES, build_tiny, skip_gpu_tests_without_cuda


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_gpu_tests_without_cuda(items)


@pytest.fixture(scope="session", params=TINY_FAMILIES)
def tiny_model(request) -> torch.nn.Module:
    """Each tiny model in turn (read-only)."""
    return build_tiny(request.param)


@pytest.fixture(scope="session")
def tiny_gpt2_lm() -> torch.nn.Module:
    return build_tiny("gpt2")


@pytest.fixture(scope="session")
def calibration_tokens() -> torch.Tensor:
    """(20, 16) byte tokens starting with BOS: two calibration batches (16 + 4)."""
    tokens = torch.randint(1, 256, (20, 16), generator=torch.Generator().manual_seed(0))
    tokens[:, 0] = 0
    return tokens

