"""Helpers shared by every test tier: `from helpers import ...` (pytest's default import mode puts
tests/, the folder of tests/conftest.py, on sys.path). The fixtures stay in the conftests and
delegate here; nothing imports a conftest as a module.

- `build_tiny(family)`: a tiny random-init HF model, no file, no download, < 1 s to build. The
  architecture families qcheck knows (GPT-2: Conv1D weights [in, out], sequential residual;
  GPT-NeoX: nn.Linear, rotary, parallel residual; Llama: separate q/k/v/o, SwiGLU gate/up/down,
  RMSNorm, rotary, grouped-query attention with 4 query heads on 2 key/value heads; Qwen2: Llama's
  layout plus q/k/v biases) at vocab 256, 2 layers, d_model 32 (Llama and Qwen2: 64), context 64. `TINY_FAMILIES` lists
  them; `LINEARS_PER_BLOCK` is how many linears each quantizes per block.
- `skip_gpu_tests_without_cuda(items)`: tests marked `gpu` are skipped with the reason (torch's
  build, no device) where torch sees no CUDA, so `pytest -m gpu` on a CPU machine reports skips,
  never errors. The body of tests/conftest.py's collection hook.
- `plugin_suite(pytester, ...)`: a pytester project that loads qcheck's plugin and holds one
  certification-style test (`CERTIFY_TEST` unless told).
- `smallest_zoo_model()`: the zoo model with the smallest weights file, for end-to-end runs.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

import pytest
import torch

from qcheck.suite.options import cuda_unavailable_reason


TINY_FAMILIES = ("gpt2", "neox", "llama", "qwen2")
# GPT-2 (c_attn, c_proj, c_fc, c_proj) and NeoX (query_key_value, dense, dense_h_to_4h,
# dense_4h_to_h) fuse QKV; Llama and Qwen2 have q, k, v, o, gate, up, down.
LINEARS_PER_BLOCK = {"gpt2": 4, "neox": 4, "llama": 7, "qwen2": 7}


def build_tiny(family: str, seed: int = 0, **overrides) -> torch.nn.Module:
    """A tiny model of one family (one of TINY_FAMILIES); `overrides` change its config."""
    from transformers import (GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig,
                              LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM)

    torch.manual_seed(seed)
    common = dict(vocab_size=256, bos_token_id=0, eos_token_id=0, attn_implementation="eager")
    # Llama-like: 2 key/value heads for 4 query heads (grouped-query attention), d_head 16, so
    # k_proj and v_proj have 32 output rows: the GPTQ format packs 3-bit zero points 32 rows at
    # a time (qcheck/quantize/packing.py), and at d_model 32 they would have 16. SwiGLU width 96
    # (neither d_model nor 4 d_model, so a transposed weight shows as a shape error).
    modern = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=96, max_position_embeddings=64, tie_word_embeddings=False)
    if family == "gpt2":
        config = GPT2Config(**{**dict(n_layer=2, n_embd=32, n_head=4, n_positions=64), **common, **overrides})
        model = GPT2LMHeadModel(config)
    elif family == "neox":
        config = GPTNeoXConfig(**{**dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                                         intermediate_size=128, max_position_embeddings=64, rotary_pct=0.5,
                                         tie_word_embeddings=False), **common, **overrides})
        model = GPTNeoXForCausalLM(config)
    elif family == "llama":
        model = LlamaForCausalLM(LlamaConfig(**{**modern, **common, **overrides}))
    elif family == "qwen2":  # q/k/v carry biases (o_proj and the MLP do not)
        model = Qwen2ForCausalLM(Qwen2Config(**{**modern, **common, **overrides}))
    else:
        raise ValueError(f"build_tiny: unknown family {family!r}; expected one of {TINY_FAMILIES}")
    with torch.no_grad():  # non-trivial biases and norms, so "left untouched" can be told apart
        for name, p in model.named_parameters():
            if name.endswith("bias") or "ln" in name or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.float().eval()


def copy_of(fixture: Path, tmp_path: Path) -> Path:
    """A copy of a checkpoint fixture folder to edit (the committed one stays as the tool saved it)."""
    return Path(shutil.copytree(fixture, tmp_path / fixture.name))


def edit_tensors(directory: Path, edit, weights: str = "model.safetensors") -> None:
    """Rewrite a checkpoint's safetensors file after `edit(tensors)` changed the dict in place."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(directory / weights)
    edit(tensors)
    save_file(tensors, directory / weights, metadata={"format": "pt"})


def skip_gpu_tests_without_cuda(items: list[pytest.Item]) -> None:
    """Mark every `gpu` item skipped, with the reason, when torch sees no CUDA device."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    reason = cuda_unavailable_reason() if gpu_items else None
    for item in gpu_items if reason else ():
        item.add_marker(pytest.mark.skip(reason=reason))


CERTIFY_TEST = """
import pytest

@pytest.mark.activations
def test_certify(pair):
    pass
"""


# A conftest for pytester suites whose pairs are synthetic (no model loaded): the real
# `baseline_header` reads the pair's weights and prompts, so it is replaced by a fixed header.
FIXED_HEADER_CONFTEST = """
import pytest
from qcheck.drift import Header


@pytest.fixture
def baseline_header(pair):
    return Header(model="m", weight_digest="w" * 64, quant="q", calibration_digest=None,
                  inputs_digest="i" * 64, analysis="circuits", analysis_version=1,
                  dtype="float32", device="cpu", environment={})
"""


def plugin_suite(pytester: pytest.Pytester, test_source: str = CERTIFY_TEST, *, conftest: str = "",
                 markers: Iterable[str] = ()) -> pytest.Pytester:
    """A pytester project: `conftest` (qcheck's plugin itself comes from its pytest11 entry point),
    `test_source` as test_certify.py, and an ini declaring `markers` ("name: description" lines).

    The plugin registers the analysis markers and xdist_group; `markers` is for the suite's own
    tiers (gpu, kernels, zoo, slow), which live in the repo's pytest.ini, not in pytester's project.
    """
    pytester.makeconftest(conftest)
    lines = "".join(f"\n    {line}" for line in markers)
    pytester.makeini("[pytest]\n" + (f"markers ={lines}\n" if lines else ""))
    pytester.makepyfile(test_certify=test_source)
    return pytester


def smallest_zoo_model() -> str:
    """The zoo model whose model.safetensors is smallest (the cheapest end-to-end run)."""
    from qcheck.models.registry import ZOO_DIR, zoo_names

    return min(zoo_names(), key=lambda name: (ZOO_DIR / name / "model.safetensors").stat().st_size)
