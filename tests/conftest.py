"""Fixtures and hooks shared by every test tier.

- Tests marked `gpu` need CUDA: without it they are skipped with the reason (torch's build, no
  device), so `pytest -m gpu` on a CPU machine reports skips, never errors.
- Tiny random-init HF models for the quantizer tests: no file, no download, < 1 s to build. Both
  architecture families of the zoo (GPT-2: Conv1D weights [in, out], sequential residual;
  GPT-NeoX: nn.Linear, rotary, parallel residual) at vocab 256, 2 layers, d_model 32, context 64.
  Session-scoped and read-only: anything that mutates works on a deep copy.
"""

from __future__ import annotations

import pytest
import torch
# Imported before any pytester in-process run: such a run drops the modules first imported inside
# it, and importing TransformerLens (with datasets/pyarrow) a second time in one process fails
# ("A type extension ... already defined").
import transformer_lens  # noqa: F401

from qcheck.suite.options import cuda_unavailable_reason


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    reason = cuda_unavailable_reason() if gpu_items else None
    for item in gpu_items if reason else ():
        item.add_marker(pytest.mark.skip(reason=reason))


def build_tiny(family: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """A tiny model of one family ("gpt2" or "neox"); `overrides` change its config."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    common = dict(vocab_size=256, bos_token_id=0, eos_token_id=0, attn_implementation="eager")
    if family == "gpt2":
        config = GPT2Config(**{**dict(n_layer=2, n_embd=32, n_head=4, n_positions=64), **common, **overrides})
        model = GPT2LMHeadModel(config)
    else:
        config = GPTNeoXConfig(**{**dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                                         intermediate_size=128, max_position_embeddings=64, rotary_pct=0.5,
                                         tie_word_embeddings=False), **common, **overrides})
        model = GPTNeoXForCausalLM(config)
    with torch.no_grad():  # non-trivial biases and norms, so "left untouched" can be told apart
        for name, p in model.named_parameters():
            if name.endswith("bias") or "ln" in name or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.float().eval()


@pytest.fixture(scope="session", params=["gpt2", "neox"])
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


def plugin_suite(pytester, test_source: str):
    """A pytester project that loads qcheck's plugin and holds one certification-style test."""
    pytester.makeconftest("")  # qcheck's plugin comes from its pytest11 entry point
    pytester.makeini("[pytest]\nmarkers =\n    activations: a\n    xdist_group(name): g\n")
    pytester.makepyfile(test_certify=test_source)
    return pytester
